//===- Random.cpp - Seeded random numbers for weight init -----------------===//

#include "llamac/Runtime/Random.h"

#include <cmath>

using namespace llamac;

static uint64_t splitMix64(uint64_t &x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

Random::Random(uint64_t seed, const std::string &stream) {
  // FNV-1a of the stream name, mixed with the seed.
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : stream)
    hash = (hash ^ c) * 0x100000001b3ULL;
  uint64_t x = seed ^ hash;
  for (uint64_t &word : state)
    word = splitMix64(x);
}

uint64_t Random::next() {
  // xoshiro256** (Blackman and Vigna).
  uint64_t result = rotl(state[1] * 5, 7) * 9;
  uint64_t t = state[1] << 17;
  state[2] ^= state[0];
  state[3] ^= state[1];
  state[1] ^= state[2];
  state[0] ^= state[3];
  state[2] ^= t;
  state[3] = rotl(state[3], 45);
  return result;
}

double Random::uniform() { return double(next() >> 11) * 0x1.0p-53; }

double Random::normal() {
  if (hasSpare) {
    hasSpare = false;
    return spareNormal;
  }
  // Box-Muller on (0, 1] x [0, 1).
  double u = 1.0 - uniform(), v = uniform();
  double radius = std::sqrt(-2.0 * std::log(u));
  spareNormal = radius * std::sin(2 * M_PI * v);
  hasSpare = true;
  return radius * std::cos(2 * M_PI * v);
}
