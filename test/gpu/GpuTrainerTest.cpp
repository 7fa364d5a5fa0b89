//===- GpuTrainerTest.cpp - The GPU training loop end to end --------------===//
//
// Runs trainOnGpu (what `llamac-run` and `llamac train --device cuda` run)
// on the tiny model of test/gpu/hf/tiny, from packages the build compiled
// (TRAIN_DIR: b8 = batch 8, b4-accumulate = batch 4 summing gradients over
// micro-batches) and a bf16 CPU run of the same model that the build made
// (TRAIN_DIR/cpu: checkpoints after steps 1, 2 and 3; cpu-metrics.jsonl):
//   - two micro-batches of 4 rows give the loss and step-1 gradients of one
//     batch of 8, with micro-batches of very different token counts;
//   - 4 steps equal 2 steps, then a resume to 4 (shuffled, accumulated);
//   - the CPU's checkpoint-2 resumes on the GPU, and the GPU's checkpoints
//     are what the CPU loop reads (files, names, shapes, dtypes, state);
//   - SIGTERM finishes the step and leaves a checkpoint that resumes;
//   - fp8 (TRAIN_DIR/fp8-b8, and the CPU's fp8 run TRAIN_DIR/cpu-fp8):
//     2 steps then a resume to 4 equal 4 steps bit for bit where nothing is
//     summed by atomics; a resume continues the run; the checkpoints hold
//     the FP8 state in the CPU loop's format, as the device holds it; the
//     CPU's fp8 checkpoint resumes on the GPU;
//   - the random init is Hugging Face's.
// Tolerances: bf16 stores every tensor with a relative rounding of 2^-9;
// sums in a different order (two micro-batches added in bf16 against one
// f32-accumulated GEMM; CPU against GPU) differ by a few of those per
// element, which per tensor is well under 2e-2 (the bound against
// HF) and for a loss, an average over hundreds of tokens, under 1e-2. The
// GPU's f32 atomics (loss sum, gradient norm) make even a repeated run
// differ in the last bits, so "the same run" is compared within 5e-3.
//
//===----------------------------------------------------------------------===//

#include "GpuTestUtil.h"

#include "llamac/Runtime/Checkpoint.h"
#include "llamac/Runtime/Executor.h"
#include "llamac/Runtime/FusedParams.h"
#include "llamac/Runtime/GpuTrainer.h"
#include "llamac/Runtime/Report.h"
#include "llamac/Runtime/Safetensors.h"

#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <thread>

#include <unistd.h>

using namespace llamac;
using namespace llamac::test;
namespace fs = std::filesystem;

namespace {

const std::string kTrainDir = TRAIN_DIR;

class GpuTrainerTest : public ::testing::Test {
protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "llamac-gpu-train-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir = pattern;
  }
  void TearDown() override {
    if (!HasFailure())
      fs::remove_all(dir);
  }

  std::string path(const std::string &name) const { return dir + "/" + name; }

  /// The settings of the build's CPU run (TRAIN_DIR/CMakeLists.txt): the
  /// built-in rows, batch 8 x seq 32, lr 1e-3 (linear), 3 steps, seed 0.
  GpuTrainOptions cpuRunOptions() const {
    GpuTrainOptions options;
    options.packageDir = kTrainDir + "/b8";
    options.steps = 3;
    options.schedule = {LRScheduleKind::Linear, 1e-3, 0, 3};
    return options;
  }

  /// Trains "straight" to 4 steps, and "resumed" to 2 and then, from its
  /// checkpoint, to 4; `options(name, steps)` sets each run.
  void trainStraightAndResumed(
      const std::function<GpuTrainOptions(const std::string &, int64_t)>
          &options) {
    ASSERT_EQ(trainOnGpu(options("straight", 4)), 0);
    ASSERT_EQ(trainOnGpu(options("resumed", 2)), 0);
    GpuTrainOptions resume = options("resumed", 4);
    resume.resumePath = path("resumed");
    ASSERT_EQ(trainOnGpu(resume), 0);
  }

  /// The fp8 run of the build's CPU loop (TRAIN_DIR/CMakeLists.txt: lr
  /// 1e-3 linear over 3 steps) on the GPU, checkpointing every step into
  /// "gpu".
  GpuTrainOptions cpuFP8RunOptions() const {
    GpuTrainOptions options = fp8Options("gpu", 3, 1e-3, 1);
    options.schedule = {LRScheduleKind::Linear, 1e-3, 0, 3};
    return options;
  }

