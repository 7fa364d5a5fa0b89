//===- DataOrderTest.cpp - Row order, batching and padding ----------------===//

#include "llamac/Runtime/DataOrder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>

using namespace llamac;

namespace {

std::vector<TokenRow> rowsOfLengths(const std::vector<int> &lengths) {
  std::vector<TokenRow> rows;
  int32_t next = 1;
  for (int length : lengths) {
    TokenRow row;
    for (int i = 0; i < length; ++i)
      row.inputIds.push_back(next++ % 100);
    row.labels = row.inputIds;
    rows.push_back(row);
  }
  return rows;
}

TEST(RowSamplerTest, FileOrderWrapsAroundLikeMakeBatch) {
  RowSampler sampler(5, /*shuffle=*/false, /*seed=*/0);
  EXPECT_EQ(sampler.take(3), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(sampler.take(3), (std::vector<int64_t>{3, 4, 0}));
  EXPECT_EQ(sampler.position(), 6);
  EXPECT_EQ(sampler.epoch(), 1);
}

TEST(RowSamplerTest, ShuffleIsAPermutationPerEpochAndReproducible) {
  const int64_t n = 50;
  RowSampler a(n, true, 7), b(n, true, 7), other(n, true, 8);
  std::vector<int64_t> epoch0 = a.take(n), epoch1 = a.take(n);
  EXPECT_EQ(b.take(n), epoch0);
  EXPECT_NE(other.take(n), epoch0);
  for (const auto &epoch : {epoch0, epoch1}) {
    std::vector<int64_t> sorted = epoch;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(sorted, all);
  }
  EXPECT_NE(epoch0, epoch1);
  std::vector<int64_t> identity(n);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(epoch0, identity);
}

TEST(RowSamplerTest, ResumesFromAPosition) {
  RowSampler whole(13, true, 3);
  std::vector<int64_t> first = whole.take(20), rest = whole.take(17);
  RowSampler resumed(13, true, 3, /*position=*/20);
  EXPECT_EQ(resumed.take(17), rest);
  EXPECT_EQ(resumed.position(), 37);
}

TEST(DataOrderTest, GatherBatchPadsAndTruncates) {
  std::vector<TokenRow> rows = rowsOfLengths({3, 6, 1});
  rows[1].labels[0] = kIgnoreLabel;
  Batch batch = gatherBatch(rows, {1, 0}, 4, /*padId=*/9);
  EXPECT_EQ(batch.batch, 2);
  EXPECT_EQ(batch.seq, 4);
  EXPECT_EQ(batch.tokens, 4 + 3);
  EXPECT_EQ(batch.inputIds, (std::vector<int32_t>{4, 5, 6, 7, 1, 2, 3, 9}));
  EXPECT_EQ(batch.labels, (std::vector<int32_t>{kIgnoreLabel, 5, 6, 7, 1, 2, 3,
                                                kIgnoreLabel}));
}

TEST(DataOrderTest, PaddedLengthRoundsUpToSixteenWithinSeq) {
  std::vector<TokenRow> rows = rowsOfLengths({3, 17, 40, 1, 64});
  EXPECT_EQ(paddedLength(rows, {0}, 256), 16);
  EXPECT_EQ(paddedLength(rows, {0, 1}, 256), 32);
  EXPECT_EQ(paddedLength(rows, {2, 3}, 256), 48);
  EXPECT_EQ(paddedLength(rows, {4}, 256), 64);
  EXPECT_EQ(paddedLength(rows, {2}, 40), 40); // capped at --seq
  EXPECT_EQ(paddedLength(rows, {4}, 50), 50); // truncated rows
  EXPECT_EQ(paddedLength(rows, {3}, 8), 8);   // --seq below 16
}

TEST(DataOrderTest, CountsTheShiftedLossPositions) {
  std::vector<TokenRow> rows = rowsOfLengths({5, 2});
  rows[0].labels[0] = kIgnoreLabel; // never predicted anyway
  rows[0].labels[3] = kIgnoreLabel;
  Batch batch = gatherBatch(rows, {0, 1}, 4);
  // Row 0: targets labels[1..3] = {l, l, -100}: 2. Row 1: labels[1] only: 1.
  EXPECT_EQ(countLossTokens(batch), 3);
}

TEST(DataOrderTest, FingerprintSeesEveryToken) {
  std::vector<TokenRow> rows = rowsOfLengths({4, 4});
  uint64_t base = fingerprintRows(rows);
  EXPECT_EQ(fingerprintRows(rows), base);
  std::vector<TokenRow> changed = rows;
  changed[1].labels[2] = kIgnoreLabel;
  EXPECT_NE(fingerprintRows(changed), base);
  changed = rows;
  std::swap(changed[0], changed[1]);
  EXPECT_NE(fingerprintRows(changed), base);
}

} // namespace
