//===- ClipKernelTest.cpp - Gradient clipping: global norm and rescale ---===//
//
// global_norm_sq adds the sum of squares of a bf16 buffer into an f32 scalar
// (twice: launches accumulate) when clipping, and leaves it alone when not;
// scale_bf16 applies clip_grad_norm_'s factor from the device scalars: clipping
// (max_norm below the norm), not clipping (above it, or max_norm 0: no element
// may change) and a NaN norm (every element becomes NaN, as in torch).
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

#include <limits>

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t N = kClipElements;

TEST(ClipKernel, NormAndRescaleMatchTorch) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "clip");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> x = randomBF16(N, rng, 0.01f);
  double sum = 0;
  for (uint16_t v : x)
    sum += bf16(v) * bf16(v);

  DeviceBuffer grads(device, N * 2, "gradients"),
      sumSq(device, 4, "sum of squares");
  DeviceBuffer maxNorm(device, 4, "max norm");
  // The hyperparameters buffer: slot 6 is max_grad_norm.
  DeviceBuffer hyper(device, 8 * 4, "hyperparameters");
  grads.upload(x);
  // Not clipping: the norm is not computed, the sum keeps its value.
  hyper.upload(std::vector<float>{0, 0, 0, 0, 0, 0, 0, 0});
  sumSq.upload(std::vector<float>{-1.0f});
  kernels.run("norm_sq", {grads.address(), sumSq.address(), hyper.address()});
  EXPECT_EQ(sumSq.download<float>(1)[0], -1.0f);
  hyper.upload(std::vector<float>{0, 0, 0, 0, 0, 0, 1.0f, 0});
  sumSq.fill(0); // the plan zeroes the accumulator
  kernels.run("norm_sq", {grads.address(), sumSq.address(), hyper.address()});
  float once = sumSq.download<float>(1)[0];
  kernels.run("norm_sq", {grads.address(), sumSq.address(), hyper.address()});
  float twice = sumSq.download<float>(1)[0];
  // Every term is positive. A thread adds its chunks (at most
  // ceil(N / 8 / (grid 256)) fmas per lane), then 7 lane adds, 5 shuffle
  // adds, 8 warp adds and one atomic add per block: at most
  // (perThread + 20 + grid) roundings of <= u32 of the sum each.
  const int64_t grid = kernels.launch("norm_sq").grid[0];
  const int64_t perThread = (N / 8 + grid * 256 - 1) / (grid * 256);
  double bound = double(perThread + 20 + grid) * kF32Unit * sum;
  EXPECT_NEAR(once, sum, bound);
  EXPECT_NEAR(twice, 2 * sum, 2 * bound + kF32Unit * 2 * sum);

  // The factor from the kernel's own sum (reset to `once`): sqrt.approx and
  // the division: relative error <= 4 u32; the product and its bf16
  // rounding: |y - x f| <= (u16 + 6 u32) |x f|.
  auto rescale = [&](float limit) {
    grads.upload(x);
    sumSq.upload(std::vector<float>{once});
    maxNorm.upload(std::vector<float>{limit});
    kernels.run("scale", {grads.address(), sumSq.address(), maxNorm.address()});
    return grads.download<uint16_t>(N);
  };
  double norm = std::sqrt(double(once));
  {
    SCOPED_TRACE("clipping");
    float limit = float(0.5 * norm);
    double factor = double(limit) / (norm + 1e-6);
    std::vector<uint16_t> got = rescale(limit);
    Checker check("clipped gradient");
    for (int64_t i = 0; i < N; ++i) {
      double want = bf16(x[i]) * factor;
      check.near(bf16(got[i]), want,
                 (kBF16Unit + 6 * kF32Unit) * 1.01 * std::abs(want), i);
      check.exact(bf16(got[i]), roundBF16(want));
    }
    check.expectExactFraction(0.99);
  }
  for (float limit : {float(2 * norm), 0.0f}) {
    SCOPED_TRACE("no clipping at max_norm " + std::to_string(limit));
    EXPECT_TRUE(rescale(limit) == x) << "elements changed";
  }
  {
    SCOPED_TRACE("NaN norm");
    grads.upload(x);
    sumSq.upload(std::vector<float>{std::numeric_limits<float>::quiet_NaN()});
    maxNorm.upload(std::vector<float>{1.0f});
    kernels.run("scale", {grads.address(), sumSq.address(), maxNorm.address()});
    std::vector<uint16_t> got = grads.download<uint16_t>(N);
    int64_t finite = 0;
    for (uint16_t v : got)
      finite += !std::isnan(bf16(v));
    EXPECT_EQ(finite, 0) << "a NaN norm must poison the step, as in torch";
  }
}

} // namespace
