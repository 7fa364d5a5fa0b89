//===- GemmTuning.h - GEMM algorithms chosen by replaying the step -*- C++
//-*-===//
//
// GEMM tuning tries cuBLASLt's candidate algorithms where they run: in the
// whole train step replayed as a CUDA graph, as training runs it
// (Executor::tuneGemms). Timing each GEMM alone ranked candidates unlike
// the step: back to back on warm caches (session 2), and eagerly inside
// the step with an event after every launch (session 6: the choices made
// the replayed step 6.5 ms slower; bench/RESULTS.md). So a candidate is
// judged by the step's time alone, one GEMM key at a time, and kept only
// when the step gets faster by more than the replays' noise. This file
// holds the search, which needs no GPU; a timer function runs the step.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_GEMMTUNING_H
#define LLAMAC_RUNTIME_GEMMTUNING_H

#include "llamac/Runtime/Result.h"

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace llamac {

/// The heuristic's candidates asked for per GEMM when tuning. Candidate
/// discovery runs the step once per round r < kGemmTuningCandidates, every
/// GEMM with its candidate gemmTuningCandidate(r, count).
constexpr int kGemmTuningCandidates = 8;

/// How much faster (relative) the step must get for tuning to keep a
/// candidate: 0.2%, 0.3 ms of Llama 2 7B's step on an H200.
constexpr double kGemmTuningMargin = 0.002;

/// The candidate a GEMM with `count` candidates runs in round `round`:
/// round % count, so every round runs every GEMM and a short list is simply
/// run again.
int gemmTuningCandidate(int round, int count);

/// One GEMM key's tuning.
struct GemmChoice {
  std::string key;
  /// The label of the first step with this key (for tables).
  std::string label;
  /// The candidates the GPU ran, in the heuristic's order; 0, its first
  /// choice, always.
  std::vector<int> candidates{0};
  /// The candidate kept (0: the heuristic's choice).
  int chosen = 0;
  /// The step's milliseconds with this key at candidate 0 and at `chosen`
  /// (the keys tuned before it at their choices, the later ones at 0).
  double heuristicMs = 0, chosenMs = 0;
};

/// What tuning found: per key its choice, and the step's milliseconds with
/// every key at candidate 0 and at its choice, measured alternately at the
/// end.
struct GemmTuningResult {
  std::vector<GemmChoice> choices;
  double heuristicMs = 0, tunedMs = 0;
};

/// The step's milliseconds with each GEMM key at its candidate in the map
/// (keys not in it at 0).
using StepTimer =
    std::function<Result<double>(const std::map<std::string, int> &)>;

/// Coordinate descent over `keys` (each with its candidates; `chosen` and
/// the times are filled in), in order: the step is timed with each of a
/// key's candidates, the others fixed; the fastest is kept only if, timed
/// again against the key's candidate 0 in the order 0, c, c, 0, its mean is
/// below candidate 0's by more than `margin` (relative). The pattern
/// cancels a linear drift of the GPU (clocks, heat), which would otherwise
/// favour whichever ran later. At the end every key's choice against all
/// candidates 0, in the same pattern: when that is not faster by more than
/// `margin`, every key goes back to 0. Timer errors are returned.
Result<GemmTuningResult> tuneGemmsByReplay(std::vector<GemmChoice> keys,
                                           const StepTimer &time,
                                           double margin);

} // namespace llamac

#endif // LLAMAC_RUNTIME_GEMMTUNING_H
