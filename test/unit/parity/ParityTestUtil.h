//===- ParityTestUtil.h - Shared pieces of the parity tests -----*- C++ -*-===//

#ifndef LLAMAC_TEST_UNIT_PARITY_PARITYTESTUTIL_H
#define LLAMAC_TEST_UNIT_PARITY_PARITYTESTUTIL_H

#include "llamac/Runtime/Safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

namespace llamac::test {

/// GOLDEN_DIR/<testCase>/<file>.
inline std::string goldenPath(const std::string &testCase, const char *file) {
  return std::string(GOLDEN_DIR) + "/" + testCase + "/" + file;
}

/// The golden model cases of test/golden/make_golden.py.
inline auto goldenModels() {
  return ::testing::Values("llama2-mha", "llama3-gqa", "tied-mqa");
}

/// A gtest name for a golden case ("llama2-mha" -> "llama2_mha").
inline std::string
caseName(const ::testing::TestParamInfo<const char *> &info) {
  std::string name = info.param;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

/// Every tensor of a safetensors file, as read (failing the test if it
/// cannot be).
inline std::map<std::string, HostTensor> readTensors(const std::string &path) {
  std::map<std::string, HostTensor> tensors;
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  EXPECT_TRUE(file.ok()) << (file.ok() ? "" : file.error().message);
  if (!file.ok())
    return tensors;
  for (const TensorInfo &info : file->tensors()) {
    Result<HostTensor> tensor = file->read(info.name);
    EXPECT_TRUE(tensor.ok()) << path << ": " << info.name;
    if (tensor.ok())
      tensors[info.name] = std::move(*tensor);
  }
  return tensors;
}

/// The same, converted to doubles.
inline std::map<std::string, std::vector<double>>
readAll(const std::string &path) {
  std::map<std::string, std::vector<double>> values;
  for (auto &[name, tensor] : readTensors(path))
    values[name] = tensor.toDouble();
  return values;
}

} // namespace llamac::test

#endif // LLAMAC_TEST_UNIT_PARITY_PARITYTESTUTIL_H
