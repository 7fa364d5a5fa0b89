//===- ProgressTest.cpp - Step lines, progress bar and metrics file -------===//

#include "llamac/Runtime/Progress.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

using namespace llamac;

namespace {

StepMetrics metrics(int64_t step) {
  return {step, 2.5 - 0.1 * double(step), 1e-3, 0.75, 512, 0.25};
}

TEST(ProgressTest, FormatsDurations) {
  EXPECT_EQ(formatDuration(0), "0:00");
  EXPECT_EQ(formatDuration(59.6), "1:00");
  EXPECT_EQ(formatDuration(754), "12:34");
  EXPECT_EQ(formatDuration(3723), "1:02:03");
  EXPECT_EQ(formatDuration(-1), "?");
  EXPECT_EQ(formatDuration(INFINITY), "?");
}

TEST(ProgressTest, PlainLinesKeepTheStepFormat) {
  ProgressFormatter progress(0, 10, /*terminal=*/false);
  std::string line = progress.step(metrics(1));
  EXPECT_EQ(line, "step    1/10 | loss 2.400000 | lr 1.000e-03 | grad norm "
                  "0.75 | tokens 512 | 2048 tok/s | 0.250 s | ETA 0:02\n");
  EXPECT_EQ(progress.finish(), "");
  EXPECT_EQ(progress.clearLine(), "");
}

TEST(ProgressTest, TerminalBarRedrawsInPlace) {
  ProgressFormatter progress(0, 4, /*terminal=*/true, 100);
  std::string bar = progress.step(metrics(1));
  EXPECT_EQ(bar.rfind("\r\x1b[2K", 0), 0u);
  EXPECT_EQ(bar.find('\n'), std::string::npos);
  EXPECT_NE(bar.find(" 25% "), std::string::npos);
  EXPECT_NE(bar.find("1/4"), std::string::npos);
  EXPECT_NE(bar.find("loss 2.4000"), std::string::npos);
  EXPECT_NE(bar.find("ETA 0:01"), std::string::npos);
  EXPECT_EQ(progress.finish(), "\n");
}

TEST(ProgressTest, MetricsLinesHaveEveryField) {
  EXPECT_EQ(metricsJson(metrics(3)),
            "{\"grad_norm\":0.75,\"loss\":2.2,\"lr\":0.001,\"step\":3,"
            "\"step_time_s\":0.25,\"tokens\":512,\"tokens_per_s\":2048.0}");
  StepMetrics nan = metrics(1);
  nan.loss = NAN;
  EXPECT_NE(metricsJson(nan).find("\"loss\":null"), std::string::npos);
}

TEST(ProgressTest, MfuShowsWhereMeasured) {
  StepMetrics gpu = metrics(1);
  gpu.mfu = 0.4125;
  ProgressFormatter plain(0, 10, /*terminal=*/false);
  EXPECT_EQ(plain.step(gpu),
            "step    1/10 | loss 2.400000 | lr 1.000e-03 | grad norm 0.75 | "
            "tokens 512 | 2048 tok/s | 0.250 s | MFU 41.2% | ETA 0:02\n");
  ProgressFormatter bar(0, 10, /*terminal=*/true, 120);
  EXPECT_NE(bar.step(gpu).find("tok/s | MFU 41.2% | ETA"), std::string::npos);
  EXPECT_EQ(metricsJson(gpu),
            "{\"grad_norm\":0.75,\"loss\":2.4,\"lr\":0.001,\"mfu\":0.4125,"
            "\"step\":1,\"step_time_s\":0.25,\"tokens\":512,\"tokens_per_s\":"
            "2048.0}");
}

TEST(ProgressTest, FlopsPerPositionFollowPaLM) {
  // Llama 2 7B: 6 x 6,607,077,376 weights of the linear layers and the head,
  // plus 12 x 32 layers x 4096 query columns x 256 positions.
  const std::string llama2 =
      R"({"hidden_size": 4096, "intermediate_size": 11008,
          "num_attention_heads": 32, "num_hidden_layers": 32,
          "num_key_value_heads": 32, "vocab_size": 32000})";
  Result<double> flops = trainingFlopsPerPosition(llama2, 256);
  ASSERT_TRUE(flops.ok()) << flops.error().message;
  EXPECT_EQ(*flops, 6.0 * 6607077376.0 + 12.0 * 32 * 4096 * 256);
  // Llama 3 8B (GQA: 8 KV heads): 7,504,658,432 weights.
  const std::string llama3 =
      R"({"hidden_size": 4096, "intermediate_size": 14336, "head_dim": 128,
          "num_attention_heads": 32, "num_hidden_layers": 32,
          "num_key_value_heads": 8, "vocab_size": 128256})";
  flops = trainingFlopsPerPosition(llama3, 256);
  ASSERT_TRUE(flops.ok()) << flops.error().message;
  EXPECT_EQ(*flops, 6.0 * 7504658432.0 + 12.0 * 32 * 4096 * 256);

  flops = trainingFlopsPerPosition(R"({"hidden_size": 64})", 16);
  ASSERT_FALSE(flops.ok());
  EXPECT_EQ(flops.error().message,
            "config: num_hidden_layers: missing or not a positive integer");
  EXPECT_FALSE(trainingFlopsPerPosition("[1]", 16).ok());
}

TEST(ProgressTest, PeakFlopsOfKnownGpus) {
  EXPECT_EQ(peakBF16Flops("NVIDIA H100 80GB HBM3"), 989.4e12);
  EXPECT_EQ(peakBF16Flops("NVIDIA H200"), 989.4e12);
  EXPECT_EQ(peakBF16Flops("NVIDIA H100 PCIe"), 756e12);
  EXPECT_EQ(peakBF16Flops("NVIDIA H100 NVL"), 835.5e12);
  EXPECT_EQ(peakBF16Flops("NVIDIA A100-SXM4-80GB"), 312e12);
  EXPECT_EQ(peakBF16Flops("NVIDIA GeForce RTX 4090"), 0);
}

TEST(ProgressTest, MetricsWriterKeepsEarlierStepsOnResume) {
  std::string path = ::testing::TempDir() + "llamac-metrics-test.jsonl";
  {
    Result<MetricsWriter> writer = MetricsWriter::open(path, 0);
    ASSERT_TRUE(writer.ok());
    for (int step = 1; step <= 5; ++step)
      ASSERT_TRUE(writer->write(metrics(step)).ok());
  }
  {
    // Resumed from step 3: steps 4 and 5 of the interrupted run go.
    Result<MetricsWriter> writer = MetricsWriter::open(path, 3);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->write(metrics(4)).ok());
  }
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    lines.push_back(line);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[3], metricsJson(metrics(4)));
  EXPECT_EQ(lines[2], metricsJson(metrics(3)));
  std::filesystem::remove(path);

  Result<MetricsWriter> bad = MetricsWriter::open("/nonexistent/dir/m", 0);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message.rfind("/nonexistent/dir/m: cannot open", 0),
            0u);
}

} // namespace
