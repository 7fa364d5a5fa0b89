//===- main.cpp - llamac-run: fine-tune from a prebuilt package -*- C++ -*-===//
//
//   llamac-run --package DIR [--data FILE.jsonl] [--tokenizer PATH]
//              [--weights PATH] [--steps N] [--grad-accum N]
//              [--lr X] [--lr-schedule constant|linear|cosine]
//              [--warmup-steps N] [--weight-decay X] [--adam-betas B1,B2]
//              [--adam-eps X] [--max-grad-norm X] [--seed N]
//              [--shuffle] [--pad-to-longest]
//              [--save DIR] [--save-every N] [--keep N] [--resume DIR]
//              [--no-save-on-interrupt] [--dump-grads FILE] [--metrics FILE]
//              [--fp8-calibration-passes N]
//
// Links no LLVM: it runs on a GPU machine that has only the CUDA driver and
// cuBLASLt. The flags mean what they mean for `llamac train`; text rows use
// --tokenizer, else the tokenizer of the --weights directory. --grad-accum N
// (N > 1) needs a package compiled with --accumulate-grads. A package
// compiled with `--pack` (its step takes position_ids) trains on rows packed
// into sequences, as `llamac train --pack` does; others on padded rows.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/GpuTrainer.h"
#include "llamac/Version.h"

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>

using namespace llamac;

static int usage(const std::string &message) {
  std::fprintf(stderr, "llamac-run: error: %s\n", message.c_str());
  return 2;
}

/// Parses `text` as a whole number or float into `out`.
template <typename T> static bool parse(const std::string &text, T &out) {
  char *end = nullptr;
  if constexpr (std::is_floating_point_v<T>)
    out = T(std::strtod(text.c_str(), &end));
  else
    out = T(std::strtoll(text.c_str(), &end, 10));
  return !text.empty() && end && *end == '\0';
}

int main(int argc, char **argv) {
  GpuTrainOptions options;
  options.schedule.peak = 1.41e-5;
  options.llamacVersion = LLAMAC_VERSION_STRING;
  std::string schedule = "linear";
  int64_t warmup = 0;
  std::map<std::string, std::function<bool(const std::string &)>> flags = {
      {"--package", [&](auto v) { return !(options.packageDir = v).empty(); }},
      {"--weights", [&](auto v) { return !(options.weightsPath = v).empty(); }},
      {"--data", [&](auto v) { return !(options.dataPath = v).empty(); }},
      {"--tokenizer",
       [&](auto v) { return !(options.tokenizerPath = v).empty(); }},
      {"--save", [&](auto v) { return !(options.savePath = v).empty(); }},
      {"--resume", [&](auto v) { return !(options.resumePath = v).empty(); }},
      {"--dump-grads",
       [&](auto v) { return !(options.dumpGradsPath = v).empty(); }},
      {"--metrics", [&](auto v) { return !(options.metricsPath = v).empty(); }},
      {"--steps",
       [&](auto v) { return parse(v, options.steps) && options.steps >= 0; }},
      {"--grad-accum",
       [&](auto v) {
         return parse(v, options.gradAccum) && options.gradAccum >= 1;
       }},
      {"--fp8-calibration-passes",
       [&](auto v) {
         return parse(v, options.fp8CalibrationPasses) &&
                options.fp8CalibrationPasses >= 0 &&
                options.fp8CalibrationPasses <= 8;
       }},
      {"--save-every",
       [&](auto v) {
         return parse(v, options.saveEvery) && options.saveEvery >= 0;
       }},
      {"--keep",
       [&](auto v) { return parse(v, options.keep) && options.keep >= 0; }},
      {"--lr",
       [&](auto v) {
         return parse(v, options.schedule.peak) && options.schedule.peak >= 0;
       }},
      {"--lr-schedule",
       [&](auto v) {
         schedule = v;
         return true;
       }},
      {"--warmup-steps",
       [&](auto v) { return parse(v, warmup) && warmup >= 0; }},
      {"--weight-decay",
       [&](auto v) {
         return parse(v, options.weightDecay) && options.weightDecay >= 0;
       }},
      {"--adam-eps",
       [&](auto v) { return parse(v, options.eps) && options.eps > 0; }},
      {"--max-grad-norm",
       [&](auto v) {
         return parse(v, options.maxGradNorm) && options.maxGradNorm >= 0;
       }},
      {"--seed", [&](auto v) { return parse(v, options.seed); }},
      {"--adam-betas",
       [&](auto v) {
         size_t comma = v.find(',');
         return comma != std::string::npos &&
                parse(v.substr(0, comma), options.beta1) &&
                parse(v.substr(comma + 1), options.beta2) &&
                options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 &&
                options.beta2 < 1;
       }},
  };
  // Flags without a value.
  std::map<std::string, bool *> switches = {
      {"--shuffle", &options.shuffle},
      {"--pad-to-longest", &options.padToLongest}};
  bool noSaveOnInterrupt = false;
  switches["--no-save-on-interrupt"] = &noSaveOnInterrupt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    if (auto flag = switches.find(arg); flag != switches.end()) {
      *flag->second = true;
      continue;
    }
    size_t equals = arg.find('=');
    if (equals != std::string::npos) {
      value = arg.substr(equals + 1);
      arg = arg.substr(0, equals);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return usage(arg + ": missing value");
    }
    auto flag = flags.find(arg);
    if (flag == flags.end())
      return usage(arg + ": unknown flag (see the comment at the top of "
                         "tools/llamac-run/main.cpp)");
    if (!flag->second(value))
      return usage(arg + ": bad value '" + value + "'");
  }
  if (options.packageDir.empty())
    return usage("--package: required");
  if (options.saveEvery > 0 && options.savePath.empty())
    return usage("--save-every: needs --save DIR, where the checkpoint-<step> "
                 "directories go");
  Result<LRScheduleKind> kind = parseLRSchedule(schedule);
  if (!kind)
    return usage("--lr-schedule: " + kind.error().message);
  options.schedule.kind = *kind;
  options.schedule.warmupSteps = warmup;
  options.schedule.totalSteps = options.steps;
  options.saveOnInterrupt = !noSaveOnInterrupt;
  options.modelDir = options.weightsPath;
  return trainOnGpu(options);
}
