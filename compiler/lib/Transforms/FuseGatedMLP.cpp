//===- FuseGatedMLP.cpp - gate/up projections + SwiGLU into one op --------===//
//
// `swiglu(x Wgᵀ, x Wuᵀ)` with Wg and Wu parameter arguments becomes
// `llama.gated_mlp %x, %w_gate_up`: one GEMM over the stacked weight
// `[Wg; Wu]` (a new parameter `…mlp.gate_up_proj.weight` whose
// llama.param_parts are the two Hugging Face tensors) with SwiGLU on its
// output. The old arguments are removed.
//
//===----------------------------------------------------------------------===//

#include "FusionUtils.h"

#include "llamac/Transforms/Passes.h"

namespace mlir::llama {
#define GEN_PASS_DEF_LLAMAFUSEGATEDMLP
#include "llamac/Transforms/Passes.h.inc"
} // namespace mlir::llama

using namespace mlir;
using namespace mlir::llama;

namespace {

struct LlamaFuseGatedMLPPass
    : public mlir::llama::impl::LlamaFuseGatedMLPBase<LlamaFuseGatedMLPPass> {
  void runOnOperation() override {
    func::FuncOp func = getOperation();
    if (failed(fusion::expectForwardFunction(func, getArgument())))
      return signalPassFailure();
    SmallVector<SwiGLUOp> candidates;
    func.walk([&](SwiGLUOp op) { candidates.push_back(op); });
    for (SwiGLUOp swiglu : candidates)
      fuse(func, swiglu);
  }

  /// Fuses `swiglu` with the projections that feed it, if they qualify.
  static void fuse(func::FuncOp func, SwiGLUOp swiglu) {
    MatmulOp gate = fusion::linearOverParam(swiglu.getGate());
    MatmulOp up = fusion::linearOverParam(swiglu.getUp());
    // Both operands are Linear layers of one input over parameters, read by
    // nothing but the SwiGLU (else their values would have to be kept).
    if (!gate || !up || gate == up || gate.getLhs() != up.getLhs() ||
        !gate.getResult().hasOneUse() || !up.getResult().hasOneUse())
      return;
    // Each weight is read by its projection alone: the argument goes away.
    auto gateWeight = cast<BlockArgument>(gate.getRhs());
    auto upWeight = cast<BlockArgument>(up.getRhs());
    if (!gateWeight.hasOneUse() || !upWeight.hasOneUse())
      return;

    BlockArgument weight =
        fusion::addConcatenatedParam(func, {gateWeight, upWeight});
    auto resultType = cast<RankedTensorType>(swiglu.getType());
    auto gateUpType = RankedTensorType::get(
        {resultType.getDimSize(0), 2 * resultType.getDimSize(1)},
        resultType.getElementType());
    OpBuilder builder(swiglu);
    auto fused = GatedMLPOp::create(
        builder, fusion::fusedLocation({gate, up, swiglu}), resultType,
        gateUpType, /*fp8_amaxes=*/TypeRange(), gate.getLhs(), weight,
        /*norm_weight=*/Value(), /*fp8_scales=*/ValueRange(), /*eps=*/nullptr,
        /*fp8_formats=*/nullptr, /*fp8_margin=*/nullptr);
    swiglu.getResult().replaceAllUsesWith(fused.getResult());
    swiglu.erase();
    gate.erase();
    up.erase();
    fusion::eraseArguments(func, {gateWeight, upWeight});
  }
};

} // namespace

std::unique_ptr<Pass> mlir::llama::createLlamaFuseGatedMLPPass() {
  return std::make_unique<LlamaFuseGatedMLPPass>();
}
