//===- InterpreterTest.cpp - Forward ops, rounding, AdamW and errors ------===//
//
// Each op's forward result against values worked out independently in the
// test, roundTo against hand-picked corner cases and APFloat, AdamW against a
// line-by-line transcription of torch's algorithm, and the driver's errors.
//
//===----------------------------------------------------------------------===//

#include "TestUtils.h"

#include "llvm/ADT/APFloat.h"

using namespace mlir;
using namespace llamac::reference;
using namespace llamac::reference::test;

namespace {

using InterpreterTest = ReferenceTest;

//===----------------------------------------------------------------------===//
// roundTo
//===----------------------------------------------------------------------===//

TEST_F(InterpreterTest, RoundToBF16TiesToEven) {
  Type bf16 = BFloat16Type::get(&context);
  // bf16 keeps 7 fraction bits: around 1 the spacing is 2^-7.
  EXPECT_EQ(roundTo(1 + 0x1p-8, bf16), 1.0);
  EXPECT_EQ(roundTo(1 + 3 * 0x1p-8, bf16), 1 + 0x1p-6);
  EXPECT_EQ(roundTo(-(1 + 0x1p-8), bf16), -1.0);
  // Just above the tie; rounding through f32 first would give 1.
  EXPECT_EQ(roundTo(1 + 0x1p-8 + 0x1p-30, bf16), 1 + 0x1p-7);
  EXPECT_EQ(roundTo(1 + 0x1p-9, bf16), 1.0);
  // Subnormals: the smallest is 2^-133; half of it ties to zero.
  EXPECT_EQ(roundTo(0x1p-133, bf16), 0x1p-133);
  EXPECT_EQ(roundTo(0x1p-134, bf16), 0.0);
  EXPECT_EQ(roundTo(0x1.8p-133, bf16), 0x1p-132);
}

TEST_F(InterpreterTest, RoundToBF16OverflowAndNaN) {
  Type bf16 = BFloat16Type::get(&context);
  const double max = 0x1.FEp127, inf = INFINITY;
  EXPECT_EQ(roundTo(max, bf16), max);
  EXPECT_EQ(roundTo(0x1.FEFFFFp127, bf16), max);
  // The tie between max and 2^128 rounds to the even 2^128: infinity.
  EXPECT_EQ(roundTo(0x1.FFp127, bf16), inf);
  EXPECT_EQ(roundTo(-1e39, bf16), -inf);
  EXPECT_EQ(roundTo(inf, bf16), inf);
  EXPECT_TRUE(std::isnan(roundTo(NAN, bf16)));
}

TEST_F(InterpreterTest, RoundToF16SubnormalsAndOverflow) {
  Type f16 = Float16Type::get(&context);
  // Subnormal quantum 2^-24.
  EXPECT_EQ(roundTo(0x1p-24, f16), 0x1p-24);
  EXPECT_EQ(roundTo(0x1p-25, f16), 0.0);
  EXPECT_EQ(roundTo(0x1.8p-25, f16), 0x1p-24);
  EXPECT_EQ(roundTo(3 * 0x1p-25, f16), 0x1p-23);
  EXPECT_EQ(roundTo(1023.4 * 0x1p-24, f16), 1023 * 0x1p-24);
  EXPECT_EQ(roundTo(-5.5 * 0x1p-24, f16), -6 * 0x1p-24);
  EXPECT_EQ(roundTo(0x1p-14 + 0x1p-25, f16), 0x1p-14);
  EXPECT_EQ(roundTo(65519.0, f16), 65504.0);
  EXPECT_EQ(roundTo(65520.0, f16), INFINITY);
  EXPECT_TRUE(std::isnan(roundTo(NAN, f16)));
}

TEST_F(InterpreterTest, RoundToMatchesAPFloat) {
  std::uniform_real_distribution<double> mantissa(-1, 1);
  std::uniform_int_distribution<int> exponent(-150, 132);
  std::pair<const char *, Type> types[] = {
      {"bf16", BFloat16Type::get(&context)},
      {"f16", Float16Type::get(&context)},
      {"f32", Float32Type::get(&context)}};
  for (auto [name, type] : types) {
    const llvm::fltSemantics &semantics =
        cast<FloatType>(type).getFloatSemantics();
    for (int i = 0; i < 20000; ++i) {
      double x = std::ldexp(mantissa(rng), exponent(rng));
      llvm::APFloat expected(x);
      bool losesInfo;
      expected.convert(semantics, llvm::APFloat::rmNearestTiesToEven,
                       &losesInfo);
      ASSERT_EQ(roundTo(x, type), expected.convertToDouble())
          << "x = " << x << " in " << name;
    }
  }
}

TEST_F(InterpreterTest, RoundToOtherTypes) {
  EXPECT_EQ(roundTo(0.1, Float64Type::get(&context)), 0.1);
  EXPECT_EQ(roundTo(0.1, Float32Type::get(&context)), double(0.1f));
  // E4M3: spacing 32 between 256 and 512.
  EXPECT_EQ(roundTo(300.0, Float8E4M3FNType::get(&context)), 288.0);
  EXPECT_EQ(roundTo(7.0, IntegerType::get(&context, 32)), 7.0);
}

/// rms_norm -> gate/up matmuls -> swiglu, in element type `type`.
std::string smallBlock(StringRef type) {
  std::string t = type.str();
  return "func.func @f(%x: tensor<6x16x" + t + ">, %w: tensor<16x" + t +
         ">, %wg: tensor<12x16x" + t + ">, %wu: tensor<12x16x" + t +
         ">) -> tensor<6x12x" + t +
         "> {\n"
         "  %n = llama.rms_norm %x, %w {eps = 1.0e-5 : f64} : (tensor<6x16x" +
         t + ">, tensor<16x" + t + ">) -> tensor<6x16x" + t +
         ">\n"
         "  %g = llama.matmul %n, %wg {transpose_rhs = true} : (tensor<6x16x" +
         t + ">, tensor<12x16x" + t + ">) -> tensor<6x12x" + t +
         ">\n"
         "  %u = llama.matmul %n, %wu {transpose_rhs = true} : (tensor<6x16x" +
         t + ">, tensor<12x16x" + t + ">) -> tensor<6x12x" + t +
         ">\n"
         "  %s = llama.swiglu %g, %u : (tensor<6x12x" +
         t + ">, tensor<6x12x" + t + ">) -> tensor<6x12x" + t +
         ">\n"
         "  return %s : tensor<6x12x" +
         t + ">\n}";
}

TEST_F(InterpreterTest, BF16DiffersFromF32ByBF16Rounding) {
  std::vector<Tensor> args = {random({6, 16}), random({16}, 0.5, 1.5),
                              random({12, 16}), random({12, 16})};
  Tensor f32 = run(parseFunc(smallBlock("f32")), args)[0];
  Tensor bf16 = run(parseFunc(smallBlock("bf16")), args)[0];
  double error = relativeError(bf16, f32);
  EXPECT_GT(error, 1e-4);
  EXPECT_LT(error, 1e-2);
  for (double x : bf16.data)
    EXPECT_EQ(x, roundTo(x, BFloat16Type::get(&context)));
}

TEST_F(InterpreterTest, BF16OpsRoundWhereTransformersDoes) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%x: tensor<1x2xbf16>, %w: tensor<2xbf16>, %g: tensor<1xbf16>, %u: tensor<1xbf16>, %r: tensor<2x2xbf16>) -> (tensor<1x2xbf16>, tensor<1xbf16>, tensor<2x2xbf16>) {
      %0 = llama.rms_norm %x, %w {eps = 1.0e-6 : f64} : (tensor<1x2xbf16>, tensor<2xbf16>) -> tensor<1x2xbf16>
      %1 = llama.swiglu %g, %u : (tensor<1xbf16>, tensor<1xbf16>) -> tensor<1xbf16>
      %2 = llama.rope %r {num_heads = 1 : i64, head_dim = 2 : i64, seq_len = 2 : i64, theta = 10000.0 : f64} : (tensor<2x2xbf16>) -> tensor<2x2xbf16>
      return %0, %1, %2 : tensor<1x2xbf16>, tensor<1xbf16>, tensor<2x2xbf16>
    })mlir");
  std::vector<Tensor> out =
      run(f, {Tensor{{1, 2}, {1, 2.5}}, Tensor{{2}, {3, 1}}, Tensor{{1}, {1.5}},
              Tensor{{1}, {3}}, Tensor{{2, 2}, {1, 3, 1, 3}}});
  // rms_norm: 1 / sqrt(3.625) = 0.52523 -> 134/256, times 3 = 1.5703125
  // (rounding 3 * 0.52523 once would give 1.578125); 2.5 * 0.52523 =
  // 1.31306 -> 1.3125.
  EXPECT_EQ(out[0].data, (std::vector<double>{1.5703125, 1.3125}));
  // swiglu: silu(1.5) = 1.22636 -> 157/128; times 3 = 3.6796875, a tie that
  // rounds to 3.6875 (rounding 3 * 1.22636 once would give 3.671875).
  EXPECT_EQ(out[1].data, (std::vector<double>{3.6875}));
  // rope at position 1 with f_0 = 1: cos 1 -> 0.5390625, sin 1 ->
  // 0.83984375; 1 * c - (3 * s = 2.51953 -> 2.515625) = -1.9765625 and
  // (3 * c = 1.6171875) + 1 * s = 2.45703 -> 2.453125 (the exact rotation
  // rounds to -1.984375 and 2.46875). Position 0 is the identity.
  EXPECT_EQ(out[2].data, (std::vector<double>{1, 3, -1.9765625, 2.453125}));
}

