//===- VJPTest.cpp - Finite-difference checks of every op's VJP -----------===//
//
// For each differentiable op: a function @f(inputs) -> op(inputs), and a
// function @vjp(inputs, cotangent) that calls the op's buildVJP. Each operand
// cotangent must equal central differences of <cotangent, op(x)> in f64.
//
//===----------------------------------------------------------------------===//

#include "TestUtils.h"

#include "mlir/IR/Builders.h"

using namespace mlir;
using namespace llamac::reference;
using namespace llamac::reference::test;

namespace {

class VJPTest : public VJPTestBase {
protected:
  /// Ids drawn from [0, limit), then a few set to -100 (never all of them).
  Tensor labels(int64_t count, int64_t limit) {
    Tensor result = tokens(count, limit);
    for (int64_t t = 1; t < count; t += 3)
      result.data[t] = -100;
    return result;
  }
};

TEST_F(VJPTest, EmbeddingWithRepeatedIds) {
  Tensor ids{{8}, {1, 3, 1, 0, 5, 3, 3, 2}};
  checkVJP(R"mlir(
    func.func @f(%table: tensor<6x5xf64>, %ids: tensor<8xi32>) -> tensor<8x5xf64> {
      %0 = llama.embedding %table, %ids : (tensor<6x5xf64>, tensor<8xi32>) -> tensor<8x5xf64>
      return %0 : tensor<8x5xf64>
    })mlir",
           {random({6, 5}), ids});
}

TEST_F(VJPTest, RMSNorm) {
  checkVJP(R"mlir(
    func.func @f(%x: tensor<5x8xf64>, %w: tensor<8xf64>) -> tensor<5x8xf64> {
      %0 = llama.rms_norm %x, %w {eps = 1.0e-2 : f64} : (tensor<5x8xf64>, tensor<8xf64>) -> tensor<5x8xf64>
      return %0 : tensor<5x8xf64>
    })mlir",
           {random({5, 8}), random({8}, 0.5, 1.5)});
}

TEST_F(VJPTest, MatmulAllTransposes) {
  const int64_t m = 3, k = 4, n = 5;
  for (bool transposeLhs : {false, true}) {
    for (bool transposeRhs : {false, true}) {
      SCOPED_TRACE(std::string("transpose_lhs=") +
                   (transposeLhs ? "true" : "false") +
                   " transpose_rhs=" + (transposeRhs ? "true" : "false"));
      std::vector<int64_t> lhs = transposeLhs ? std::vector<int64_t>{k, m}
                                              : std::vector<int64_t>{m, k};
      std::vector<int64_t> rhs = transposeRhs ? std::vector<int64_t>{n, k}
                                              : std::vector<int64_t>{k, n};
      auto type = [](const std::vector<int64_t> &shape) {
        return "tensor<" + std::to_string(shape[0]) + "x" +
               std::to_string(shape[1]) + "xf64>";
      };
      std::string text =
          "func.func @f(%a: " + type(lhs) + ", %b: " + type(rhs) +
          ") -> tensor<3x5xf64> {\n  %0 = llama.matmul %a, %b {transpose_lhs "
          "= " +
          (transposeLhs ? "true" : "false") +
          ", transpose_rhs = " + (transposeRhs ? "true" : "false") + "} : (" +
          type(lhs) + ", " + type(rhs) +
          ") -> tensor<3x5xf64>\n  return %0 : tensor<3x5xf64>\n}";
      checkVJP(text, {random(lhs), random(rhs)});
    }
  }
}

TEST_F(VJPTest, RoPEDefault) {
  checkVJP(R"mlir(
    func.func @f(%x: tensor<8x16xf64>) -> tensor<8x16xf64> {
      %0 = llama.rope %x {num_heads = 2 : i64, head_dim = 8 : i64, seq_len = 4 : i64, theta = 10000.0 : f64} : (tensor<8x16xf64>) -> tensor<8x16xf64>
      return %0 : tensor<8x16xf64>
    })mlir",
           {random({8, 16})});
}

TEST_F(VJPTest, RoPELlama3) {
  checkVJP(R"mlir(
    func.func @f(%x: tensor<16x64xf64>) -> tensor<16x64xf64> {
      %0 = llama.rope %x {num_heads = 1 : i64, head_dim = 64 : i64, seq_len = 8 : i64, theta = 500000.0 : f64, rope_type = "llama3", factor = 8.0 : f64, low_freq_factor = 1.0 : f64, high_freq_factor = 4.0 : f64, original_max_position_embeddings = 64 : i64} : (tensor<16x64xf64>) -> tensor<16x64xf64>
      return %0 : tensor<16x64xf64>
    })mlir",
           {random({16, 64})});
}

