//===- GemmTuning.h - GEMM algorithms from in-step timings ------*- C++ -*-===//
//
// GEMM tuning times cuBLASLt's candidate algorithms where they run: inside
// the train step, with the kernels before and after each GEMM as in
// training (Executor::tuneGemms). Candidates timed back to back on warm
// caches do not rank as they run in the step (bench/RESULTS.md). Each
// tuning round runs every function once eagerly with an event between
// steps, every GEMM with one of its candidates; this file holds the part
// that needs no GPU: which candidate runs in which round, and which one a
// GEMM keeps given its timings.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_GEMMTUNING_H
#define LLAMAC_RUNTIME_GEMMTUNING_H

#include "llamac/Runtime/Result.h"

#include <string>
#include <vector>

namespace llamac {

/// The heuristic's candidates asked for per GEMM when tuning, and the rounds
/// of one sweep (round r runs every GEMM's candidate r).
constexpr int kGemmTuningCandidates = 8;

/// The candidate a GEMM with `count` candidates runs in round `round`:
/// round % count. A GEMM with fewer candidates than rounds runs each of
/// them in several rounds rather than sitting some rounds out: every round
/// times every GEMM once, so no run of the step is wasted, and its short
/// list of candidates gets more samples (their means are compared, not
/// their totals: see chooseGemmAlgorithms).
int gemmTuningCandidate(int round, int count);

/// The rounds of `sweeps` sweeps, in order: 0..kGemmTuningCandidates-1,
/// then reversed, alternately. A slow drift of the GPU (clocks, heat) then
/// adds the same to every candidate's mean over an even number of sweeps.
std::vector<int> gemmTuningRounds(int sweeps);

/// One GEMM step's time in one tuning pass (one run of the tuned functions,
/// all in one round): which GEMM (BlasLt's key), the step's label, which of
/// the GEMM's candidates ran, and its milliseconds.
struct GemmTiming {
  std::string key, label;
  int pass = 0, candidate = 0;
  double ms = 0;
};

/// What tuning chose for one GEMM key.
struct GemmChoice {
  std::string key;
  /// The label of the first step with this key (for tables).
  std::string label;
  /// Its steps per pass (per train step when the pass is one step).
  int calls = 0;
  /// The candidates timed, and the one chosen (0: the heuristic's choice).
  int candidates = 0, chosen = 0;
  /// Milliseconds per pass with the heuristic's candidate and the chosen one.
  double heuristicMs = 0, chosenMs = 0;
};

/// Per GEMM key (in key order), the candidate with the least mean time per
/// pass it ran in; ties go to the lower index, the heuristic's preference.
/// Fails when a key's candidate 0 was never timed (round 0 times it).
Result<std::vector<GemmChoice>>
chooseGemmAlgorithms(const std::vector<GemmTiming> &timings);

} // namespace llamac

#endif // LLAMAC_RUNTIME_GEMMTUNING_H
