//===- TrainLoop.cpp - What both training loops do around their steps ----===//

#include "llamac/Runtime/TrainLoop.h"

#include "llamac/Runtime/Interrupt.h"

#include "IOUtil.h"

#include <cstdio>

namespace llamac {

namespace {

void print(const std::string &text) {
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
}

} // namespace

TrainerState describeRun(const GpuTrainOptions &options,
                         const std::vector<TokenRow> &rows) {
  TrainerState run;
  run.maxSteps = options.steps;
  run.dataPath = options.dataPath.empty() ? "<built-in>" : options.dataPath;
  run.dataRows = int64_t(rows.size());
  run.dataFingerprint = fingerprintRows(rows);
  run.shuffle = options.shuffle;
  run.seed = options.seed;
  run.lrSchedule = lrScheduleName(options.schedule.kind);
  run.learningRate = options.schedule.peak;
  run.warmupSteps = options.schedule.warmupSteps;
  run.beta1 = options.beta1;
  run.beta2 = options.beta2;
  run.eps = options.eps;
  run.weightDecay = options.weightDecay;
  run.maxGradNorm = options.maxGradNorm;
  run.gradAccum = options.gradAccum;
  run.padToLongest = options.padToLongest;
  run.llamacVersion = options.llamacVersion;
  return run;
}

StepFinisher::StepFinisher(const GpuTrainOptions &options, TrainerState &run,
                           const RowSampler &sampler, ContentsSource contents,
                           std::optional<MetricsWriter> metrics)
    : savePath(options.savePath), steps(options.steps),
      saveEvery(options.saveEvery), keep(options.keep),
      saveOnInterrupt(options.saveOnInterrupt), run(&run), sampler(&sampler),
      contents(std::move(contents)), metrics(std::move(metrics)),
      progress(run.globalStep, options.steps, isTerminal(1),
               isTerminal(1) ? terminalColumns(1) : 80) {}

Result<StepFinisher> StepFinisher::start(const GpuTrainOptions &options,
                                         TrainerState &run,
                                         const RowSampler &sampler,
                                         ContentsSource contents) {
  std::optional<MetricsWriter> metrics;
  if (!options.metricsPath.empty()) {
    Result<MetricsWriter> opened =
        MetricsWriter::open(options.metricsPath, run.globalStep);
    if (!opened)
      return opened.error();
    metrics = std::move(*opened);
  }
  installStopHandlers();
  return StepFinisher(options, run, sampler, std::move(contents),
                      std::move(metrics));
}

Result<std::string> StepFinisher::save() {
  run->dataPosition = sampler->position();
  Result<CheckpointContents> tensors = contents();
  if (!tensors)
    return tensors.error();
  Result<std::string> path = writeTrainingCheckpoint(savePath, *run, *tensors);
  if (!path)
    return path;
  if (Status status = rotateCheckpoints(savePath, keep, *path); !status)
    return status.error();
  return path;
}

Result<int> StepFinisher::finishStep(const StepMetrics &step) {
  run->logHistory.push_back(
      {step.step, step.loss, step.lr, step.gradNorm, step.tokens});
  print(progress.step(step));
  if (metrics)
    if (Status status = metrics->write(step); !status)
      return status.error();
  bool last = run->globalStep == steps;
  if (saveEvery > 0 && (run->globalStep % saveEvery == 0 || last)) {
    Result<std::string> path = save();
    if (!path)
      return path.error();
    lastSaved = *path;
    lastSavedStep = run->globalStep;
  }

  // SIGINT or SIGTERM: stop after this step, with a checkpoint.
  int signal = stopSignal();
  if (!signal)
    return 0;
  finish();
  std::string what = io::format("interrupted by %s after step %lld/%lld",
                                stopSignalName(signal),
                                (long long)run->globalStep, (long long)steps);
  if (savePath.empty() || !saveOnInterrupt) {
    std::fprintf(stderr, "llamac: %s; no checkpoint written (%s)\n",
                 what.c_str(),
                 savePath.empty() ? "no --save" : "--no-save-on-interrupt");
    return 128 + signal;
  }
  if (lastSavedStep != run->globalStep) {
    Result<std::string> path = save();
    if (!path)
      return Error{what + "; the checkpoint failed: " + path.error().message};
    lastSaved = *path;
  }
  std::fprintf(stderr, "llamac: %s; saved %s (continue with --resume %s)\n",
               what.c_str(), lastSaved.c_str(), savePath.c_str());
  return 128 + signal;
}

void StepFinisher::finish() const { print(progress.finish()); }

} // namespace llamac
