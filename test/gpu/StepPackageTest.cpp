//===- StepPackageTest.cpp - A compiled train step on the GPU vs the CPU --===//
//
// Runs the package GenerateStepPackage compiled (a two-layer GQA model with
// llama3 RoPE, bf16) through the Executor: @forward_backward, then
// @optimizer_step, and compares with the CPU reference interpreter's bf16
// run of the same step. Both round every stored tensor to bf16, but they sum
// in different orders and the GPU rounds attention probabilities to bf16
// before P·V, so results differ by bf16 noise propagated through two layers:
// the bounds against HF (2e-2 per gradient tensor) apply, the loss
// must agree to 1e-2. AdamW's first update is about lr sign(g): where a
// gradient element is at bf16 noise level its sign, and so a whole ±lr
// update, can differ between the two (lr = 1e-2 against weights ~0.08), so
// the updated parameters agree to 2e-2, and the update directions (a few
// bf16 ulps each) to cosine > 0.95. The packed step (position_ids: RoPE
// positions and the attention mask from them) must agree the same way.
//
//===----------------------------------------------------------------------===//

#include "GpuStepShapes.h"
#include "GpuTestUtil.h"

#include "llamac/Runtime/Executor.h"
#include "llamac/Runtime/Safetensors.h"

#include <map>

using namespace llamac;
using namespace llamac::test;

namespace {

std::vector<double> bf16Values(const std::vector<uint16_t> &bits) {
  std::vector<double> values;
  for (uint16_t b : bits)
    values.push_back(bf16ToFloat(b));
  return values;
}

/// Runs the step GenerateStepPackage wrote into `dir` and compares.
void checkStep(const std::string &dir) {
  LLAMAC_REQUIRE_GPU(device);
  Result<package::Package> package = package::readPackage(dir + "/package");
  ASSERT_TRUE(package.ok()) << package.error().message;
  auto executor = Executor::create(device, *package);
  ASSERT_TRUE(executor.ok()) << executor.error().message;
  Executor &e = **executor;
  std::map<std::string, HostTensor> inputs =
      readAll(dir + "/inputs.safetensors");
  std::map<std::string, HostTensor> expected =
      readAll(dir + "/expected.safetensors");
  ASSERT_FALSE(inputs.empty());

  // Weights, data, zero moments, hyperparameters.
  for (auto &[name, tensor] : inputs) {
    Status s = e.upload(name, tensor.bytes.data(), tensor.bytes.size());
    ASSERT_TRUE(s.ok()) << s.error().message;
  }
  for (const package::Buffer &buffer : package->buffers)
    if (buffer.role == "exp_avg" || buffer.role == "exp_avg_sq") {
      std::vector<uint8_t> zeros(buffer.bytes, 0);
      ASSERT_TRUE(e.upload(buffer.name, zeros.data(), zeros.size()).ok());
    }
  float hyper[8] = {};
  const char *names[] = {"lr",           "beta1", "beta2",        "eps",
                         "weight_decay", "step",  "max_grad_norm"};
  for (int i = 0; i < 7; ++i)
    hyper[i] = float(hyperparameter(names[i]));
  ASSERT_TRUE(e.upload("hyperparameters", hyper, sizeof(hyper)).ok());

  Status run = e.run("forward_backward");
  ASSERT_TRUE(run.ok()) << run.error().message;
  float stats[4];
  ASSERT_TRUE(e.download("loss_stats", stats, sizeof(stats)).ok());
  double loss = double(stats[0]) * double(stats[2]);
  double wantLoss = expected["loss"].toDouble()[0];
  EXPECT_LE(std::abs(loss - wantLoss) / wantLoss, 1e-2)
      << "GPU loss " << loss << ", CPU " << wantLoss;

  std::map<std::string, std::vector<double>> before;
  for (const package::Buffer &buffer : package->buffers) {
    if (buffer.role != "grad" && buffer.role != "param")
      continue;
    std::vector<uint16_t> bits(buffer.bytes / 2);
    ASSERT_TRUE(e.download(buffer.name, bits.data(), buffer.bytes).ok());
    if (buffer.role == "grad") {
      std::vector<double> want = expected[buffer.name].toDouble();
      EXPECT_LE(relativeError(bf16Values(bits), want), 2e-2) << buffer.name;
    } else {
      before[buffer.name] = bf16Values(bits);
    }
  }

  run = e.run("optimizer_step");
  ASSERT_TRUE(run.ok()) << run.error().message;
  float normSq[4];
  ASSERT_TRUE(e.download("grad_norm_sq", normSq, sizeof(normSq)).ok());
  double wantNorm = expected["grad_norm"].toDouble()[0];
  EXPECT_LE(std::abs(std::sqrt(double(normSq[0])) - wantNorm) / wantNorm, 2e-2);
  for (auto &[name, start] : before) {
    const package::Buffer &buffer =
        package->buffers[package->bufferIndex(name)];
    std::vector<uint16_t> bits(buffer.bytes / 2);
    ASSERT_TRUE(e.download(name, bits.data(), buffer.bytes).ok());
    std::vector<double> got = bf16Values(bits);
    std::vector<double> want = expected[name].toDouble();
    EXPECT_LE(relativeError(got, want), 2e-2) << name;
    double dot = 0, gotNorm = 0, wantNorm2 = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      double g = got[i] - start[i], w = want[i] - start[i];
      dot += g * w, gotNorm += g * g, wantNorm2 += w * w;
    }
    ASSERT_GT(wantNorm2, 0) << name << ": the reference did not update it";
    EXPECT_GT(dot / std::sqrt(gotNorm * wantNorm2), 0.95) << name;
  }
}

TEST(StepPackage, OneTrainStepMatchesTheCpuReference) { checkStep(STEP_DIR); }

TEST(StepPackage, PackedTrainStepMatchesTheCpuReference) {
  std::map<std::string, HostTensor> inputs =
      readAll(PACKED_STEP_DIR "/inputs.safetensors");
  ASSERT_TRUE(inputs.count("position_ids"));
  checkStep(PACKED_STEP_DIR);
}

} // namespace
