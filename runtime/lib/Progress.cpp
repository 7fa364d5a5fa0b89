//===- Progress.cpp - Step lines, the progress bar and the metrics file ---===//

#include "llamac/Runtime/Progress.h"

#include "IOUtil.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstring>
#include <fstream>
#include <sstream>

#include <sys/ioctl.h>
#include <unistd.h>

using namespace llamac;
using namespace llamac::io;
using json = nlohmann::json;

static json number(double value) {
  return std::isfinite(value) ? json(value) : json(nullptr);
}

std::string llamac::metricsJson(const StepMetrics &m) {
  json line = {{"step", m.step},
               {"loss", number(m.loss)},
               {"lr", number(m.lr)},
               {"grad_norm", number(m.gradNorm)},
               {"tokens", m.tokens},
               {"tokens_per_s", number(m.tokensPerS())},
               {"step_time_s", number(m.stepTimeS)}};
  if (std::isfinite(m.mfu))
    line["mfu"] = m.mfu;
  return line.dump();
}

Result<double> llamac::trainingFlopsPerPosition(const std::string &configJson,
                                                int64_t seq) {
  json config = json::parse(configJson, nullptr, false);
  if (!config.is_object())
    return Error{"config: not a JSON object"};
  auto field = [&](const char *key) -> Result<double> {
    if (!config.contains(key) || !config[key].is_number_integer() ||
        config[key].get<int64_t>() <= 0)
      return Error{std::string("config: ") + key +
                   ": missing or not a positive integer"};
    return double(config[key].get<int64_t>());
  };
  Result<double> layers = field("num_hidden_layers"),
                 hidden = field("hidden_size"),
                 intermediate = field("intermediate_size"),
                 heads = field("num_attention_heads"),
                 vocab = field("vocab_size");
  for (const Result<double> *value :
       {&layers, &hidden, &intermediate, &heads, &vocab})
    if (!*value)
      return value->error();
  Result<double> kvHeads = config.contains("num_key_value_heads")
                               ? field("num_key_value_heads")
                               : *heads;
  Result<double> headDim =
      config.contains("head_dim") && !config["head_dim"].is_null()
          ? field("head_dim")
          : Result<double>(*hidden / *heads);
  if (!kvHeads)
    return kvHeads.error();
  if (!headDim)
    return headDim.error();
  double queryWidth = *heads * *headDim, kvWidth = *kvHeads * *headDim;
  double perLayer =
      *hidden * (2 * queryWidth + 2 * kvWidth) + 3 * *hidden * *intermediate;
  double weights = *layers * perLayer + *vocab * *hidden;
  return 6 * weights + 12 * *layers * queryWidth * double(seq);
}

double llamac::peakBF16Flops(const std::string &deviceName) {
  auto has = [&](const char *text) {
    return deviceName.find(text) != std::string::npos;
  };
  if (has("H100") || has("H200")) {
    if (has("PCIe"))
      return 756e12;
    if (has("NVL"))
      return 835.5e12;
    return 989.4e12;
  }
  if (has("A100"))
    return 312e12;
  return 0;
}

std::string llamac::formatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0)
    return "?";
  auto total = int64_t(std::llround(seconds));
  int64_t h = total / 3600, m = total / 60 % 60, s = total % 60;
  char text[32];
  if (h > 0)
    std::snprintf(text, sizeof(text), "%lld:%02lld:%02lld", (long long)h,
                  (long long)m, (long long)s);
  else
    std::snprintf(text, sizeof(text), "%lld:%02lld", (long long)m,
                  (long long)s);
  return text;
}

bool llamac::isTerminal(int fd) { return ::isatty(fd) == 1; }

int llamac::terminalColumns(int fd) {
  struct winsize size;
  if (::ioctl(fd, TIOCGWINSZ, &size) == 0 && size.ws_col > 0)
    return size.ws_col;
  return 80;
}

/// " | MFU 41.2%", or nothing when the MFU is not measured.
static std::string mfuText(const StepMetrics &m) {
  return std::isfinite(m.mfu) ? format(" | MFU %.1f%%", 100 * m.mfu) : "";
}

