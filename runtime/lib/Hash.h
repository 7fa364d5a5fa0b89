//===- Hash.h - Content digests for cache keys ------------------*- C++ -*-===//
//
// Internal to LlamacRuntimeIO: a fast 128-bit, non-cryptographic digest of
// byte strings, used to name and validate caches (tokenized data, tokenizer
// fingerprints). Stable across runs and machines of the same endianness.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_LIB_HASH_H
#define LLAMAC_RUNTIME_LIB_HASH_H

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace llamac::io {

/// The splitmix64 finalizer: a bijective 64-bit mixer.
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

/// A 128-bit digest that can be fed several byte strings in turn.
class Digest {
public:
  /// Feeds \p bytes (and their length, so that ("ab", "c") and ("a", "bc")
  /// differ).
  Digest &update(std::string_view bytes) {
    const auto *p = reinterpret_cast<const unsigned char *>(bytes.data());
    const size_t n = bytes.size();
    a = mix64(a ^ n ^ 0x6a09e667f3bcc908ULL);
    b = mix64(b + n + 0xbb67ae8584caa73bULL);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t k;
      std::memcpy(&k, p + i, 8);
      a = mix64(a ^ k) + 0x9e3779b97f4a7c15ULL;
      b = (b ^ mix64(k + 0x3c6ef372fe94f82bULL)) * 0xff51afd7ed558ccdULL +
          (b >> 29);
    }
    uint64_t tail = 0;
    for (size_t j = 0; i + j < n; ++j)
      tail |= uint64_t(p[i + j]) << (8 * j);
    a = mix64(a ^ tail ^ 0xa54ff53a5f1d36f1ULL);
    b = mix64(b + tail + 0x510e527fade682d1ULL);
    return *this;
  }

  /// The digest as 32 lowercase hex digits.
  std::string hex() const {
    static const char digits[] = "0123456789abcdef";
    std::string out(32, '0');
    const uint64_t words[2] = {mix64(a ^ (b << 1)), mix64(b ^ (a >> 1))};
    for (int w = 0; w < 2; ++w)
      for (int d = 0; d < 16; ++d)
        out[size_t(w * 16 + d)] = digits[(words[w] >> (60 - 4 * d)) & 15];
    return out;
  }

private:
  uint64_t a = 0x243f6a8885a308d3ULL, b = 0x13198a2e03707344ULL;
};

} // namespace llamac::io

#endif // LLAMAC_RUNTIME_LIB_HASH_H
