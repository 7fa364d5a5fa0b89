//===- GemmTuning.cpp - GEMM algorithms chosen by replaying the step ------===//

#include "llamac/Runtime/GemmTuning.h"

namespace llamac {

int gemmTuningCandidate(int round, int count) { return round % count; }

namespace {

using Choices = std::map<std::string, int>;

/// The step's mean milliseconds under `a` and under `b`, timed in the order
/// a, b, b, a.
Result<std::pair<double, double>> compare(const StepTimer &time,
                                          const Choices &a, const Choices &b) {
  double sums[2] = {0, 0};
  for (int which : {0, 1, 1, 0}) {
    Result<double> ms = time(which ? b : a);
    if (!ms)
      return ms.error();
    sums[which] += *ms;
  }
  return std::pair{sums[0] / 2, sums[1] / 2};
}

} // namespace

Result<GemmTuningResult> tuneGemmsByReplay(std::vector<GemmChoice> keys,
                                           const StepTimer &time,
                                           double margin) {
  Choices current;
  for (GemmChoice &key : keys) {
    // The fastest of the key's candidates, once each.
    int fastest = 0;
    double fastestMs = 0;
    for (int candidate : key.candidates) {
      current[key.key] = candidate;
      Result<double> ms = time(current);
      if (!ms)
        return ms.error();
      if (candidate == key.candidates.front() || *ms < fastestMs)
        fastest = candidate, fastestMs = *ms;
    }
    current[key.key] = 0;
    key.chosen = 0;
    if (fastest == 0) {
      key.heuristicMs = key.chosenMs = fastestMs;
      continue;
    }
    Choices trial = current;
    trial[key.key] = fastest;
    Result<std::pair<double, double>> means = compare(time, current, trial);
    if (!means)
      return means.error();
    key.heuristicMs = means->first;
    key.chosenMs = means->first;
    if (means->second < means->first * (1 - margin)) {
      key.chosen = fastest, key.chosenMs = means->second;
      current = trial;
    }
  }

  GemmTuningResult result;
  Result<std::pair<double, double>> means = compare(time, {}, current);
  if (!means)
    return means.error();
  result.heuristicMs = means->first;
  result.tunedMs = means->second;
  if (means->second >= means->first * (1 - margin)) {
    for (GemmChoice &key : keys)
      key.chosen = 0, key.chosenMs = key.heuristicMs;
    result.tunedMs = result.heuristicMs;
  }
  result.choices = std::move(keys);
  return result;
}

} // namespace llamac