TEST_F(VJPTest, RoPEInverse) {
  checkVJP(R"mlir(
    func.func @f(%x: tensor<6x12xf64>) -> tensor<6x12xf64> {
      %0 = llama.rope %x {num_heads = 3 : i64, head_dim = 4 : i64, seq_len = 3 : i64, theta = 100.0 : f64, inverse = true} : (tensor<6x12xf64>) -> tensor<6x12xf64>
      return %0 : tensor<6x12xf64>
    })mlir",
           {random({6, 12})});
}

TEST_F(VJPTest, RoPEPackedPositions) {
  // Two sequences of 4 rows holding data rows of 3, 1, 2 and 2 tokens.
  Tensor positions{{8}, {0, 1, 2, 0, 0, 1, 0, 1}};
  checkVJP(R"mlir(
    func.func @f(%x: tensor<8x16xf64>, %pos: tensor<8xi32>) -> tensor<8x16xf64> {
      %0 = llama.rope %x positions(%pos) {num_heads = 2 : i64, head_dim = 8 : i64, seq_len = 4 : i64, theta = 100.0 : f64} : (tensor<8x16xf64>, tensor<8xi32>) -> tensor<8x16xf64>
      return %0 : tensor<8x16xf64>
    })mlir",
           {random({8, 16}), positions});
}

/// Attention with `heads` query heads and `kvHeads` kv heads of dim 4 over
/// `rows` rows, in sequences of 3; with `packed`, it also takes positions.
std::string attentionText(int64_t heads, int64_t kvHeads, int64_t rows,
                          bool packed = false) {
  std::string q = "tensor<" + std::to_string(rows) + "x" +
                  std::to_string(heads * 4) + "xf64>";
  std::string kv = "tensor<" + std::to_string(rows) + "x" +
                   std::to_string(kvHeads * 4) + "xf64>";
  std::string pos = "tensor<" + std::to_string(rows) + "xi32>";
  return "func.func @f(%q: " + q + ", %k: " + kv + ", %v: " + kv +
         (packed ? ", %pos: " + pos : "") + ") -> " + q +
         " {\n  %0 = llama.attention %q, %k, %v " +
         (packed ? "positions(%pos) " : "") +
         "{num_heads = " + std::to_string(heads) +
         " : i64, num_kv_heads = " + std::to_string(kvHeads) +
         " : i64, head_dim = 4 : i64, seq_len = 3 : i64, scale = 0.7 : f64} "
         ": (" +
         q + ", " + kv + ", " + kv + (packed ? ", " + pos : "") + ") -> " + q +
         "\n  return %0 : " + q + "\n}";
}

TEST_F(VJPTest, AttentionMHA) {
  checkVJP(attentionText(2, 2, 6),
           {random({6, 8}), random({6, 8}), random({6, 8})});
}

TEST_F(VJPTest, AttentionGQA) {
  checkVJP(attentionText(4, 2, 9),
           {random({9, 16}), random({9, 8}), random({9, 8})});
}

TEST_F(VJPTest, AttentionGQAPacked) {
  // Sequences of 3 rows holding data rows of 2 + 1, 3, and 1 + 2 tokens.
  Tensor positions{{9}, {0, 1, 0, 0, 1, 2, 0, 0, 1}};
  checkVJP(attentionText(4, 2, 9, /*packed=*/true),
           {random({9, 16}), random({9, 8}), random({9, 8}), positions});
}

TEST_F(VJPTest, AttentionMQA) {
  checkVJP(attentionText(3, 1, 6),
           {random({6, 12}), random({6, 4}), random({6, 4})});
}

TEST_F(VJPTest, SwiGLU) {
  checkVJP(R"mlir(
    func.func @f(%gate: tensor<4x6xf64>, %up: tensor<4x6xf64>) -> tensor<4x6xf64> {
      %0 = llama.swiglu %gate, %up : (tensor<4x6xf64>, tensor<4x6xf64>) -> tensor<4x6xf64>
      return %0 : tensor<4x6xf64>
    })mlir",
           {random({4, 6}, -3, 3), random({4, 6})});
}

TEST_F(VJPTest, Add) {
  checkVJP(R"mlir(
    func.func @f(%a: tensor<3x4xf64>, %b: tensor<3x4xf64>) -> tensor<3x4xf64> {
      %0 = llama.add %a, %b : (tensor<3x4xf64>, tensor<3x4xf64>) -> tensor<3x4xf64>
      return %0 : tensor<3x4xf64>
    })mlir",
           {random({3, 4}), random({3, 4})});
}

TEST_F(VJPTest, CrossEntropyWithIgnoredLabels) {
  checkVJP(R"mlir(
    func.func @f(%logits: tensor<12x7xf64>, %labels: tensor<12xi32>) -> tensor<f64> {
      %0 = llama.cross_entropy %logits, %labels {seq_len = 4 : i64} : (tensor<12x7xf64>, tensor<12xi32>) -> tensor<f64>
      return %0 : tensor<f64>
    })mlir",
           {random({12, 7}, -2, 2), labels(12, 7)});
}

} // namespace
