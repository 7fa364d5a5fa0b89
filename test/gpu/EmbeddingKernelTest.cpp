//===- EmbeddingKernelTest.cpp - Embedding lookup and its gradient -------===//
//
// embedding_fwd must copy table rows exactly (zeros for an id outside the
// table). embedding_bwd must write each occurring id's row as the f32 sum,
// from 0.0 in increasing row order, of that id's gradient rows, rounded to
// nearest even (or added to an earlier micro-batch's gradient first), and
// leave every other row alone: bit for bit what the host computes, and the
// same bits on every run. The vocabulary is small so that ids repeat.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

#include <limits>

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t T = kEmbeddingRows, V = kEmbeddingVocab, H = kEmbeddingHidden;

/// `rows` random ids: every third row has id 7 (many repeats in every word
/// of the backward's row mask), the others ids in [0, V) but none that is 3
/// modulo 5 (rows of the table no id selects), and five ids outside the
/// table (row 0's among them).
std::vector<int32_t> randomIds(int64_t rows, std::mt19937 &rng) {
  std::uniform_int_distribution<int32_t> pick(0, int32_t(V) - 1);
  std::vector<int32_t> ids(rows);
  for (int64_t t = 0; t < rows; ++t) {
    int32_t id = pick(rng);
    ids[t] = t % 3 == 1 ? 7 : id % 5 == 3 ? id - 1 : id;
  }
  ids[0] = -1;
  ids[5] = -3;
  ids[40] = std::numeric_limits<int32_t>::max();
  ids[64] = std::numeric_limits<int32_t>::min();
  ids[rows - 2] = int32_t(V);
  return ids;
}

/// The embedding gradient of `table` (V rows of `hidden`) on the host: each
/// id in [0, V) that occurs gets the f32 sum, from 0.0f in increasing t, of
/// its rows of dout, rounded to nearest even; with `accumulate` the sum is
/// added to the row's old value in f32 first. Other rows keep their bits.
std::vector<uint16_t> backwardReference(const std::vector<int32_t> &ids,
                                        const std::vector<uint16_t> &dout,
                                        int64_t hidden,
                                        std::vector<uint16_t> table,
                                        bool accumulate) {
  for (int32_t v = 0; v < V; ++v) {
    std::vector<float> sum(hidden, 0.0f);
    bool occurs = false;
    for (size_t t = 0; t < ids.size(); ++t) {
      if (ids[t] != v)
        continue;
      occurs = true;
      for (int64_t i = 0; i < hidden; ++i)
        sum[i] += bf16ToFloat(dout[t * hidden + i]);
    }
    if (!occurs)
      continue;
    for (int64_t i = 0; i < hidden; ++i) {
      uint16_t &element = table[v * hidden + i];
      element =
          floatToBF16(accumulate ? bf16ToFloat(element) + sum[i] : sum[i]);
    }
  }
  return table;
}

TEST(EmbeddingKernel, ForwardCopiesRows) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "embedding");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<int32_t> ids = randomIds(T, rng);
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

TEST(EmbeddingKernel, BackwardSumsEachIdsRowsInOrder) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "embedding");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  struct Case {
    const char *key;
    int64_t rows, hidden;
    bool accumulate;
  };
  for (Case c :
       {Case{"bwd", T, H, false},
        {"bwd_acc", T, H, true},
        {"bwd_long", kEmbeddingLongRows, kEmbeddingLongHidden, false},
        {"bwd_long_acc", kEmbeddingLongRows, kEmbeddingLongHidden, true}}) {
    SCOPED_TRACE(c.key);
    std::vector<int32_t> ids = randomIds(c.rows, rng);
    std::vector<uint16_t> dout = randomBF16(c.rows * c.hidden, rng, 0.01f);
    // The table before the run: an earlier micro-batch's gradient when
    // accumulating; otherwise bits the kernel must leave in the rows of the
    // ids that do not occur (the plan zeroes the table first).
    std::vector<uint16_t> before = randomBF16(V * c.hidden, rng, 0.01f);
    std::vector<uint16_t> want =
        backwardReference(ids, dout, c.hidden, before, c.accumulate);
    std::vector<bool> occurs(V, false);
    for (int32_t id : ids)
      if (id >= 0 && id < V)
        occurs[id] = true;
    ASSERT_FALSE(occurs[3]); // the rows to leave alone exist
    ASSERT_TRUE(occurs[7]);

    DeviceBuffer idsBuffer(device, c.rows * 4, "ids"),
        doutBuffer(device, c.rows * c.hidden * 2, "dout"),
        dtable(device, V * c.hidden * 2, "table gradient");
    idsBuffer.upload(ids);
    doutBuffer.upload(dout);
    std::vector<uint16_t> runs[2];
    for (std::vector<uint16_t> &got : runs) {
      dtable.upload(before);
      kernels.run(
          c.key, {idsBuffer.address(), doutBuffer.address(), dtable.address()});
      got = dtable.download<uint16_t>(V * c.hidden);
    }

    int64_t wrongSums = 0, touched = 0, differentRuns = 0;
    for (int64_t k = 0; k < V * c.hidden; ++k) {
      bool occurring = occurs[k / c.hidden];
      if (runs[0][k] != want[k] && (occurring ? ++wrongSums : ++touched) <= 5)
        ADD_FAILURE() << (occurring ? "sum" : "untouched row") << " at row "
                      << k / c.hidden << ", column " << k % c.hidden << ": 0x"
                      << std::hex << runs[0][k] << ", want 0x" << want[k];
      differentRuns += runs[0][k] != runs[1][k];
    }
    EXPECT_EQ(wrongSums, 0) << "elements of occurring ids not bit-exact";
    EXPECT_EQ(touched, 0) << "elements of absent ids changed";
    EXPECT_EQ(differentRuns, 0) << "elements differing between two runs";
  }
}

} // namespace
