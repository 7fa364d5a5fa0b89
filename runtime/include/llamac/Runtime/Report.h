//===- Report.h - A training run's metrics as charts ------------*- C++ -*-===//
//
// `llamac report` reads the JSON Lines of --metrics and draws loss, learning
// rate, throughput and gradient norm against the step: a self-contained
// HTML page (inline SVG and CSS, no scripts or network) or one SVG image.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_REPORT_H
#define LLAMAC_RUNTIME_REPORT_H

#include "llamac/Runtime/Result.h"

#include <cstdint>
#include <string>
#include <vector>

namespace llamac {

/// One line of a metrics file; absent or null numbers are NaN.
struct MetricsRow {
  int64_t step = 0;
  double loss, lr, gradNorm, tokensPerS, stepTimeS, tokens;
};

/// Reads a --metrics file. Lines must be JSON objects with an integer
/// "step"; when a step occurs twice (a resumed run) the later line wins.
/// Rows come back by increasing step. Errors name the file and line.
Result<std::vector<MetricsRow>> readMetricsFile(const std::string &path);

/// A self-contained HTML page: a summary and one chart per metric.
std::string renderReportHtml(const std::vector<MetricsRow> &rows,
                             const std::string &title);
/// The same charts as one standalone SVG image.
std::string renderReportSvg(const std::vector<MetricsRow> &rows,
                            const std::string &title);

} // namespace llamac

#endif // LLAMAC_RUNTIME_REPORT_H
