//===- FuseRopeAttention.cpp - RoPE applied inside attention --------------===//
//
// `attention(rope(q), rope(k), v)`, where both rotations are read by the
// attention alone and agree with it and with each other (heads, head_dim,
// seq_len, theta and scaling, and the same positions operand or none),
// becomes `llama.rope_attention %q, %k, %v` (with those positions):
// the kernel rotates q and k as it loads them and the rotated tensors never
// reach memory; the backward returns the gradients of the unrotated q and k.
//
//===----------------------------------------------------------------------===//

#include "FusionUtils.h"

#include "llamac/Transforms/Passes.h"

namespace mlir::llama {
#define GEN_PASS_DEF_LLAMAFUSEROPEATTENTION
#include "llamac/Transforms/Passes.h.inc"
} // namespace mlir::llama

using namespace mlir;
using namespace mlir::llama;

namespace {

/// Both rotations use the same frequencies and positions.
bool sameRotation(RoPEOp a, RoPEOp b) {
  return a.getHeadDim() == b.getHeadDim() && a.getSeqLen() == b.getSeqLen() &&
         a.getPositions() == b.getPositions() &&
         a.getTheta().convertToDouble() == b.getTheta().convertToDouble() &&
         a.getRopeType() == b.getRopeType() &&
         a.getFactor().convertToDouble() == b.getFactor().convertToDouble() &&
         a.getLowFreqFactor().convertToDouble() ==
             b.getLowFreqFactor().convertToDouble() &&
         a.getHighFreqFactor().convertToDouble() ==
             b.getHighFreqFactor().convertToDouble() &&
         a.getOriginalMaxPositionEmbeddings() ==
             b.getOriginalMaxPositionEmbeddings();
}

struct LlamaFuseRopeAttentionPass
    : public mlir::llama::impl::LlamaFuseRopeAttentionBase<
          LlamaFuseRopeAttentionPass> {
  void runOnOperation() override {
    func::FuncOp func = getOperation();
    if (failed(fusion::expectForwardFunction(func, getArgument())))
      return signalPassFailure();
    SmallVector<AttentionOp> candidates;
    func.walk([&](AttentionOp op) { candidates.push_back(op); });
    for (AttentionOp attention : candidates)
      fuse(attention);
  }

  static void fuse(AttentionOp attention) {
    auto query = attention.getQuery().getDefiningOp<RoPEOp>();
    auto key = attention.getKey().getDefiningOp<RoPEOp>();
    if (!query || !key || query == key || query.getInverse() ||
        key.getInverse() || !query.getResult().hasOneUse() ||
        !key.getResult().hasOneUse() || !sameRotation(query, key) ||
        query.getNumHeads() != attention.getNumHeads() ||
        key.getNumHeads() != attention.getNumKvHeads() ||
        query.getHeadDim() != attention.getHeadDim() ||
        query.getSeqLen() != attention.getSeqLen() ||
        query.getPositions() != attention.getPositions())
      return;
    OpBuilder builder(attention);
    auto fused = RopeAttentionOp::create(
        builder, fusion::fusedLocation({query, key, attention}),
        attention.getType(), query.getInput(), key.getInput(),
        attention.getValue(), attention.getPositions(), attention.getNumHeads(),
        attention.getNumKvHeads(), attention.getHeadDim(),
        attention.getSeqLen(), attention.getScale(), query.getTheta(),
        query.getRopeType(), query.getFactor(), query.getLowFreqFactor(),
        query.getHighFreqFactor(), query.getOriginalMaxPositionEmbeddings());
    attention.getResult().replaceAllUsesWith(fused.getResult());
    attention.erase();
    query.erase();
    key.erase();
  }
};

} // namespace

std::unique_ptr<Pass> mlir::llama::createLlamaFuseRopeAttentionPass() {
  return std::make_unique<LlamaFuseRopeAttentionPass>();
}
