//===- FP8GemmTest.cpp - cuBLASLt FP8 GEMMs against a CPU reference -------===//
//
// D = (sa A)(sb B)ᵀ with A [m, k] and B [n, k] FP8 (both K-major: the
// forward's E4M3 x E4M3 and the dgrad's and wgrad's E5M2 x E4M3), sa and sb
// device scale inverses, bf16 D, against the exact product of the
// dequantized FP8 values in double. Operands are random FP8 bytes (finite,
// exponents near 1), so the reference needs no rounding emulation.
// Bound per element: FP8 products are exact in f32 (4 x 4 significant bits);
// cuBLASLt's FP8 path on Hopper adds them in the tensor cores' accumulator,
// which keeps fewer than f32's bits (about 2^-13 relative per
// 32-deep MMA step, promoted into f32 between steps), then scales in f32
// and rounds to bf16:
//   |D - exact| <= u_bf16 |exact| + (k / 32 + 2) 2^-12 sa sb sum_l |a_l b_l|
// A wrong layout or scale breaks it by orders of magnitude. The norm-wise
// error must also stay within bf16 rounding (5e-3, as for bf16 GEMMs).
//
//===----------------------------------------------------------------------===//

#include "FP8TestUtil.h"
#include "KernelTestUtil.h"

using namespace llamac;
using namespace llamac::test;

namespace {

struct FP8GemmCase {
  const char *label;
  int64_t m, n, k;
  cuda::GemmType typeA, typeB;
};

class FP8Gemm : public ::testing::TestWithParam<FP8GemmCase> {};

/// Random finite FP8 bytes with exponents in [-3, 3] around 1, either sign.
std::vector<uint8_t> randomFP8(size_t count, bool e4m3, std::mt19937 &rng) {
  int mantissaBits = e4m3 ? 3 : 2, bias = e4m3 ? 7 : 15;
  std::uniform_int_distribution<int> exponent(bias - 3, bias + 3);
  std::uniform_int_distribution<int> mantissa(0, (1 << mantissaBits) - 1);
  std::uniform_int_distribution<int> sign(0, 1);
  std::vector<uint8_t> bytes(count);
  for (uint8_t &b : bytes)
    b = uint8_t(sign(rng) << 7 | exponent(rng) << mantissaBits | mantissa(rng));
  return bytes;
}

/// Runs one FP8 GEMM on fresh operands and checks D.
void runCase(const FP8GemmCase &c) {
  LLAMAC_REQUIRE_GPU(device);
  auto blas = cuda::BlasLt::create(device);
  ASSERT_TRUE(blas.ok()) << blas.error().message;
  std::mt19937 rng(std::random_device{}());
  bool aE4M3 = c.typeA == cuda::GemmType::F8E4M3;
  bool bE4M3 = c.typeB == cuda::GemmType::F8E4M3;
  std::vector<uint8_t> a = randomFP8(c.m * c.k, aE4M3, rng);
  std::vector<uint8_t> b = randomFP8(c.n * c.k, bE4M3, rng);
  // Scale inverses as delayed scaling makes them: amax / fp8_max, not powers
  // of two.
  const float sa = aE4M3 ? 3.7f / 448 : 2.9f / 57344, sb = 0.011f;

  std::vector<double> exact(c.m * c.n), magnitude(c.m * c.n);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      double sum = 0, abs = 0;
      for (int64_t l = 0; l < c.k; ++l) {
        double p =
            decodeFP8(a[i * c.k + l], aE4M3) * decodeFP8(b[j * c.k + l], bE4M3);
        sum += p;
        abs += std::abs(p);
      }
      exact[i * c.n + j] = double(sa) * double(sb) * sum;
      magnitude[i * c.n + j] = double(sa) * double(sb) * abs;
    }

