//===- RopeKernelTest.cpp - Rotary embedding on the fused QKV buffer -----===//
//
// rope rotates the query and key heads of a fused QKV buffer in place (GQA:
// 6 query, 2 kv heads), position = row mod sequence length over 2
// sequences; the inverse rotation is the backward. The reference follows
// transformers: the angle is one f32 product, cos and sin are rounded to
// bf16, and so is each product before the sum. The value columns must not
// change.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t T = kRopeRows, D = kRopeHeadDim, Half = D / 2;
constexpr int64_t Rotated = kRopeHeads + kRopeKvHeads;
constexpr int64_t LD = (kRopeHeads + 2 * kRopeKvHeads) * D;

void checkRotation(bool inverse) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "rope");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> qkv = randomBF16(T * LD, rng);
  // transformers' inv_freq: 1 / theta^(2i / d), in f32.
  std::vector<float> freqs(Half);
  for (int64_t i = 0; i < Half; ++i)
    freqs[i] = float(1.0 / std::pow(kRopeTheta, double(2 * i) / double(D)));

  DeviceBuffer buffer(device, T * LD * 2, "qkv"),
      freqBuffer(device, Half * 4, "freqs");
  buffer.upload(qkv);
  freqBuffer.upload(freqs);
  kernels.run(inverse ? "inv" : "fwd",
              {buffer.address(), freqBuffer.address()});
  std::vector<uint16_t> got = buffer.download<uint16_t>(T * LD);

  // With c = cos a, s = (-)sin a exact at the f32 angle a: the kernel's
  // bf16(cosf(a)) is within (u16 + 4 u32)(1.01) |c| of c (cosf: <= 2 ulp),
  // each bf16 product adds u16, and the final rounding u16 of the result:
  //   |out - (x1 c - x2 s)| <= u16 |out_exact|
  //                            + 1.05 (2 u16 + 4 u32)(|x1 c| + |x2 s|).
  // The exact-emulation count allows cos/sin to round the other way where
  // they lie within cosf's error of a bf16 rounding boundary.
  double sign = inverse ? -1 : 1;
  Checker check(inverse ? "inverse rope" : "rope");
  int64_t changedValues = 0;
  for (int64_t t = 0; t < T; ++t) {
    int64_t p = t % kRopeSeq;
    for (int64_t h = 0; h < Rotated; ++h)
      for (int64_t i = 0; i < Half; ++i) {
        double angle = double(float(p) * freqs[i]);
        double c = std::cos(angle), s = sign * std::sin(angle);
        double cb = roundBF16(c), sb = roundBF16(s);
        int64_t k1 = t * LD + h * D + i, k2 = k1 + Half;
        double x1 = bf16(qkv[k1]), x2 = bf16(qkv[k2]);
        double want1 = x1 * c - x2 * s, want2 = x2 * c + x1 * s;
        double spread = 1.05 * (2 * kBF16Unit + 4 * kF32Unit) *
                        (std::abs(x1 * c) + std::abs(x2 * s));
        double spread2 = 1.05 * (2 * kBF16Unit + 4 * kF32Unit) *
                         (std::abs(x2 * c) + std::abs(x1 * s));
        double got1 = bf16(got[k1]), got2 = bf16(got[k2]);
        check.near(got1, want1, kBF16Unit * std::abs(want1) + spread, k1);
        check.exact(got1, roundBF16(roundBF16(x1 * cb) - roundBF16(x2 * sb)));
        check.near(got2, want2, kBF16Unit * std::abs(want2) + spread2, k2);
        check.exact(got2, roundBF16(roundBF16(x2 * cb) + roundBF16(x1 * sb)));
      }
    for (int64_t k = t * LD + Rotated * D; k < (t + 1) * LD; ++k)
      changedValues += got[k] != qkv[k];
  }
  check.expectExactFraction(0.99);
  EXPECT_EQ(changedValues, 0) << "value columns changed";
}

TEST(RopeKernel, RotatesQueriesAndKeysInPlace) { checkRotation(false); }

TEST(RopeKernel, InverseRotatesBack) { checkRotation(true); }

} // namespace
