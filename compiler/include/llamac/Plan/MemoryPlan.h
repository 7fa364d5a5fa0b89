//===- MemoryPlan.h - Liveness-based offsets in one arena -------*- C++ -*-===//

#ifndef LLAMAC_PLAN_MEMORYPLAN_H
#define LLAMAC_PLAN_MEMORYPLAN_H

#include <cstdint>
#include <vector>

namespace llamac {

/// A buffer the step needs from step index `first` to `last` (inclusive).
/// Buffers that live through the whole step (weights, optimizer state) have
/// first = 0 and last = the final step. A buffer that the end of one step
/// writes for the next one to read (first = 0) is also alive from
/// `carriedFrom` to the end; -1: not carried.
struct LiveRange {
  uint64_t bytes = 0;
  int64_t first = 0, last = 0;
  int64_t carriedFrom = -1;
  /// True when both are alive at some step index.
  bool overlaps(const LiveRange &other) const;
};

struct MemoryPlan {
  std::vector<uint64_t> offsets; ///< One per range, 16-byte aligned.
  uint64_t arenaBytes = 0;
};

/// Assigns offsets so that ranges alive at the same time never overlap in
/// memory, placing the largest first at the lowest offset that fits (greedy
/// by size, as in TFLite's and llm.c-style planners). The arena is at least
/// the largest sum of bytes alive at one step and at most the sum of all.
MemoryPlan planMemory(const std::vector<LiveRange> &ranges);

} // namespace llamac

#endif // LLAMAC_PLAN_MEMORYPLAN_H
