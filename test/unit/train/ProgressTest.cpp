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
