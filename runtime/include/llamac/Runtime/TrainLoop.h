//===- TrainLoop.h - Around the steps of both training loops --*- C++ -*-===//
//
// The CPU loop (`llamac train`, tools/llamac/Train.cpp) and the GPU one
// (`llamac-run`, GpuTrainer.cpp) differ in how they run a step; what they
// record of the run and do after each optimizer step is this one piece:
//   - the trainer state a fresh run's checkpoints record (describeRun);
//   - after every step (StepFinisher): the progress line or bar, the metrics
//     line, the periodic checkpoint (and rotation), and on SIGINT/SIGTERM a
//     clean stop with a final checkpoint.
// Both loops take their settings as GpuTrainOptions: the CPU loop converts
// its own options (llamac::runtimeOptions in tools/llamac).
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_TRAINLOOP_H
#define LLAMAC_RUNTIME_TRAINLOOP_H

#include "llamac/Runtime/Checkpoint.h"
#include "llamac/Runtime/Data.h"
#include "llamac/Runtime/DataOrder.h"
#include "llamac/Runtime/GpuTrainer.h"
#include "llamac/Runtime/Progress.h"
#include "llamac/Runtime/Result.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace llamac {

/// The trainer state of a fresh run with these options and data. The step's
/// shape (batch, seq, precision, pack) is the caller's to fill in.
TrainerState describeRun(const GpuTrainOptions &options,
                         const std::vector<TokenRow> &rows);

/// Ends each optimizer step of a run: logs it, shows it, and writes the
/// checkpoints the options ask for.
class StepFinisher {
public:
  /// The tensors and config of the run as it stands.
  using ContentsSource = std::function<Result<CheckpointContents>()>;

  /// Opens the --metrics file of \p run (which may be resumed), installs the
  /// SIGINT/SIGTERM handlers and starts the progress display on stdout.
  /// Checkpoints record \p run with \p sampler's data position and the
  /// tensors of \p contents; both must outlive the finisher.
  static Result<StepFinisher> start(const GpuTrainOptions &options,
                                    TrainerState &run,
                                    const RowSampler &sampler,
                                    ContentsSource contents);

  /// After optimizer step \p step (run.globalStep is step.step): appends it
  /// to the log history, prints its progress, writes its metrics line and a
  /// checkpoint every --save-every steps and after the last one. On a stop
  /// signal, ends the display, writes a checkpoint unless disabled and says
  /// so on stderr. Returns 0 to go on, else the exit status to stop with
  /// (128 + the signal); an error is the caller's to report.
  Result<int> finishStep(const StepMetrics &step);

  /// Ends the progress display (after the last step).
  void finish() const;

private:
  StepFinisher(const GpuTrainOptions &options, TrainerState &run,
               const RowSampler &sampler, ContentsSource contents,
               std::optional<MetricsWriter> metrics);
  /// Writes the checkpoint of the run so far and rotates older ones.
  Result<std::string> save();

  std::string savePath;
  int64_t steps, saveEvery, keep;
  bool saveOnInterrupt;
  TrainerState *run;
  const RowSampler *sampler;
  ContentsSource contents;
  std::optional<MetricsWriter> metrics;
  ProgressFormatter progress;
  std::string lastSaved;
  int64_t lastSavedStep = -1;
};

} // namespace llamac

#endif // LLAMAC_RUNTIME_TRAINLOOP_H