//===----------------------------------------------------------------------===//
// Forward ops
//===----------------------------------------------------------------------===//

TEST_F(InterpreterTest, RMSNormKnownVector) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%x: tensor<2x4xf64>, %w: tensor<4xf64>) -> tensor<2x4xf64> {
      %0 = llama.rms_norm %x, %w {eps = 1.0e-6 : f64} : (tensor<2x4xf64>, tensor<4xf64>) -> tensor<2x4xf64>
      return %0 : tensor<2x4xf64>
    })mlir");
  Tensor out = run(f, {Tensor{{2, 4}, {1, 2, 3, 4, -2, 0, 0, 2}},
                       Tensor{{4}, {1, 0.5, 2, -1}}})[0];
  // Mean squares 30/4 and 8/4.
  double r0 = 1 / std::sqrt(7.5 + 1e-6), r1 = 1 / std::sqrt(2 + 1e-6);
  std::vector<double> expected = {r0,      r0, 6 * r0, -4 * r0,
                                  -2 * r1, 0,  0,      -2 * r1};
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_NEAR(out.data[i], expected[i], 1e-15);
}

TEST_F(InterpreterTest, MatmulKnownProductAllTransposes) {
  // A = [[1, 2], [3, 4], [5, 6]], B = [[1, 0, 2], [-1, 3, 1]].
  Tensor a{{3, 2}, {1, 2, 3, 4, 5, 6}}, aT{{2, 3}, {1, 3, 5, 2, 4, 6}};
  Tensor b{{2, 3}, {1, 0, 2, -1, 3, 1}}, bT{{3, 2}, {1, -1, 0, 3, 2, 1}};
  std::vector<double> expected = {-1, 6, 4, -1, 12, 10, -1, 18, 16};
  for (bool transposeLhs : {false, true}) {
    for (bool transposeRhs : {false, true}) {
      std::string lhsType =
          transposeLhs ? "tensor<2x3xf64>" : "tensor<3x2xf64>";
      std::string rhsType =
          transposeRhs ? "tensor<3x2xf64>" : "tensor<2x3xf64>";
      func::FuncOp f = parseFunc(
          "func.func @f(%a: " + lhsType + ", %b: " + rhsType +
          ") -> tensor<3x3xf64> {\n  %0 = llama.matmul %a, %b {transpose_lhs "
          "= " +
          (transposeLhs ? "true" : "false") + ", transpose_rhs = " +
          (transposeRhs ? "true" : "false") + "} : (" + lhsType + ", " +
          rhsType + ") -> tensor<3x3xf64>\n  return %0 : tensor<3x3xf64>\n}");
      Tensor out = run(f, {transposeLhs ? aT : a, transposeRhs ? bT : b})[0];
      EXPECT_EQ(out.data, expected) << "transpose_lhs=" << transposeLhs
                                    << " transpose_rhs=" << transposeRhs;
    }
  }
}

