//===- Executor.h - Runs a compiled package on the GPU ----------*- C++ -*-===//
//
// Loads a package (manifest + PTX), allocates its arena in one allocation
// (refusing, before allocating, a plan that does not fit), and runs its
// functions: launches through the driver, GEMMs through cuBLASLt. The first
// run of a function is recorded into a CUDA graph; later runs replay it.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_EXECUTOR_H
#define LLAMAC_RUNTIME_EXECUTOR_H

#include "llamac/Package/Package.h"
#include "llamac/Runtime/Cuda.h"
#include "llamac/Runtime/GemmTuning.h"

#include <map>
#include <memory>
#include <vector>

namespace llamac {

/// Where llamac-bench --tune keeps a package's GEMM tuning: beside its
/// manifest.
constexpr const char *kGemmTuningFile = "gemm-tuning.json";

class Executor {
public:
  static Result<std::unique_ptr<Executor>>
  create(std::shared_ptr<cuda::Device> device, package::Package package);
  ~Executor();

  const package::Package &package() const { return plan; }
  /// Device address of buffer `index`.
  CUdeviceptr address(int index) const;
  /// Copies host bytes into / out of the buffer called `name` (its size).
  Status upload(const std::string &name, const void *data, size_t bytes);
  Status download(const std::string &name, void *data, size_t bytes);

  /// Runs `function` (eagerly the first time while recording a graph when
  /// `useGraph`; by graph replay afterwards) and waits for it.
  Status run(const std::string &function, bool useGraph = true);

  /// Runs the package's kFP8WeightCopiesFunction (eagerly), if it has one:
  /// once after the weights and the FP8 state are uploaded (fresh or
  /// resumed) and before the first forward_backward, which reads the FP8
  /// weight copies it writes. Packages without it: nothing.
  Status castFP8Weights();

  /// Reads the GEMM algorithms chosen for this GPU and cuBLASLt in the
  /// tuning file `path`: true when it had them, false when there is none
  /// yet or it was made elsewhere (tuneGemms writes it then). See
  /// BlasLt::useTuningFile.
  Result<bool> useTuningFile(const std::string &path);

  /// Chooses each GEMM's algorithm in the step as training runs it: finds
  /// every GEMM key's candidates (the heuristic's first
  /// kGemmTuningCandidates that the GPU runs: one eager run of `functions`
  /// per candidate round), then tunes by replay (tuneGemmsByReplay, margin
  /// kGemmTuningMargin): each timing captures `functions` afresh as CUDA
  /// graphs with the candidates being tried and takes the median of
  /// `replays` replays of them in order. Keeps the choices and writes the
  /// tuning file when one is set (useTuningFile).
  ///
  /// The functions run many times with all their effects: @forward_backward
  /// can be re-run, @optimizer_step updates the weights each time (harmless
  /// on llamac-bench's random weights; not for a fine-tune's). Refused once
  /// any function was captured in a CUDA graph: its GEMMs' algorithms are
  /// fixed in it. Leaves no graph behind.
  Result<GemmTuningResult> tuneGemms(const std::vector<std::string> &functions,
                                     int replays = 5);

  /// Runs `function` eagerly with an event between steps and returns each
  /// step's milliseconds, in order (for breakdowns; slower than a replay).
  Result<std::vector<float>> profile(const std::string &function);

private:
  Executor() = default;
  Status enqueue(const package::Function &function);
  /// Destroys every captured graph: the next run of each function captures
  /// it again, with the GEMM algorithms chosen by then.
  void releaseGraphs();
  /// profile(), also recording for each GEMM step which key and candidate
  /// ran (at its index in `gemms`) when `gemms` is given.
  Result<std::vector<float>>
  timeSteps(const std::string &function,
            std::vector<cuda::BlasLt::LastRun> *gemms);
  Status enqueue(const package::Function &function, const package::Step &step);
  /// Refuses @forward_backward while the FP8 weight copies are not
  /// current, and tracks when they are (see kFP8WeightCopiesFunction).
  Status checkWeightCopies(const std::string &function);
  Result<CUdeviceptr> resolve(const package::Operand &operand) const;

  std::shared_ptr<cuda::Device> device;
  package::Package plan;
  std::unique_ptr<cuda::Module> module;
  std::unique_ptr<cuda::BlasLt> blas;
  CUdeviceptr arena = 0;
  std::map<std::string, CUgraphExec> graphs;
  bool weightCopiesCurrent = false;
};

} // namespace llamac

#endif // LLAMAC_RUNTIME_EXECUTOR_H
