//===- TestUtil.h - Helpers for the runtime I/O unit tests -----*- C++ -*-===//

#ifndef LLAMAC_TEST_UNIT_RUNTIME_TESTUTIL_H
#define LLAMAC_TEST_UNIT_RUNTIME_TESTUTIL_H

#include "gtest/gtest.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace llamac::test {

/// A fixture owning a fresh temporary directory, removed after the test.
class TempDirTest : public ::testing::Test {
protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "llamac-io-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir); }

  /// The path of \p name inside the temporary directory.
  std::string path(const std::string &name) const { return dir + "/" + name; }

  /// Writes \p bytes to \p name in the temporary directory; returns its path.
  std::string writeFile(const std::string &name, const std::string &bytes) {
    const std::string file = path(name);
    std::ofstream out(file, std::ios::binary);
    out << bytes;
    EXPECT_TRUE(out.good()) << file;
    return file;
  }

  /// The contents of \p file.
  static std::string readFile(const std::string &file) {
    std::ifstream in(file, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  /// Names of the entries of the temporary directory, sorted.
  std::vector<std::string> listDir() const {
    std::vector<std::string> names;
    for (const auto &entry : std::filesystem::directory_iterator(dir))
      names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dir;
};

/// Checks that \p message is one line starting with "<prefix>: " and holding
/// \p needle.
inline ::testing::AssertionResult isErrorAbout(const std::string &message,
                                               const std::string &prefix,
                                               const std::string &needle) {
  if (message.find('\n') != std::string::npos)
    return ::testing::AssertionFailure() << "not one line: " << message;
  if (message.rfind(prefix + ": ", 0) != 0)
    return ::testing::AssertionFailure()
           << "does not start with '" << prefix << ": ': " << message;
  if (message.find(needle) == std::string::npos)
    return ::testing::AssertionFailure()
           << "does not contain '" << needle << "': " << message;
  return ::testing::AssertionSuccess();
}

} // namespace llamac::test

#endif // LLAMAC_TEST_UNIT_RUNTIME_TESTUTIL_H