TEST_F(InterpreterTest, MatmulBlocksMatchPlainLoops) {
  // Sizes that are not multiples of the interpreter's blocks.
  const int64_t m = 9, k = 7, n = 1100;
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%a: tensor<9x7xf64>, %b: tensor<1100x7xf64>) -> tensor<9x1100xf64> {
      %0 = llama.matmul %a, %b {transpose_rhs = true} : (tensor<9x7xf64>, tensor<1100x7xf64>) -> tensor<9x1100xf64>
      return %0 : tensor<9x1100xf64>
    })mlir");
  Tensor a = random({m, k}), b = random({n, k});
  Tensor out = run(f, {a, b})[0];
  Tensor expected = Tensor::zeros({m, n});
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p)
        expected.data[i * n + j] += a.data[i * k + p] * b.data[j * k + p];
  EXPECT_LE(relativeError(out, expected), 1e-14);
}

TEST_F(InterpreterTest, EmbeddingGathersAndGradScatterAdds) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%table: tensor<4x2xf64>, %ids: tensor<3xi32>, %grad: tensor<3x2xf64>) -> (tensor<3x2xf64>, tensor<4x2xf64>) {
      %0 = llama.embedding %table, %ids : (tensor<4x2xf64>, tensor<3xi32>) -> tensor<3x2xf64>
      %1 = llama.embedding_grad %grad, %ids : (tensor<3x2xf64>, tensor<3xi32>) -> tensor<4x2xf64>
      return %0, %1 : tensor<3x2xf64>, tensor<4x2xf64>
    })mlir");
  std::vector<Tensor> out =
      run(f, {Tensor{{4, 2}, {0, 1, 2, 3, 4, 5, 6, 7}}, Tensor{{3}, {2, 0, 2}},
              Tensor{{3, 2}, {1, 2, 3, 4, 5, 6}}});
  EXPECT_EQ(out[0].data, (std::vector<double>{4, 5, 0, 1, 4, 5}));
  EXPECT_EQ(out[1].data, (std::vector<double>{3, 4, 0, 0, 6, 8, 0, 0}));
}

