//===- FP8Test.cpp - FP8 rounding, fake quantization, delayed scaling -----===//
//
// roundToFP8 against formats decoded here from their bit layouts (E4M3FN:
// 4 exponent bits, bias 7, no infinities, S.1111.111 is NaN; E5M2: 5
// exponent bits, bias 15, IEEE-like), llama.fp8_quantize against a manual
// quantization (a whole tensor, and row blocks with a scale each), and
// llama.fp8_scale_update over three steps against
// Transformer Engine's delayed-scaling rule computed here from the amaxes.
//
//===----------------------------------------------------------------------===//

#include "TestUtils.h"

using namespace mlir;
using namespace llamac::reference;
using namespace llamac::reference::test;

namespace {

using FP8Test = ReferenceTest;

/// Every non-negative finite value of a format, from its bit layout, with
/// whether its mantissa is even.
struct Encoding {
  double value;
  bool even;
};

std::vector<Encoding> positiveValues(int exponentBits, int mantissaBits,
                                     bool ieee) {
  std::vector<Encoding> values;
  int bias = (1 << (exponentBits - 1)) - 1;
  int maxExponent = (1 << exponentBits) - 1;
  for (int e = 0; e <= maxExponent; ++e)
    for (int m = 0; m < (1 << mantissaBits); ++m) {
      if (ieee && e == maxExponent)
        continue; // infinities and NaNs
      if (!ieee && e == maxExponent && m == (1 << mantissaBits) - 1)
        continue; // E4M3FN's only NaN
      double fraction = double(m) / (1 << mantissaBits);
      double value = e == 0 ? std::ldexp(fraction, 1 - bias)
                            : std::ldexp(1 + fraction, e - bias);
      values.push_back({value, m % 2 == 0});
    }
  return values;
}

/// Round to nearest, ties to the even mantissa, saturating to the largest.
double reference(double x, const std::vector<Encoding> &values) {
  if (std::isnan(x))
    return x;
  double magnitude = std::fabs(x);
  if (magnitude >= values.back().value)
    return std::copysign(values.back().value, x);
  size_t above = 0;
  while (values[above].value < magnitude)
    ++above;
  if (values[above].value == magnitude)
    return std::copysign(magnitude, x);
  const Encoding &lo = values[above - 1], &hi = values[above];
  double dLo = magnitude - lo.value, dHi = hi.value - magnitude;
  double picked = dLo < dHi   ? lo.value
                  : dHi < dLo ? hi.value
                  : lo.even   ? lo.value
                              : hi.value;
  return std::copysign(picked, x);
}

TEST_F(FP8Test, E4M3KnownEncodings) {
  std::vector<Encoding> values = positiveValues(4, 3, false);
  ASSERT_EQ(values.back().value, 448.0); // S.1111.110
  EXPECT_EQ(fp8Max("e4m3"), 448.0);
  EXPECT_EQ(roundToFP8(448, "e4m3"), 448.0);
  EXPECT_EQ(roundToFP8(-448, "e4m3"), -448.0);
  // Smallest subnormal 2^-9 (S.0000.001); half of it ties to zero, 1.5x
  // ties to the even 2^-8.
  EXPECT_EQ(roundToFP8(0x1p-9, "e4m3"), 0x1p-9);
  EXPECT_EQ(roundToFP8(0x1p-10, "e4m3"), 0.0);
  EXPECT_EQ(roundToFP8(0x1.8p-9, "e4m3"), 0x1p-8);
  EXPECT_EQ(roundToFP8(0x1.01p-10, "e4m3"), 0x1p-9);
  // Around 1 the spacing is 1/8: 1.0625 ties to 1 (even), 1.1875 to 1.25.
  EXPECT_EQ(roundToFP8(1.0625, "e4m3"), 1.0);
  EXPECT_EQ(roundToFP8(1.1875, "e4m3"), 1.25);
  EXPECT_EQ(roundToFP8(1.0626, "e4m3"), 1.125);
  // Past the largest: satfinite gives 448 where a plain conversion would
  // give NaN (480 ties up to 512, which E4M3FN lacks).
  EXPECT_EQ(roundToFP8(464, "e4m3"), 448.0);
  EXPECT_EQ(roundToFP8(480, "e4m3"), 448.0);
  EXPECT_EQ(roundToFP8(1e6, "e4m3"), 448.0);
  EXPECT_EQ(roundToFP8(-INFINITY, "e4m3"), -448.0);
  EXPECT_TRUE(std::isnan(roundToFP8(NAN, "e4m3")));
}

TEST_F(FP8Test, E5M2KnownEncodings) {
  std::vector<Encoding> values = positiveValues(5, 2, true);
  ASSERT_EQ(values.back().value, 57344.0); // S.11110.11
  EXPECT_EQ(fp8Max("e5m2"), 57344.0);
  EXPECT_EQ(roundToFP8(57344, "e5m2"), 57344.0);
  EXPECT_EQ(roundToFP8(0x1p-16, "e5m2"), 0x1p-16); // smallest subnormal
  EXPECT_EQ(roundToFP8(0x1p-17, "e5m2"), 0.0);
  // Spacing 1/4 around 1: 1.125 ties to 1, 1.375 to 1.5.
  EXPECT_EQ(roundToFP8(1.125, "e5m2"), 1.0);
  EXPECT_EQ(roundToFP8(1.375, "e5m2"), 1.5);
  // 61440 ties up to 65536 (infinity in E5M2): satfinite keeps 57344.
  EXPECT_EQ(roundToFP8(61440, "e5m2"), 57344.0);
  EXPECT_EQ(roundToFP8(INFINITY, "e5m2"), 57344.0);
  EXPECT_EQ(roundToFP8(-1e9, "e5m2"), -57344.0);
  EXPECT_TRUE(std::isnan(roundToFP8(NAN, "e5m2")));
}

TEST_F(FP8Test, RoundingMatchesTheBitLayouts) {
  struct Format {
    const char *name;
    std::vector<Encoding> values;
  } formats[] = {{"e4m3", positiveValues(4, 3, false)},
                 {"e5m2", positiveValues(5, 2, true)}};
  std::uniform_real_distribution<double> mantissa(-1, 1);
  std::uniform_int_distribution<int> exponent(-20, 18);
  for (const Format &format : formats) {
    SCOPED_TRACE(format.name);
    // Every value and every midpoint, then random values.
    for (size_t i = 0; i + 1 < format.values.size(); ++i) {
      double mid = (format.values[i].value + format.values[i + 1].value) / 2;
      for (double x : {format.values[i].value, mid, -mid})
        ASSERT_EQ(roundToFP8(x, format.name), reference(x, format.values)) << x;
    }
    for (int i = 0; i < 20000; ++i) {
      double x = std::ldexp(mantissa(rng), exponent(rng));
      ASSERT_EQ(roundToFP8(x, format.name), reference(x, format.values)) << x;
    }
  }
}

TEST_F(FP8Test, QuantizeIsManualQuantization) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%x: tensor<4x8xf32>, %w: tensor<6x8xf32>, %sx: tensor<f32>,
                 %sw: tensor<f32>)
        -> (tensor<4x8xf32>, tensor<f32>, tensor<6x8xf32>, tensor<4x6xf32>,
            tensor<4x8xbf16>) {
      %xq, %ax = llama.fp8_quantize %x scale(%sx) {format = "e4m3"} : (tensor<4x8xf32>, tensor<f32>) -> (tensor<4x8xf32>, tensor<f32>)
      %wq, %aw = llama.fp8_quantize %w {format = "e5m2", margin = 1 : i64} : (tensor<6x8xf32>) -> (tensor<6x8xf32>, tensor<f32>)
      %y = llama.matmul %xq, %wq {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
      %xb, %ab = llama.fp8_quantize %x scale(%sx) {format = "e4m3"} : (tensor<4x8xf32>, tensor<f32>) -> (tensor<4x8xbf16>, tensor<f32>)
      return %xq, %ax, %wq, %y, %xb : tensor<4x8xf32>, tensor<f32>, tensor<6x8xf32>, tensor<4x6xf32>, tensor<4x8xbf16>
    })mlir");
  Tensor x = random({4, 8}, -3, 3), w = random({6, 8}, -0.1, 0.1);
  x.data[5] = 0.0;
  x.data[7] = 3.5;
  double sx = 150.0; // some values saturate at 448
  std::vector<Tensor> out =
      run(f, {x, w, Tensor::scalar(sx), Tensor::scalar(0.5)});
  std::vector<Encoding> e4m3 = positiveValues(4, 3, false),
                        e5m2 = positiveValues(5, 2, true);
  double amax = 0, amaxW = 0;
  for (double v : x.data)
    amax = std::max(amax, std::fabs(v));
  for (double v : w.data)
    amaxW = std::max(amaxW, std::fabs(v));
  EXPECT_EQ(out[1].data[0], double(float(amax)));
  int saturated = 0;
  std::vector<double> xq(x.data.size()), wq(w.data.size());
  for (size_t i = 0; i < x.data.size(); ++i) {
    double scaled = double(float(float(x.data[i]) * sx));
    saturated += std::fabs(scaled) > 448;
    xq[i] = double(float(reference(scaled, e4m3) / sx));
    EXPECT_EQ(out[0].data[i], xq[i]) << i;
    EXPECT_EQ(out[4].data[i], roundTo(reference(scaled, e4m3) / sx,
                                      BFloat16Type::get(&context)))
        << i;
  }
  EXPECT_GT(saturated, 0);
  // Current scaling: scale = 57344 / amax / 2^margin.
  double sw = double(float(57344.0 / double(float(amaxW)) / 2));
  for (size_t i = 0; i < w.data.size(); ++i) {
    double scaled = double(float(float(w.data[i]) * sw));
    wq[i] = double(float(reference(scaled, e5m2) / sw));
    EXPECT_EQ(out[2].data[i], wq[i]) << i;
  }
  // The GEMM multiplies the quantized values.
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 6; ++c) {
      double sum = 0;
      for (int k = 0; k < 8; ++k)
        sum += xq[r * 8 + k] * wq[c * 8 + k];
      EXPECT_NEAR(out[3].data[r * 6 + c], sum, 1e-6 * (1 + std::fabs(sum)));
    }
}

