//===- RMSNormKernelTest.cpp - RMSNorm forward and backward ---------------===//
//
// rms_norm_fwd against LlamaRMSNorm in double; rms_norm_bwd (plain and
// accumulating into a residual gradient) and column_sum (its weight
// gradient; plain, and adding to a gradient summed over earlier micro-
// batches) against the interpreter's rms_norm_grad with normed rounded as
// the forward rounds it. Shapes: 600 rows of 2400 (rows wider than a block,
// blocks of the backward taking two rows) and 72 rows of 200 (a partial
// warp). Bounds are derived next to each check. The FP8 instance of the
// forward must write, bit for bit, what rms_norm_fwd then fp8_cast write
// (copy, amax; and the same rstd).
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

using namespace llamac;
using namespace llamac::test;

namespace {

struct NormKeys {
  const char *forward, *backward, *backwardAccumulate, *weightGrad,
      *weightGradAccumulate;
};

void checkRMSNorm(std::shared_ptr<cuda::Device> device, int64_t T, int64_t H,
                  NormKeys keys) {
  KernelGroup kernels(device, "rms_norm");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> x = randomBF16(T * H, rng);
  // Rows of very different scales: rstd must follow each.
  for (int64_t i = 0; i < H; ++i) {
    x[1 * H + i] = floatToBF16(bf16ToFloat(x[1 * H + i]) * 100.0f);
    x[2 * H + i] = floatToBF16(bf16ToFloat(x[2 * H + i]) * 0.01f);
  }
  std::vector<uint16_t> w(H);
  for (int64_t i = 0; i < H; ++i)
    w[i] = floatToBF16(1.0f + 0.1f * randomValues(1, rng)[0]);
  std::vector<uint16_t> dy = randomBF16(T * H, rng, 0.1f);
  std::vector<uint16_t> residual = randomBF16(T * H, rng, 0.05f);
  const double eps = double(float(kNormEps)); // the kernel's f32 eps

  // --- Forward.
  DeviceBuffer xBuffer(device, T * H * 2, "x"), wBuffer(device, H * 2, "w");
  DeviceBuffer y(device, T * H * 2, "y"), rstd(device, T * 4, "rstd");
  xBuffer.upload(x);
  wBuffer.upload(w);
  y.fill(0xFF);
  rstd.fill(0xFF);
  kernels.run(keys.forward, {xBuffer.address(), wBuffer.address(), y.address(),
                             rstd.address()});
  std::vector<uint16_t> gotY = y.download<uint16_t>(T * H);
  std::vector<float> gotRstd = rstd.download<float>(T);

  // rstd: the f32 sum of squares goes through at most 2 fmas per lane, 7
  // adds over 8 lanes, 5 shuffle adds and 8 per-warp adds: relative error
  // <= 22 u32 < 32 u32; the division and the eps add 2 u32 more, the square
  // root halves all that, and rsqrt.approx.f32 adds at most 2^-22.9 ~ 2 u32:
  // dr = 24 u32 relative; 64 u32 leaves margin.
  const double dr = 64 * kF32Unit;
  // y = bf16(w bf16(x rstd)): two bf16 roundings and rstd's error, so
  // |y - w x r| <= (2 u16 + dr)(1 + u16) |w x r|. Emulating the kernel's
  // arithmetic on the rstd it wrote must give y exactly.
  Checker rstdCheck("rstd"), yCheck("y");
  std::vector<float> hostRstd(T);
  for (int64_t t = 0; t < T; ++t) {
    double sum = 0;
    for (int64_t i = 0; i < H; ++i)
      sum += bf16(x[t * H + i]) * bf16(x[t * H + i]);
    double r = 1 / std::sqrt(sum / double(H) + eps);
    hostRstd[t] = float(r);
    rstdCheck.near(gotRstd[t], r, dr * r, t);
    for (int64_t i = 0; i < H; ++i) {
      double xi = bf16(x[t * H + i]), wi = bf16(w[i]);
      double want = wi * xi * r;
      double got = bf16(gotY[t * H + i]);
      yCheck.near(got, want, (2 * kBF16Unit + dr) * 1.01 * std::abs(want),
                  t * H + i);
      double normed = roundBF16(roundF32(xi * double(gotRstd[t])));
      yCheck.exact(got, roundBF16(wi * normed));
    }
  }
  rstdCheck.expectExactFraction(0.0);
  yCheck.expectExactFraction(1.0);

  // --- Backward, from the host's f32 rstd.
  const auto &backwardLaunch = kernels.launch(keys.backward);
  const int64_t G = backwardLaunch.grid[0];
  ASSERT_EQ(G, kernels.launch(keys.backwardAccumulate).grid[0]);
  DeviceBuffer dyBuffer(device, T * H * 2, "dy"), dx(device, T * H * 2, "dx");
  DeviceBuffer partial(device, G * H * 4, "dw partial sums");
  DeviceBuffer dw(device, H * 2, "dw");
  dyBuffer.upload(dy);
  rstd.upload(hostRstd);

  // Reference: g = dy w, mean = sum(g x) / H, dx = r (g - x r^2 mean).
  // The kernel's f32 sum(g x) has relative-to-sum|g x| error <= 22 u32 (as
  // for the squares); /H and r r mean add 3 u32 relative to mean; then
  // r (g - x coef) adds 3 u32 of |g| + |x coef| and bf16 rounding u16:
  //   |dx - dx_ref| <= u16 |dx_ref| + 1.01 r (|x| r^2 (32 u32 sum|g x| / H
  //                    + 4 u32 |mean|) + 4 u32 (|g| + |x| r^2 |mean|)).
  std::vector<double> dxWant(T * H), dxBound(T * H);
  std::vector<double> dwWant(H, 0.0), dwMagnitude(H, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    double r = hostRstd[t], dot = 0, dotMagnitude = 0;
    for (int64_t i = 0; i < H; ++i) {
      double g = bf16(dy[t * H + i]) * bf16(w[i]);
      dot += g * bf16(x[t * H + i]);
      dotMagnitude += std::abs(g * bf16(x[t * H + i]));
    }
    double mean = dot / double(H);
    for (int64_t i = 0; i < H; ++i) {
      double xi = bf16(x[t * H + i]), dyi = bf16(dy[t * H + i]);
      double g = dyi * bf16(w[i]);
      double want = r * (g - xi * r * r * mean);
      dxWant[t * H + i] = want;
      dxBound[t * H + i] =
          kBF16Unit * std::abs(want) +
          1.01 * r *
              (std::abs(xi) * r * r *
                   (32 * kF32Unit * dotMagnitude / double(H) +
                    4 * kF32Unit * std::abs(mean)) +
               4 * kF32Unit *
                   (std::abs(g) + std::abs(xi) * r * r * std::abs(mean)));
      double normed = roundBF16(roundF32(xi * r));
      dwWant[i] += dyi * normed;
      dwMagnitude[i] += std::abs(dyi * normed);
    }
  }

  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(accumulate ? "accumulating" : "plain");
    if (accumulate)
      dx.upload(residual);
    else
      dx.fill(0xFF);
    partial.fill(0xFF);
    dw.fill(0xFF);
    kernels.run(accumulate ? keys.backwardAccumulate : keys.backward,
                {dyBuffer.address(), xBuffer.address(), wBuffer.address(),
                 rstd.address(), dx.address(), partial.address()});
    kernels.run(keys.weightGrad, {partial.address(), dw.address()});
    std::vector<uint16_t> gotDx = dx.download<uint16_t>(T * H);
    std::vector<uint16_t> gotDw = dw.download<uint16_t>(H);

    // Accumulating: out = bf16(bf16(dx) + residual); with e the bound above,
    // |out - (dx_ref + residual)| <= e (1 + u16) + u16 |dx_ref + residual|.
    Checker dxCheck("dx");
    for (int64_t k = 0; k < T * H; ++k) {
      double got = bf16(gotDx[k]);
      if (accumulate) {
        double old = bf16(residual[k]);
        double want = dxWant[k] + old;
        dxCheck.near(got, want,
                     dxBound[k] * (1 + kBF16Unit) + kBF16Unit * std::abs(want),
                     k);
        dxCheck.exact(got, roundBF16(roundBF16(dxWant[k]) + old));
      } else {
        dxCheck.near(got, dxWant[k], dxBound[k], k);
        dxCheck.exact(got, roundBF16(dxWant[k]));
      }
    }
    dxCheck.expectExactFraction(0.99);

    // dw: each block adds at most ceil(T / G) rows with f32 fmas, column_sum
    // adds the G partial sums in f32: at most T + G roundings, each <= u32
    // of the running magnitude sum|dy normed|; then the bf16 rounding.
    Checker dwCheck("dw");
    for (int64_t i = 0; i < H; ++i) {
      double got = bf16(gotDw[i]);
      dwCheck.near(got, dwWant[i],
                   kBF16Unit * std::abs(dwWant[i]) +
                       1.01 * double(T + G) * kF32Unit * dwMagnitude[i],
                   i);
      dwCheck.exact(got, roundBF16(dwWant[i]));
    }
    dwCheck.expectExactFraction(0.97);
  }

