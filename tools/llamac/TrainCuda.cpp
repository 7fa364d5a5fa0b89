//===- TrainCuda.cpp - `llamac train --device cuda` -----------------------===//
//
// Compiles the step into a package (or finds it in the package cache) and
// hands it to the same loop `llamac-run` runs (runtime/GpuTrainer), so the
// GPU path is one piece of code with or without a compiler on the machine.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"
#include "StepPackage.h"

#include "llamac/Runtime/GpuTrainer.h"

#include "llvm/Support/raw_ostream.h"

using namespace llamac;

int llamac::runTrainOnCuda(const TrainOptions &options) {
  // What the GPU loop does not do yet, refused rather than ignored.
  if (options.gradAccum != 1)
    return reportError("--grad-accum: not supported with --device cuda yet");
  if (!options.resumePath.empty() || options.saveEvery != 0)
    return reportError("--resume/--save-every: not supported with --device "
                       "cuda yet (use --save for the final checkpoint)");
  if (options.shuffle || options.padToLongest)
    return reportError("--shuffle/--pad-to-longest: not supported with "
                       "--device cuda yet");
  if (options.dataPath.empty())
    return reportError("--data: --device cuda needs a JSON Lines file of "
                       "token rows");

  llvm::Expected<LlamaConfig> config = loadModelConfig(options.configPath);
  if (!config)
    return reportError(llvm::toString(config.takeError()));
  llvm::Expected<std::string> package =
      cachedStepPackage(*config, options.shape, fusionPipeline(options),
                        defaultPackageCache(), options.target);
  if (!package)
    return reportError(llvm::toString(package.takeError()));

  GpuTrainOptions gpu;
  gpu.packageDir = *package;
  gpu.weightsPath = options.weightsPath;
  gpu.dataPath = options.dataPath;
  gpu.savePath = options.savePath;
  gpu.dumpGradsPath = options.dumpGradsPath;
  gpu.metricsPath = options.metricsPath;
  gpu.steps = options.steps;
  gpu.schedule.kind = options.lrSchedule;
  gpu.schedule.peak = options.lr;
  gpu.schedule.warmupSteps = options.warmupSteps;
  gpu.schedule.totalSteps = options.steps;
  gpu.weightDecay = options.weightDecay;
  gpu.beta1 = options.beta1;
  gpu.beta2 = options.beta2;
  gpu.eps = options.eps;
  gpu.maxGradNorm = options.maxGradNorm;
  gpu.seed = options.seed;
  return trainOnGpu(gpu);
}