  /// A run of the fp8 package (TRAIN_DIR/fp8-b8) to `steps`, checkpointing
  /// into `name` every `saveEvery` steps, metrics in `<name>.jsonl`.
  GpuTrainOptions fp8Options(const std::string &name, int64_t steps, double lr,
                             int64_t saveEvery) const {
    GpuTrainOptions options;
    options.packageDir = kTrainDir + "/fp8-b8";
    options.steps = steps;
    options.schedule = {LRScheduleKind::Constant, lr, 0, steps};
    options.saveEvery = saveEvery;
    options.savePath = path(name);
    options.metricsPath = path(name + ".jsonl");
    return options;
  }

  std::vector<MetricsRow> metrics(const std::string &file) {
    Result<std::vector<MetricsRow>> rows = readMetricsFile(file);
    EXPECT_TRUE(rows.ok()) << (rows.ok() ? "" : rows.error().message);
    return rows.ok() ? *rows : std::vector<MetricsRow>{};
  }

  std::string dir;
};

/// Same names, shapes and dtypes; every tensor within `tolerance`
/// (relative Frobenius error against `want`).
void expectClose(const std::string &got, const std::string &want,
                 double tolerance) {
  SCOPED_TRACE(got + " vs " + want);
  std::map<std::string, HostTensor> a = readAll(got), b = readAll(want);
  ASSERT_FALSE(b.empty());
  ASSERT_EQ(a.size(), b.size());
  for (const auto &[name, tensor] : b) {
    auto found = a.find(name);
    ASSERT_NE(found, a.end()) << name;
    EXPECT_EQ(found->second.dtype, tensor.dtype) << name;
    ASSERT_EQ(found->second.shape, tensor.shape) << name;
    EXPECT_LE(relativeError(found->second.toDouble(), tensor.toDouble()),
              tolerance)
        << name;
  }
}

void expectRelative(double got, double want, double tolerance,
                    const std::string &what) {
  EXPECT_LE(std::abs(got - want), tolerance * std::abs(want))
      << what << ": " << got << " vs " << want;
}

// uploadRandomInit (the start of `llamac train` without --weights, and of
// llamac-bench) is Hugging Face's _init_weights: norm weights exactly one,
// every other parameter normal(0, 0.02) (each tensor's mean and standard
// deviation within 5 standard errors, 0.02 / sqrt(n) and 0.02 / sqrt(2 n),
// of 0 and 0.02; bf16's rounding by 2^-9 is far below), moments zero; the
// same seed gives the same bytes, another seed others.
TEST_F(GpuTrainerTest, RandomInitIsHuggingFaces) {
  LLAMAC_REQUIRE_GPU(device);
  Result<package::Package> package = package::readPackage(kTrainDir + "/b8");
  ASSERT_TRUE(package.ok()) << package.error().message;
  auto created = Executor::create(device, *package);
  ASSERT_TRUE(created.ok()) << created.error().message;
  Executor &executor = **created;
  auto download = [&](const package::Buffer &buffer) {
    std::vector<uint16_t> bits(buffer.bytes / 2);
    EXPECT_TRUE(executor.download(buffer.name, bits.data(), buffer.bytes).ok());
    return bits;
  };
  ASSERT_TRUE(uploadRandomInit(executor, 0.02, 7).ok());
  std::map<std::string, std::vector<uint16_t>> first;
  int linear = 0;
  for (const package::Buffer &buffer : package->buffers) {
    SCOPED_TRACE(buffer.name);
    if (buffer.role == "exp_avg" || buffer.role == "exp_avg_sq")
      for (uint16_t bits : download(buffer))
        ASSERT_EQ(bits, 0);
    if (buffer.role != "param")
      continue;
    std::vector<uint16_t> bits = download(buffer);
    first[buffer.name] = bits;
    if (buffer.shape.size() == 1) {
      for (uint16_t b : bits)
        ASSERT_EQ(bf16ToFloat(b), 1.0f);
      continue;
    }
    double sum = 0, squares = 0;
    for (uint16_t b : bits) {
      double v = bf16ToFloat(b);
      sum += v;
      squares += v * v;
    }
    double n = double(bits.size()), mean = sum / n;
    EXPECT_LE(std::abs(mean), 5 * 0.02 / std::sqrt(n));
    EXPECT_NEAR(std::sqrt(squares / n - mean * mean), 0.02,
                5 * 0.02 / std::sqrt(2 * n));
    ++linear;
  }
  EXPECT_GT(linear, 0);
  ASSERT_TRUE(uploadRandomInit(executor, 0.02, 7).ok());
  for (const auto &[name, bits] : first) {
    std::vector<uint16_t> again(bits.size());
    ASSERT_TRUE(executor.download(name, again.data(), again.size() * 2).ok());
    EXPECT_EQ(again, bits) << name;
  }
  ASSERT_TRUE(uploadRandomInit(executor, 0.02, 8).ok());
  const package::Buffer &embedding =
      package->buffers[package->bufferIndex("param:model.embed_tokens.weight")];
  EXPECT_NE(download(embedding), first[embedding.name]);
}

