//===- GemmTuning.cpp - Choosing GEMM algorithms from in-step timings -----===//

#include "llamac/Runtime/GemmTuning.h"

#include <map>
#include <set>

namespace llamac {

int gemmTuningCandidate(int round, int count) { return round % count; }

std::vector<int> gemmTuningRounds(int sweeps) {
  std::vector<int> rounds;
  for (int sweep = 0; sweep < sweeps; ++sweep)
    for (int i = 0; i < kGemmTuningCandidates; ++i)
      rounds.push_back(sweep % 2 ? kGemmTuningCandidates - 1 - i : i);
  return rounds;
}

Result<std::vector<GemmChoice>>
chooseGemmAlgorithms(const std::vector<GemmTiming> &timings) {
  struct Candidate {
    double ms = 0;
    std::set<int> passes;
  };
  struct Key {
    std::string label;
    size_t records = 0;
    std::set<int> passes;
    std::map<int, Candidate> candidates;
  };
  std::map<std::string, Key> keys;
  for (const GemmTiming &timing : timings) {
    Key &key = keys[timing.key];
    if (key.records++ == 0)
      key.label = timing.label;
    key.passes.insert(timing.pass);
    Candidate &candidate = key.candidates[timing.candidate];
    candidate.ms += timing.ms;
    candidate.passes.insert(timing.pass);
  }
  std::vector<GemmChoice> choices;
  for (const auto &[name, key] : keys) {
    auto heuristic = key.candidates.find(0);
    if (heuristic == key.candidates.end())
      return Error{"GEMM " + name + " (" + key.label +
                   "): its heuristic's candidate 0 was never timed"};
    auto mean = [](const Candidate &c) {
      return c.ms / double(c.passes.size());
    };
    GemmChoice choice;
    choice.key = name;
    choice.label = key.label;
    choice.calls = int(key.records / key.passes.size());
    choice.candidates = int(key.candidates.size());
    choice.heuristicMs = choice.chosenMs = mean(heuristic->second);
    // In index order, so only a strictly faster candidate displaces the
    // heuristic's preference.
    for (const auto &[index, candidate] : key.candidates)
      if (mean(candidate) < choice.chosenMs)
        choice.chosen = index, choice.chosenMs = mean(candidate);
    choices.push_back(choice);
  }
  return choices;
}

} // namespace llamac
