//===- llamac-bench - Step time and its breakdown for a package ----------===//
//
//   llamac-bench --package DIR [--steps N] [--warmup N] [--max-grad-norm X]
//                [--tune] [--breakdown]
//
// Times the compiled train step of a package on the GPU the way a fine-tune
// runs it (CUDA Graph replay of @forward_backward then @optimizer_step), on
// Hugging Face's random init (as `llamac train` without --weights and
// hf_baseline.py: normal(0, initializer_range), norm weights one; the power a
// GEMM draws, and so its clock under the GPU's power cap, depends on the
// values) and random tokens, so that no checkpoint or data file is needed:
// after --warmup steps (5), the mean over the next ones back to back (--steps
// is the total, 15), as hf_baseline.py measures HF's step, with each step's
// spread. GEMMs use cuBLASLt's heuristic choice. With --tune they use the
// algorithms in DIR/gemm-tuning.json when it was made on this GPU with this
// cuBLASLt; otherwise they are tuned by replaying the step first
// (Executor::tuneGemms: one GEMM shape at a time, each of the heuristic's first
// 8 candidates tried in the step captured and replayed as a CUDA graph, kept
// only when the step gets 0.2% faster; the optimizer steps this takes only move
// the random weights), the choices are written to that file, and a table shows
// per GEMM shape its candidates, the chosen one and the step's milliseconds
// with each, and the step with all heuristic and all tuned choices (their
// difference is `tuned_saving_ms` in the RESULT line; null when the file was
// read). Delete the file to tune again. `--breakdown` then runs each function
// once more eagerly with an event between steps and prints where the time goes:
// GEMMs of the linear layers, attention, the other kernels, the optimizer,
// by op. The last line is `RESULT {json}` for scripts. LLVM-free, like
// llamac-run.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/Executor.h"
#include "llamac/Runtime/GpuTrainer.h"
#include "llamac/Runtime/Random.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

using namespace llamac;
using json = nlohmann::json;