TEST_F(FP8Test, RowBlocksAreQuantizedAsTensorsOfTheirOwn) {
  // A [6, 8] weight in blocks of 4 and 2 rows: delayed (given scales) and
  // current scaling (each block from its own amax).
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%w: tensor<6x8xf32>, %s0: tensor<f32>, %s1: tensor<f32>)
        -> (tensor<6x8xf32>, tensor<f32>, tensor<f32>, tensor<6x8xf32>) {
      %wq, %a0, %a1 = llama.fp8_quantize %w scale(%s0, %s1) {format = "e4m3", row_blocks = array<i64: 4, 2>} : (tensor<6x8xf32>, tensor<f32>, tensor<f32>) -> (tensor<6x8xf32>, tensor<f32>, tensor<f32>)
      %wc, %c0, %c1 = llama.fp8_quantize %w {format = "e4m3", row_blocks = array<i64: 4, 2>} : (tensor<6x8xf32>) -> (tensor<6x8xf32>, tensor<f32>, tensor<f32>)
      return %wq, %a0, %a1, %wc : tensor<6x8xf32>, tensor<f32>, tensor<f32>, tensor<6x8xf32>
    })mlir");
  Tensor w = random({6, 8}, -1, 1);
  for (size_t i = 32; i < 48; ++i)
    w.data[i] *= 1e-6; // the second block is much smaller
  std::vector<Tensor> out =
      run(f, {w, Tensor::scalar(300.0), Tensor::scalar(2e5)});
  double amax[2] = {0, 0};
  for (size_t i = 0; i < 48; ++i)
    amax[i / 32] = std::max(amax[i / 32], std::fabs(double(float(w.data[i]))));
  EXPECT_EQ(out[1].data[0], double(float(amax[0])));
  EXPECT_EQ(out[2].data[0], double(float(amax[1])));
  for (size_t i = 0; i < 48; ++i) {
    double x = double(float(w.data[i]));
    double given = i < 32 ? 300.0 : 2e5;
    EXPECT_EQ(
        out[0].data[i],
        double(float(roundToFP8(double(float(x * given)), "e4m3") / given)))
        << i;
    double current = double(float(448.0 / double(float(amax[i / 32]))));
    EXPECT_EQ(
        out[3].data[i],
        double(float(roundToFP8(double(float(x * current)), "e4m3") / current)))
        << i;
  }
  // The small block keeps its values, where one scale for the whole weight
  // would flush them all to zero.
  double whole = double(float(448.0 / double(float(amax[0]))));
  for (size_t i = 32; i < 48; ++i) {
    EXPECT_NE(out[3].data[i], 0) << i;
    EXPECT_EQ(roundToFP8(double(float(float(w.data[i]) * whole)), "e4m3"), 0)
        << i;
  }
}

