//===- Pipeline.h - The pass pipeline of the train step ---------*- C++ -*-===//

#ifndef LLAMAC_PIPELINE_PIPELINE_H
#define LLAMAC_PIPELINE_PIPELINE_H

#include "mlir/Pass/PassManager.h"

namespace mlir::llama {

/// Which stages of the train step to build; each can be switched off to look
/// at the IR before it.
struct TrainStepPipelineOptions {
  bool autodiff = true;
  bool optimizer = true;
  /// The fusions, run on the forward function before autodiff (in the order
  /// gated-mlp, norm-linear, rope-attention); each can be switched off.
  bool fuseGatedMLP = true;
  bool fuseNormLinear = true;
  bool fuseRopeAttention = true;
};

/// Adds the passes that turn the forward function into the whole train step.
void buildTrainStepPipeline(OpPassManager &pm,
                            const TrainStepPipelineOptions &options = {});

/// Registers `--llama-train-step` for llamac-opt.
void registerTrainStepPipeline();

} // namespace mlir::llama

#endif // LLAMAC_PIPELINE_PIPELINE_H