TEST_F(GpuTrainerTest, TwoMicroBatchesOfFourEqualOneBatchOfEight) {
  LLAMAC_REQUIRE_GPU(device);
  // Step 1: rows 0-3 count 31 tokens each (truncated to 32), rows 4-7 count
  // 5 each (one with masked labels too), so the two micro-batches weigh
  // 124 : 17; dividing each by its own count would double the small one's
  // share. Step 2 takes rows 8-15.
  std::string data = path("rows.jsonl");
  {
    std::ofstream out(data);
    for (int r = 0; r < 16; ++r) {
      int length = r < 4 ? 40 : r < 8 ? 6 : 10 + 2 * r;
      out << "{\"input_ids\": [";
      for (int i = 0; i < length; ++i)
        out << (i ? ", " : "") << (11 * r + 7 * i + 3) % 256;
      out << "]";
      if (r == 5)
        out << ", \"labels\": [-100, -100, -100, -100, 9, 10]";
      out << "}\n";
    }
  }
  auto train = [&](const std::string &package, int64_t accum,
                   const std::string &tag) {
    GpuTrainOptions options;
    options.packageDir = kTrainDir + "/" + package;
    options.dataPath = data;
    options.steps = 2;
    options.gradAccum = accum;
    options.schedule = {LRScheduleKind::Constant, 1e-3, 0, 2};
    options.seed = 5;
    options.dumpGradsPath = path(tag + "-grads.safetensors");
    options.metricsPath = path(tag + ".jsonl");
    options.savePath = path(tag);
    ASSERT_EQ(trainOnGpu(options), 0) << tag;
  };
  train("b8", 1, "one");
  train("b4-accumulate", 2, "two");
  std::vector<MetricsRow> one = metrics(path("one.jsonl")),
                          two = metrics(path("two.jsonl"));
  ASSERT_EQ(one.size(), 2u);
  ASSERT_EQ(two.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(two[i].tokens, one[i].tokens);
    expectRelative(two[i].loss, one[i].loss, 1e-2, "loss");
    expectRelative(two[i].gradNorm, one[i].gradNorm, 2e-2, "grad norm");
  }
  expectClose(path("two-grads.safetensors"), path("one-grads.safetensors"),
              2e-2);
  expectClose(path("two/model.safetensors"), path("one/model.safetensors"),
              2e-2);
}

TEST_F(GpuTrainerTest, FourStepsEqualTwoThenResumeToFour) {
  LLAMAC_REQUIRE_GPU(device);
  // Shuffled, accumulated, padded to the longest row, clipped: the state a
  // resume must restore (weights, moments, step, data position).
  auto options = [&](const std::string &name, int64_t steps) {
    GpuTrainOptions o;
    o.packageDir = kTrainDir + "/b4-accumulate";
    o.gradAccum = 2;
    o.shuffle = true;
    o.seed = 3;
    o.padToLongest = true;
    o.maxGradNorm = 0.5;
    o.steps = steps;
    o.schedule = {LRScheduleKind::Constant, 1e-3, 0, steps};
    o.saveEvery = 2;
    o.savePath = path(name);
    o.metricsPath = path(name + ".jsonl");
    return o;
  };
  ASSERT_NO_FATAL_FAILURE(trainStraightAndResumed(options));

  std::vector<MetricsRow> a = metrics(path("straight.jsonl")),
                          b = metrics(path("resumed.jsonl"));
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    expectRelative(b[i].loss, a[i].loss, 5e-3,
                   "loss of step " + std::to_string(i + 1));
    EXPECT_EQ(b[i].tokens, a[i].tokens) << "step " << i + 1;
  }
  Result<TrainerState> straight =
      readTrainerState(path("straight/checkpoint-4"));
  Result<TrainerState> resumed = readTrainerState(path("resumed/checkpoint-4"));
  ASSERT_TRUE(straight.ok() && resumed.ok());
  EXPECT_EQ(resumed->globalStep, 4);
  EXPECT_EQ(resumed->dataPosition, 4 * 2 * 4);
  EXPECT_EQ(resumed->dataPosition, straight->dataPosition);
  EXPECT_EQ(resumed->logHistory.size(), 4u);
  // Moments that restarted from zero at step 3 would be off by far more.
  for (const char *file : {"model.safetensors", "optimizer.safetensors"})
    expectClose(path(std::string("resumed/checkpoint-4/") + file),
                path(std::string("straight/checkpoint-4/") + file), 1e-2);
}