TEST_F(InterpreterTest, RoPEIsARotationByPositionTimesFrequency) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%x: tensor<8x16xf64>) -> (tensor<8x16xf64>, tensor<8x16xf64>) {
      %0 = llama.rope %x {num_heads = 2 : i64, head_dim = 8 : i64, seq_len = 4 : i64, theta = 10000.0 : f64} : (tensor<8x16xf64>) -> tensor<8x16xf64>
      %1 = llama.rope %0 {num_heads = 2 : i64, head_dim = 8 : i64, seq_len = 4 : i64, theta = 10000.0 : f64, inverse = true} : (tensor<8x16xf64>) -> tensor<8x16xf64>
      return %0, %1 : tensor<8x16xf64>, tensor<8x16xf64>
    })mlir");
  Tensor x = random({8, 16});
  std::vector<Tensor> out = run(f, {x});
  const Tensor &rotated = out[0];
  for (int64_t t = 0; t < 8; ++t) {
    for (int64_t c = 0; c < 16; ++c) {
      int64_t index = t * 16 + c;
      // Position 0 (rows 0 and 4) is the identity.
      if (t % 4 == 0) {
        EXPECT_EQ(rotated.data[index], x.data[index]);
      }
      // Each (i, i + 4) pair of a head keeps its norm.
      if (c % 8 < 4) {
        double before = std::hypot(x.data[index], x.data[index + 4]);
        double after = std::hypot(rotated.data[index], rotated.data[index + 4]);
        EXPECT_NEAR(after, before, 1e-14);
      }
    }
  }
  EXPECT_LE(relativeError(out[1], x), 1e-14);

  // A unit vector e_i of head 1 at row 6 (position 2) turns into
  // (cos 2 f_i) e_i + (sin 2 f_i) e_{i+4}, f_i = 10000^(-2i / 8).
  for (int64_t i = 0; i < 4; ++i) {
    Tensor unit = Tensor::zeros({8, 16});
    unit.data[6 * 16 + 8 + i] = 1;
    Tensor turned = run(f, {unit})[0];
    double angle = 2 * std::pow(10000.0, -2.0 * double(i) / 8.0);
    EXPECT_NEAR(turned.data[6 * 16 + 8 + i], std::cos(angle), 1e-15);
    EXPECT_NEAR(turned.data[6 * 16 + 8 + i + 4], std::sin(angle), 1e-15);
    EXPECT_EQ(maxAbs(turned),
              std::max(std::fabs(std::cos(angle)), std::fabs(std::sin(angle))));
  }
}

