//===- Pipeline.cpp - The pass pipeline of the train step -----------------===//

#include "llamac/Pipeline/Pipeline.h"

#include "llamac/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/PassRegistry.h"

using namespace mlir;

void mlir::llama::buildTrainStepPipeline(
    OpPassManager &pm, const TrainStepPipelineOptions &options) {
  OpPassManager &funcPm = pm.nest<func::FuncOp>();
  // Fusions first, on the forward function: each fused op's VJP then emits
  // the fused backward. Gated-MLP before norm-linear, which moves the
  // post-attention norm into the gated_mlp.
  if (options.fuseGatedMLP)
    funcPm.addPass(createLlamaFuseGatedMLPPass());
  if (options.fuseNormLinear)
    funcPm.addPass(createLlamaFuseNormLinearPass());
  if (options.fuseRopeAttention)
    funcPm.addPass(createLlamaFuseRopeAttentionPass());
  if (options.autodiff)
    funcPm.addPass(createLlamaAutodiffPass());
  // FP8 on the differentiated function: the backward GEMMs exist by now
  // (without autodiff, e.g. the forward-only stage of the fusion report,
  // there is nothing to quantize the step's way).
  if (options.fp8 && options.autodiff) {
    LlamaInsertFP8Options fp8;
    fp8.scaling = options.fp8Scaling;
    fp8.margin = options.fp8Margin;
    fp8.amaxHistory = options.fp8AmaxHistory;
    fp8.amaxComputeAlgo = options.fp8AmaxComputeAlgo;
    fp8.lmHead = options.fp8LmHead;
    funcPm.addPass(createLlamaInsertFP8Pass(fp8));
  }
  // llama-adamw works on the module: it adds @optimizer_step beside the
  // differentiated function, so it runs after every function pass above.
  if (options.autodiff && options.optimizer)
    pm.addPass(createLlamaAdamWPass());
}

void mlir::llama::registerTrainStepPipeline() {
  PassPipelineRegistration<>(
      "llama-train-step",
      "Builds the whole train step (fusions, autodiff, then AdamW) from "
      "the forward",
      [](OpPassManager &pm) { buildTrainStepPipeline(pm); });
}
