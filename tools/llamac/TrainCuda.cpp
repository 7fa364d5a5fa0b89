//===- TrainCuda.cpp - `llamac train --device cuda` -----------------------===//
//
// Compiles the step into a package (or finds it in the package cache) and
// hands it to the same loop `llamac-run` runs (runtime/GpuTrainer), so the
// GPU path is one piece of code with or without a compiler on the machine.
// More than one micro-batch per step takes a package that adds gradients
// over micro-batches; a single one keeps the package that overwrites them.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"
#include "StepPackage.h"

#include "llamac/Runtime/GpuTrainer.h"
#include "llamac/Version.h"

using namespace llamac;

GpuTrainOptions llamac::runtimeOptions(const TrainOptions &options) {
  GpuTrainOptions gpu;
  gpu.weightsPath = options.weightsPath;
  gpu.dataPath = options.dataPath;
  gpu.tokenizerPath = options.tokenizerPath;
  gpu.modelDir = options.configPath;
  gpu.savePath = options.savePath;
  gpu.dumpGradsPath = options.dumpGradsPath;
  gpu.metricsPath = options.metricsPath;
  gpu.resumePath = options.resumePath;
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
  gpu.gradAccum = options.gradAccum;
  gpu.fp8CalibrationPasses = options.fp8CalibrationPasses;
  gpu.saveEvery = options.saveEvery;
  gpu.keep = options.keep;
  gpu.saveOnInterrupt = options.saveOnInterrupt;
  gpu.shuffle = options.shuffle;
  gpu.padToLongest = options.padToLongest;
  gpu.llamacVersion = LLAMAC_VERSION_STRING;
  return gpu;
}

int llamac::runTrainOnCuda(const TrainOptions &options) {
  llvm::Expected<LlamaConfig> config = loadModelConfig(options.configPath);
  if (!config)
    return reportError(llvm::toString(config.takeError()));
  GpuPackageOptions target = options.target;
  target.accumulateGradients = options.gradAccum > 1;
  llvm::Expected<std::string> package =
      cachedStepPackage(*config, options.shape, fusionPipeline(options),
                        defaultPackageCache(), target);
  if (!package)
    return reportError(llvm::toString(package.takeError()));

  GpuTrainOptions gpu = runtimeOptions(options);
  gpu.packageDir = *package;
  return trainOnGpu(gpu);
}