TEST_F(InterpreterTest, Llama3FrequenciesFollowThePublishedFormula) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%x: tensor<8x64xf64>) -> tensor<8x64xf64> {
      %0 = llama.rope %x {num_heads = 1 : i64, head_dim = 64 : i64, seq_len = 8 : i64, theta = 500000.0 : f64, rope_type = "llama3", factor = 8.0 : f64, low_freq_factor = 1.0 : f64, high_freq_factor = 4.0 : f64, original_max_position_embeddings = 64 : i64} : (tensor<8x64xf64>) -> tensor<8x64xf64>
      return %0 : tensor<8x64xf64>
    })mlir");
  llama::RoPEOp rope;
  f.walk([&](llama::RoPEOp op) { rope = op; });
  llvm::SmallVector<double> frequencies = rope.getFrequencies();
  ASSERT_EQ(frequencies.size(), 32u);

  // Meta's apply_scaling (llama-models, Llama 3.1) for each base frequency.
  const double scaleFactor = 8, lowFreqFactor = 1, highFreqFactor = 4;
  const double oldContextLen = 64;
  const double lowFreqWavelen = oldContextLen / lowFreqFactor;
  const double highFreqWavelen = oldContextLen / highFreqFactor;
  int bands[3] = {0, 0, 0};
  std::vector<double> expected;
  for (int i = 0; i < 64; i += 2) {
    double freq = 1.0 / std::pow(500000.0, double(i) / 64.0);
    double wavelen = 2 * M_PI / freq;
    if (wavelen < highFreqWavelen) {
      expected.push_back(freq);
      ++bands[0];
    } else if (wavelen > lowFreqWavelen) {
      expected.push_back(freq / scaleFactor);
      ++bands[2];
    } else {
      double smooth = (oldContextLen / wavelen - lowFreqFactor) /
                      (highFreqFactor - lowFreqFactor);
      expected.push_back((1 - smooth) * freq / scaleFactor + smooth * freq);
      ++bands[1];
    }
  }
  EXPECT_GT(bands[0], 0);
  EXPECT_GT(bands[1], 0);
  EXPECT_GT(bands[2], 0);
  for (int i = 0; i < 32; ++i)
    EXPECT_NEAR(frequencies[i], expected[i], 1e-15 * expected[i]) << i;

  // The op rotates with them: e_i at position 5 turns by 5 f_i.
  for (int i = 0; i < 32; ++i) {
    Tensor unit = Tensor::zeros({8, 64});
    unit.data[5 * 64 + i] = 1;
    Tensor turned = run(f, {unit})[0];
    EXPECT_NEAR(turned.data[5 * 64 + i], std::cos(5 * expected[i]), 1e-14);
    EXPECT_NEAR(turned.data[5 * 64 + i + 32], std::sin(5 * expected[i]), 1e-14);
  }
}

TEST_F(InterpreterTest, AttentionWithSeqLenOneReturnsValue) {
  // GQA: 4 query heads read kv heads 0, 0, 1, 1.
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%q: tensor<5x12xf64>, %k: tensor<5x6xf64>, %v: tensor<5x6xf64>) -> tensor<5x12xf64> {
      %0 = llama.attention %q, %k, %v {num_heads = 4 : i64, num_kv_heads = 2 : i64, head_dim = 3 : i64, seq_len = 1 : i64, scale = 0.5 : f64} : (tensor<5x12xf64>, tensor<5x6xf64>, tensor<5x6xf64>) -> tensor<5x12xf64>
      return %0 : tensor<5x12xf64>
    })mlir");
  Tensor v = random({5, 6});
  Tensor out = run(f, {random({5, 12}), random({5, 6}), v})[0];
  for (int64_t t = 0; t < 5; ++t)
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t c = 0; c < 3; ++c)
        EXPECT_EQ(out.data[t * 12 + n * 3 + c], v.data[t * 6 + n / 2 * 3 + c]);
}

TEST_F(InterpreterTest, AttentionIsCausalWithinEachSequence) {
  // With q = 0 every score is 0, so row t averages the values of positions
  // 0..t of its own sequence.
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%q: tensor<6x8xf64>, %k: tensor<6x2xf64>, %v: tensor<6x2xf64>) -> tensor<6x8xf64> {
      %0 = llama.attention %q, %k, %v {num_heads = 4 : i64, num_kv_heads = 1 : i64, head_dim = 2 : i64, seq_len = 3 : i64, scale = 1.0 : f64} : (tensor<6x8xf64>, tensor<6x2xf64>, tensor<6x2xf64>) -> tensor<6x8xf64>
      return %0 : tensor<6x8xf64>
    })mlir");
  Tensor v = random({6, 2});
  Tensor out = run(f, {Tensor::zeros({6, 8}), random({6, 2}), v})[0];
  for (int64_t t = 0; t < 6; ++t) {
    int64_t first = t / 3 * 3;
    for (int64_t c = 0; c < 2; ++c) {
      double mean = 0;
      for (int64_t j = first; j <= t; ++j)
        mean += v.data[j * 2 + c] / double(t - first + 1);
      for (int64_t n = 0; n < 4; ++n)
        EXPECT_NEAR(out.data[t * 8 + n * 2 + c], mean, 1e-15);
    }
  }
}

