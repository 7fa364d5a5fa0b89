//===- FusedVJPTest.cpp - Finite-difference checks of the fused ops' VJPs -===//
//
// For each fused op: a function @f(inputs) returning the op's differentiable
// results, and a function @vjp(inputs, cotangents) that calls the op's
// buildVJP, which emits the fused backward op. Each operand cotangent must
// equal central differences of sum_i <cotangent_i, result_i> in f64.
//
//===----------------------------------------------------------------------===//

#include "TestUtils.h"

#include "mlir/IR/Builders.h"

using namespace mlir;
using namespace llamac::reference;
using namespace llamac::reference::test;

namespace {

using FusedVJPTest = VJPTestBase;

TEST_F(FusedVJPTest, NormMatmulQKV) {
  checkVJP(R"mlir(
    func.func @f(%x: tensor<6x8xf64>, %ln: tensor<8xf64>, %w: tensor<16x8xf64>)
        -> (tensor<6x8xf64>, tensor<6x4xf64>, tensor<6x4xf64>) {
      %q, %k, %v = llama.norm_matmul %x, %ln, %w {eps = 1.0e-2 : f64} : (tensor<6x8xf64>, tensor<8xf64>, tensor<16x8xf64>) -> (tensor<6x8xf64>, tensor<6x4xf64>, tensor<6x4xf64>)
      return %q, %k, %v : tensor<6x8xf64>, tensor<6x4xf64>, tensor<6x4xf64>
    })mlir",
           {random({6, 8}), random({8}, 0.5, 1.5), random({16, 8})});
}

TEST_F(FusedVJPTest, NormMatmulSingleProjection) {
  checkVJP(R"mlir(
    func.func @f(%x: tensor<5x8xf64>, %ln: tensor<8xf64>, %w: tensor<12x8xf64>) -> tensor<5x12xf64> {
      %y = llama.norm_matmul %x, %ln, %w {eps = 1.0e-5 : f64} : (tensor<5x8xf64>, tensor<8xf64>, tensor<12x8xf64>) -> tensor<5x12xf64>
      return %y : tensor<5x12xf64>
    })mlir",
           {random({5, 8}), random({8}, 0.5, 1.5), random({12, 8})});
}

// A result that does not reach the loss gets a zero cotangent.
TEST_F(FusedVJPTest, NormMatmulUnusedResult) {
  checkVJP(R"mlir(
    func.func @f(%x: tensor<4x6xf64>, %ln: tensor<6xf64>, %w: tensor<9x6xf64>)
        -> (tensor<4x3xf64>, tensor<4x2xf64>) {
      %a, %b, %c = llama.norm_matmul %x, %ln, %w {eps = 1.0e-3 : f64} : (tensor<4x6xf64>, tensor<6xf64>, tensor<9x6xf64>) -> (tensor<4x3xf64>, tensor<4x4xf64>, tensor<4x2xf64>)
      return %a, %c : tensor<4x3xf64>, tensor<4x2xf64>
    })mlir",
           {random({4, 6}), random({6}, 0.5, 1.5), random({9, 6})});
}

TEST_F(FusedVJPTest, GatedMLP) {
  checkVJP(R"mlir(
    func.func @f(%x: tensor<4x6xf64>, %w: tensor<10x6xf64>) -> tensor<4x5xf64> {
      %s, %gu = llama.gated_mlp %x, %w : (tensor<4x6xf64>, tensor<10x6xf64>) -> (tensor<4x5xf64>, tensor<4x10xf64>)
      return %s : tensor<4x5xf64>
    })mlir",
           {random({4, 6}), random({10, 6}, -1.5, 1.5)});
}

TEST_F(FusedVJPTest, GatedMLPWithNorm) {
  checkVJP(R"mlir(
    func.func @f(%x: tensor<4x6xf64>, %w: tensor<10x6xf64>, %ln: tensor<6xf64>) -> tensor<4x5xf64> {
      %s, %gu = llama.gated_mlp %x, %w norm(%ln) {eps = 1.0e-2 : f64} : (tensor<4x6xf64>, tensor<10x6xf64>, tensor<6xf64>) -> (tensor<4x5xf64>, tensor<4x10xf64>)
      return %s : tensor<4x5xf64>
    })mlir",
           {random({4, 6}), random({10, 6}, -1.5, 1.5), random({6}, 0.5, 1.5)});
}

/// rope_attention with `heads` query heads and `kvHeads` kv heads of dim 4
/// over 6 rows in sequences of 3, with extra rope attributes; with `packed`,
/// it also takes positions.
std::string ropeAttentionText(int64_t heads, int64_t kvHeads,
                              const std::string &ropeAttrs,
                              bool packed = false) {
  std::string q = "tensor<6x" + std::to_string(heads * 4) + "xf64>";
  std::string kv = "tensor<6x" + std::to_string(kvHeads * 4) + "xf64>";
  return "func.func @f(%q: " + q + ", %k: " + kv + ", %v: " + kv +
         (packed ? ", %pos: tensor<6xi32>" : "") + ") -> " + q +
         " {\n  %0 = llama.rope_attention %q, %k, %v " +
         (packed ? "positions(%pos) " : "") +
         "{num_heads = " + std::to_string(heads) +
         " : i64, num_kv_heads = " + std::to_string(kvHeads) +
         " : i64, head_dim = 4 : i64, seq_len = 3 : i64, scale = 0.7 : f64, " +
         ropeAttrs + "} : (" + q + ", " + kv + ", " + kv +
         (packed ? ", tensor<6xi32>" : "") + ") -> " + q +
         "\n  return %0 : " + q + "\n}";
}

TEST_F(FusedVJPTest, RopeAttentionMHADefault) {
  checkVJP(ropeAttentionText(2, 2, "theta = 10.0 : f64"),
           {random({6, 8}), random({6, 8}), random({6, 8})});
}

TEST_F(FusedVJPTest, RopeAttentionGQALlama3) {
  // A short original context puts the frequencies in all three bands.
  checkVJP(ropeAttentionText(4, 2,
                             "theta = 50.0 : f64, rope_type = \"llama3\", "
                             "factor = 8.0 : f64, "
                             "original_max_position_embeddings = 16 : i64"),
           {random({6, 16}), random({6, 8}), random({6, 8})});
}

TEST_F(FusedVJPTest, RopeAttentionGQAPacked) {
  // Sequences of 3 rows holding data rows of 1 + 2 and 3 tokens.
  Tensor positions{{6}, {0, 0, 1, 0, 1, 2}};
  checkVJP(ropeAttentionText(4, 2, "theta = 10.0 : f64", /*packed=*/true),
           {random({6, 16}), random({6, 8}), random({6, 8}), positions});
}

TEST_F(FusedVJPTest, RopeAttentionMQA) {
  checkVJP(ropeAttentionText(3, 1, "theta = 10.0 : f64"),
           {random({6, 12}), random({6, 4}), random({6, 4})});
}

} // namespace
