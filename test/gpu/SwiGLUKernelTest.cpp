//===- SwiGLUKernelTest.cpp - SwiGLU forward and backward ----------------===//
//
// swiglu_fwd and swiglu_bwd read gate and up as the two column halves of the
// fused gate-up buffer [T, 2F] and are checked against transformers' math in
// double (silu's output rounded to bf16 where the model rounds it). The
// backward runs in place (dgu over gu), as the plan may run it.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t T = kSwigluRows, F = kSwigluWidth;

double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

TEST(SwiGLUKernel, ForwardAndBackwardMatchReference) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "swiglu");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> gu = randomBF16(T * 2 * F, rng, 3.0f);
  std::vector<uint16_t> dy = randomBF16(T * F, rng, 0.1f);

  DeviceBuffer guBuffer(device, T * 2 * F * 2, "gate-up");
  DeviceBuffer out(device, T * F * 2, "swiglu"),
      dyBuffer(device, T * F * 2, "dy");
  guBuffer.upload(gu);
  dyBuffer.upload(dy);
  out.fill(0xFF);
  kernels.run("fwd", {guBuffer.address(), out.address()});
  std::vector<uint16_t> got = out.download<uint16_t>(T * F);
  // In place: the gradient overwrites gate-up.
  kernels.run("bwd",
              {dyBuffer.address(), guBuffer.address(), guBuffer.address()});
  std::vector<uint16_t> grads = guBuffer.download<uint16_t>(T * 2 * F);

  // silu in f32: exp (<= 2 ulp), 1 + e, the division: relative error <= 4 u32
  // (8 with margin). Forward: bf16(bf16(silu) up) is off silu up by at most
  // (2 u16 + 8 u32)(1 + u16) relatively.
  // Backward, d up = bf16(dy bf16(silu)): the same bound on dy silu.
  // d gate = bf16(dy up s (1 + g (1 - s))): the f32 factors carry <= 8 u32
  // relative error each except 1 + g (1 - s), which can cancel: its error is
  // <= 4 u32 (1 + |g|) absolute; so |err| <= u16 |ref| +
  // 16 u32 |dy up s| (1 + |g| + |1 + g (1 - s)|).
  Checker forward("swiglu"), dGate("d gate"), dUp("d up");
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < F; ++j) {
      int64_t k = t * F + j;
      double g = bf16(gu[t * 2 * F + j]), u = bf16(gu[t * 2 * F + F + j]);
      double d = bf16(dy[k]);
      double s = sigmoid(g), silu = g * s;
      double want = silu * u;
      double bound = (2 * kBF16Unit + 8 * kF32Unit) * 1.01 * std::abs(want);
      forward.near(bf16(got[k]), want, bound, k);
      forward.exact(bf16(got[k]), roundBF16(roundBF16(silu) * u));

      double factor = 1 + g * (1 - s);
      double wantGate = d * u * s * factor;
      double gotGate = bf16(grads[t * 2 * F + j]);
      dGate.near(gotGate, wantGate,
                 kBF16Unit * std::abs(wantGate) +
                     16 * kF32Unit * std::abs(d * u * s) *
                         (1 + std::abs(g) + std::abs(factor)),
                 k);
      dGate.exact(gotGate, roundBF16(wantGate));

      double wantUp = d * silu;
      double gotUp = bf16(grads[t * 2 * F + F + j]);
      dUp.near(gotUp, wantUp,
               (2 * kBF16Unit + 8 * kF32Unit) * 1.01 * std::abs(wantUp), k);
      dUp.exact(gotUp, roundBF16(d * roundBF16(silu)));
    }
  forward.expectExactFraction(0.99);
  dGate.expectExactFraction(0.99);
  dUp.expectExactFraction(0.99);
}

} // namespace