ProgressFormatter::ProgressFormatter(int64_t firstStep, int64_t totalSteps,
                                     bool terminal, int columns)
    : firstStep(firstStep), totalSteps(totalSteps), terminal(terminal),
      columns(std::max(columns, 40)) {}

std::string ProgressFormatter::plainLine(const StepMetrics &m,
                                         double eta) const {
  return format("step %4lld/%lld | loss %.6f | lr %.3e | grad norm %.4g | "
                "tokens %lld | %.0f tok/s | %.3f s%s | ETA %s\n",
                (long long)m.step, (long long)totalSteps, m.loss, m.lr,
                m.gradNorm, (long long)m.tokens, m.tokensPerS(), m.stepTimeS,
                mfuText(m).c_str(), formatDuration(eta).c_str());
}

std::string ProgressFormatter::barLine(const StepMetrics &m, double eta) const {
  std::string counter =
      format("%lld/%lld", (long long)m.step, (long long)totalSteps);
  std::string stats =
      format(" | loss %.4f | lr %.2e | %.0f tok/s%s | ETA %s", m.loss, m.lr,
             m.tokensPerS(), mfuText(m).c_str(), formatDuration(eta).c_str());
  double done = totalSteps > 0 ? double(m.step) / double(totalSteps) : 1;
  std::string percent = format(" %3d%% ", int(done * 100));
  // The bar takes what the text leaves of the line, within [10, 40] cells.
  int width =
      columns - 1 - int(counter.size() + percent.size() + stats.size() + 2);
  width = std::clamp(width, 10, 40);
  int filled = int(done * width);
  std::string bar = "|";
  for (int i = 0; i < width; ++i)
    bar += i < filled ? "\u2588" : " ";
  bar += "|";
  std::string line = percent + bar + " " + counter + stats;
  return "\r\x1b[2K" + line;
}

std::string ProgressFormatter::step(const StepMetrics &m) {
  elapsed += m.stepTimeS;
  ++stepsTimed;
  double perStep = elapsed / double(stepsTimed);
  double eta = perStep * double(std::max<int64_t>(totalSteps - m.step, 0));
  (void)firstStep;
  if (!terminal)
    return plainLine(m, eta);
  drawn = true;
  return barLine(m, eta);
}

std::string ProgressFormatter::clearLine() const {
  return terminal && drawn ? "\r\x1b[2K" : "";
}

std::string ProgressFormatter::finish() const {
  return terminal && drawn ? "\n" : "";
}

MetricsWriter::MetricsWriter(MetricsWriter &&other) noexcept
    : file(other.file), path(std::move(other.path)) {
  other.file = nullptr;
}

MetricsWriter &MetricsWriter::operator=(MetricsWriter &&other) noexcept {
  if (this != &other) {
    if (file)
      std::fclose(file);
    file = other.file;
    path = std::move(other.path);
    other.file = nullptr;
  }
  return *this;
}

MetricsWriter::~MetricsWriter() {
  if (file)
    std::fclose(file);
}

Result<MetricsWriter> MetricsWriter::open(const std::string &path,
                                          int64_t resumedStep) {
  return guard(path, [&]() -> Result<MetricsWriter> {
    std::string kept;
    if (resumedStep > 0) {
      std::ifstream in(path);
      std::string line;
      while (std::getline(in, line)) {
        json object = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (object.is_object() && object.contains("step") &&
            object["step"].is_number_integer() &&
            object["step"].get<int64_t>() <= resumedStep)
          kept += line + "\n";
      }
    }
    MetricsWriter writer;
    writer.path = path;
    writer.file = std::fopen(path.c_str(), "w");
    if (!writer.file)
      return fail(path, std::string("cannot open for writing: ") +
                            std::strerror(errno));
    if (!kept.empty() &&
        std::fwrite(kept.data(), 1, kept.size(), writer.file) != kept.size())
      return fail(path, "cannot write");
    std::fflush(writer.file);
    return writer;
  });
}

Status MetricsWriter::write(const StepMetrics &metrics) {
  std::string line = metricsJson(metrics) + "\n";
  if (!file || std::fwrite(line.data(), 1, line.size(), file) != line.size() ||
      std::fflush(file) != 0)
    return fail(path, "cannot write");
  return {};
}
