//===- GemmTuningTest.cpp - Choosing GEMM algorithms from timings ---------===//
//
// The GPU-free half of in-step GEMM tuning: which candidate each round
// runs, the rounds' order, and the choice from (key, pass, candidate, ms)
// records, fed with timings made up from known costs.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/GemmTuning.h"

#include <gtest/gtest.h>

#include <functional>

using namespace llamac;

namespace {

/// The records tuning makes over `rounds` for one GEMM `key` with `count`
/// candidates and `calls` steps per pass, each step costing
/// cost(candidate, pass) milliseconds.
std::vector<GemmTiming> simulate(const std::string &key, int count, int calls,
                                 const std::vector<int> &rounds,
                                 const std::function<double(int, int)> &cost) {
  std::vector<GemmTiming> timings;
  for (int pass = 0; pass < int(rounds.size()); ++pass) {
    int candidate = gemmTuningCandidate(rounds[pass], count);
    for (int call = 0; call < calls; ++call)
      timings.push_back({key, key + " step " + std::to_string(call), pass,
                         candidate, cost(candidate, pass)});
  }
  return timings;
}

TEST(GemmTuningTest, ShortCandidateListsRepeatTheirCandidates) {
  for (int round = 0; round < kGemmTuningCandidates; ++round) {
    EXPECT_EQ(gemmTuningCandidate(round, kGemmTuningCandidates), round);
    EXPECT_EQ(gemmTuningCandidate(round, 1), 0);
  }
  std::vector<int> three;
  for (int round = 0; round < kGemmTuningCandidates; ++round)
    three.push_back(gemmTuningCandidate(round, 3));
  EXPECT_EQ(three, (std::vector<int>{0, 1, 2, 0, 1, 2, 0, 1}));
}

TEST(GemmTuningTest, EverySecondSweepRunsTheRoundsBackwards) {
  EXPECT_EQ(gemmTuningRounds(1), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(gemmTuningRounds(2),
            (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 7, 6, 5, 4, 3, 2, 1, 0}));
  std::vector<int> three = gemmTuningRounds(3);
  ASSERT_EQ(three.size(), 24u);
  EXPECT_EQ(std::vector<int>(three.begin() + 16, three.end()),
            gemmTuningRounds(1));
  EXPECT_TRUE(gemmTuningRounds(0).empty());
}

// Two keys: one whose candidate 5 is fastest (two steps per pass), one
// whose heuristic choice is. Times are per pass, summed over its steps.
TEST(GemmTuningTest, KeepsEachKeysFastestCandidate) {
  std::vector<int> rounds = gemmTuningRounds(2);
  std::vector<GemmTiming> timings =
      simulate("4096x4096x4096", 8, 2, rounds,
               [](int candidate, int) { return candidate == 5 ? 1.5 : 2.0; });
  std::vector<GemmTiming> other =
      simulate("512x24x64", 4, 1, rounds, [](int candidate, int) {
        return candidate == 0 ? 0.25 : 0.5 + candidate;
      });
  timings.insert(timings.end(), other.begin(), other.end());
  Result<std::vector<GemmChoice>> choices = chooseGemmAlgorithms(timings);
  ASSERT_TRUE(choices.ok()) << choices.error().message;
  ASSERT_EQ(choices->size(), 2u);
  const GemmChoice &big = (*choices)[0], &small = (*choices)[1];
  EXPECT_EQ(big.key, "4096x4096x4096");
  EXPECT_EQ(big.label, "4096x4096x4096 step 0");
  EXPECT_EQ(big.calls, 2);
  EXPECT_EQ(big.candidates, 8);
  EXPECT_EQ(big.chosen, 5);
  EXPECT_DOUBLE_EQ(big.heuristicMs, 4.0);
  EXPECT_DOUBLE_EQ(big.chosenMs, 3.0);
  EXPECT_EQ(small.key, "512x24x64");
  EXPECT_EQ(small.calls, 1);
  EXPECT_EQ(small.candidates, 4);
  EXPECT_EQ(small.chosen, 0);
  EXPECT_DOUBLE_EQ(small.heuristicMs, 0.25);
  EXPECT_DOUBLE_EQ(small.chosenMs, 0.25);
}

// With 3 candidates over one sweep, candidate 2 runs in 2 passes and the
// others in 3: its total is the least though its mean is not.
TEST(GemmTuningTest, ComparesMeansPerPassNotTotals) {
  std::vector<GemmTiming> timings =
      simulate("k", 3, 1, gemmTuningRounds(1), [](int candidate, int) {
        return candidate == 0 ? 1.0 : candidate == 1 ? 1.2 : 1.4;
      });
  double total[3] = {};
  for (const GemmTiming &timing : timings)
    total[timing.candidate] += timing.ms;
  ASSERT_LT(total[2], total[0]); // 2 x 1.4 < 3 x 1.0
  Result<std::vector<GemmChoice>> choices = chooseGemmAlgorithms(timings);
  ASSERT_TRUE(choices.ok());
  EXPECT_EQ((*choices)[0].chosen, 0);
  EXPECT_DOUBLE_EQ((*choices)[0].chosenMs, 1.0);
}

TEST(GemmTuningTest, TiesKeepTheHeuristicsChoice) {
  Result<std::vector<GemmChoice>> choices = chooseGemmAlgorithms(
      simulate("k", 8, 3, gemmTuningRounds(2), [](int, int) { return 0.5; }));
  ASSERT_TRUE(choices.ok());
  EXPECT_EQ((*choices)[0].chosen, 0);
  EXPECT_EQ((*choices)[0].calls, 3);
}

// The GPU gets faster pass after pass (0.01 ms each): over one forward
// sweep the last candidate looks fastest; a second, reversed sweep gives
// every candidate the same mean drift, and the truly fastest (2) wins.
TEST(GemmTuningTest, AReversedSweepCancelsDrift) {
  auto cost = [](int candidate, int pass) {
    return (candidate == 2 ? 0.995 : 1.0) - 0.01 * pass;
  };
  Result<std::vector<GemmChoice>> one =
      chooseGemmAlgorithms(simulate("k", 8, 1, gemmTuningRounds(1), cost));
  Result<std::vector<GemmChoice>> two =
      chooseGemmAlgorithms(simulate("k", 8, 1, gemmTuningRounds(2), cost));
  ASSERT_TRUE(one.ok() && two.ok());
  EXPECT_EQ((*one)[0].chosen, 7);
  EXPECT_EQ((*two)[0].chosen, 2);
}

TEST(GemmTuningTest, RefusesAKeyWithoutItsHeuristicsTiming) {
  Result<std::vector<GemmChoice>> choices =
      chooseGemmAlgorithms({{"64x64x64:01", "layer 0 q_proj", 0, 1, 0.1}});
  ASSERT_FALSE(choices.ok());
  EXPECT_EQ(choices.error().message,
            "GEMM 64x64x64:01 (layer 0 q_proj): its heuristic's candidate 0 "
            "was never timed");
}

} // namespace
