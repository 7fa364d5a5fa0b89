//===- AccumulateGradientsTest.cpp - Packages that sum micro-batches ------===//
//
// The structure that makes a package accumulate gradients, on the tiny model
// of test/gpu/hf/tiny (untied head) and a tied-embedding variant, against the
// same
// packages built without accumulation: every write of a gradient slot adds
// into it (GEMMs with beta 1, accumulating norm-weight and embedding
// kernels, the tied table's two addends summed in place with no add kernel),
// the loss divides by the host's token count, and the gradient region is
// zeroed by zero_grads and after AdamW instead of before the backward. What
// the kernels compute is checked on the GPU (test/gpu).
//
//===----------------------------------------------------------------------===//

#include "TinyPackage.h"

using namespace llamac;
using namespace llamac::test;
using package::Step;

namespace {

/// The memset of the whole gradient region, if `step` is one.
bool zeroesGradients(const package::Package &p, const Step &step) {
  if (step.kind != Step::Kind::Memset)
    return false;
  const package::Buffer &region = target(p, step.memset.dst);
  return region.name == "grads" && step.memset.dst.offset == 0 &&
         step.memset.bytes == region.bytes;
}

class AccumulateGradientsTest : public ::testing::TestWithParam<bool> {};

TEST_P(AccumulateGradientsTest, EveryGradientWriteAdds) {
  bool tied = GetParam();
  package::Package plain = buildTinyPackage(tied, false);
  package::Package summing = buildTinyPackage(tied, true);
  ASSERT_FALSE(plain.buffers.empty());
  ASSERT_FALSE(summing.buffers.empty());
  EXPECT_FALSE(plain.accumulatesGradients);
  EXPECT_TRUE(summing.accumulatesGradients);

  // Weight gradients from GEMMs: beta 1 when summing, 0 otherwise, and the
  // same GEMMs in both (the tied head's adds into the table's slot only when
  // summing).
  auto gradientGemms = [](const package::Package &p, float beta) {
    int count = 0;
    for (const Step &step : p.function("forward_backward")->steps)
      if (step.kind == Step::Kind::Gemm &&
          target(p, step.gemm.d).role == "grad") {
        EXPECT_EQ(step.gemm.beta, beta) << step.label;
        ++count;
      }
    return count;
  };
  int gemms = gradientGemms(plain, 0);
  EXPECT_GT(gemms, 0);
  EXPECT_EQ(gradientGemms(summing, 1), gemms + (tied ? 1 : 0));

  // Kernels writing gradients: the accumulating variants (the norm weights'
  // column sums and the embedding table's gradient), and no add kernel (the
  // plain tied package adds the table's two gradients into its slot).
  auto gradientKernels = [](const package::Package &p) {
    std::vector<std::string> kernels;
    for (const Step &step : p.function("forward_backward")->steps)
      if (step.kind == Step::Kind::Launch &&
          target(p, step.launch.args.back()).role == "grad")
        kernels.push_back(step.launch.kernel);
    return kernels;
  };
  std::vector<std::string> plainKernels = gradientKernels(plain);
  std::vector<std::string> summingKernels = gradientKernels(summing);
  ASSERT_EQ(summingKernels.size(), plainKernels.size());
  int norms = 0, embeddings = 0;
  for (const std::string &kernel : summingKernels) {
    EXPECT_EQ(kernel.substr(kernel.size() - 4), "_acc") << kernel;
    norms += kernel.rfind("column_sum_", 0) == 0;
    embeddings += kernel.rfind("embedding_bwd_", 0) == 0;
  }
  // Two per layer and the final norm; the embedding table once.
  EXPECT_EQ(norms, 2 * tinyLlamaConfig().numLayers + 1);
  EXPECT_EQ(embeddings, 1);
  int plainAdds = 0, plainEmbeddings = 0;
  for (const std::string &kernel : plainKernels) {
    EXPECT_NE(kernel.substr(kernel.size() - 4), "_acc") << kernel;
    plainAdds += kernel.rfind("add_bf16_", 0) == 0;
    plainEmbeddings += kernel.rfind("embedding_bwd_", 0) == 0;
  }
  EXPECT_EQ(plainAdds, tied ? 1 : 0);
  EXPECT_EQ(plainEmbeddings, tied ? 0 : 1);

  // The embedding kernel writes only the rows of the ids that occur: a plain
  // package zeroes its output (vocab x hidden bf16) right before it, a
  // summing one adds into the slot as it is.
  LlamaConfig config = tinyLlamaConfig();
  for (const package::Package *p : {&plain, &summing}) {
    const std::vector<Step> &steps = p->function("forward_backward")->steps;
    int launches = 0;
    for (size_t i = 1; i < steps.size(); ++i) {
      const Step &step = steps[i];
      if (step.kind != Step::Kind::Launch ||
          step.launch.kernel.rfind("embedding_bwd_", 0) != 0)
        continue;
      ++launches;
      const package::Operand &out = step.launch.args.back();
      const Step &before = steps[i - 1];
      bool zeroed = before.kind == Step::Kind::Memset &&
                    before.memset.dst.buffer == out.buffer &&
                    before.memset.dst.offset == out.offset &&
                    before.memset.bytes ==
                        uint64_t(config.vocabSize * config.hiddenSize) * 2;
      EXPECT_EQ(zeroed, !p->accumulatesGradients) << before.label;
    }
    EXPECT_EQ(launches, 1);
  }

  // The loss divides by the host's count (hyperparameters, third argument).
  for (const package::Package *p : {&plain, &summing})
    for (const Step &step : p->function("forward_backward")->steps)
      if (step.kind == Step::Kind::Launch &&
          step.launch.kernel.rfind("count_targets_", 0) == 0) {
        EXPECT_EQ(step.launch.kernel.find("_host") != std::string::npos,
                  p->accumulatesGradients);
        ASSERT_EQ(step.launch.args.size(), 3u);
        EXPECT_EQ(target(*p, step.launch.args[2]).name, "hyperparameters");
      }

  // Zeroing: none in a plain package (each gradient is written whole, and
  // the runtime zeroes the arena once); after AdamW and in zero_grads when
  // summing.
  for (const Step &step : plain.function("forward_backward")->steps)
    EXPECT_FALSE(zeroesGradients(plain, step)) << step.label;
  EXPECT_FALSE(
      zeroesGradients(plain, plain.function("optimizer_step")->steps.back()));
  EXPECT_EQ(plain.function(package::kZeroGradsFunction), nullptr);
  for (const Step &step : summing.function("forward_backward")->steps)
    EXPECT_FALSE(zeroesGradients(summing, step)) << step.label;
  const std::vector<Step> &optimizer =
      summing.function("optimizer_step")->steps;
  EXPECT_TRUE(zeroesGradients(summing, optimizer.back()));
  EXPECT_EQ(optimizer.size(),
            plain.function("optimizer_step")->steps.size() + 1);
  const package::Function *zero = summing.function(package::kZeroGradsFunction);
  ASSERT_NE(zero, nullptr);
  ASSERT_EQ(zero->steps.size(), 1u);
  EXPECT_TRUE(zeroesGradients(summing, zero->steps[0]));
}

INSTANTIATE_TEST_SUITE_P(Heads, AccumulateGradientsTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool> &info) {
                           return info.param ? "Tied" : "Untied";
                         });

} // namespace
