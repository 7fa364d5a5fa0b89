//===- AddKernelTest.cpp - Elementwise bf16 add ---------------------------===//
//
// add_bf16 must round every sum a + b correctly (the f32 sum rounded to
// bf16 is the correctly rounded sum: f32 has more than 2 * 8 + 2 bits), into
// a fresh buffer and in place over a.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t N = kAddElements;

TEST(AddKernel, RoundsEverySumCorrectly) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "add");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> a = randomBF16(N, rng), b = randomBF16(N, rng, 0.01f);
  DeviceBuffer aBuffer(device, N * 2, "a"), bBuffer(device, N * 2, "b");
  DeviceBuffer out(device, N * 2, "sum");
  aBuffer.upload(a);
  bBuffer.upload(b);
  out.fill(0xFF);
  kernels.run("add", {aBuffer.address(), bBuffer.address(), out.address()});
  std::vector<uint16_t> got = out.download<uint16_t>(N);
  kernels.run("add", {aBuffer.address(), bBuffer.address(), aBuffer.address()});
  std::vector<uint16_t> inPlace = aBuffer.download<uint16_t>(N);
  int64_t wrong = 0, wrongInPlace = 0;
  for (int64_t i = 0; i < N; ++i) {
    uint16_t want = doubleToBF16(bf16(a[i]) + bf16(b[i]));
    wrong += got[i] != want;
    wrongInPlace += inPlace[i] != want;
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(wrongInPlace, 0);
}

} // namespace