TEST_F(FP8Test, DelayedScalingStateAfterThreeSteps) {
  for (const char *algo : {"max", "most_recent"}) {
    SCOPED_TRACE(algo);
    std::string text = R"mlir(
      func.func @f(%x: tensor<8xf32>, %h: tensor<4xf32>, %s: tensor<f32>)
          -> (tensor<8xf32>, tensor<4xf32>, tensor<f32>) {
        %xq, %a = llama.fp8_quantize %x scale(%s) {format = "e5m2", margin = 1 : i64} : (tensor<8xf32>, tensor<f32>) -> (tensor<8xf32>, tensor<f32>)
        %nh, %ns = llama.fp8_scale_update %h, %a, %s {format = "e5m2", margin = 1 : i64, amax_compute_algo = "ALGO"} : (tensor<4xf32>, tensor<f32>, tensor<f32>) -> (tensor<4xf32>, tensor<f32>)
        return %xq, %nh, %ns : tensor<8xf32>, tensor<4xf32>, tensor<f32>
      })mlir";
    text.replace(text.find("ALGO"), 4, algo);
    func::FuncOp f = parseFunc(text);
    // Step amaxes 3, 0 (all zeros: the scale is kept), 0.5.
    std::vector<Tensor> inputs = {random({8}, -1, 1), Tensor::zeros({8}),
                                  random({8}, -0.25, 0.25)};
    inputs[0].data[3] = -3;
    inputs[2].data[6] = 0.5;
    std::vector<double> amaxes = {3, 0, 0.5};
    Tensor history = Tensor::zeros({4});
    Tensor scale = Tensor::scalar(1.0);
    std::vector<double> scales = {1.0}; // what step k's GEMM used
    for (int step = 0; step < 3; ++step) {
      std::vector<Tensor> out = run(f, {inputs[step], history, scale});
      // This step quantized with the scale from before it.
      for (size_t i = 0; i < 8; ++i) {
        double s = scales.back();
        double want = double(float(
            roundToFP8(double(float(float(inputs[step].data[i]) * s)), "e5m2") /
            s));
        EXPECT_EQ(out[0].data[i], want);
      }
      history = out[1];
      scale = out[2];
      // Independently: the history newest first, then the new scale.
      double a = 0;
      if (std::string(algo) == "max") {
        for (int k = 0; k <= step; ++k)
          a = std::max(a, amaxes[k]);
      } else {
        a = amaxes[step];
      }
      scales.push_back(a > 0 ? double(float(57344.0 / a / 2)) : scales.back());
      EXPECT_EQ(scale.data[0], scales.back()) << "step " << step;
    }
    EXPECT_EQ(history.data, (std::vector<double>{0.5, 0, 3, 0}));
    if (std::string(algo) == "max")
      EXPECT_EQ(scale.data[0], double(float(57344.0 / 3 / 2)));
    else
      EXPECT_EQ(scale.data[0], double(float(57344.0 / 0.5 / 2)));
  }
}