TEST_F(InterpreterTest, SwiGLUAndAddKnownValues) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%g: tensor<3xf64>, %u: tensor<3xf64>) -> (tensor<3xf64>, tensor<3xf64>) {
      %0 = llama.swiglu %g, %u : (tensor<3xf64>, tensor<3xf64>) -> tensor<3xf64>
      %1 = llama.add %g, %u : (tensor<3xf64>, tensor<3xf64>) -> tensor<3xf64>
      return %0, %1 : tensor<3xf64>, tensor<3xf64>
    })mlir");
  std::vector<Tensor> out =
      run(f, {Tensor{{3}, {0, 2, -1}}, Tensor{{3}, {5, 3, 2}}});
  // silu(2) = 2 / (1 + e^-2), silu(-1) = -1 / (1 + e).
  EXPECT_EQ(out[0].data[0], 0);
  EXPECT_NEAR(out[0].data[1], 3 * 2 / (1 + std::exp(-2.0)), 1e-15);
  EXPECT_NEAR(out[0].data[2], 2 * -1 / (1 + std::exp(1.0)), 1e-15);
  EXPECT_EQ(out[1].data, (std::vector<double>{5, 5, 1}));
}

const char *kCrossEntropy = R"mlir(
  func.func @f(%logits: tensor<8x11xf64>, %labels: tensor<8xi32>) -> tensor<f64> {
    %0 = llama.cross_entropy %logits, %labels {seq_len = 4 : i64} : (tensor<8x11xf64>, tensor<8xi32>) -> tensor<f64>
    return %0 : tensor<f64>
  })mlir";

TEST_F(InterpreterTest, CrossEntropyOfZeroLogitsIsLogVocab) {
  func::FuncOp f = parseFunc(kCrossEntropy);
  Tensor labels = tokens(8, 11);
  labels.data[2] = -100;
  Tensor loss = run(f, {Tensor::zeros({8, 11}), labels})[0];
  EXPECT_TRUE(loss.shape.empty());
  EXPECT_NEAR(loss.data[0], std::log(11.0), 1e-15);

  // Nothing counts: labels are ignored or only at positions 0.
  Tensor ignored{{8}, {3, -100, -100, -100, 7, -100, -100, -100}};
  EXPECT_EQ(run(f, {random({8, 11}), ignored})[0].data[0], 0.0);
}

TEST_F(InterpreterTest, CrossEntropyShiftsLabelsWithinSequences) {
  func::FuncOp f = parseFunc(kCrossEntropy);
  Tensor logits = random({8, 11}, -3, 3);
  // Counted rows: 1 (predicts labels[2] = 4) and 5 (predicts labels[6] = 9).
  // Rows 3 and 7 end their sequences, so labels[4] = 6 is never a target.
  Tensor labels{{8}, {1, -100, 4, -100, 6, -100, 9, -100}};
  double expected = 0;
  for (auto [row, label] : {std::pair<int, int>{1, 4}, {5, 9}}) {
    double sum = 0;
    for (int i = 0; i < 11; ++i)
      sum += std::exp(logits.data[row * 11 + i]);
    expected += (std::log(sum) - logits.data[row * 11 + label]) / 2;
  }
  EXPECT_NEAR(run(f, {logits, labels})[0].data[0], expected, 1e-14);
}

//===----------------------------------------------------------------------===//
// AdamW
//===----------------------------------------------------------------------===//

