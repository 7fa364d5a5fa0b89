//===- CrossEntropyKernelTest.cpp - Shifted causal-LM loss and gradient --===//
//
// count_targets then cross_entropy over 3 sequences of 45 tokens and a
// vocabulary of 8800 (more chunks than the block's threads). Labels include
// -100 (one sequence is entirely ignored) and out-of-vocabulary values (one
// at a sequence start, where the position rule drops it anyway). One row is
// shifted by +80 and one has a dominant target logit. The gradient replaces
// the logits in place; rows without a target must become exact zeros.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t T = kLossRows, V = kLossVocab, Seq = kLossSeq;

TEST(CrossEntropyKernel, LossAndGradientMatchReference) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "cross_entropy");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int32_t> pick(0, int32_t(V) - 1);
  std::vector<int32_t> labels(T);
  for (int32_t &label : labels)
    label = pick(rng);
  labels[3] = labels[10] = -100;
  for (int64_t t = Seq; t < 2 * Seq; ++t) // the second sequence: all ignored
    labels[t] = -100;
  labels[2 * Seq] = int32_t(V) + 5;      // a sequence start: no row's target
  labels[2 * Seq + 10] = int32_t(V) + 3; // outside the vocabulary: ignored
  std::vector<uint16_t> logits = randomBF16(T * V, rng, 2.0f);
  for (int64_t j = 0; j < V; ++j)
    logits[j] = floatToBF16(bf16ToFloat(logits[j]) + 80.0f);
  logits[1 * V + labels[2]] = floatToBF16(15.0f);

  // Targets under the shifted rule.
  std::vector<int64_t> target(T, -1);
  int64_t count = 0;
  for (int64_t t = 0; t < T; ++t)
    if (t % Seq != Seq - 1 && labels[t + 1] >= 0 && labels[t + 1] < V) {
      target[t] = labels[t + 1];
      ++count;
    }
  ASSERT_GT(count, 0);

  DeviceBuffer logitBuffer(device, T * V * 2, "logits");
  DeviceBuffer labelBuffer(device, T * 4, "labels");
  DeviceBuffer stats(device, 16, "loss scalars");
  logitBuffer.upload(logits);
  labelBuffer.upload(labels);
  DeviceBuffer hyper(device, 8 * 4, "hyperparameters");
  hyper.fill(0xFF); // count_targets without the host count must not read it
  stats.fill(0xFF); // count_targets must set every scalar
  kernels.run("count",
              {labelBuffer.address(), stats.address(), hyper.address()});
  kernels.run("loss",
              {logitBuffer.address(), labelBuffer.address(), stats.address()});
  std::vector<float> gotStats = stats.download<float>(4);
  std::vector<uint16_t> grad = logitBuffer.download<uint16_t>(T * V);

  EXPECT_EQ(gotStats[1], float(count));
  EXPECT_EQ(gotStats[2], 1.0f / float(count));
  EXPECT_EQ(gotStats[3], 0.0f);

  // Per row with target y, m = max x, l = sum exp(x - m), z = max (m - x):
  // the kernel's l carries relative error <= rel = (4 z + 4 (cpt + 18) + V)
  // u32 (terms, rescales, additions; as for the softmax), so log l is off
  // by <= rel, and lse - x_y adds 4 u32 of |m| + |log l| + |x_y|. The atomic
  // sum of count terms adds <= count u32 sum |loss_t|.
  // Gradient (p - [j == y]) scale: p = exp(x - m) (scale / l) carries
  // rel + (z + 6) u32 relative error, the subtraction 2 u32 scale, bf16 u16.
  const int64_t block = kernels.launch("loss").block[0];
  const int64_t chunksPerThread = (V / 8 + block - 1) / block;
  const double scale = 1.0 / double(count);
  double lossSum = 0, lossBound = 0, lossMagnitude = 0;
  Checker gradient("logit gradient");
  int64_t nonzeroIgnored = 0;
  for (int64_t t = 0; t < T; ++t) {
    const uint16_t *row = &logits[t * V];
    if (target[t] < 0) {
      for (int64_t j = 0; j < V; ++j)
        nonzeroIgnored += grad[t * V + j] != 0;
      continue;
    }
    double m = -INFINITY, z = 0, l = 0;
    for (int64_t j = 0; j < V; ++j)
      m = std::max(m, bf16(row[j]));
    for (int64_t j = 0; j < V; ++j) {
      l += std::exp(bf16(row[j]) - m);
      z = std::max(z, m - bf16(row[j]));
    }
    double rel =
        (4 * z + 4 * double(chunksPerThread + 18) + double(V)) * kF32Unit;
    double xy = bf16(row[target[t]]);
    double loss = m + std::log(l) - xy;
    lossSum += loss;
    lossMagnitude += std::abs(loss);
    lossBound +=
        rel + 4 * kF32Unit * (std::abs(m) + std::log(l) + std::abs(xy));
    for (int64_t j = 0; j < V; ++j) {
      double p = std::exp(bf16(row[j]) - m) / l;
      bool isTarget = j == target[t];
      double want = (p - (isTarget ? 1 : 0)) * scale;
      double bound = kBF16Unit * std::abs(want) +
                     1.01 * (p * (rel + (z + 6) * kF32Unit) * scale +
                             (isTarget ? 2 * kF32Unit * scale : 0)) +
                     1e-37;
      double got = bf16(grad[t * V + j]);
      gradient.near(got, want, bound, t * V + j);
      gradient.exact(got, roundBF16(want));
    }
  }
  lossBound += double(count) * kF32Unit * lossMagnitude;
  EXPECT_NEAR(gotStats[0], lossSum, lossBound) << "loss sum";
  gradient.expectExactFraction(0.99);
  EXPECT_EQ(nonzeroIgnored, 0) << "gradient of rows without a target not +0";
}

TEST(CrossEntropyKernel, HostCountDividesTheLoss) {
  // A package that accumulates gradients divides by the tokens of the whole
  // optimizer step (hyperparameters slot 7), not by this micro-batch's.
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "cross_entropy");
  ASSERT_TRUE(kernels.ok());
  std::vector<int32_t> labels(T, 1);
  for (int64_t t = 0; t < Seq; ++t)
    labels[t] = -100;                     // the first sequence counts nothing
  const float count = float(T - Seq - 2); // all but each sequence's first
  DeviceBuffer labelBuffer(device, T * 4, "labels");
  DeviceBuffer stats(device, 16, "loss scalars");
  DeviceBuffer hyper(device, 8 * 4, "hyperparameters");
  labelBuffer.upload(labels);
  for (float host : {1000.0f, 0.0f}) {
    SCOPED_TRACE(host);
    std::vector<float> slots(8, -1.0f);
    slots[7] = host;
    hyper.upload(slots);
    stats.fill(0xFF);
    kernels.run("count_host",
                {labelBuffer.address(), stats.address(), hyper.address()});
    std::vector<float> got = stats.download<float>(4);
    EXPECT_EQ(got[0], 0.0f);
    EXPECT_EQ(got[1], count); // this micro-batch's count, for the host
    EXPECT_EQ(got[2], host > 0 ? 1.0f / host : 0.0f);
    EXPECT_EQ(got[3], 0.0f);
  }
}

} // namespace
