//===- GpuTestUtil.h - Shared pieces of the GPU tests -----------*- C++ -*-===//

#ifndef LLAMAC_TEST_GPU_GPUTESTUTIL_H
#define LLAMAC_TEST_GPU_GPUTESTUTIL_H

#include "llamac/Runtime/Cuda.h"
#include "llamac/Runtime/Safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace llamac::test {

/// The device, or a skip with the reason when there is none (CI).
#define LLAMAC_REQUIRE_GPU(device)                                             \
  auto device##Result = ::llamac::cuda::Device::open();                        \
  if (!device##Result.ok())                                                    \
    GTEST_SKIP() << "no GPU: " << device##Result.error().message;              \
  std::shared_ptr<::llamac::cuda::Device> device = *device##Result

/// Fresh normal(0, 1) values.
inline std::vector<float> randomValues(size_t count, std::mt19937 &rng) {
  std::normal_distribution<float> normal;
  std::vector<float> values(count);
  for (float &v : values)
    v = normal(rng);
  return values;
}

/// ‖actual − expected‖ / ‖expected‖; NaN anywhere gives infinity.
inline double relativeError(const std::vector<double> &actual,
                            const std::vector<double> &expected) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (std::isnan(actual[i]))
      return INFINITY;
    diff += (actual[i] - expected[i]) * (actual[i] - expected[i]);
    norm += expected[i] * expected[i];
  }
  return std::sqrt(diff / norm);
}

/// Every tensor of a safetensors file, by name (none, with a failed
/// expectation, when it does not open).
inline std::map<std::string, HostTensor> readAll(const std::string &path) {
  std::map<std::string, HostTensor> tensors;
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  EXPECT_TRUE(file.ok()) << (file.ok() ? "" : file.error().message);
  if (!file.ok())
    return tensors;
  for (const TensorInfo &info : file->tensors())
    tensors.emplace(info.name, *file->read(info.name));
  return tensors;
}

} // namespace llamac::test

#endif // LLAMAC_TEST_GPU_GPUTESTUTIL_H
