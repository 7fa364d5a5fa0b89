//===- Cuda.h - CUDA driver and cuBLASLt, resolved at run time --*- C++ -*-===//
//
// The GPU runtime talks to the CUDA Driver API and cuBLASLt only. Both are
// opened with dlopen when first needed, so every llamac binary starts on a
// machine without a GPU (CI), and GPU tests can say why they skip. Errors name
// the operation and, for launches, the kernel.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_CUDA_H
#define LLAMAC_RUNTIME_CUDA_H

#include "llamac/Runtime/Result.h"

#include <cublasLt.h>
#include <cuda.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace llamac::cuda {

struct DriverApi;
struct BlasLtApi;

/// One GPU, its primary context and the stream every launch goes to.
class Device {
public:
  /// Opens the driver and device `ordinal`. Fails with a one-line reason
  /// ("no CUDA driver: ...", "no CUDA device") on machines without a GPU.
  static Result<std::shared_ptr<Device>> open(int ordinal = 0);
  ~Device();

  const std::string &name() const { return deviceName; }
  int computeCapability() const { return major * 10 + minor; }
  int multiprocessors() const { return smCount; }
  CUstream stream() const { return mainStream; }
  const DriverApi &api() const { return *driver; }

  /// Free and total device memory in bytes.
  Result<std::pair<size_t, size_t>> memoryInfo() const;
  /// Allocates `bytes`, first checking them against free memory so that an
  /// out-of-memory is reported with needed vs free bytes and `what` it was for.
  Result<CUdeviceptr> allocate(size_t bytes, const std::string &what);
  Status free(CUdeviceptr pointer);
  Status copyToDevice(CUdeviceptr dst, const void *src, size_t bytes);
  Status copyToHost(void *dst, CUdeviceptr src, size_t bytes);
  /// Fills `bytes` with `value`.
  Status fill(CUdeviceptr dst, uint8_t value, size_t bytes);
  Status synchronize(const std::string &after);

  /// Starts recording the stream's work into a graph instead of running it.
  Status beginCapture();
  /// Ends the recording and returns the instantiated graph.
  Result<CUgraphExec> endCapture();
  Status launchGraph(CUgraphExec graph);
  void destroyGraph(CUgraphExec graph);

  /// Timing events on the stream.
  Result<CUevent> createEvent();
  void destroyEvent(CUevent event);
  Status record(CUevent event);
  /// Milliseconds between two recorded timing events, once `end` completed.
  Result<float> elapsedMs(CUevent start, CUevent end);

  /// Turns a driver status into an error naming `what` failed; ok on success.
  Status check(CUresult result, const std::string &what) const;

private:
  Device() = default;
  const DriverApi *driver = nullptr;
  CUdevice device = 0;
  CUcontext context = nullptr;
  CUstream mainStream = nullptr;
  std::string deviceName;
  int major = 0, minor = 0, smCount = 0;
};

/// A PTX module loaded (and JIT-compiled for this GPU) by the driver.
class Module {
public:
  /// Loads `ptx`; on failure the message carries the driver's JIT error log.
  static Result<Module> load(std::shared_ptr<Device> device,
                             const std::string &ptx, const std::string &name);
  Module(Module &&other) noexcept;
  ~Module();

  /// The kernel called `kernel`.
  Result<CUfunction> function(const std::string &kernel) const;
  /// Launches `kernel` on the device's stream with the
  /// given argument addresses; errors name the kernel.
  Status launch(const std::string &kernel, unsigned gridX, unsigned blockX,
                unsigned sharedBytes, std::vector<void *> args,
                unsigned gridY = 1) const;

private:
  Module() = default;
  std::shared_ptr<Device> device;
  CUmodule module = nullptr;
  std::string moduleName;
};

/// Element types of GEMM operands and results. The FP8 formats are operand
/// types only (OCP E4M3 with its NaN but no infinities, and E5M2).
enum class GemmType { F32, BF16, F8E4M3, F8E5M2 };

