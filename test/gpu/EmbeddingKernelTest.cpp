//===- EmbeddingKernelTest.cpp - Embedding lookup and its gradient -------===//
//
// embedding_fwd must copy table rows exactly (zeros for an id outside the
// table); embedding_bwd must add every gradient row into its id's f32 row
// with atomics, and f32_to_bf16 round the result to nearest even (or add it
// to a gradient summed over earlier micro-batches). The vocabulary is small
// so that ids repeat and the atomics collide.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t T = kEmbeddingRows, V = kEmbeddingVocab, H = kEmbeddingHidden;

/// Random ids in [0, V), two of them outside the table.
std::vector<int32_t> randomIds(std::mt19937 &rng) {
  std::uniform_int_distribution<int32_t> pick(0, int32_t(V) - 1);
  std::vector<int32_t> ids(T);
  for (int32_t &id : ids)
    id = pick(rng);
  ids[5] = -3;
  ids[T - 2] = int32_t(V);
  return ids;
}

TEST(EmbeddingKernel, ForwardCopiesRows) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "embedding");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<int32_t> ids = randomIds(rng);
  std::vector<uint16_t> table = randomBF16(V * H, rng);

  DeviceBuffer idsBuffer(device, T * 4, "ids"),
      tableBuffer(device, V * H * 2, "table");
  DeviceBuffer out(device, T * H * 2, "embeddings");
  idsBuffer.upload(ids);
  tableBuffer.upload(table);
  out.fill(0xFF);
  kernels.run("fwd",
              {idsBuffer.address(), tableBuffer.address(), out.address()});
  std::vector<uint16_t> got = out.download<uint16_t>(T * H);

  int64_t wrong = 0;
  for (int64_t t = 0; t < T; ++t) {
    bool inside = ids[t] >= 0 && ids[t] < V;
    for (int64_t i = 0; i < H; ++i) {
      uint16_t want = inside ? table[ids[t] * H + i] : uint16_t(0);
      wrong += got[t * H + i] != want;
    }
  }
  EXPECT_EQ(wrong, 0) << "elements differing from their table row";
}

TEST(EmbeddingKernel, BackwardAccumulatesRowsOfEachId) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "embedding");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<int32_t> ids = randomIds(rng);
  std::vector<uint16_t> dout = randomBF16(T * H, rng, 0.01f);

  DeviceBuffer idsBuffer(device, T * 4, "ids"),
      doutBuffer(device, T * H * 2, "dout");
  DeviceBuffer dtable(device, V * H * 4, "f32 table gradient");
  DeviceBuffer dtableBF16(device, V * H * 2, "bf16 table gradient");
  idsBuffer.upload(ids);
  doutBuffer.upload(dout);
  dtable.fill(0); // the plan zeroes the accumulator
  dtableBF16.fill(0xFF);
  kernels.run("bwd",
              {idsBuffer.address(), doutBuffer.address(), dtable.address()});
  kernels.run("to_bf16", {dtable.address(), dtableBF16.address()});
  std::vector<float> got = dtable.download<float>(V * H);
  std::vector<uint16_t> gotBF16 = dtableBF16.download<uint16_t>(V * H);

  // Reference sums in double. The n terms of an element are added in f32 in
  // some order: each addition rounds once, so the error is at most
  // (n - 1) u32 sum |terms|.
  std::vector<double> want(V * H, 0.0), magnitude(V * H, 0.0);
  std::vector<int64_t> uses(V, 0);
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= V)
      continue;
    ++uses[ids[t]];
    for (int64_t i = 0; i < H; ++i) {
      want[ids[t] * H + i] += bf16(dout[t * H + i]);
      magnitude[ids[t] * H + i] += std::abs(bf16(dout[t * H + i]));
    }
  }
  Checker f32Sums("f32 table gradient");
  int64_t badRounding = 0;
  for (int64_t v = 0; v < V; ++v)
    for (int64_t i = 0; i < H; ++i) {
      int64_t k = v * H + i;
      double bound =
          double(std::max<int64_t>(uses[v] - 1, 0)) * kF32Unit * magnitude[k];
      f32Sums.near(got[k], want[k], bound, k);
      badRounding += gotBF16[k] != floatToBF16(got[k]);
    }
  f32Sums.expectExactFraction(0.0); // any order of the atomics
  EXPECT_EQ(badRounding, 0) << "f32_to_bf16 results not round-to-nearest-even";

  // Added to an earlier micro-batch's gradient: bf16(f32(old) + sum), one
  // IEEE f32 addition and one rounding to nearest even, which the host
  // repeats bit for bit.
  std::vector<uint16_t> old = randomBF16(V * H, rng, 0.01f);
  dtableBF16.upload(old);
  kernels.run("to_bf16_acc", {dtable.address(), dtableBF16.address()});
  std::vector<uint16_t> summed = dtableBF16.download<uint16_t>(V * H);
  int64_t badSums = 0;
  for (int64_t k = 0; k < V * H; ++k)
    badSums += summed[k] != floatToBF16(bf16ToFloat(old[k]) + got[k]);
  EXPECT_EQ(badSums, 0) << "accumulating f32_to_bf16 is not bf16(old + in)";
}

} // namespace
