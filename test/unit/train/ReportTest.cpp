//===- ReportTest.cpp - Charts of a metrics file --------------------------===//

#include "llamac/Runtime/Report.h"
#include "llamac/Runtime/Progress.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

using namespace llamac;

namespace {

/// Whether a non-finite number was printed as a coordinate or a label.
bool printsNonFinite(const std::string &text) {
  for (const char *bad : {"\"nan", "\"-nan", ">nan", ">-nan", "\"inf", "\"-inf",
                          ">inf", ">-inf", " nan", " inf"})
    if (text.find(bad) != std::string::npos)
      return true;
  return false;
}

size_t count(const std::string &text, const std::string &needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos;
       at = text.find(needle, at + 1))
    ++n;
  return n;
}

std::vector<MetricsRow> run(int steps) {
  std::vector<MetricsRow> rows;
  for (int s = 1; s <= steps; ++s) {
    MetricsRow row;
    row.step = s;
    row.loss = 5.5 * std::exp(-s / 40.0) + 0.05 * std::sin(s);
    row.lr = 2e-5 * std::min(1.0, s / 10.0);
    row.gradNorm = 1.0 + 0.5 * std::cos(s / 7.0);
    row.tokens = 4096;
    row.stepTimeS = 0.5;
    row.tokensPerS = 8192;
    rows.push_back(row);
  }
  return rows;
}

TEST(ReportTest, HtmlIsOnePageWithFourCharts) {
  std::string html = renderReportHtml(run(120), "My <run> & co");
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("</html>"), std::string::npos);
  EXPECT_EQ(count(html, "<svg"), 4u);
  EXPECT_EQ(count(html, "</svg>"), 4u);
  EXPECT_NE(html.find("My &lt;run&gt; &amp; co"), std::string::npos);
  EXPECT_NE(html.find("Training loss"), std::string::npos);
  EXPECT_NE(html.find("Learning rate"), std::string::npos);
  EXPECT_NE(html.find("Throughput"), std::string::npos);
  EXPECT_NE(html.find("Gradient norm"), std::string::npos);
  // Small learning rates share a power of ten in the axis title.
  EXPECT_NE(html.find("×10⁻⁵"), std::string::npos);
  EXPECT_NE(html.find("smoothed"), std::string::npos);
  // Self-contained: no scripts, no external resources.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  EXPECT_FALSE(printsNonFinite(html));
}

TEST(ReportTest, SvgIsOneImage) {
  std::string svg = renderReportSvg(run(3), "three steps");
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_EQ(count(svg, "<svg"), 5u); // the page and four charts
  EXPECT_EQ(count(svg, "</svg>"), 5u);
  EXPECT_NE(svg.find("<title>three steps</title>"), std::string::npos);
}

TEST(ReportTest, HandlesOneStepAndMissingValues) {
  std::vector<MetricsRow> rows = run(1);
  rows[0].gradNorm = NAN;
  std::string html = renderReportHtml(rows, "one");
  EXPECT_EQ(count(html, "<svg"), 4u);
  EXPECT_NE(html.find("no data"), std::string::npos);
  EXPECT_FALSE(printsNonFinite(html));
}

TEST(ReportTest, ReadsMetricsFilesLaterStepsWin) {
  std::string path = ::testing::TempDir() + "llamac-report-test.jsonl";
  {
    std::ofstream out(path);
    out << metricsJson({1, 3.0, 1e-3, 1.0, 100, 0.5}) << "\n\n"
        << metricsJson({2, 2.9, 1e-3, 1.0, 100, 0.5}) << "\n"
        << metricsJson({2, 2.5, 1e-3, 1.0, 100, 0.5}) << "\n"
        << "{\"step\": 3, \"loss\": null}\n";
  }
  Result<std::vector<MetricsRow>> rows = readMetricsFile(path);
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  ASSERT_EQ(rows->size(), 3u);
  EXPECT_EQ((*rows)[1].loss, 2.5);
  EXPECT_EQ((*rows)[0].tokensPerS, 200);
  EXPECT_TRUE(std::isnan((*rows)[2].loss));
  {
    std::ofstream out(path);
    out << "{\"step\": 1}\n[1, 2]\n";
  }
  Result<std::vector<MetricsRow>> bad = readMetricsFile(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message, path + ":2: not a JSON object");
  std::filesystem::remove(path);
}

} // namespace
