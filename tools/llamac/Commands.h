//===- Commands.h - The llamac subcommands ----------------------*- C++ -*-===//

#ifndef LLAMAC_TOOLS_COMMANDS_H
#define LLAMAC_TOOLS_COMMANDS_H

#include "StepPackage.h"
#include "llamac/Frontend/ModelBuilder.h"
#include "llamac/Pipeline/Pipeline.h"
#include "llamac/Runtime/GpuTrainer.h"
#include "llamac/Runtime/Schedule.h"

#include "llvm/ADT/Twine.h"

#include <string>

namespace llamac {

/// Exit code of every rejected input (config, checkpoint, data, flags).
constexpr int kBadInputExit = 2;

/// Prints `llamac: error: <message>` on one line and returns kBadInputExit.
int reportError(const llvm::Twine &message);

/// The model to build: a config.json (file or model directory), or the
/// built-in tiny model when the path is empty.
llvm::Expected<LlamaConfig> loadModelConfig(const std::string &configPath);

/// `--precision fp8` (weights and activations stored bf16, every linear
/// layer's GEMM but lm_head with FP8 operands) and the --fp8-* flags.
struct FP8Options {
  bool enabled = false;
  std::string scaling = "delayed"; // or "current"
  int64_t margin = 0, amaxHistory = 1024;
  std::string amaxComputeAlgo = "max"; // or "most_recent"
  bool lmHead = false;                 // --fp8-lm-head
};

struct CompileOptions {
  std::string configPath;
  StepShape shape;
  std::string emit = "mlir";
  bool autodiff = true;
  bool optimizer = true;
  // The fusions (--no-fuse-gated-mlp, --no-fuse-norm-linear,
  // --no-fuse-rope-attention switch them off).
  bool fuseGatedMLP = true, fuseNormLinear = true, fuseRopeAttention = true;
  FP8Options fp8;
  GpuPackageOptions target;
  /// --emit package: the GPU memory the step must fit (GiB).
  double gpuMemoryGiB = 80;
  /// --emit package: a package that sums gradients over micro-batches, for
  /// `llamac-run --grad-accum N`.
  bool accumulateGradients = false;
  std::string outputPath = "-";
};

struct TrainOptions {
  std::string configPath, weightsPath, dataPath;
  /// For text rows: tokenizer.json or its directory; empty = the --config
  /// directory's tokenizer, if it has one.
  std::string tokenizerPath;
  std::string savePath, dumpGradsPath, metricsPath;
  StepShape shape;
  GpuPackageOptions target;
  int64_t steps = 10;
  double lr = 1.41e-5, weightDecay = 0.01, beta1 = 0.9, beta2 = 0.999,
         eps = 1e-8;
  std::string device = "cpu";
  uint64_t seed = 0;
  // The fusions, as CompileOptions (the train step's pipeline options).
  bool fuseGatedMLP = true, fuseNormLinear = true, fuseRopeAttention = true;
  FP8Options fp8;
  /// Delayed scaling from a fresh state: forward-and-backward passes over
  /// step 1's batch that only fill the amax histories, so that step 1's
  /// casts are scaled from its own tensors' amaxes rather than 1.
  int64_t fp8CalibrationPasses = 0;

  // Optimizer step: micro-batches per step, clipping, schedule.
  int64_t gradAccum = 1;
  double maxGradNorm = 1.0;
  LRScheduleKind lrSchedule = LRScheduleKind::Linear;
  int64_t warmupSteps = 0;

  // Checkpoints (in savePath) and resuming.
  int64_t saveEvery = 0, keep = 0;
  std::string resumePath;
  bool saveOnInterrupt = true;

  // Data order and padding.
  bool shuffle = false, padToLongest = false;
};

struct ReportOptions {
  std::string metricsPath, outputPath, title;
};

struct TokenizeOptions {
  std::string tokenizerPath, inputPath;
  bool addSpecialTokens = false;
  std::string outputPath = "-";
};

/// The pass pipeline a command's --no-fuse-* flags ask for.
template <typename Options>
mlir::llama::TrainStepPipelineOptions fusionPipeline(const Options &options) {
  mlir::llama::TrainStepPipelineOptions pipeline;
  pipeline.fuseGatedMLP = options.fuseGatedMLP;
  pipeline.fuseNormLinear = options.fuseNormLinear;
  pipeline.fuseRopeAttention = options.fuseRopeAttention;
  pipeline.fp8 = options.fp8.enabled;
  pipeline.fp8Scaling = options.fp8.scaling;
  pipeline.fp8Margin = options.fp8.margin;
  pipeline.fp8AmaxHistory = options.fp8.amaxHistory;
  pipeline.fp8AmaxComputeAlgo = options.fp8.amaxComputeAlgo;
  pipeline.fp8LmHead = options.fp8.lmHead;
  return pipeline;
}

int runCompile(const CompileOptions &options);
int runTrain(const TrainOptions &options);
/// `llamac train --device cuda`: the step as a GPU package, run by the
/// runtime's loop.
int runTrainOnCuda(const TrainOptions &options);
/// The runtime loop's options for a `llamac train` run (all but the
/// package): what the GPU loop runs with, and what the CPU loop describes
/// its run and ends its steps with (llamac/Runtime/TrainLoop.h).
GpuTrainOptions runtimeOptions(const TrainOptions &options);
int runReport(const ReportOptions &options);
int runTokenize(const TokenizeOptions &options);

} // namespace llamac

#endif // LLAMAC_TOOLS_COMMANDS_H
