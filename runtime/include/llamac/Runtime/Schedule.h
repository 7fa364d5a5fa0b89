//===- Schedule.h - Learning-rate schedules of the HF Trainer ---*- C++ -*-===//
//
// The three schedules people fine-tune with, exactly as transformers defines
// them (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
// `get_cosine_schedule_with_warmup` with num_cycles 0.5): a LambdaLR factor
// of the optimizer-step index, times the peak learning rate.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_SCHEDULE_H
#define LLAMAC_RUNTIME_SCHEDULE_H

#include "llamac/Runtime/Result.h"

#include <cstdint>
#include <string>

namespace llamac {

enum class LRScheduleKind { Constant, Linear, Cosine };

/// Parses "constant", "linear" or "cosine"; errors list the choices.
Result<LRScheduleKind> parseLRSchedule(const std::string &name);
/// The name parseLRSchedule accepts for \p kind.
const char *lrScheduleName(LRScheduleKind kind);

struct LRSchedule {
  LRScheduleKind kind = LRScheduleKind::Linear;
  /// The learning rate after warmup (the Trainer's `learning_rate`).
  double peak = 0;
  /// Steps of linear warmup from 0 (the Trainer's `warmup_steps`).
  int64_t warmupSteps = 0;
  /// Optimizer steps of the whole run (the Trainer's `max_steps`).
  int64_t totalSteps = 0;

  /// The LambdaLR factor at 0-based step index \p index (the scheduler's
  /// `last_epoch`), computed in the same order of operations as
  /// transformers so that the doubles agree bit for bit.
  double factor(int64_t index) const;
  /// The learning rate of optimizer step \p step (1-based): the one the
  /// Trainer's optimizer uses on its step-th update, peak * factor(step - 1).
  double at(int64_t step) const { return peak * factor(step - 1); }
};

} // namespace llamac

#endif // LLAMAC_RUNTIME_SCHEDULE_H