/// A row-major GEMM `D = alpha * op(A) * op(B) + beta * C` (C = D unless
/// given), as
/// llama.matmul defines it: op transposes when the flag is set; A is [m, k]
/// after op, B is [k, n] after op, D is [m, n]. Accumulates in f32. Leading
/// dimensions (row strides in elements) default to packed rows; `batch`
/// repeats the product at the given element strides.
///
/// FP8 (`type` E4M3 or E5M2): D = alpha (sa A)(sb B)ᵀ with A [m, k] and B
/// [n, k] both K-major (transposeA false, transposeB true: Hopper's only FP8
/// layout), `typeB` E4M3 or E5M2 (not both E5M2), bf16 D, no batch; sa and
/// sb are the f32 scalars at `scaleInvA` and `scaleInvB` (1 when 0), which
/// cuBLASLt needs 16-byte aligned (CUDA 13.1 on an H200 rejects a scale at
/// 4 bytes past an allocation with CUBLAS_STATUS_NOT_SUPPORTED). cuBLASLt's
/// amax of D exists only for FP8 outputs, so it is not offered: the FP8
/// casts measure the amaxes.
struct Gemm {
  int64_t m = 0, n = 0, k = 0;
  bool transposeA = false, transposeB = false;
  GemmType type = GemmType::BF16;
  /// Element type of B when it differs from A's (FP8 only).
  std::optional<GemmType> typeB;
  /// Element type of D (and C); f32 output from bf16 operands keeps scores
  /// unrounded.
  GemmType outType = GemmType::BF16;
  float alpha = 1, beta = 0;
  CUdeviceptr a = 0, b = 0, d = 0;
  /// The addend when it is not D (same layout as D); 0: D.
  CUdeviceptr c = 0;
  int64_t lda = 0, ldb = 0, ldd = 0;
  int64_t batch = 1, strideA = 0, strideB = 0, strideD = 0;
  /// FP8 only: device f32 scalars, the scale inverses of A and B; 0: none.
  CUdeviceptr scaleInvA = 0, scaleInvB = 0;
};

/// cuBLASLt with one handle and workspace. Each GEMM shape (its key: the
/// shape "MxNxK", then transposes, types, leading dimensions, batch and
/// whether it adds to C) gets an algorithm once: the heuristic's first, or
/// the one chosen by tuning (Executor::tuneGemms) or read from a tuning
/// file for this GPU and cuBLASLt.
class BlasLt {
public:
  static Result<std::unique_ptr<BlasLt>> create(std::shared_ptr<Device> device);
  ~BlasLt();

  /// Runs `gemm` on the device's stream; `what` names it in errors.
  Status run(const Gemm &gemm, const std::string &what);

  /// The GEMM the last run was, and which of its tuning candidates ran (-1
  /// outside tuning rounds: its chosen algorithm).
  struct LastRun {
    std::string key;
    int candidate = -1;
  };
  const LastRun &lastRun() const { return last; }

  /// Starts tuning round `round`: from now on every GEMM runs its candidate
  /// gemmTuningCandidate(round, count) (GemmTuning.h) of the heuristic's first
  /// kGemmTuningCandidates (asked for on the key's first run in a round);
  /// one the GPU refuses runs candidate 0 instead (and says so in
  /// lastRun). std::nullopt ends tuning: each GEMM runs its chosen
  /// algorithm again.
  void setTuningRound(std::optional<int> round) { tuningRound = round; }
  /// Makes `candidate` of the key's tuning candidates its algorithm.
  Status choose(const std::string &key, int candidate);

  /// Reads the choices in the tuning file `path` (JSON: identity and
  /// algorithms per key) when it exists and was made on this GPU with this
  /// cuBLASLt: true then. False when there is none yet or it was made
  /// elsewhere: saveTuning writes `path` then. Fails on a file that is not a
  /// tuning file.
  Result<bool> useTuningFile(const std::string &path);
  /// Writes every key's chosen algorithm to the tuning file (atomically),
  /// if there is one.
  Status saveTuning();

private:
  BlasLt() = default;
  cublasStatus_t matmul(const Gemm &gemm, cublasLtMatmulDesc_t operation,
                        cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                        cublasLtMatrixLayout_t d,
                        const cublasLtMatmulAlgo_t &algorithm);

  std::shared_ptr<Device> device;
  const BlasLtApi *api = nullptr;
  /// The chosen algorithm per GEMM key.
  std::map<std::string, cublasLtMatmulAlgo_t> algorithms;
  /// The heuristic's usable candidates per GEMM key, in its order; only
  /// for keys run in a tuning round.
  std::map<std::string, std::vector<cublasLtMatmulAlgo_t>> candidates;
  std::optional<int> tuningRound;
  LastRun last;
  cublasLtHandle_t handle = nullptr;
  CUdeviceptr workspace = 0;
  size_t workspaceBytes = 0;
  std::string tuningPath, tuningIdentity;
};

} // namespace llamac::cuda

#endif // LLAMAC_RUNTIME_CUDA_H