TEST_F(InterpreterTest, AdamWMatchesTorchOverThreeSteps) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%p: tensor<3x4xf64>, %g: tensor<3x4xf64>, %m: tensor<3x4xf64>, %v: tensor<3x4xf64>, %lr: tensor<f64>, %b1: tensor<f64>, %b2: tensor<f64>, %eps: tensor<f64>, %wd: tensor<f64>, %step: tensor<f64>, %scale: tensor<f64>) -> (tensor<3x4xf64>, tensor<3x4xf64>, tensor<3x4xf64>) {
      %0:3 = llama.adamw %p, %g, %m, %v, %lr, %b1, %b2, %eps, %wd, %step, %scale : (tensor<3x4xf64>, tensor<3x4xf64>, tensor<3x4xf64>, tensor<3x4xf64>, tensor<f64>, tensor<f64>, tensor<f64>, tensor<f64>, tensor<f64>, tensor<f64>, tensor<f64>) -> (tensor<3x4xf64>, tensor<3x4xf64>, tensor<3x4xf64>)
      return %0#0, %0#1, %0#2 : tensor<3x4xf64>, tensor<3x4xf64>, tensor<3x4xf64>
    })mlir");
  const double lr = 0.01, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  const double weightDecay = 0.1;
  Tensor param = random({3, 4});
  Tensor expAvg = Tensor::zeros({3, 4}), expAvgSq = Tensor::zeros({3, 4});
  std::vector<double> torchParam = param.data;
  std::vector<double> torchExpAvg(12, 0.0), torchExpAvgSq(12, 0.0);
  for (int step = 1; step <= 3; ++step) {
    Tensor grad = random({3, 4});
    // Step 1 unclipped; later steps scaled as clip_grad_norm_ would.
    double scale = step == 1 ? 1.0 : 0.3 * step;
    std::vector<Tensor> out =
        run(f, {param, grad, expAvg, expAvgSq, Tensor::scalar(lr),
                Tensor::scalar(beta1), Tensor::scalar(beta2),
                Tensor::scalar(eps), Tensor::scalar(weightDecay),
                Tensor::scalar(step), Tensor::scalar(scale)});
    // torch.optim.adamw._single_tensor_adamw, statement by statement.
    double biasCorrection1 = 1 - std::pow(beta1, step);
    double biasCorrection2 = 1 - std::pow(beta2, step);
    double stepSize = lr / biasCorrection1;
    double biasCorrection2Sqrt = std::sqrt(biasCorrection2);
    for (int i = 0; i < 12; ++i) {
      double g = grad.data[i] * scale; // clip_grad_norm_'s grad.mul_(coef)
      torchParam[i] *= 1 - lr * weightDecay;
      torchExpAvg[i] += (g - torchExpAvg[i]) * (1 - beta1); // lerp_
      torchExpAvgSq[i] = torchExpAvgSq[i] * beta2 + (1 - beta2) * g * g;
      double denom = std::sqrt(torchExpAvgSq[i]) / biasCorrection2Sqrt + eps;
      torchParam[i] += -stepSize * torchExpAvg[i] / denom;
    }
    Tensor expectedParam{{3, 4}, torchParam};
    EXPECT_LE(relativeError(out[0], expectedParam), 1e-13) << "step " << step;
    EXPECT_LE(relativeError(out[1], Tensor{{3, 4}, torchExpAvg}), 1e-13);
    EXPECT_LE(relativeError(out[2], Tensor{{3, 4}, torchExpAvgSq}), 1e-13);
    EXPECT_GT(relativeError(out[0], param), 1e-4);
    param = out[0];
    expAvg = out[1];
    expAvgSq = out[2];
  }
}

/// torch.nn.utils.clip_grad_norm_ (norm type 2, foreach off), statement by
/// statement: per-tensor norms, the norm of the norms, then the factor.
static double torchClipCoefficient(const std::vector<Tensor> &grads,
                                   double maxNorm, double *totalNorm) {
  std::vector<double> norms;
  for (const Tensor &grad : grads) {
    double sum = 0;
    for (double x : grad.data)
      sum += x * x;
    norms.push_back(std::sqrt(sum));
  }
  double total = 0;
  for (double norm : norms)
    total += norm * norm;
  *totalNorm = std::sqrt(total);
  double coef = maxNorm / (*totalNorm + 1e-6);
  return std::min(coef, 1.0); // torch.clamp(clip_coef, max=1.0)
}

TEST_F(InterpreterTest, GlobalNormAndClipScaleMatchClipGradNorm) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%a: tensor<3x4xf64>, %b: tensor<5xf64>, %c: tensor<2x2x2xf64>, %max: tensor<f64>) -> (tensor<f64>, tensor<f64>) {
      %norm = llama.global_norm %a, %b, %c : (tensor<3x4xf64>, tensor<5xf64>, tensor<2x2x2xf64>) -> tensor<f64>
      %scale = llama.clip_scale %norm, %max : (tensor<f64>, tensor<f64>) -> tensor<f64>
      return %norm, %scale : tensor<f64>, tensor<f64>
    })mlir");
  std::vector<Tensor> grads = {random({3, 4}), random({5}, -3, 3),
                               random({2, 2, 2}, -0.1, 0.1)};
  for (double maxNorm : {0.5, 1.0, 2.0, 100.0}) {
    SCOPED_TRACE(maxNorm);
    std::vector<Tensor> args = grads;
    args.push_back(Tensor::scalar(maxNorm));
    std::vector<Tensor> out = run(f, args);
    double total;
    double coef = torchClipCoefficient(grads, maxNorm, &total);
    EXPECT_NEAR(out[0].data[0], total, 1e-14 * total);
    EXPECT_NEAR(out[1].data[0], coef, 1e-15);
    if (maxNorm == 100.0)
      EXPECT_EQ(out[1].data[0], 1.0);
    if (maxNorm == 0.5)
      EXPECT_LT(out[1].data[0], 0.5);
  }
  // max_norm 0 turns clipping off, whatever the norm; a NaN norm gives a
  // NaN factor, as in torch.
  std::vector<Tensor> args = grads;
  args.push_back(Tensor::scalar(0.0));
  EXPECT_EQ(run(f, args)[1].data[0], 1.0);
  args[0].data[3] = NAN;
  args.back() = Tensor::scalar(1.0);
  EXPECT_TRUE(std::isnan(run(f, args)[1].data[0]));
}