  DeviceBuffer dA(device, a.size(), "A"), dB(device, b.size(), "B"),
      dD(device, c.m * c.n * 2, "D"), scales(device, 32, "scale inverses");
  dA.upload(a);
  dB.upload(b);
  // One 16-byte slot each (cuBLASLt's alignment for scale pointers).
  scales.upload(std::vector<float>{sa, 0, 0, 0, sb});
  dD.fill(0xFF); // NaN: every element must be written
  cuda::Gemm gemm;
  gemm.m = c.m, gemm.n = c.n, gemm.k = c.k;
  gemm.transposeA = false, gemm.transposeB = true;
  gemm.type = c.typeA;
  gemm.typeB = c.typeB;
  gemm.outType = cuda::GemmType::BF16;
  gemm.a = dA.address(), gemm.b = dB.address(), gemm.d = dD.address();
  gemm.scaleInvA = scales.address();
  gemm.scaleInvB = scales.address() + 16;
  Status run = (*blas)->run(gemm, std::string("test ") + c.label);
  ASSERT_TRUE(run.ok()) << run.error().message;
  std::vector<uint16_t> out = dD.download<uint16_t>(c.m * c.n);
  std::vector<double> got(out.size());
  Checker check(std::string(c.label) + " D");
  double accumulation = (double(c.k) / 32 + 2) * std::ldexp(1.0, -12);
  double largest = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    got[i] = bf16ToFloat(out[i]);
    largest = std::max(largest, std::abs(got[i]));
    check.near(got[i], exact[i],
               kBF16Unit * std::abs(exact[i]) + accumulation * magnitude[i],
               int64_t(i));
    check.exact(got[i], roundBF16(exact[i]));
  }
  // The accumulator's width is not documented: no share of D need be the
  // correctly rounded product.
  check.expectExactFraction(0);
  EXPECT_LE(relativeError(got, exact), 5e-3);
}

TEST_P(FP8Gemm, MatchesTheDequantizedProduct) { runCase(GetParam()); }

// Forward: [tokens, in] x [out, in]ᵀ; dgrad: dY [tokens, out] x (Wᵀ)
// [in, out]ᵀ; wgrad: dYᵀ [out, tokens] x Xᵀ [in, tokens]ᵀ (the transposed
// FP8 copies fp8_cast_transpose writes). Sizes are multiples of 16.
INSTANTIATE_TEST_SUITE_P(
    TrainStepLayouts, FP8Gemm,
    ::testing::Values(
        FP8GemmCase{"forward_e4m3_e4m3", 96, 80, 128, cuda::GemmType::F8E4M3,
                    cuda::GemmType::F8E4M3},
        FP8GemmCase{"forward_large", 256, 512, 1024, cuda::GemmType::F8E4M3,
                    cuda::GemmType::F8E4M3},
        FP8GemmCase{"dgrad_e5m2_e4m3", 96, 128, 80, cuda::GemmType::F8E5M2,
                    cuda::GemmType::F8E4M3},
        FP8GemmCase{"wgrad_e5m2_e4m3", 80, 128, 96, cuda::GemmType::F8E5M2,
                    cuda::GemmType::F8E4M3}),
    [](const ::testing::TestParamInfo<FP8GemmCase> &info) {
      return std::string(info.param.label);
    });

TEST(FP8GemmLayout, RejectsOperandsThatAreNotKMajor) {
  LLAMAC_REQUIRE_GPU(device);
  auto blas = cuda::BlasLt::create(device);
  ASSERT_TRUE(blas.ok()) << blas.error().message;
  DeviceBuffer buffer(device, 64 * 64 * 2, "operands");
  cuda::Gemm gemm;
  gemm.m = gemm.n = gemm.k = 32;
  gemm.type = cuda::GemmType::F8E4M3;
  gemm.a = gemm.b = gemm.d = buffer.address();
  gemm.transposeB = false;
  Status run = (*blas)->run(gemm, "layer 3 q_proj dgrad");
  ASSERT_FALSE(run.ok());
  EXPECT_NE(run.error().message.find("FP8 GEMM layer 3 q_proj dgrad: both "
                                     "operands must be K-major"),
            std::string::npos)
      << run.error().message;
  gemm.transposeB = true;
  gemm.type = gemm.typeB.emplace(cuda::GemmType::F8E5M2);
  run = (*blas)->run(gemm, "wgrad");
  ASSERT_FALSE(run.ok());
  EXPECT_NE(run.error().message.find("E5M2 x E5M2"), std::string::npos)
      << run.error().message;
  gemm.typeB = cuda::GemmType::F8E4M3;
  gemm.scaleInvA = buffer.address() + 4;
  run = (*blas)->run(gemm, "forward");
  ASSERT_FALSE(run.ok());
  EXPECT_NE(run.error().message.find("scale inverses must be 16-byte aligned"),
            std::string::npos)
      << run.error().message;
}

} // namespace
