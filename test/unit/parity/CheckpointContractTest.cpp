//===- CheckpointContractTest.cpp - Fused steps keep Hugging Face names ---===//
//
// With the fusions on (the default), the train step's parameters are fused
// tensors (qkv_proj, gate_up_proj) that the driver packs from and unpacks to
// Hugging Face tensors. `llamac train --steps 0 --save DIR` must write back
// exactly the tensors it read: the same names (Hugging Face's, no fused
// one), dtypes, shapes and bytes.
//
//===----------------------------------------------------------------------===//

#include "ParityTestUtil.h"
#include "llamac/Runtime/Safetensors.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Program.h"

#include <gtest/gtest.h>

#include <map>

using namespace llamac;
using namespace llamac::test;

namespace {

class CheckpointContract : public ::testing::TestWithParam<const char *> {};

TEST_P(CheckpointContract, ZeroStepsWriteTheInputWeightsBitExact) {
  std::string testCase = GetParam();
  llvm::SmallString<128> dir;
  ASSERT_FALSE(llvm::sys::fs::createUniqueDirectory("llamac-contract", dir));
  std::string out = std::string(dir) + "/checkpoint";
  std::vector<std::string> args = {
      LLAMAC_BINARY,
      "train",
      "--config=" + goldenPath(testCase, "config.json"),
      "--weights=" + goldenPath(testCase, "model.safetensors"),
      "--precision=fp32",
      "--batch=1",
      "--seq=4",
      "--steps=0",
      "--save=" + out};
  std::vector<llvm::StringRef> argRefs(args.begin(), args.end());
  std::string errorMessage;
  int exitCode = llvm::sys::ExecuteAndWait(LLAMAC_BINARY, argRefs, std::nullopt,
                                           {}, 0, 0, &errorMessage);
  ASSERT_EQ(exitCode, 0) << errorMessage;

  std::map<std::string, HostTensor> input =
      readTensors(goldenPath(testCase, "model.safetensors"));
  std::map<std::string, HostTensor> saved =
      readTensors(out + "/model.safetensors");
  ASSERT_FALSE(input.empty());
  ASSERT_EQ(saved.size(), input.size());
  for (const auto &[name, want] : input) {
    SCOPED_TRACE(name);
    auto found = saved.find(name);
    ASSERT_NE(found, saved.end()) << "missing from the checkpoint";
    const HostTensor &got = found->second;
    EXPECT_EQ(got.dtype, want.dtype);
    EXPECT_EQ(got.shape, want.shape);
    EXPECT_TRUE(got.bytes == want.bytes) << "bytes differ";
  }
  for (const auto &[name, tensor] : saved)
    EXPECT_TRUE(input.count(name)) << "unexpected tensor " << name;
  llvm::sys::fs::remove_directories(dir);
}

INSTANTIATE_TEST_SUITE_P(Golden, CheckpointContract, goldenModels(), caseName);

} // namespace
