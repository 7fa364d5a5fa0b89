//===- HFParityTest.cpp - llamac train vs Hugging Face transformers -------===//
//
// Runs `llamac train --device cpu --precision fp32` on the golden cases made
// by test/golden/make_golden.py (HF transformers in float64) and compares
// per-step losses, step-1 gradients and the weights after 3 AdamW steps.
//
// Tolerances are the issue's: the CPU backend stores every tensor in f32 and
// accumulates in f64, so each op adds about 6e-8 relative error; HF itself
// computes its RoPE angles in f32 even in a float64 model (~1e-6). Losses
// must agree to 1e-5, gradients and weights to 1e-4 (relative, Frobenius,
// per tensor).
//
//===----------------------------------------------------------------------===//

#include "ParityTestUtil.h"
#include "llamac/Frontend/Config.h"
#include "llamac/Runtime/Safetensors.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"

#include <gtest/gtest.h>

#include <cmath>
#include <iomanip>
#include <sstream>

using namespace llamac;
using namespace llamac::test;

namespace {

llvm::json::Value readJson(const std::string &path) {
  auto buffer = llvm::MemoryBuffer::getFile(path);
  EXPECT_TRUE(bool(buffer)) << path;
  llvm::Expected<llvm::json::Value> value =
      llvm::json::parse((*buffer)->getBuffer());
  EXPECT_TRUE(bool(value)) << path;
  return value ? std::move(*value) : llvm::json::Value(nullptr);
}

/// ‖a − b‖ / ‖b‖ over all elements.
double relativeError(const std::vector<double> &a,
                     const std::vector<double> &b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return std::sqrt(diff) / std::sqrt(norm);
}

/// Every tensor of `expected` exists in `actual` with the same size and
/// within `tolerance`; and no other tensor does.
void expectTensorsClose(
    const std::string &what,
    const std::map<std::string, std::vector<double>> &actual,
    const std::map<std::string, std::vector<double>> &expected,
    double tolerance) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (const auto &[name, values] : expected) {
    auto found = actual.find(name);
    ASSERT_NE(found, actual.end()) << what << ": no tensor " << name;
    ASSERT_EQ(found->second.size(), values.size()) << what << ": " << name;
    EXPECT_LE(relativeError(found->second, values), tolerance)
        << what << ": " << name;
  }
}

class HFParity : public ::testing::TestWithParam<const char *> {};

TEST_P(HFParity, LossesGradientsAndWeightsMatchTransformers) {
  std::string testCase = GetParam();
  llvm::SmallString<128> dir;
  ASSERT_FALSE(llvm::sys::fs::createUniqueDirectory("llamac-parity", dir));
  std::string out(dir);

  llvm::json::Value golden = readJson(goldenPath(testCase, "golden.json"));
  const llvm::json::Object *settings = golden.getAsObject();
  ASSERT_NE(settings, nullptr);
  auto text = [](double value) {
    std::ostringstream stream;
    stream << std::setprecision(17) << value;
    return stream.str();
  };
  auto number = [&](llvm::StringRef key) {
    return text(*settings->getNumber(key));
  };
  const llvm::json::Array *betas = settings->getArray("betas");
  std::vector<std::string> args = {
      LLAMAC_BINARY, "train", "--config=" + goldenPath(testCase, "config.json"),
      "--weights=" + goldenPath(testCase, "model.safetensors"),
      "--data=" + goldenPath(testCase, "data.jsonl"),
      "--batch=" + number("batch"), "--seq=" + number("seq"),
      "--steps=" + number("steps"), "--lr=" + number("lr"),
      "--weight-decay=" + number("weight_decay"),
      "--adam-betas=" + text(*(*betas)[0].getAsNumber()) + "," +
          text(*(*betas)[1].getAsNumber()),
      "--adam-eps=" + number("eps"),
      // make_golden.py steps torch.optim.AdamW at a fixed lr, unclipped.
      "--lr-schedule=constant", "--max-grad-norm=0", "--precision=fp32",
      "--device=cpu", "--dump-grads=" + out + "/grads.safetensors",
      "--save=" + out + "/checkpoint", "--metrics=" + out + "/metrics.jsonl"};
  std::vector<llvm::StringRef> argRefs(args.begin(), args.end());
  std::string errorMessage;
  int exitCode = llvm::sys::ExecuteAndWait(LLAMAC_BINARY, argRefs, std::nullopt,
                                           {}, 0, 0, &errorMessage);
  ASSERT_EQ(exitCode, 0) << errorMessage;

  // Losses, step by step.
  const llvm::json::Array *losses = settings->getArray("losses");
  auto metrics = llvm::MemoryBuffer::getFile(out + "/metrics.jsonl");
  ASSERT_TRUE(bool(metrics));
  llvm::SmallVector<llvm::StringRef> lines;
  (*metrics)->getBuffer().trim().split(lines, '\n');
  ASSERT_EQ(lines.size(), losses->size());
  for (size_t i = 0; i < lines.size(); ++i) {
    llvm::Expected<llvm::json::Value> line = llvm::json::parse(lines[i]);
    ASSERT_TRUE(bool(line));
    double loss = *line->getAsObject()->getNumber("loss");
    double expected = *(*losses)[i].getAsNumber();
    EXPECT_LE(std::abs(loss - expected) / std::abs(expected), 1e-5)
        << "step " << i + 1 << ": llamac " << loss << ", HF " << expected;
  }

  expectTensorsClose("step-1 gradients", readAll(out + "/grads.safetensors"),
                     readAll(goldenPath(testCase, "grads.safetensors")), 1e-4);
  expectTensorsClose("weights after 3 steps",
                     readAll(out + "/checkpoint/model.safetensors"),
                     readAll(goldenPath(testCase, "final.safetensors")), 1e-4);

  // The checkpoint's config describes the same model.
  llvm::Expected<LlamaConfig> saved = loadConfig(out + "/checkpoint");
  llvm::Expected<LlamaConfig> original =
      loadConfig(goldenPath(testCase, "config.json"));
  ASSERT_TRUE(bool(saved)) << llvm::toString(saved.takeError());
  ASSERT_TRUE(bool(original)) << llvm::toString(original.takeError());
  EXPECT_EQ(parameterSpecs(*saved).size(), parameterSpecs(*original).size());
  EXPECT_EQ(saved->tieWordEmbeddings, original->tieWordEmbeddings);
  EXPECT_EQ(saved->rope.type, original->rope.type);
  EXPECT_EQ(saved->numKvHeads, original->numKvHeads);
  EXPECT_EQ(saved->headDim, original->headDim);
  llvm::sys::fs::remove_directories(out);
}

INSTANTIATE_TEST_SUITE_P(Golden, HFParity, goldenModels(), caseName);

} // namespace
