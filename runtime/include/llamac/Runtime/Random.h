//===- Random.h - Seeded random numbers for weight init ---------*- C++ -*-===//
//
// A self-contained generator (SplitMix64 seeding xoshiro256**, Box-Muller
// normals) so that a seed gives the same weights on every platform and on
// the CPU and GPU paths alike.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_RANDOM_H
#define LLAMAC_RUNTIME_RANDOM_H

#include <cstdint>
#include <string>

namespace llamac {

class Random {
public:
  /// A stream determined by \p seed and \p stream (e.g. a parameter name), so
  /// that each tensor's values do not depend on which others exist.
  Random(uint64_t seed, const std::string &stream);

  /// Uniform 64 random bits.
  uint64_t next();
  /// Uniform in [0, 1) with 53 random bits.
  double uniform();
  /// Standard normal N(0, 1).
  double normal();

private:
  uint64_t state[4];
  double spareNormal = 0;
  bool hasSpare = false;
};

} // namespace llamac

#endif // LLAMAC_RUNTIME_RANDOM_H
