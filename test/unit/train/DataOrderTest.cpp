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

TEST(DataOrderTest, StepBatchesTakeEachMicroBatchInOrder) {
  std::vector<TokenRow> rows = rowsOfLengths({3, 17, 40, 1});
  RowSampler sampler(4, /*shuffle=*/false, /*seed=*/0);
  StepBatches step =
      takeStepBatches(rows, sampler, /*gradAccum=*/2, /*batch=*/2, /*seq=*/64,
                      /*packed=*/false, /*padToLongest=*/true);
  ASSERT_EQ(step.microBatches.size(), 2u);
  EXPECT_EQ(step.microBatches[0].seq, 32); // rows 0 and 1: 17 rounds to 32
  EXPECT_EQ(step.microBatches[1].seq, 48); // rows 2 and 3: 40 rounds to 48
  EXPECT_EQ(step.tokens, 3 + 17 + 40 + 1);
  EXPECT_EQ(step.counted, 2 + 16 + 39 + 0); // a row of L tokens predicts L-1
  EXPECT_EQ(sampler.position(), 4);

  StepBatches fixed = takeStepBatches(rows, sampler, 1, 2, 64, false, false);
  ASSERT_EQ(fixed.microBatches.size(), 1u);
  EXPECT_EQ(fixed.microBatches[0].seq, 64);
  EXPECT_TRUE(fixed.microBatches[0].positionIds.empty());

  RowSampler packing(4, /*shuffle=*/false, /*seed=*/0);
  StepBatches packed = takeStepBatches(rows, packing, 1, 1, 64, true, false);
  ASSERT_EQ(packed.microBatches.size(), 1u);
  EXPECT_EQ(packed.microBatches[0].seq, 64);
  EXPECT_EQ(packed.microBatches[0].positionIds.size(), 64u);
}

TEST(PackBatchTest, ConcatenatesRowsRestartingPositions) {
  // Rows of 3, 4, 2 and 5 tokens into 2 sequences of 8: {3, 4} (row 2 does
  // not fit in the 1 left) and {2, 5}; row 0 of the next epoch does not fit
  // either and stays in the sampler.
  std::vector<TokenRow> rows = rowsOfLengths({3, 4, 2, 5});
  RowSampler sampler(4, /*shuffle=*/false, /*seed=*/0);
  Batch batch = packBatch(rows, sampler, 2, 8, /*padId=*/99);
  const int32_t X = kIgnoreLabel;
  EXPECT_EQ(batch.batch, 2);
  EXPECT_EQ(batch.seq, 8);
  EXPECT_EQ(batch.inputIds,
            (std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 99, //
                                  8, 9, 10, 11, 12, 13, 14, 99}));
  // Each row's first label is -100 (HF's separator); padding is ignored.
  EXPECT_EQ(batch.labels, (std::vector<int32_t>{X, 2, 3, X, 5, 6, 7, X, //
                                                X, 9, X, 11, 12, 13, 14, X}));
  EXPECT_EQ(batch.positionIds, (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 3, 0, //
                                                     0, 1, 0, 1, 2, 3, 4, 0}));
  EXPECT_EQ(batch.tokens, 14);
  EXPECT_EQ(sampler.position(), 4);
  // The shifted loss counts each row's own next-token targets only: never
  // the first token of the following row.
  EXPECT_EQ(countLossTokens(batch), 2 + 3 + 1 + 4);
}