TEST_F(GpuTrainerTest, CpuCheckpointResumesOnTheGpu) {
  LLAMAC_REQUIRE_GPU(device);
  std::vector<MetricsRow> cpu = metrics(kTrainDir + "/cpu-metrics.jsonl");
  ASSERT_EQ(cpu.size(), 3u);
  fs::copy_file(kTrainDir + "/cpu-metrics.jsonl", path("gpu.jsonl"));
  GpuTrainOptions options = cpuRunOptions();
  options.resumePath = kTrainDir + "/cpu/checkpoint-2";
  options.saveEvery = 1;
  options.savePath = path("gpu");
  options.metricsPath = path("gpu.jsonl");
  ASSERT_EQ(trainOnGpu(options), 0);
  std::vector<MetricsRow> gpu = metrics(path("gpu.jsonl"));
  ASSERT_EQ(gpu.size(), 3u);
  EXPECT_EQ(gpu[1].loss, cpu[1].loss); // kept from the CPU's run
  expectRelative(gpu[2].loss, cpu[2].loss, 1e-2, "loss of step 3");
  expectRelative(gpu[2].gradNorm, cpu[2].gradNorm, 2e-2, "grad norm");
  for (const char *file : {"model.safetensors", "optimizer.safetensors"})
    expectClose(path(std::string("gpu/checkpoint-3/") + file),
                kTrainDir + "/cpu/checkpoint-3/" + file, 2e-2);
}

