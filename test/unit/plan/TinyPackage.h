//===- TinyPackage.h - GPU packages of the tiny model for plan tests ------===//

#ifndef LLAMAC_TEST_UNIT_PLAN_TINYPACKAGE_H
#define LLAMAC_TEST_UNIT_PLAN_TINYPACKAGE_H

#include "llamac/Frontend/ModelBuilder.h"
#include "llamac/Pipeline/Pipeline.h"
#include "llamac/Plan/BuildPackage.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"

#include <gtest/gtest.h>

namespace llamac::test {

/// The step of the tiny model (intermediate size 176: SwiGLU kernels take
/// multiples of 8) at batch 2 x seq 32, bf16 storage, built by `pipeline`
/// (e.g. its FP8 options) as a GPU package, with tied embeddings when `tied`,
/// accumulating gradients when `accumulate`; or why it cannot be built.
inline llvm::Expected<package::Package> tryBuildTinyPackage(
    bool tied, bool accumulate,
    const mlir::llama::TrainStepPipelineOptions &pipeline = {}) {
  LlamaConfig config = tinyLlamaConfig();
  config.intermediateSize = 176;
  config.tieWordEmbeddings = tied;
  StepShape shape{2, 32, Precision::BF16};
  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module =
      buildForwardModule(context, config, shape);
  mlir::PassManager pm(&context);
  mlir::llama::buildTrainStepPipeline(pm, pipeline);
  EXPECT_TRUE(mlir::succeeded(pm.run(*module)));
  PackageOptions options;
  options.configJson = toHFConfigJson(config);
  options.batch = shape.batch;
  options.seq = shape.seq;
  options.accumulateGradients = accumulate;
  for (const ParamSpec &spec : parameterSpecs(config))
    options.hfShapes[spec.name] = spec.shape;
  return buildPackage(*module, options);
}

/// The bf16 step of tryBuildTinyPackage, a test failure when it cannot be
/// built.
inline package::Package buildTinyPackage(bool tied, bool accumulate) {
  llvm::Expected<package::Package> package =
      tryBuildTinyPackage(tied, accumulate);
  if (!package) {
    ADD_FAILURE() << llvm::toString(package.takeError());
    return {};
  }
  return std::move(*package);
}

/// The buffer an operand points into.
inline const package::Buffer &target(const package::Package &p,
                                     const package::Operand &operand) {
  return p.buffers[operand.buffer];
}

} // namespace llamac::test

#endif // LLAMAC_TEST_UNIT_PLAN_TINYPACKAGE_H