//===----------------------------------------------------------------------===//
// Driver
//===----------------------------------------------------------------------===//

TEST_F(InterpreterTest, ObservesRequestedValues) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%a: tensor<2xf64>, %b: tensor<2xf64>) -> tensor<2xf64> {
      %c = arith.constant dense<[1.5, -2.0]> : tensor<2xf64>
      %0 = llama.add %a, %b : (tensor<2xf64>, tensor<2xf64>) -> tensor<2xf64>
      %1 = llama.add %0, %c : (tensor<2xf64>, tensor<2xf64>) -> tensor<2xf64>
      return %1 : tensor<2xf64>
    })mlir");
  Value a = f.getArgument(0);
  Value sum = cast<func::ReturnOp>(f.getBody().front().getTerminator())
                  .getOperand(0)
                  .getDefiningOp()
                  ->getOperand(0);
  llvm::DenseMap<Value, Tensor> observed;
  observed[a];
  observed[sum];
  Tensor x = random({2}), y = random({2});
  Tensor out = run(f, {x, y}, &observed)[0];
  EXPECT_EQ(observed.size(), 2u);
  EXPECT_EQ(observed[a].data, x.data);
  EXPECT_EQ(observed[sum].data, (std::vector<double>{x.data[0] + y.data[0],
                                                     x.data[1] + y.data[1]}));
  EXPECT_EQ(out.data, (std::vector<double>{observed[sum].data[0] + 1.5,
                                           observed[sum].data[1] - 2.0}));
}

TEST_F(InterpreterTest, RoundsArgumentsAndResultsToTheirTypes) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%a: tensor<2xbf16>, %b: tensor<2xbf16>) -> (tensor<2xbf16>, tensor<2xbf16>) {
      %0 = llama.add %a, %b : (tensor<2xbf16>, tensor<2xbf16>) -> tensor<2xbf16>
      return %a, %0 : tensor<2xbf16>, tensor<2xbf16>
    })mlir");
  std::vector<Tensor> out = run(f, {Tensor{{2}, {1 + 0x1p-8 + 0x1p-20, 3.0}},
                                    Tensor{{2}, {0x1p-9, 300}}});
  EXPECT_EQ(out[0].data, (std::vector<double>{1 + 0x1p-7, 3.0}));
  // 1 + 2^-7 + 2^-9 rounds down; 303 rounds to 304 (spacing 2 at 256..512).
  EXPECT_EQ(out[1].data, (std::vector<double>{1 + 0x1p-7, 304}));
}

/// The message of a failed interpretation, or "" when it succeeds.
std::string errorOf(func::FuncOp f, llvm::ArrayRef<Tensor> args) {
  llvm::Expected<std::vector<Tensor>> results = interpret(f, args);
  if (results)
    return "";
  return llvm::toString(results.takeError());
}

TEST_F(InterpreterTest, ReportsBadArgumentsAndOps) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%table: tensor<4x2xf64>, %ids: tensor<3xi32>) -> tensor<3x2xf64> {
      %0 = llama.embedding %table, %ids : (tensor<4x2xf64>, tensor<3xi32>) -> tensor<3x2xf64>
      return %0 : tensor<3x2xf64>
    })mlir");
  Tensor table = random({4, 2});
  EXPECT_EQ(errorOf(f, {table}),
            "reference interpreter: @f takes 2 arguments, got 1");
  EXPECT_EQ(errorOf(f, {random({2, 4}), Tensor{{3}, {0, 1, 2}}}),
            "reference interpreter: argument 0 of @f has shape [2, 4] with 8 "
            "values, expected shape [4, 2]");
  EXPECT_EQ(errorOf(f, {table, Tensor{{3}, {0, 4, 1}}}),
            "llama.embedding: id 4 at row 1 is outside [0, 4)");

  func::FuncOp g = parseFunc(R"mlir(
    func.func @f(%a: tensor<2xf64>) -> tensor<2xf64> {
      %0 = arith.addf %a, %a : tensor<2xf64>
      return %0 : tensor<2xf64>
    })mlir");
  EXPECT_EQ(errorOf(g, {random({2})}),
            "reference interpreter: unsupported op 'arith.addf'");

  func::FuncOp loss = parseFunc(kCrossEntropy);
  Tensor labels{{8}, {0, 1, 2, 3, 4, 11, 6, 7}};
  EXPECT_EQ(errorOf(loss, {random({8, 11}), labels}),
            "llama.cross_entropy: id 11 at row 5 is outside [0, 11)");
}

} // namespace
