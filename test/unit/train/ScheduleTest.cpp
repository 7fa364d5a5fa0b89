//===- ScheduleTest.cpp - Learning-rate schedules vs their closed forms ---===//
//
// Each schedule against transformers' formulas written out by hand, with
// values worked on paper for small cases.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/Schedule.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace llamac;

namespace {

TEST(ScheduleTest, ParsesTheThreeNames) {
  for (auto kind : {LRScheduleKind::Constant, LRScheduleKind::Linear,
                    LRScheduleKind::Cosine}) {
    Result<LRScheduleKind> parsed = parseLRSchedule(lrScheduleName(kind));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, kind);
  }
  Result<LRScheduleKind> bad = parseLRSchedule("cosine_with_restarts");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message,
            "unknown learning-rate schedule 'cosine_with_restarts' "
            "(supported: constant, linear, cosine)");
}

TEST(ScheduleTest, ConstantWithWarmup) {
  LRSchedule schedule{LRScheduleKind::Constant, 1e-3, 4, 10};
  // Step s uses factor (s - 1) / 4 during warmup: 0, 1/4, 2/4, 3/4.
  EXPECT_EQ(schedule.at(1), 0.0);
  EXPECT_DOUBLE_EQ(schedule.at(2), 0.25e-3);
  EXPECT_DOUBLE_EQ(schedule.at(4), 0.75e-3);
  for (int step = 5; step <= 12; ++step)
    EXPECT_EQ(schedule.at(step), 1e-3);
  LRSchedule flat{LRScheduleKind::Constant, 2e-5, 0, 3};
  for (int step = 1; step <= 3; ++step)
    EXPECT_EQ(flat.at(step), 2e-5);
}

TEST(ScheduleTest, LinearMatchesTheClosedForm) {
  const int64_t total = 10, warmup = 3;
  LRSchedule schedule{LRScheduleKind::Linear, 1.0, warmup, total};
  for (int64_t step = 1; step <= total; ++step) {
    int64_t k = step - 1;
    double expected = k < warmup ? double(k) / warmup
                                 : double(total - k) / double(total - warmup);
    EXPECT_DOUBLE_EQ(schedule.at(step), expected) << "step " << step;
  }
  // Worked values: warmup 0, 4 steps: 1, 3/4, 1/2, 1/4; never negative.
  LRSchedule plain{LRScheduleKind::Linear, 4e-4, 0, 4};
  EXPECT_DOUBLE_EQ(plain.at(1), 4e-4);
  EXPECT_DOUBLE_EQ(plain.at(2), 3e-4);
  EXPECT_DOUBLE_EQ(plain.at(3), 2e-4);
  EXPECT_DOUBLE_EQ(plain.at(4), 1e-4);
  EXPECT_EQ(plain.at(6), 0.0);
}

TEST(ScheduleTest, CosineMatchesTheClosedForm) {
  const int64_t total = 12, warmup = 2;
  LRSchedule schedule{LRScheduleKind::Cosine, 3e-4, warmup, total};
  for (int64_t step = 1; step <= total; ++step) {
    int64_t k = step - 1;
    double factor = k < warmup ? double(k) / warmup
                               : 0.5 * (1 + std::cos(M_PI * double(k - warmup) /
                                                     double(total - warmup)));
    EXPECT_NEAR(schedule.at(step), 3e-4 * factor, 1e-19) << "step " << step;
  }
  // Halfway through the decay the factor is exactly 1/2; warmup 0, 4 steps:
  // 1, (1 + cos(pi/4))/2, 1/2, (1 + cos(3pi/4))/2.
  LRSchedule plain{LRScheduleKind::Cosine, 1.0, 0, 4};
  EXPECT_DOUBLE_EQ(plain.at(1), 1.0);
  EXPECT_DOUBLE_EQ(plain.at(2), (1 + std::sqrt(0.5)) / 2);
  EXPECT_NEAR(plain.at(3), 0.5, 1e-15);
  EXPECT_DOUBLE_EQ(plain.at(4), (1 - std::sqrt(0.5)) / 2);
  EXPECT_NEAR(plain.at(5), 0.0, 1e-16);
}

TEST(ScheduleTest, WarmupLongerThanTheRunStaysInWarmup) {
  LRSchedule schedule{LRScheduleKind::Linear, 1.0, 10, 4};
  for (int step = 1; step <= 4; ++step)
    EXPECT_DOUBLE_EQ(schedule.at(step), (step - 1) / 10.0);
}

} // namespace