TEST_F(GpuTrainerTest, GpuCheckpointsAreWhatTheCpuLoopReads) {
  LLAMAC_REQUIRE_GPU(device);
  // The CPU's run, from its start, on the GPU.
  GpuTrainOptions options = cpuRunOptions();
  options.saveEvery = 1;
  options.savePath = path("gpu");
  options.metricsPath = path("gpu.jsonl");
  ASSERT_EQ(trainOnGpu(options), 0);
  std::vector<MetricsRow> cpu = metrics(kTrainDir + "/cpu-metrics.jsonl"),
                          gpu = metrics(path("gpu.jsonl"));
  ASSERT_EQ(cpu.size(), 3u);
  ASSERT_EQ(gpu.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    expectRelative(gpu[i].loss, cpu[i].loss, 1e-2,
                   "loss of step " + std::to_string(i + 1));
    EXPECT_EQ(gpu[i].tokens, cpu[i].tokens);
    EXPECT_EQ(gpu[i].lr, cpu[i].lr);
  }

  // What the CPU loop checks when it resumes: the files; every tensor of
  // the model and optimizer state by name, shape and dtype (expectClose);
  // the config and the settings that must match.
  const std::string mine = path("gpu/checkpoint-2"),
                    theirs = kTrainDir + "/cpu/checkpoint-2";
  auto files = [](const std::string &d) {
    std::vector<std::string> names;
    for (const auto &entry : fs::directory_iterator(d))
      names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  EXPECT_EQ(files(mine), files(theirs));
  expectClose(mine + "/model.safetensors", theirs + "/model.safetensors", 2e-2);
  expectClose(mine + "/optimizer.safetensors",
              theirs + "/optimizer.safetensors", 2e-2);
  Result<std::string> resolved = resolveResumePath(path("gpu"));
  ASSERT_TRUE(resolved.ok());
  EXPECT_EQ(*resolved, path("gpu/checkpoint-3"));
  Result<TrainerState> state = readTrainerState(mine);
  Result<TrainerState> cpuState = readTrainerState(theirs);
  ASSERT_TRUE(state.ok() && cpuState.ok());
  Status resumable = checkResumable(*state, *cpuState);
  EXPECT_TRUE(resumable.ok()) << resumable.error().message;
  EXPECT_EQ(state->globalStep, 2);
  EXPECT_EQ(state->dataPosition, cpuState->dataPosition);
  auto text = [](const std::string &file) {
    std::ifstream in(file);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  Status config = compareConfigs(text(mine + "/config.json"),
                                 text(theirs + "/config.json"));
  EXPECT_TRUE(config.ok()) << config.error().message;
}

TEST_F(GpuTrainerTest, SigtermFinishesTheStepAndSavesACheckpoint) {
  LLAMAC_REQUIRE_GPU(device);
  GpuTrainOptions options = cpuRunOptions();
  options.steps = 100000;
  options.schedule = {LRScheduleKind::Constant, 1e-3, 0, 100000};
  options.savePath = path("run");
  options.metricsPath = path("run.jsonl");
  // Once a step is logged, the loop's own handler is installed.
  std::thread signaller([&] {
    for (int i = 0; i < 6000; ++i) {
      std::ifstream in(options.metricsPath);
      std::string line;
      if (std::getline(in, line))
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ::kill(::getpid(), SIGTERM);
  });
  int code = trainOnGpu(options);
  signaller.join();
  EXPECT_EQ(code, 128 + SIGTERM);
  std::vector<CheckpointEntry> found = listCheckpoints(path("run"));
  ASSERT_EQ(found.size(), 1u);
  int64_t stopped = found[0].step;
  EXPECT_EQ(int64_t(metrics(path("run.jsonl")).size()), stopped);

  // It resumes to the next step.
  options.steps = stopped + 1;
  options.resumePath = path("run");
  ASSERT_EQ(trainOnGpu(options), 0);
  EXPECT_EQ(int64_t(metrics(path("run.jsonl")).size()), stopped + 1);
}

//===----------------------------------------------------------------------===//
// FP8 (delayed scaling): the amax histories and scales in checkpoints
//===----------------------------------------------------------------------===//

constexpr const char *kFP8StateFile = "fp8_state.safetensors";

std::string readBytes(const std::string &file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// fp8_state.safetensors of a checkpoint: tensor name -> values.
std::map<std::string, std::vector<double>>
fp8State(const std::string &checkpoint) {
  std::map<std::string, std::vector<double>> values;
  for (const auto &[name, tensor] : readAll(checkpoint + "/" + kFP8StateFile)) {
    EXPECT_EQ(tensor.dtype, DType::F32) << name;
    values[name] = tensor.toDouble();
  }
  return values;
}

/// Whether `got` holds the tensors of `want` (which has some), each at its
/// size; the failure names the first that differs.
::testing::AssertionResult
sameTensors(const std::map<std::string, std::vector<double>> &got,
            const std::map<std::string, std::vector<double>> &want) {
  if (want.empty())
    return ::testing::AssertionFailure() << "no tensors to compare with";
  if (got.size() != want.size())
    return ::testing::AssertionFailure()
           << got.size() << " tensors, expected " << want.size();
  for (const auto &[name, values] : want) {
    auto found = got.find(name);
    if (found == got.end())
      return ::testing::AssertionFailure() << "no tensor " << name;
    if (found->second.size() != values.size())
      return ::testing::AssertionFailure()
             << name << ": " << found->second.size() << " values, expected "
             << values.size();
  }
  return ::testing::AssertionSuccess();
}

bool startsWith(const std::string &text, const std::string &prefix) {
  return text.rfind(prefix, 0) == 0;
}

bool endsWith(const std::string &text, const std::string &suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Relative closeness of two FP8 amaxes or scales of runs whose tensors
/// differ by bf16 noise: within one E5M2 step (2 fraction bits: 0.25), the
/// bound StepPackage.FP8StepsMatchTheCpuReference explains.
constexpr double kFP8Step = 0.25;

TEST_F(GpuTrainerTest, FP8TwoStepsThenResumeToFourEqualFourSteps) {
  LLAMAC_REQUIRE_GPU(device);
  // Learning rate 0, no weight decay, no clipping: the weights stay as
  // drawn, so each step's casts, FP8 GEMMs and amaxes depend only on its
  // batch and the FP8 state, and repeat bit for bit (an amax is a maximum,
  // which atomics take in any order; the GEMMs are cuBLASLt's; the f32
  // atomic sums, of the loss and the gradient norm, reach neither).
  // So a resume that restores the histories, scales and scale inverses
  // exactly gives the straight run's state bit for bit; one that restarted
  // them (zero histories, unit scales) would quantize steps 3 and 4
  // differently and hold other amaxes.
  auto options = [&](const std::string &name, int64_t steps) {
    GpuTrainOptions o = fp8Options(name, steps, 0.0, 2);
    o.weightDecay = 0;
    o.maxGradNorm = 0;
    return o;
  };
  ASSERT_NO_FATAL_FAILURE(trainStraightAndResumed(options));

  for (const char *file : {kFP8StateFile, "model.safetensors"})
    EXPECT_EQ(readBytes(path(std::string("resumed/checkpoint-4/") + file)),
              readBytes(path(std::string("straight/checkpoint-4/") + file)))
        << file;
  // The losses: the same per-token terms (at most 256 a step, all
  // positive) summed by f32 atomics in another order; each order is within
  // 256 * 2^-24 of the exact sum, relatively, so two within twice that.
  std::vector<MetricsRow> a = metrics(path("straight.jsonl")),
                          b = metrics(path("resumed.jsonl"));
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    expectRelative(b[i].loss, a[i].loss, 2 * 256 * std::ldexp(1.0, -24),
                   "loss of step " + std::to_string(i + 1));
  // The state moved: four amaxes per history, newest first, and scales
  // computed from them.
  std::map<std::string, std::vector<double>> state =
      fp8State(path("straight/checkpoint-4"));
  ASSERT_FALSE(state.empty());
  for (const auto &[name, values] : state) {
    if (startsWith(name, "scale.")) {
      EXPECT_NE(values[0], 1.0) << name;
      continue;
    }
    ASSERT_EQ(values.size(), 16u) << name;
    for (size_t i = 0; i < 16; ++i)
      EXPECT_EQ(values[i] > 0, i < 4) << name << "[" << i << "]";
  }
}

TEST_F(GpuTrainerTest, FP8CalibrationPassesAsTheCpuLoop) {
  LLAMAC_REQUIRE_GPU(device);
  // Two calibration passes over step 1's batch, then step 1, as the CPU
  // loop's run of the build (TRAIN_DIR/cpu-fp8-calibrated): three amaxes per
  // history, newest first. The weights' (all three of the unchanged weights)
  // are the CPU's exactly; the others, and the scales, within kFP8Step (the
  // file header's bounds), and the loss within 1e-2.
  GpuTrainOptions options = fp8Options("gpu", 1, 1e-3, 1);
  options.schedule = {LRScheduleKind::Linear, 1e-3, 0, 1};
  options.fp8CalibrationPasses = 2;
  ASSERT_EQ(trainOnGpu(options), 0);
  std::vector<MetricsRow> cpu =
      metrics(kTrainDir + "/cpu-fp8-calibrated-metrics.jsonl");
  std::vector<MetricsRow> gpu = metrics(path("gpu.jsonl"));
  ASSERT_EQ(cpu.size(), 1u);
  ASSERT_EQ(gpu.size(), 1u);
  expectRelative(gpu[0].loss, cpu[0].loss, 1e-2, "loss of step 1");
  std::map<std::string, std::vector<double>> got =
      fp8State(path("gpu/checkpoint-1"));
  std::map<std::string, std::vector<double>> want =
      fp8State(kTrainDir + "/cpu-fp8-calibrated/checkpoint-1");
  ASSERT_TRUE(sameTensors(got, want));
  for (const auto &[name, values] : want) {
    SCOPED_TRACE(name);
    const std::vector<double> &mine = got.at(name);
    if (startsWith(name, "scale.")) {
      expectRelative(mine[0], values[0], kFP8Step, "scale");
      continue;
    }
    for (size_t i = 0; i < values.size(); ++i) {
      EXPECT_EQ(values[i] > 0, i < 3) << "CPU [" << i << "]";
      if (endsWith(name, ".weight"))
        EXPECT_EQ(mine[i], values[i]) << "[" << i << "]";
      else
        expectRelative(mine[i], values[i], kFP8Step,
                       "[" + std::to_string(i) + "]");
    }
  }
}

TEST_F(GpuTrainerTest, FP8CurrentScalingTrainsAsTheCpuLoop) {
  LLAMAC_REQUIRE_GPU(device);
  // The current-scaling package of the build's CPU run (TRAIN_DIR:
  // cpu-fp8-current, 3 steps, lr 1e-3 linear): each step's loss within 1e-2
  // (FP8 rounding of bf16 noise, as StepPackage.FP8*), the weights within
  // 2e-2 after 3 steps (lr-sized moves, as in bf16), and like the CPU's, the
  // checkpoints hold no FP8 state (there is none to carry).
  GpuTrainOptions options = cpuFP8RunOptions();
  options.packageDir = kTrainDir + "/fp8-current-b8";
  ASSERT_EQ(trainOnGpu(options), 0);
  std::vector<MetricsRow> cpu =
      metrics(kTrainDir + "/cpu-fp8-current-metrics.jsonl");
  std::vector<MetricsRow> gpu = metrics(path("gpu.jsonl"));
  ASSERT_EQ(cpu.size(), 3u);
  ASSERT_EQ(gpu.size(), 3u);
  for (size_t i = 0; i < 3; ++i)
    expectRelative(gpu[i].loss, cpu[i].loss, 1e-2,
                   "loss of step " + std::to_string(i + 1));
  for (const char *dir : {"gpu/checkpoint-3", "gpu/checkpoint-1"})
    EXPECT_FALSE(fs::exists(path(dir) + "/" + kFP8StateFile)) << dir;
  EXPECT_FALSE(
      fs::exists(kTrainDir + "/cpu-fp8-current/checkpoint-3/" + kFP8StateFile));
  expectClose(path("gpu/checkpoint-3/model.safetensors"),
              kTrainDir + "/cpu-fp8-current/checkpoint-3/model.safetensors",
              2e-2);
}

TEST_F(GpuTrainerTest, FP8ResumeContinuesTheRun) {
  LLAMAC_REQUIRE_GPU(device);
  // Training (lr 1e-3, clipped): 4 steps straight, and its checkpoint-2
  // resumed to 4.
  ASSERT_EQ(trainOnGpu(fp8Options("straight", 4, 1e-3, 1)), 0);
  fs::create_directories(path("resumed"));
  fs::copy(path("straight/checkpoint-2"), path("resumed/checkpoint-2"),
           fs::copy_options::recursive);
  fs::copy_file(path("straight.jsonl"), path("resumed.jsonl"));
  GpuTrainOptions resume = fp8Options("resumed", 4, 1e-3, 2);
  resume.resumePath = path("resumed");
  ASSERT_EQ(trainOnGpu(resume), 0);

  // The amaxes of steps 1 and 2 come from the checkpoint: the same bits,
  // two places older. Steps 3 and 4 run again, with the GPU's atomics in
  // another order: within bf16 noise, FP8 roundings flipped by it included
  // (the file header's bounds; kFP8Step for amaxes and scales).
  std::map<std::string, std::vector<double>> straight =
      fp8State(path("straight/checkpoint-4"));
  std::map<std::string, std::vector<double>> resumed =
      fp8State(path("resumed/checkpoint-4"));
  ASSERT_TRUE(sameTensors(resumed, straight));
  for (const auto &[name, want] : straight) {
    const std::vector<double> &got = resumed.at(name);
    bool history = startsWith(name, "amax_history.");
    for (size_t i = 0; i < want.size(); ++i) {
      if (history && i >= 2)
        EXPECT_EQ(got[i], want[i]) << name << "[" << i << "]";
      else
        expectRelative(got[i], want[i], kFP8Step,
                       name + "[" + std::to_string(i) + "]");
    }
  }
  std::vector<MetricsRow> a = metrics(path("straight.jsonl")),
                          b = metrics(path("resumed.jsonl"));
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 2; i < 4; ++i)
    expectRelative(b[i].loss, a[i].loss, 1e-2,
                   "loss of step " + std::to_string(i + 1));
  for (const char *file : {"model.safetensors", "optimizer.safetensors"})
    expectClose(path(std::string("resumed/checkpoint-4/") + file),
                path(std::string("straight/checkpoint-4/") + file), 2e-2);
}

TEST_F(GpuTrainerTest, FP8CheckpointsHoldTheCpuFormatAsTheDeviceHoldsIt) {
  LLAMAC_REQUIRE_GPU(device);
  // The CPU's fp8 run (3 steps, lr 1e-3 linear), from its start, on the GPU.
  ASSERT_EQ(trainOnGpu(cpuFP8RunOptions()), 0);
  std::vector<MetricsRow> cpuSteps =
                              metrics(kTrainDir + "/cpu-fp8-metrics.jsonl"),
                          gpuSteps = metrics(path("gpu.jsonl"));
  ASSERT_EQ(cpuSteps.size(), 3u);
  ASSERT_EQ(gpuSteps.size(), 3u);
  for (size_t i = 0; i < 3; ++i)
    expectRelative(gpuSteps[i].loss, cpuSteps[i].loss, 1e-2,
                   "loss of step " + std::to_string(i + 1));

  // The CPU loop's tensors (names, F32, shapes), with the GPU's values:
  // each history holds step 2's amax, then step 1's (the same bits as in
  // checkpoint-1), then zeros; each scale is f32(fp8_max / max(history))
  // (margin 0), as the scale update computes it.
  std::map<std::string, std::vector<double>> mine =
      fp8State(path("gpu/checkpoint-2"));
  std::map<std::string, std::vector<double>> first =
      fp8State(path("gpu/checkpoint-1"));
  std::map<std::string, std::vector<double>> cpu =
      fp8State(kTrainDir + "/cpu-fp8/checkpoint-2");
  ASSERT_TRUE(sameTensors(mine, cpu));
  for (const auto &[name, theirs] : cpu) {
    SCOPED_TRACE(name);
    const std::vector<double> &values = mine.at(name);
    if (startsWith(name, "scale.")) {
      const std::string id = name.substr(6);
      std::vector<double> history = mine.at("amax_history." + id);
      double fp8Max =
          id.find(".grad_output") != std::string::npos ? 57344 : 448;
      EXPECT_EQ(values[0],
                double(float(fp8Max / *std::max_element(history.begin(),
                                                        history.end()))));
      expectRelative(values[0], theirs[0], kFP8Step, "scale");
      continue;
    }
    EXPECT_GT(values[0], 0);
    EXPECT_EQ(values[1], first.at(name)[0]);
    for (size_t i = 2; i < values.size(); ++i)
      EXPECT_EQ(values[i], 0);
    // Step 1's weights are the same bf16 values on both (one seed, one
    // initialization): their amaxes are equal.
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0) {
      EXPECT_EQ(values[1], theirs[1]);
    }
    for (size_t i = 0; i < 2; ++i)
      expectRelative(values[i], theirs[i], kFP8Step,
                     "entry " + std::to_string(i));
  }

  // What the loop uploads resuming from it, downloaded from the device
  // again, is the file: its buffers hold the checkpoint's values in the
  // rows `parts` names, and the scale inverses are 1 / scale.
  Result<package::Package> package =
      package::readPackage(kTrainDir + "/fp8-b8");
  ASSERT_TRUE(package.ok()) << package.error().message;
  Result<std::unique_ptr<Executor>> executor =
      Executor::create(device, *package);
  ASSERT_TRUE(executor.ok()) << executor.error().message;
  Result<std::vector<HostTensor>> restored =
      restoreFP8State(*package, path("gpu/checkpoint-2"));
  ASSERT_TRUE(restored.ok()) << restored.error().message;
  ASSERT_EQ(restored->size(), 8u); // 4 buffers per format
  for (const HostTensor &buffer : *restored)
    ASSERT_TRUE(
        (*executor)
            ->upload(buffer.name, buffer.bytes.data(), buffer.bytes.size())
            .ok());
  BufferReader download = [&](const package::Buffer &buffer, void *data) {
    return (*executor)->download(buffer.name, data, buffer.bytes);
  };
  Result<std::vector<HostTensor>> downloaded =
      downloadFP8State(*package, download);
  ASSERT_TRUE(downloaded.ok()) << downloaded.error().message;
  std::map<std::string, std::vector<double>> again;
  for (const HostTensor &tensor : *downloaded)
    again[tensor.name] = tensor.toDouble();
  EXPECT_EQ(again, mine);
  for (const package::Buffer &buffer : package->buffers) {
    if (buffer.role != "fp8_scale_inv")
      continue;
    std::vector<float> rows(buffer.bytes / 4);
    ASSERT_TRUE(download(buffer, rows.data()).ok());
    for (size_t row = 0; row < buffer.parts.size(); ++row)
      EXPECT_EQ(rows[4 * row],
                1.0f / float(mine.at("scale." + buffer.parts[row])[0]))
          << buffer.parts[row];
  }
}

TEST_F(GpuTrainerTest, CpuFP8CheckpointResumesOnTheGpu) {
  LLAMAC_REQUIRE_GPU(device);
  std::vector<MetricsRow> cpu = metrics(kTrainDir + "/cpu-fp8-metrics.jsonl");
  ASSERT_EQ(cpu.size(), 3u);
  fs::copy_file(kTrainDir + "/cpu-fp8-metrics.jsonl", path("gpu.jsonl"));
  GpuTrainOptions options = cpuFP8RunOptions();
  options.resumePath = kTrainDir + "/cpu-fp8/checkpoint-2";
  ASSERT_EQ(trainOnGpu(options), 0);
  std::vector<MetricsRow> gpu = metrics(path("gpu.jsonl"));
  ASSERT_EQ(gpu.size(), 3u);
  EXPECT_EQ(gpu[1].loss, cpu[1].loss); // kept from the CPU's run
  expectRelative(gpu[2].loss, cpu[2].loss, 1e-2, "loss of step 3");

  // Step 3 pushed its amax in front of the CPU's two (the same bits); its
  // amaxes and the scales from them are the CPU's within kFP8Step.
  std::map<std::string, std::vector<double>> resumed =
      fp8State(path("gpu/checkpoint-3"));
  std::map<std::string, std::vector<double>> saved =
      fp8State(kTrainDir + "/cpu-fp8/checkpoint-2");
  std::map<std::string, std::vector<double>> cpuNext =
      fp8State(kTrainDir + "/cpu-fp8/checkpoint-3");
  ASSERT_TRUE(sameTensors(resumed, saved));
  for (const auto &[name, before] : saved) {
    SCOPED_TRACE(name);
    const std::vector<double> &values = resumed.at(name);
    expectRelative(values[0], cpuNext.at(name)[0], kFP8Step, "newest");
    if (startsWith(name, "amax_history.")) {
      EXPECT_EQ(std::vector<double>(values.begin() + 1, values.end()),
                std::vector<double>(before.begin(), before.end() - 1));
    }
  }
  // The weights moved by lr-sized steps: within 2e-2 as in bf16. The moments
  // hold step 3's gradient with weight about 1/3 (m = 0.1 (0.81 g1 + 0.9 g2
  // + g3)); that gradient went through E5M2 (2 fraction bits), where an
  // element that the two GEMMs' summation orders put on either side of a
  // rounding boundary lands one FP8 step (up to 25%) apart, layer after
  // layer (StepPackage.FP8StepsMatchTheCpuReference sees amaxes up to 16%
  // apart). The H200 run measured moments up to 4.9% apart: bound 0.1.
  expectClose(path("gpu/checkpoint-3/model.safetensors"),
              kTrainDir + "/cpu-fp8/checkpoint-3/model.safetensors", 2e-2);
  expectClose(path("gpu/checkpoint-3/optimizer.safetensors"),
              kTrainDir + "/cpu-fp8/checkpoint-3/optimizer.safetensors", 0.1);
}

} // namespace
