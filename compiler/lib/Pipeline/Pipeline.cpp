//===- Pipeline.cpp - The pass pipeline of the train step -----------------===//

#include "llamac/Pipeline/Pipeline.h"

#include "llamac/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/PassRegistry.h"

using namespace mlir;

void mlir::llama::buildTrainStepPipeline(
    OpPassManager &pm, const TrainStepPipelineOptions &options) {
  OpPassManager &funcPm = pm.nest<func::FuncOp>();
  if (options.autodiff)
    funcPm.addPass(createLlamaAutodiffPass());
  if (options.autodiff && options.optimizer)
    funcPm.addPass(createLlamaAdamWPass());
}

void mlir::llama::registerTrainStepPipeline() {
  PassPipelineRegistration<>(
      "llama-train-step",
      "Builds the whole train step (autodiff, then AdamW) from the forward",
      [](OpPassManager &pm) { buildTrainStepPipeline(pm); });
}