namespace {

int fail(const std::string &message) {
  std::fprintf(stderr, "llamac-bench: error: %s\n", message.c_str());
  return 2;
}

Status uploadTokens(Executor &executor, int64_t vocab) {
  Random random(2, "llamac-bench tokens");
  for (const char *name : {"input_ids", "labels"}) {
    int index = executor.package().bufferIndex(name);
    if (index < 0)
      return Error{std::string("the package has no buffer ") + name};
    std::vector<int32_t> ids(executor.package().buffers[index].bytes / 4);
    for (int32_t &id : ids)
      id = int32_t(random.next() % uint64_t(vocab));
    if (Status s = executor.upload(name, ids.data(), ids.size() * 4); !s)
      return s;
  }
  return {};
}

/// Uploads @optimizer_step's hyperparameters for train step `step`.
Status uploadHyperparameters(Executor &executor, int64_t step,
                             double maxGradNorm) {
  float hyper[8] = {
      1e-5f, 0.9f, 0.999f, 1e-8f, 0.0f, float(step), float(maxGradNorm), 0};
  return executor.upload("hyperparameters", hyper, sizeof(hyper));
}

/// Tunes the GEMMs in the step, writing `file`, and prints what it chose per
/// GEMM shape; returns the measured saving per step.
Result<double> tuneInStep(Executor &executor, const std::string &file) {
  Result<GemmTuningResult> tuned =
      executor.tuneGemms({"forward_backward", "optimizer_step"});
  if (!tuned)
    return tuned.error();
  std::printf("GEMMs tuned by replaying the step, written to %s (step ms with "
              "the shape at the heuristic's choice and at the chosen "
              "candidate):\n  %-18s %10s %9s %10s %10s  %s\n",
              file.c_str(), "shape", "candidates", "chosen", "heuristic",
              "chosen", "first step");
  for (const GemmChoice &choice : tuned->choices)
    std::printf("  %-18s %10zu %9d %10.2f %10.2f  %s\n",
                choice.key.substr(0, choice.key.find(':')).c_str(),
                choice.candidates.size(), choice.chosen, choice.heuristicMs,
                choice.chosenMs, choice.label.c_str());
  std::printf("step: %.2f ms with the heuristic's choices, %.2f ms tuned\n\n",
              tuned->heuristicMs, tuned->tunedMs);
  return tuned->heuristicMs - tuned->tunedMs;
}

/// Step times of the timed loop, in milliseconds.
struct StepTimes {
  /// From the first timed step's start to the last one's end, over their
  /// count: the mean of back-to-back steps, gaps between them included.
  double mean = 0;
  /// Each timed step alone, sorted.
  std::vector<float> steps;
};

/// Runs `steps` train steps (graph replays of @forward_backward then
/// @optimizer_step, each waited for, as llamac train waits for each step's
/// loss) and times those after the first `warmup` with events on the device.
/// The mean counts the host's gaps between steps, as HF's baseline times its
/// own steps (hf_baseline.py: warm-up steps, then the mean over back-to-back
/// steps); the events around each step give the spread.
Result<StepTimes> timeSteps(cuda::Device &device, Executor &executor,
                            int64_t steps, int64_t warmup, double maxGradNorm) {
  // start and end around each step; timed from the first timed step's start.
  struct Events {
    cuda::Device &device;
    std::array<CUevent, 3> made{};
    ~Events() {
      for (CUevent event : made)
        if (event)
          device.destroyEvent(event);
    }
  } events{device};
  for (CUevent &event : events.made) {
    Result<CUevent> created = device.createEvent();
    if (!created)
      return created.error();
    event = *created;
  }
  auto [start, end, timedFrom] = events.made;
  StepTimes times;
  for (int64_t step = 1; step <= steps; ++step) {
    Status s = uploadHyperparameters(executor, step, maxGradNorm);
    if (s && step == warmup + 1)
      s = device.record(timedFrom);
    if (s)
      s = device.record(start);
    if (s)
      s = executor.run("forward_backward");
    if (s)
      s = executor.run("optimizer_step");
    if (s)
      s = device.record(end);
    if (!s)
      return s.error();
    Result<float> ms = device.elapsedMs(start, end);
    if (!ms)
      return ms.error();
    if (step > warmup)
      times.steps.push_back(*ms);
  }
  Result<float> span = device.elapsedMs(timedFrom, end);
  if (!span)
    return span.error();
  times.mean = *span / double(times.steps.size());
  std::sort(times.steps.begin(), times.steps.end());
  return times;
}

/// Where a step's time is counted in the breakdown.
std::string category(const std::string &function, const package::Step &step) {
  if (function != "forward_backward")
    return "optimizer (clip + AdamW)";
  bool attention = step.label.find("attention") != std::string::npos;
  if (step.kind == package::Step::Kind::Gemm)
    return attention ? "attention GEMMs" : "linear-layer GEMMs";
  if (step.kind == package::Step::Kind::Launch &&
      step.launch.kernel.rfind("fp8_", 0) == 0)
    return "FP8 casts and scaling";
  return attention ? "attention kernels" : "other kernels";
}

} // namespace

