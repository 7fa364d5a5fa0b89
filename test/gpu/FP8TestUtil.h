//===- FP8TestUtil.h - FP8 bytes on the host for GPU tests ------*- C++ -*-===//

#ifndef LLAMAC_TEST_GPU_FP8TESTUTIL_H
#define LLAMAC_TEST_GPU_FP8TESTUTIL_H

#include <cmath>
#include <cstdint>
#include <limits>

namespace llamac::test {

/// The value of FP8 byte `bits`: E4M3 (OCP E4M3FN: bias 7, no infinities,
/// S.1111.111 is NaN) or E5M2 (bias 15, IEEE-like infinities and NaNs).
inline double decodeFP8(uint8_t bits, bool e4m3) {
  int mantissaBits = e4m3 ? 3 : 2, bias = e4m3 ? 7 : 15;
  int exponent = (bits & 0x7F) >> mantissaBits;
  int mantissa = bits & ((1 << mantissaBits) - 1);
  double sign = bits & 0x80 ? -1.0 : 1.0;
  int top = e4m3 ? 15 : 31;
  if (e4m3 && exponent == top && mantissa == (1 << mantissaBits) - 1)
    return std::numeric_limits<double>::quiet_NaN();
  if (!e4m3 && exponent == top)
    return mantissa ? std::numeric_limits<double>::quiet_NaN()
                    : sign * std::numeric_limits<double>::infinity();
  if (exponent == 0) // subnormal
    return sign * std::ldexp(mantissa, 1 - bias - mantissaBits);
  return sign * std::ldexp(mantissa + (1 << mantissaBits),
                           exponent - bias - mantissaBits);
}

} // namespace llamac::test

#endif // LLAMAC_TEST_GPU_FP8TESTUTIL_H
