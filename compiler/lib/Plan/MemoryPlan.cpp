//===- MemoryPlan.cpp - Liveness-based offsets in one arena ---------------===//

#include "llamac/Plan/MemoryPlan.h"

#include <algorithm>
#include <numeric>

using namespace llamac;

static uint64_t align16(uint64_t bytes) { return (bytes + 15) / 16 * 16; }

bool LiveRange::overlaps(const LiveRange &other) const {
  auto intervals = [](const LiveRange &r) {
    std::vector<std::pair<int64_t, int64_t>> list = {{r.first, r.last}};
    if (r.carriedFrom >= 0)
      list.push_back({r.carriedFrom, INT64_MAX});
    return list;
  };
  for (auto [first, last] : intervals(*this))
    for (auto [otherFirst, otherLast] : intervals(other))
      if (otherFirst <= last && first <= otherLast)
        return true;
  return false;
}

MemoryPlan llamac::planMemory(const std::vector<LiveRange> &ranges) {
  std::vector<size_t> order(ranges.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return ranges[a].bytes > ranges[b].bytes;
  });

  MemoryPlan plan;
  plan.offsets.assign(ranges.size(), 0);
  std::vector<size_t> placed;
  for (size_t index : order) {
    const LiveRange &range = ranges[index];
    // Memory intervals of placed buffers alive at the same time, by offset.
    std::vector<std::pair<uint64_t, uint64_t>> busy;
    for (size_t other : placed) {
      const LiveRange &o = ranges[other];
      if (range.overlaps(o))
        busy.push_back(
            {plan.offsets[other], plan.offsets[other] + align16(o.bytes)});
    }
    std::sort(busy.begin(), busy.end());
    uint64_t offset = 0, size = align16(range.bytes);
    for (auto [begin, end] : busy) {
      if (offset + size <= begin)
        break;
      offset = std::max(offset, end);
    }
    plan.offsets[index] = offset;
    plan.arenaBytes = std::max(plan.arenaBytes, offset + size);
    placed.push_back(index);
  }
  return plan;
}
