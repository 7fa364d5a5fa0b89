//===- GemmTuningTest.cpp - GEMM algorithms chosen by replaying the step --===//
//
// The GPU-free half of GEMM tuning: the coordinate descent over GEMM keys,
// fed with step times made up from known costs per (key, candidate), with
// noise, drift and a failing timer.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/GemmTuning.h"

#include <gtest/gtest.h>

#include <random>

using namespace llamac;

namespace {

/// Keys "a", "b", "c" with 3, 1 and 8 candidates.
std::vector<GemmChoice> threeKeys() {
  std::vector<GemmChoice> keys(3);
  keys[0].key = "a", keys[0].candidates = {0, 1, 2};
  keys[1].key = "b";
  keys[2].key = "c", keys[2].candidates = {0, 1, 2, 3, 4, 5, 6, 7};
  for (GemmChoice &key : keys)
    key.label = "label of " + key.key;
  return keys;
}

/// A step of 100 ms plus `cost` of each key's candidate (0 for candidate 0
/// and for keys not in `costs`), counting its calls.
struct AdditiveStep {
  std::map<std::string, std::vector<double>> costs;
  int calls = 0;
  Result<double> operator()(const std::map<std::string, int> &choices) {
    ++calls;
    double ms = 100;
    for (const auto &[key, candidate] : choices)
      if (costs.count(key))
        ms += costs[key][candidate];
    return ms;
  }
};

TEST(GemmTuningTest, KeepsEachKeysFastestCandidate) {
  AdditiveStep step;
  step.costs["a"] = {0, 0.5, -0.8};
  step.costs["c"] = {0, -0.3, 0.2, -1.2, 0, 0, -1.1, 0.4};
  Result<GemmTuningResult> tuned =
      tuneGemmsByReplay(threeKeys(), std::ref(step), 0.002);
  ASSERT_TRUE(tuned.ok()) << tuned.error().message;
  ASSERT_EQ(tuned->choices.size(), 3u);
  const GemmChoice &a = tuned->choices[0], &b = tuned->choices[1],
                   &c = tuned->choices[2];
  EXPECT_EQ(a.chosen, 2);
  EXPECT_EQ(b.chosen, 0);
  EXPECT_EQ(c.chosen, 3);
  EXPECT_EQ(a.label, "label of a");
  // Each key's times are the step's with the keys before it tuned.
  EXPECT_DOUBLE_EQ(a.heuristicMs, 100);
  EXPECT_DOUBLE_EQ(a.chosenMs, 99.2);
  EXPECT_DOUBLE_EQ(b.heuristicMs, 99.2);
  EXPECT_DOUBLE_EQ(b.chosenMs, 99.2);
  EXPECT_DOUBLE_EQ(c.heuristicMs, 99.2);
  EXPECT_DOUBLE_EQ(c.chosenMs, 98.0);
  EXPECT_DOUBLE_EQ(tuned->heuristicMs, 100);
  EXPECT_DOUBLE_EQ(tuned->tunedMs, 98.0);
  // Once per candidate, 0 c c 0 for the two keys that moved, and the final
  // comparison.
  EXPECT_EQ(step.calls, 3 + 4 + 1 + 8 + 4 + 4);
}

TEST(GemmTuningTest, GainsWithinTheMarginKeepTheHeuristic) {
  AdditiveStep step;
  step.costs["a"] = {0, -0.1, -0.15}; // 0.15% of the step
  step.costs["c"] = {0, 0.1, 0.2, -0.05, 0, 0, 0, 0};
  Result<GemmTuningResult> tuned =
      tuneGemmsByReplay(threeKeys(), std::ref(step), 0.002);
  ASSERT_TRUE(tuned.ok()) << tuned.error().message;
  for (const GemmChoice &choice : tuned->choices)
    EXPECT_EQ(choice.chosen, 0) << choice.key;
  EXPECT_DOUBLE_EQ(tuned->tunedMs, tuned->heuristicMs);
}

TEST(GemmTuningTest, DriftAloneChoosesNothing) {
  // Every run 0.05 ms faster than the one before (a GPU warming up): the
  // later candidates look faster when timed once each, but not in the
  // 0 c c 0 comparisons.
  int calls = 0;
  StepTimer warming = [&](const std::map<std::string, int> &) {
    return Result<double>(100 - 0.05 * calls++);
  };
  Result<GemmTuningResult> tuned =
      tuneGemmsByReplay(threeKeys(), warming, 0.002);
  ASSERT_TRUE(tuned.ok()) << tuned.error().message;
  for (const GemmChoice &choice : tuned->choices)
    EXPECT_EQ(choice.chosen, 0) << choice.key;
}

TEST(GemmTuningTest, FindsRealGainsThroughNoise) {
  // ±0.1 ms of noise a run (0.1% of the step), a 1 ms gain on a's
  // candidate 1 and c's candidate 5.
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> noise(-0.1, 0.1);
  AdditiveStep step;
  step.costs["a"] = {0, -1, 0};
  step.costs["c"] = {0, 0, 0, 0, 0, -1, 0, 0};
  StepTimer noisy = [&](const std::map<std::string, int> &choices) {
    return Result<double>(*step(choices) + noise(rng));
  };
  Result<GemmTuningResult> tuned = tuneGemmsByReplay(threeKeys(), noisy, 0.002);
  ASSERT_TRUE(tuned.ok()) << tuned.error().message;
  EXPECT_EQ(tuned->choices[0].chosen, 1);
  EXPECT_EQ(tuned->choices[2].chosen, 5);
  EXPECT_NEAR(tuned->heuristicMs - tuned->tunedMs, 2, 0.2);
}

TEST(GemmTuningTest, ChoicesThatDoNotAddUpGoBack) {
  // a's candidate 1 and c's candidate 1 each gain 1 ms alone, but together
  // cost 3 ms more than neither: with a kept, c's candidate 1 is timed on
  // top of it (103 ms) and not kept.
  StepTimer clash = [](const std::map<std::string, int> &choices) {
    auto at = [&](const char *key) {
      auto found = choices.find(key);
      return found == choices.end() ? 0 : found->second;
    };
    bool a = at("a") == 1, c = at("c") == 1;
    return Result<double>(a && c ? 103.0 : a || c ? 99.0 : 100.0);
  };
  Result<GemmTuningResult> tuned = tuneGemmsByReplay(threeKeys(), clash, 0.002);
  ASSERT_TRUE(tuned.ok()) << tuned.error().message;
  EXPECT_EQ(tuned->choices[0].chosen, 1);
  EXPECT_EQ(tuned->choices[2].chosen, 0);
  EXPECT_DOUBLE_EQ(tuned->tunedMs, 99.0);
}

TEST(GemmTuningTest, TimerErrorsComeBack) {
  int calls = 0;
  StepTimer failing = [&](const std::map<std::string, int> &) {
    if (++calls == 5)
      return Result<double>(Error{"capture failed"});
    return Result<double>(100.0);
  };
  Result<GemmTuningResult> tuned =
      tuneGemmsByReplay(threeKeys(), failing, 0.002);
  ASSERT_FALSE(tuned.ok());
  EXPECT_EQ(tuned.error().message, "capture failed");
}

TEST(GemmTuningTest, ShortCandidateListsRepeatTheirCandidates) {
  for (int round = 0; round < kGemmTuningCandidates; ++round) {
    EXPECT_EQ(gemmTuningCandidate(round, kGemmTuningCandidates), round);
    EXPECT_EQ(gemmTuningCandidate(round, 1), 0);
    EXPECT_EQ(gemmTuningCandidate(round, 3), round % 3);
  }
}

} // namespace