int main(int argc, char **argv) {
  std::string packageDir;
  int64_t steps = 15, warmup = 5;
  double maxGradNorm = 0;
  bool breakdown = false, tune = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> const char * {
      return i + 1 < argc ? argv[++i] : nullptr;
    };
    const char *v = nullptr;
    if (arg == "--breakdown") {
      breakdown = true;
    } else if (arg == "--tune") {
      tune = true;
    } else if (arg == "--package" && (v = value())) {
      packageDir = v;
    } else if (arg == "--steps" && (v = value())) {
      steps = std::atoll(v);
    } else if (arg == "--warmup" && (v = value())) {
      warmup = std::atoll(v);
    } else if (arg == "--max-grad-norm" && (v = value())) {
      maxGradNorm = std::atof(v);
    } else {
      return fail(arg + ": unknown flag or missing value (see the comment at "
                        "the top of tools/llamac-bench/main.cpp)");
    }
  }
  if (packageDir.empty())
    return fail("--package DIR is required");
  if (steps <= warmup || warmup < 0)
    return fail("--steps must exceed --warmup");

  Result<package::Package> package = package::readPackage(packageDir);
  if (!package)
    return fail(package.error().message);
  json config = json::parse(package->configJson, nullptr, false);
  int64_t vocab = config.is_object() ? config.value("vocab_size", 0) : 0;
  if (vocab <= 0)
    return fail(packageDir + "/manifest.json: config: no vocab_size");
  Result<std::shared_ptr<cuda::Device>> device = cuda::Device::open();
  if (!device)
    return fail(device.error().message);
  double arenaGiB = double(package->arenaBytes) / double(1ull << 30);
  Result<std::unique_ptr<Executor>> created =
      Executor::create(*device, std::move(*package));
  if (!created)
    return fail(created.error().message);
  Executor &executor = **created;
  if (Status s = uploadRandomInit(
          executor, config.value("initializer_range", 0.02), /*seed=*/0);
      !s)
    return fail(s.error().message);
  if (Status s = uploadTokens(executor, vocab); !s)
    return fail(s.error().message);
  if (Status s = executor.castFP8Weights(); !s)
    return fail(s.error().message);
  // Before the first graph run, which fixes the GEMMs' algorithms.
  std::string gemms = "by heuristic";
  json tunedSaving = nullptr;
  if (tune) {
    std::string file = packageDir + "/" + kGemmTuningFile;
    Result<bool> loaded = executor.useTuningFile(file);
    if (!loaded)
      return fail(loaded.error().message);
    gemms = "tuned (" + file + ")";
    if (!*loaded) {
      if (Status s = uploadHyperparameters(executor, 1, maxGradNorm); !s)
        return fail(s.error().message);
      Result<double> saving = tuneInStep(executor, file);
      if (!saving)
        return fail(saving.error().message);
      tunedSaving = *saving;
      gemms = "tuned in the step";
    }
  }

  Result<StepTimes> times =
      timeSteps(**device, executor, steps, warmup, maxGradNorm);
  if (!times)
    return fail(times.error().message);
  const std::vector<float> &each = times->steps;
  double median = each[each.size() / 2];
  std::printf("%s on %s: step %.2f ms (mean of %zu back to back; each step "
              "%.2f to %.2f ms, median %.2f), arena %.1f GiB, max_grad_norm "
              "%g, GEMMs %s\n",
              packageDir.c_str(), (*device)->name().c_str(), times->mean,
              each.size(), each.front(), each.back(), median, arenaGiB,
              maxGradNorm, gemms.c_str());
  json result = {{"package", packageDir},
                 {"device", (*device)->name()},
                 {"step_ms", times->mean},
                 {"median_step_ms", median},
                 {"steps_ms", each},
                 {"arena_gib", arenaGiB},
                 {"max_grad_norm", maxGradNorm}};
  if (tune)
    result["tuned_saving_ms"] = tunedSaving;

  if (breakdown) {
    std::map<std::string, double> byCategory, byOp;
    std::map<std::string, int> calls;
    double total = 0;
    for (const char *name : {"forward_backward", "optimizer_step"}) {
      Result<std::vector<float>> ms = executor.profile(name);
      if (!ms)
        return fail(ms.error().message);
      const package::Function &function = *executor.package().function(name);
      for (size_t i = 0; i < ms->size(); ++i) {
        const package::Step &step = function.steps[i];
        byCategory[category(name, step)] += (*ms)[i];
        byOp[step.label] += (*ms)[i];
        ++calls[step.label];
        total += (*ms)[i];
      }
    }
    std::printf("\neager step (event per launch) %.2f ms:\n", total);
    json categories = json::object();
    for (auto &[name, ms] : byCategory) {
      std::printf("  %-28s %8.2f ms  %5.1f%%\n", name.c_str(), ms,
                  100 * ms / total);
      categories[name] = ms;
    }
    std::vector<std::pair<double, std::string>> ops;
    for (auto &[label, ms] : byOp)
      ops.emplace_back(ms, label);
    std::sort(ops.rbegin(), ops.rend());
    std::printf("\nby op (top 20):\n");
    for (size_t i = 0; i < std::min<size_t>(20, ops.size()); ++i)
      std::printf("  %8.2f ms  %5d calls  %s\n", ops[i].first,
                  calls[ops[i].second], ops[i].second.c_str());
    result["breakdown_ms"] = categories;
    result["eager_ms"] = total;
  }
  std::printf("RESULT %s\n", result.dump().c_str());
  return 0;
}
