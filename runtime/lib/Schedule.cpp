//===- Schedule.cpp - Learning-rate schedules of the Hugging Face Trainer -===//

#include "llamac/Runtime/Schedule.h"

#include <algorithm>
#include <cmath>

using namespace llamac;

Result<LRScheduleKind> llamac::parseLRSchedule(const std::string &name) {
  if (name == "constant")
    return LRScheduleKind::Constant;
  if (name == "linear")
    return LRScheduleKind::Linear;
  if (name == "cosine")
    return LRScheduleKind::Cosine;
  return Error{"unknown learning-rate schedule '" + name +
               "' (supported: constant, linear, cosine)"};
}

const char *llamac::lrScheduleName(LRScheduleKind kind) {
  switch (kind) {
  case LRScheduleKind::Constant:
    return "constant";
  case LRScheduleKind::Linear:
    return "linear";
  case LRScheduleKind::Cosine:
    return "cosine";
  }
  return "?";
}

double LRSchedule::factor(int64_t index) const {
  // transformers/optimization.py: every warmup divides by max(1, warmup).
  if (index < warmupSteps)
    return double(index) / double(std::max<int64_t>(1, warmupSteps));
  switch (kind) {
  case LRScheduleKind::Constant:
    return 1.0;
  case LRScheduleKind::Linear:
    return std::max(0.0,
                    double(totalSteps - index) /
                        double(std::max<int64_t>(1, totalSteps - warmupSteps)));
  case LRScheduleKind::Cosine: {
    constexpr double kNumCycles = 0.5;
    double progress = double(index - warmupSteps) /
                      double(std::max<int64_t>(1, totalSteps - warmupSteps));
    return std::max(0.0,
                    0.5 * (1.0 + std::cos(M_PI * kNumCycles * 2.0 * progress)));
  }
  }
  return 1.0;
}