TEST(PackBatchTest, TruncatesLongRowsAndLeavesWhatDoesNotFit) {
  std::vector<TokenRow> rows = rowsOfLengths({10, 2, 3});
  rows[1].labels = {kIgnoreLabel, kIgnoreLabel}; // a fully masked row
  RowSampler sampler(3, false, 0);
  // Row 0 is truncated to the whole sequence of 4.
  Batch first = packBatch(rows, sampler, 1, 4);
  EXPECT_EQ(first.inputIds, (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(first.positionIds, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(first.tokens, 4);
  EXPECT_EQ(sampler.position(), 1);
  // Row 1 (2 tokens) leaves room for 2: row 2 (3) waits for the next batch,
  // and the padding counts its own positions.
  Batch second = packBatch(rows, sampler, 1, 4, /*padId=*/7);
  EXPECT_EQ(second.inputIds, (std::vector<int32_t>{11, 12, 7, 7}));
  EXPECT_EQ(second.labels, std::vector<int32_t>(4, kIgnoreLabel));
  EXPECT_EQ(second.positionIds, (std::vector<int32_t>{0, 1, 0, 1}));
  EXPECT_EQ(second.tokens, 2);
  EXPECT_EQ(countLossTokens(second), 0);
  EXPECT_EQ(sampler.position(), 2);
  Batch third = packBatch(rows, sampler, 1, 4);
  EXPECT_EQ(third.inputIds, (std::vector<int32_t>{13, 14, 15, 0}));
  EXPECT_EQ(sampler.position(), 3);
}

TEST(PackBatchTest, ExactFitFillsTheSequence) {
  std::vector<TokenRow> rows = rowsOfLengths({2, 2, 4});
  RowSampler sampler(3, false, 0);
  Batch batch = packBatch(rows, sampler, 2, 4);
  EXPECT_EQ(batch.positionIds, (std::vector<int32_t>{0, 1, 0, 1, 0, 1, 2, 3}));
  EXPECT_EQ(batch.tokens, 8);
  EXPECT_EQ(sampler.position(), 3);
}

/// The batches a run packs in `count` calls from a fresh sampler, padded
/// with -1 (no real id).
std::vector<Batch> packedRun(const std::vector<TokenRow> &rows, bool shuffle,
                             uint64_t seed, int64_t position, int count) {
  RowSampler sampler(int64_t(rows.size()), shuffle, seed, position);
  std::vector<Batch> batches;
  for (int i = 0; i < count; ++i)
    batches.push_back(packBatch(rows, sampler, 3, 16, /*padId=*/-1));
  return batches;
}

bool sameBatch(const Batch &a, const Batch &b) {
  return a.inputIds == b.inputIds && a.labels == b.labels &&
         a.positionIds == b.positionIds && a.tokens == b.tokens;
}

TEST(PackBatchTest, ShuffledPackingIsDeterministicAndResumable) {
  std::vector<int> lengths;
  for (int i = 0; i < 23; ++i)
    lengths.push_back(1 + (i * 7) % 13);
  std::vector<TokenRow> rows = rowsOfLengths(lengths);
  std::vector<Batch> a = packedRun(rows, true, 5, 0, 12);
  std::vector<Batch> b = packedRun(rows, true, 5, 0, 12);
  std::vector<Batch> other = packedRun(rows, true, 6, 0, 12);
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(sameBatch(a[i], b[i])) << "batch " << i;
    differs |= !sameBatch(a[i], other[i]);
  }
  EXPECT_TRUE(differs) << "another seed packs the same batches";

  // Resuming from the position after 5 batches packs the same later ones.
  RowSampler sampler(int64_t(rows.size()), true, 5);
  for (int i = 0; i < 5; ++i)
    packBatch(rows, sampler, 3, 16, -1);
  std::vector<Batch> resumed = packedRun(rows, true, 5, sampler.position(), 7);
  for (size_t i = 0; i < resumed.size(); ++i)
    EXPECT_TRUE(sameBatch(resumed[i], a[5 + i])) << "batch " << 5 + i;

  // Every row of the first epoch is packed exactly once, whole (none is
  // longer than a sequence), in the sampler's order.
  RowSampler order(int64_t(rows.size()), true, 5);
  std::vector<int64_t> expected = order.take(int64_t(rows.size()));
  std::vector<int32_t> want, got;
  for (int64_t index : expected)
    want.insert(want.end(), rows[size_t(index)].inputIds.begin(),
                rows[size_t(index)].inputIds.end());
  for (const Batch &batch : a)
    for (int32_t id : batch.inputIds)
      if (id != -1 && got.size() < want.size())
        got.push_back(id);
  EXPECT_EQ(got, want);
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