TEST_F(FP8Test, NonFiniteAmaxKeepsTheScale) {
  func::FuncOp f = parseFunc(R"mlir(
    func.func @f(%h: tensor<2xf32>, %a: tensor<f32>, %s: tensor<f32>)
        -> (tensor<2xf32>, tensor<f32>) {
      %nh, %ns = llama.fp8_scale_update %h, %a, %s {format = "e4m3"} : (tensor<2xf32>, tensor<f32>, tensor<f32>) -> (tensor<2xf32>, tensor<f32>)
      return %nh, %ns : tensor<2xf32>, tensor<f32>
    })mlir");
  for (double bad : {double(NAN), double(INFINITY)}) {
    std::vector<Tensor> out =
        run(f, {Tensor{{2}, {2, 1}}, Tensor::scalar(bad), Tensor::scalar(7.0)});
    EXPECT_EQ(out[1].data[0], 7.0);
    EXPECT_EQ(out[0].data[1], 2.0);
  }
  // A finite amax: 448 / max(history) with the oldest entry dropped.
  std::vector<Tensor> out =
      run(f, {Tensor{{2}, {2, 100}}, Tensor::scalar(1.0), Tensor::scalar(7.0)});
  EXPECT_EQ(out[0].data, (std::vector<double>{1, 2}));
  EXPECT_EQ(out[1].data[0], 224.0);
}

} // namespace
