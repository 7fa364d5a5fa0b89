//===- FuseNormLinear.cpp - RMSNorm + the projections that read it --------===//
//
// An rms_norm whose every user is a Linear layer over a parameter argument
// becomes one `llama.norm_matmul` with one result per projection, the
// results being column slices of one GEMM over the weights concatenated
// along dim 0 (q/k/v → `…self_attn.qkv_proj.weight`, llama.param_parts
// [q, k, v]). A single projection keeps its weight argument as it is (there
// is nothing to concatenate), so the final norm fuses into the lm_head, tied
// or not. An rms_norm whose only user is the input of a norm-less
// `llama.gated_mlp` moves into it (its `norm(...)` operand).
//
// The normalized activations then never exist in memory: the backward ops
// recompute them from the norm's input, which the residual stream keeps
// anyway.
//
//===----------------------------------------------------------------------===//

#include "FusionUtils.h"

#include "llamac/Transforms/Passes.h"

namespace mlir::llama {
#define GEN_PASS_DEF_LLAMAFUSENORMLINEAR
#include "llamac/Transforms/Passes.h.inc"
} // namespace mlir::llama

using namespace mlir;
using namespace mlir::llama;

namespace {

struct LlamaFuseNormLinearPass
    : public mlir::llama::impl::LlamaFuseNormLinearBase<
          LlamaFuseNormLinearPass> {
  void runOnOperation() override {
    func::FuncOp func = getOperation();
    if (failed(fusion::expectForwardFunction(func, getArgument())))
      return signalPassFailure();
    SmallVector<RMSNormOp> candidates;
    func.walk([&](RMSNormOp op) { candidates.push_back(op); });
    for (RMSNormOp norm : candidates)
      if (!fuseIntoGatedMLP(norm))
        fuseWithProjections(func, norm);
  }

  /// rms_norm → gated_mlp (without a norm): the norm moves into the MLP.
  static bool fuseIntoGatedMLP(RMSNormOp norm) {
    Value normed = norm.getResult();
    if (!normed.hasOneUse())
      return false;
    auto mlp = dyn_cast<GatedMLPOp>(*normed.getUsers().begin());
    if (!mlp || mlp.getInput() != normed || mlp.getNormWeight())
      return false;
    OpBuilder builder(mlp);
    auto fused = GatedMLPOp::create(
        builder, fusion::fusedLocation({norm, mlp}), mlp.getResult().getType(),
        mlp.getGateUp().getType(), /*fp8_amaxes=*/TypeRange(), norm.getInput(),
        mlp.getWeight(), norm.getWeight(), /*fp8_scales=*/ValueRange(),
        norm.getEpsAttr(), /*fp8_formats=*/nullptr, /*fp8_margin=*/nullptr);
    mlp->replaceAllUsesWith(fused->getResults());
    mlp.erase();
    norm.erase();
    return true;
  }

  /// rms_norm → Linear layers over parameters: one norm_matmul.
  static void fuseWithProjections(func::FuncOp func, RMSNormOp norm) {
    Value normed = norm.getResult();
    SmallVector<MatmulOp> projections;
    for (OpOperand &use : normed.getUses()) {
      auto matmul = dyn_cast<MatmulOp>(use.getOwner());
      MatmulOp projection =
          matmul ? fusion::linearOverParam(matmul.getResult()) : nullptr;
      // The normalized value must be the projection's input (operand 0);
      // any other kind of user (a residual add, ...) needs it in memory.
      if (!projection || use.getOperandNumber() != 0)
        return;
      projections.push_back(projection);
    }
    if (projections.empty())
      return;
    llvm::sort(projections,
               [](MatmulOp a, MatmulOp b) { return a->isBeforeInBlock(b); });

    // Several projections concatenate their weights, whose arguments are
    // removed: each must be read by its projection alone.
    SmallVector<BlockArgument> weights;
    Value weight = projections.front().getRhs();
    if (projections.size() > 1) {
      for (MatmulOp projection : projections) {
        auto arg = cast<BlockArgument>(projection.getRhs());
        if (!arg.hasOneUse())
          return;
        weights.push_back(arg);
      }
      weight = fusion::addConcatenatedParam(func, weights);
    }

    SmallVector<Operation *> replaced{norm};
    SmallVector<Type> types;
    for (MatmulOp projection : projections) {
      replaced.push_back(projection);
      types.push_back(projection.getType());
    }
    OpBuilder builder(norm);
    auto fused = NormMatmulOp::create(
        builder, fusion::fusedLocation(replaced), types,
        /*fp8_amaxes=*/TypeRange(), norm.getInput(), norm.getWeight(), weight,
        /*fp8_scales=*/ValueRange(), norm.getEpsAttr(), /*fp8_formats=*/nullptr,
        /*fp8_margin=*/nullptr);
    for (auto [projection, result] :
         llvm::zip_equal(projections, fused.getOutputs())) {
      projection.getResult().replaceAllUsesWith(result);
      projection.erase();
    }
    norm.erase();
    fusion::eraseArguments(func, weights);
  }
};

} // namespace

std::unique_ptr<Pass> mlir::llama::createLlamaFuseNormLinearPass() {
  return std::make_unique<LlamaFuseNormLinearPass>();
}
