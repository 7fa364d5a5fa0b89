//===- Progress.h - Step lines, progress bar, metrics -----------*- C++ -*-===//
//
// What a training run shows while it runs. On a terminal, one progress bar
// redrawn in place; elsewhere (a log file, CI), one plain line per step:
//   step    3/100 | loss 2.345678 | lr 9.80e-04 | grad norm 1.234 | tokens 4096
//   | 12345 tok/s | 0.331 s | ETA 0:32
// and, with --metrics FILE, one JSON object per step (JSON Lines) with step,
// loss, lr, grad_norm, tokens, tokens_per_s and step_time_s. On a GPU both
// add the model FLOPs utilization (MFU, "| MFU 41.2%" before the ETA; "mfu"
// in the metrics, a fraction).
// Functions here format text; the caller writes it where it wants.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_PROGRESS_H
#define LLAMAC_RUNTIME_PROGRESS_H

#include "llamac/Runtime/Result.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

namespace llamac {

/// The measurements of one optimizer step.
struct StepMetrics {
  int64_t step = 0;
  double loss = 0, lr = 0, gradNorm = 0;
  /// Real (non-padding) input tokens of the step, over all micro-batches.
  int64_t tokens = 0;
  double stepTimeS = 0;
  /// Model FLOPs utilization: the step's model FLOPs per second over the
  /// device's peak (a fraction); NaN where not measured (the CPU backend).
  double mfu = NAN;

  double tokensPerS() const { return stepTimeS > 0 ? tokens / stepTimeS : 0; }
};

/// One JSON object (no newline) with keys grad_norm, loss, lr, step,
/// step_time_s, tokens, tokens_per_s, and mfu when it is measured;
/// non-finite numbers become null.
std::string metricsJson(const StepMetrics &metrics);

/// The model FLOPs of one training step per sequence position of a Llama
/// whose Hugging Face config.json is \p configJson, at sequence length
/// \p seq, in PaLM's accounting (appendix B): 6 N for the forward and
/// backward products with the N weights of every linear layer and the
/// head, plus 12 L H Q seq for attention's two products (L layers, H query
/// heads of Q dimensions). Errors name the missing config field.
Result<double> trainingFlopsPerPosition(const std::string &configJson,
                                        int64_t seq);

/// The dense BF16 tensor-core peak (FLOP/s) of a GPU from its name ("NVIDIA
/// H100 80GB HBM3": 989.4e12, as the data sheets give it), or 0 for a GPU
/// not in the table (then no MFU is shown).
double peakBF16Flops(const std::string &deviceName);

/// "0:42", "12:03" or "1:02:03"; "?" for a negative or non-finite time.
std::string formatDuration(double seconds);

/// Whether \p fd is a terminal, and its width in columns (80 if unknown).
bool isTerminal(int fd);
int terminalColumns(int fd);

/// Formats a run's progress: remembers when the run started to estimate the
/// time left from the steps this process has run.
class ProgressFormatter {
public:
  /// A run of \p totalSteps optimizer steps that starts after \p firstStep
  /// steps already done (a resumed run), drawn as a bar \p columns wide when
  /// \p terminal.
  ProgressFormatter(int64_t firstStep, int64_t totalSteps, bool terminal,
                    int columns = 80);

  /// The text to write after a step: a plain line ending in '\n', or the bar
  /// redrawn in place (carriage return, no newline).
  std::string step(const StepMetrics &metrics);
  /// Text to write before a message of its own line: clears the bar.
  std::string clearLine() const;
  /// Text that ends the run's output (a newline after the bar).
  std::string finish() const;

  /// The plain line for \p metrics with \p etaSeconds left.
  std::string plainLine(const StepMetrics &metrics, double etaSeconds) const;
  /// The bar line for \p metrics with \p etaSeconds left.
  std::string barLine(const StepMetrics &metrics, double etaSeconds) const;

private:
  int64_t firstStep, totalSteps;
  bool terminal;
  int columns;
  double elapsed = 0;
  int64_t stepsTimed = 0;
  bool drawn = false;
};

/// The --metrics file: JSON Lines, flushed after every step.
class MetricsWriter {
public:
  MetricsWriter() = default;
  MetricsWriter(const MetricsWriter &) = delete;
  MetricsWriter &operator=(const MetricsWriter &) = delete;
  MetricsWriter(MetricsWriter &&other) noexcept;
  MetricsWriter &operator=(MetricsWriter &&other) noexcept;
  ~MetricsWriter();

  /// Opens \p path for a run that starts after step \p resumedStep: a fresh
  /// run (0) truncates the file; a resumed one keeps the lines of steps up to
  /// \p resumedStep and drops later ones (from the interrupted run).
  static Result<MetricsWriter> open(const std::string &path,
                                    int64_t resumedStep);

  /// Appends one line and flushes it.
  Status write(const StepMetrics &metrics);

private:
  std::FILE *file = nullptr;
  std::string path;
};

} // namespace llamac

#endif // LLAMAC_RUNTIME_PROGRESS_H
