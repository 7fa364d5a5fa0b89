//===- Report.cpp - `llamac report`: a run's metrics as charts ------------===//
//
//   llamac report metrics.jsonl -o report.html   (or report.svg)
//
// Reads the JSON Lines that `llamac train --metrics` writes and draws loss,
// learning rate, throughput and gradient norm against the step, as a
// self-contained HTML page or one SVG image (runtime/lib/Report.cpp).
//
//===----------------------------------------------------------------------===//

#include "Commands.h"

#include "llamac/Runtime/Report.h"
#include "llamac/Runtime/Safetensors.h"

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

using namespace llamac;

int llamac::runReport(const ReportOptions &options) {
  llvm::StringRef extension = llvm::sys::path::extension(options.outputPath);
  bool svg = extension.equals_insensitive(".svg");
  if (!svg && !extension.equals_insensitive(".html") &&
      !extension.equals_insensitive(".htm"))
    return reportError("-o: '" + options.outputPath +
                       "' must end in .html or .svg");

  Result<std::vector<MetricsRow>> rows = readMetricsFile(options.metricsPath);
  if (!rows)
    return reportError(rows.error().message);
  std::string title = options.title;
  if (title.empty())
    title = "Training report: " +
            llvm::sys::path::filename(options.metricsPath).str();

  std::string text =
      svg ? renderReportSvg(*rows, title) : renderReportHtml(*rows, title);
  if (Status status = writeFileAtomic(options.outputPath, text); !status)
    return reportError(status.error().message);
  llvm::outs() << "wrote " << options.outputPath << " (" << rows->size()
               << " steps)\n";
  return 0;
}
