//===- Pipeline.h - The pass pipeline of the train step ---------*- C++ -*-===//

#ifndef LLAMAC_PIPELINE_PIPELINE_H
#define LLAMAC_PIPELINE_PIPELINE_H

#include "mlir/Pass/PassManager.h"

#include <cstdint>
#include <string>

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
  /// `--precision fp8`: llama-insert-fp8 after autodiff (FP8 operands for
  /// every linear layer's GEMMs but lm_head, fused ones included).
  bool fp8 = false;
  /// The pass's options (Transformer Engine's DelayedScaling defaults).
  std::string fp8Scaling = "delayed";
  int64_t fp8Margin = 0;
  int64_t fp8AmaxHistory = 1024;
  std::string fp8AmaxComputeAlgo = "max";
  /// `--fp8-lm-head`: the lm_head GEMMs in FP8 too.
  bool fp8LmHead = false;
};

/// Adds the passes that turn the forward function into the whole train step.
void buildTrainStepPipeline(OpPassManager &pm,
                            const TrainStepPipelineOptions &options = {});

/// Registers `--llama-train-step` for llamac-opt.
void registerTrainStepPipeline();

} // namespace mlir::llama

#endif // LLAMAC_PIPELINE_PIPELINE_H