  // Adding to an earlier micro-batch's dw (from the partial sums above):
  // out = bf16(f32(old) + column sum), one more f32 addition than above.
  std::vector<uint16_t> old = randomBF16(H, rng, 0.5f);
  dw.upload(old);
  kernels.run(keys.weightGradAccumulate, {partial.address(), dw.address()});
  std::vector<uint16_t> summed = dw.download<uint16_t>(H);
  Checker sumCheck("dw added to an earlier one");
  for (int64_t i = 0; i < H; ++i) {
    double want = bf16(old[i]) + dwWant[i];
    sumCheck.near(bf16(summed[i]), want,
                  kBF16Unit * std::abs(want) +
                      1.01 * double(T + G + 1) * kF32Unit *
                          (dwMagnitude[i] + std::abs(bf16(old[i]))),
                  i);
    sumCheck.exact(bf16(summed[i]), roundBF16(want));
  }
  sumCheck.expectExactFraction(0.97);
}

/// The FP8 forward (`fused`) against rms_norm_fwd (`forward`) then
/// fp8_cast (`cast`) with the same scale: the same bytes, amax and rstd.
void checkFP8Forward(std::shared_ptr<cuda::Device> device, int64_t T, int64_t H,
                     const char *forward, const char *cast, const char *fused,
                     float scale) {
  KernelGroup kernels(device, "rms_norm");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> x = randomBF16(T * H, rng);
  for (int64_t i = 0; i < H; ++i) // a row far larger: the amax is there
    x[3 * H + i] = floatToBF16(bf16ToFloat(x[3 * H + i]) * 100.0f);
  std::vector<uint16_t> w(H);
  for (int64_t i = 0; i < H; ++i)
    w[i] = floatToBF16(1.0f + 0.1f * randomValues(1, rng)[0]);
  DeviceBuffer xBuffer(device, T * H * 2, "x"), wBuffer(device, H * 2, "w"),
      y(device, T * H * 2, "y"), rstd(device, T * 4, "rstd"),
      fusedRstd(device, T * 4, "fused rstd"), scaleBuffer(device, 4, "scale"),
      copy(device, T * H, "fp8 copy"), fusedCopy(device, T * H, "fused copy"),
      amax(device, 4, "amax"), fusedAmax(device, 4, "fused amax");
  xBuffer.upload(x);
  wBuffer.upload(w);
  scaleBuffer.upload(std::vector<float>{scale});
  for (DeviceBuffer *b : {&copy, &fusedCopy, &rstd, &fusedRstd})
    b->fill(0xFF);
  amax.fill(0);
  fusedAmax.fill(0);
  kernels.run(forward, {xBuffer.address(), wBuffer.address(), y.address(),
                        rstd.address()});
  kernels.run(cast, {y.address(), scaleBuffer.address(), copy.address(),
                     amax.address()});
  kernels.run(fused,
              {xBuffer.address(), wBuffer.address(), scaleBuffer.address(),
               fusedCopy.address(), fusedAmax.address(), fusedRstd.address()});
  expectSameBytes(copy, fusedCopy, T * H, fused);
  expectSameAmax(amax, fusedAmax, 0.0f);
  EXPECT_EQ(fusedRstd.download<float>(T), rstd.download<float>(T));
}

TEST(RMSNormKernel, FP8ForwardEqualsNormThenCast) {
  LLAMAC_REQUIRE_GPU(device);
  checkFP8Forward(device, kNormRows, kNormHidden, "fwd", "cast_e4m3",
                  "fwd_e4m3", 3.0f);
  // A block of 256 threads over rows of 25 chunks (idle warps), E5M2 with
  // a scale that saturates the large row.
  checkFP8Forward(device, kNormSmallRows, kNormSmallHidden, "fwd_small",
                  "cast_small_e5m2", "fwd_small_e5m2", 5000.0f);
}

TEST(RMSNormKernel, WideRowsMatchReference) {
  LLAMAC_REQUIRE_GPU(device);
  checkRMSNorm(device, kNormRows, kNormHidden,
               {"fwd", "bwd", "bwd_acc", "dw", "dw_acc"});
}

TEST(RMSNormKernel, PartialWarpMatchesReference) {
  LLAMAC_REQUIRE_GPU(device);
  checkRMSNorm(
      device, kNormSmallRows, kNormSmallHidden,
      {"fwd_small", "bwd_small", "bwd_acc_small", "dw_small", "dw_acc_small"});
}

} // namespace
