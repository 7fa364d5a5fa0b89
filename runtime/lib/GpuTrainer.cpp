//===- GpuTrainer.cpp - The fine-tune loop over a compiled package --------===//
//
// The CPU loop's steps (tools/llamac/Train.cpp), over a package on the GPU:
//   1. read the package and check the run against it;
//   2. read the data; describe the run, check the checkpoint --resume
//      names against it and read its FP8 state (all before the GPU is
//      touched, so that bad input fails the same way on any machine);
//   3. put the package on the GPU; upload the weights (Hugging Face tensors
//      concatenated into the fused parameters the package names; from the
//      checkpoint, --weights or Hugging Face's random init) and the AdamW
//      moments (the checkpoint's, or zeros) and, resuming an fp8 package,
//      the FP8 delayed-scaling state (the checkpoint's fp8_state.safetensors,
//      read in step 2), then the FP8 weight copies from the weights
//      (fp8_weight_copies, which later @optimizer_step keeps up to date);
//   4. per optimizer step: write the hyperparameters (with the tokens the
//      step's loss counts); before the first step of a fresh fp8 run, the
//      calibration passes (--fp8-calibration-passes); then per micro-batch
//      upload the rows (packed into sequences, with their position_ids,
//      when the package takes them: `--pack`) and run @forward_backward,
//      which adds the micro-batch's share of the mean-loss
//      gradient into the gradient region; run @optimizer_step (clipping,
//      AdamW, and zeroing the gradients of an accumulating package); then
//      progress, metrics, periodic checkpoints and a clean stop on a signal;
//   5. the fine-tuned model (--save).
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/GpuTrainer.h"

#include "llamac/Runtime/Checkpoint.h"
#include "llamac/Runtime/Data.h"
#include "llamac/Runtime/DataOrder.h"
#include "llamac/Runtime/Executor.h"
#include "llamac/Runtime/FusedParams.h"
#include "llamac/Runtime/Random.h"
#include "llamac/Runtime/Safetensors.h"
#include "llamac/Runtime/TrainLoop.h"

#include "IOUtil.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <future>
#include <memory>
#include <thread>

namespace llamac {
namespace {

using json = nlohmann::json;

int report(const std::string &message) {
  std::fprintf(stderr, "llamac: error: %s\n", message.c_str());
  return 2;
}

void print(const std::string &text) {
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
}

/// HF's _init_weights: normal(0, initializer_range), ones for norms; the
/// same streams as the CPU backend, so one seed gives the same model.
TensorSource initialization(double range, uint64_t seed) {
  return [range, seed](
             const std::string &name,
             const std::vector<int64_t> &shape) -> Result<std::vector<double>> {
    int64_t count = 1;
    for (int64_t d : shape)
      count *= d;
    std::vector<double> values(size_t(count), 1.0);
    if (name.size() >= 11 &&
        name.compare(name.size() - 11, 11, "norm.weight") == 0)
      return values;
    Random random(seed, name);
    for (double &v : values)
      v = range * random.normal();
    return values;
  };
}

/// Fills every buffer of `role` from `source`. One task per buffer: reading
/// and converting (or drawing) a 7B model on one thread takes minutes.
Status uploadRole(Executor &executor, const std::string &role,
                  const TensorSource &source) {
  std::vector<const package::Buffer *> buffers;
  for (const package::Buffer &buffer : executor.package().buffers)
    if (buffer.role == role)
      buffers.push_back(&buffer);
  size_t workers = std::max(1u, std::thread::hardware_concurrency());
  for (size_t begin = 0; begin < buffers.size(); begin += workers) {
    std::vector<std::future<Result<HostTensor>>> tasks;
    for (size_t i = begin; i < std::min(buffers.size(), begin + workers); ++i)
      tasks.push_back(std::async(std::launch::async, gatherFused,
                                 std::cref(*buffers[i]), std::cref(source)));
    for (auto &task : tasks) {
      Result<HostTensor> host = task.get();
      if (!host)
        return host.error();
      if (Status s = executor.upload(host->name, host->bytes.data(),
                                     host->bytes.size());
          !s)
        return s;
    }
  }
  return {};
}

Status zeroMoments(Executor &executor) {
  for (const package::Buffer &buffer : executor.package().buffers)
    if (buffer.role == "exp_avg" || buffer.role == "exp_avg_sq") {
      std::vector<uint8_t> zeros(buffer.bytes, 0);
      if (Status s = executor.upload(buffer.name, zeros.data(), zeros.size());
          !s)
        return s;
    }
  return {};
}

} // namespace

Status uploadRandomInit(Executor &executor, double initializerRange,
                        uint64_t seed) {
  if (Status s =
          uploadRole(executor, "param", initialization(initializerRange, seed));
      !s)
    return s;
  return zeroMoments(executor);
}

namespace {

/// Parameters and AdamW moments: from the checkpoint being resumed, else
/// from --weights (or drawn) with zero moments.
Status uploadState(Executor &executor, const GpuTrainOptions &options,
                   const std::string &resumedFrom, double initializerRange) {
  const std::string weights =
      resumedFrom.empty() ? options.weightsPath : resumedFrom;
  std::optional<WeightStore> store;
  if (!weights.empty()) {
    Result<WeightStore> opened = WeightStore::open(weights);
    if (!opened)
      return opened.error();
    store.emplace(std::move(*opened));
  }
  if (!store)
    return uploadRandomInit(executor, initializerRange, options.seed);
  if (Status s = uploadRole(executor, "param", tensorsIn(*store)); !s)
    return s;
  if (resumedFrom.empty())
    return zeroMoments(executor);
  Result<SafetensorsFile> optimizer =
      SafetensorsFile::open(resumedFrom + "/optimizer.safetensors");
  if (!optimizer)
    return optimizer.error();
  if (Status s =
          uploadRole(executor, "exp_avg", tensorsIn(*optimizer, "exp_avg."));
      !s)
    return s;
  return uploadRole(executor, "exp_avg_sq",
                    tensorsIn(*optimizer, "exp_avg_sq."));
}

/// The trainer state of a fresh run with these options, package and data.
TrainerState describePackageRun(const GpuTrainOptions &options,
                                const package::Package &package,
                                const std::vector<TokenRow> &rows) {
  TrainerState run = describeRun(options, rows);
  run.batch = package.batch;
  run.seq = package.seq;
  run.precision = package.precision;
  run.pack = package.bufferIndex("position_ids") >= 0;
  return run;
}

/// Fails unless the checkpoint in `dir` continues this run: same model
/// config and the settings checkResumable compares.
Status checkCheckpoint(const std::string &dir, const TrainerState &saved,
                       const TrainerState &run,
                       const package::Package &package) {
  Result<std::string> config = io::readWholeFile(dir + "/config.json");
  if (!config)
    return config.error();
  if (Status s = compareConfigs(*config, package.configJson); !s)
    return Error{dir + ": " + s.error().message};
  if (Status s = checkResumable(saved, run); !s)
    return Error{dir + ": " + s.error().message};
  return {};
}

} // namespace

int trainOnGpu(const GpuTrainOptions &options) {
  // 1. The package, and what the run asks of it.
  Result<package::Package> loaded = package::readPackage(options.packageDir);
  if (!loaded)
    return report(loaded.error().message);
  const package::Package &package = *loaded;
  const std::string manifest = options.packageDir + "/manifest.json";
  json config = json::parse(package.configJson, nullptr, false);
  if (!config.is_object() || !config.contains("vocab_size") ||
      !config["vocab_size"].is_number_integer())
    return report(manifest + ": config: no vocab_size");
  int64_t vocab = config["vocab_size"].get<int64_t>();
  double initializerRange = config.value("initializer_range", 0.02);
  Result<double> flopsPerPosition =
      trainingFlopsPerPosition(package.configJson, package.seq);
  if (!flopsPerPosition)
    return report(manifest + ": " + flopsPerPosition.error().message);
  if (options.gradAccum > 1 && !package.accumulatesGradients)
    return report("--grad-accum " + std::to_string(options.gradAccum) + ": " +
                  options.packageDir +
                  " does not add gradients over micro-batches (compile it "
                  "with llamac compile --accumulate-grads)");
  if (options.fp8CalibrationPasses > 0 &&
      package.bufferIndex("fp8_history.e4m3") < 0)
    return report("--fp8-calibration-passes: " + options.packageDir +
                  " is no fp8 package with delayed scaling");
  const int64_t batchSize = package.batch, seq = package.seq;
  // A package compiled with --pack takes each token's position in its row.
  const bool packed = package.bufferIndex("position_ids") >= 0;
  if (packed && options.padToLongest)
    return report("--pad-to-longest: " + options.packageDir +
                  " packs rows into sequences (compiled with --pack)");

  // 2. The data, the run, and the checkpoint it continues.
  Result<std::vector<TokenRow>> read = loadRunRows(
      options.dataPath, options.tokenizerPath, options.modelDir, vocab);
  if (!read)
    return report(read.error().message);
  const std::vector<TokenRow> &rows = *read;
  TrainerState run = describePackageRun(options, package, rows);
  std::string resumedFrom;
  std::vector<HostTensor> fp8State;
  if (!options.resumePath.empty()) {
    Result<std::string> dir = resolveResumePath(options.resumePath);
    if (!dir)
      return report("--resume: " + dir.error().message);
    Result<TrainerState> saved = readTrainerState(*dir);
    if (!saved)
      return report(saved.error().message);
    if (Status s = checkCheckpoint(*dir, *saved, run, package); !s)
      return report(s.error().message);
    Result<std::vector<HostTensor>> restored = restoreFP8State(package, *dir);
    if (!restored)
      return report(restored.error().message);
    fp8State = std::move(*restored);
    resumedFrom = *dir;
    run.globalStep = saved->globalStep;
    run.dataPosition = saved->dataPosition;
    run.logHistory = saved->logHistory;
  }

  // 3. The package on the GPU, with weights and optimizer state.
  Result<std::shared_ptr<cuda::Device>> device = cuda::Device::open();
  if (!device)
    return report(device.error().message);
  Result<std::unique_ptr<Executor>> created =
      Executor::create(*device, package);
  if (!created)
    return report(created.error().message);
  Executor &executor = **created;
  // GEMM algorithms that `llamac-bench --tune --package DIR` chose on this
  // GPU (DIR/gemm-tuning.json), if any; cuBLASLt's heuristic's otherwise.
  Result<bool> tuned =
      executor.useTuningFile(options.packageDir + "/" + kGemmTuningFile);
  if (!tuned)
    return report(tuned.error().message);
  BufferReader download = [&](const package::Buffer &buffer, void *data) {
    return executor.download(buffer.name, data, buffer.bytes);
  };
  if (Status s = uploadState(executor, options, resumedFrom, initializerRange);
      !s)
    return report(s.error().message);
  for (const HostTensor &buffer : fp8State)
    if (Status s = executor.upload(buffer.name, buffer.bytes.data(),
                                   buffer.bytes.size());
        !s)
      return report(s.error().message);
  // The FP8 weight copies the forward reads, with the (restored) scales;
  // after the state's upload, which zeroes the amaxes this raises.
  if (Status s = executor.castFP8Weights(); !s)
    return report(s.error().message);
  if (package.accumulatesGradients)
    if (Status s = executor.run(package::kZeroGradsFunction); !s)
      return report(s.error().message);

  RowSampler sampler(int64_t(rows.size()), options.shuffle, options.seed,
                     run.dataPosition);
  Result<StepFinisher> finisher =
      StepFinisher::start(options, run, sampler,
                          [&] { return packageCheckpoint(package, download); });
  if (!finisher)
    return report(finisher.error().message);

  print(io::format(
      "llamac-run: %s: batch %lld x seq %lld%s, %s, device %s, GEMMs %s\n",
      options.packageDir.c_str(), (long long)batchSize, (long long)seq,
      packed ? " (packed rows)" : "", package.precision.c_str(),
      (*device)->name().c_str(), *tuned ? "tuned" : "by heuristic"));
  print(io::format(
      "optimizer: AdamW, lr %g (%s schedule, %lld warmup steps), grad-accum "
      "%lld, max grad norm %g; data: %zu rows%s%s\n",
      options.schedule.peak, lrScheduleName(options.schedule.kind),
      (long long)options.schedule.warmupSteps, (long long)options.gradAccum,
      options.maxGradNorm, rows.size(), options.shuffle ? ", shuffled" : "",
      options.padToLongest ? ", padded to the longest row" : ""));
  if (!resumedFrom.empty())
    print("resuming from " + resumedFrom + " at step " +
          std::to_string(run.globalStep) + "\n");

  // 4. The loop.
  package::Hyperparameters hyper;
  hyper.beta1 = options.beta1;
  hyper.beta2 = options.beta2;
  hyper.eps = options.eps;
  hyper.weightDecay = options.weightDecay;
  hyper.maxGradNorm = options.maxGradNorm;
  const double peak = peakBF16Flops((*device)->name());
  const double stepFlops =
      *flopsPerPosition * double(batchSize * seq * options.gradAccum);
  const int64_t firstTimed = run.globalStep + options.untimedSteps + 1;
  double timed = 0;
  while (run.globalStep < options.steps) {
    int64_t stepIndex = run.globalStep + 1;
    auto start = std::chrono::steady_clock::now();

    // 4a. The micro-batches, padded to the package's sequence length (for
    // --pad-to-longest too: right padding with ignored labels changes no
    // other position's loss or gradient), and the tokens the loss counts.
    auto [microBatches, counted, tokens] =
        takeStepBatches(rows, sampler, options.gradAccum, batchSize, seq,
                        packed, /*padToLongest=*/false);

    // 4b. Forward and backward per micro-batch. Each divides its summed
    // per-token losses (and their gradient) by the step's counted tokens,
    // so the gradients add up to those of the step's mean loss, as the CPU
    // loop weighs its micro-batches.
    hyper.lr = options.schedule.at(stepIndex);
    hyper.step = stepIndex;
    hyper.lossTokens = counted;
    std::array<float, package::kHyperparameterCount> slots =
        package::packHyperparameters(hyper);
    Status s = executor.upload("hyperparameters", slots.data(),
                               slots.size() * sizeof(float));
    auto forwardBackward = [&](const Batch &batch) {
      Status done = executor.upload("input_ids", batch.inputIds.data(),
                                    batch.inputIds.size() * 4);
      if (done)
        done = executor.upload("labels", batch.labels.data(),
                               batch.labels.size() * 4);
      if (done && packed)
        done = executor.upload("position_ids", batch.positionIds.data(),
                               batch.positionIds.size() * 4);
      if (done)
        done = executor.run("forward_backward");
      return done;
    };

    // 4b'. FP8 calibration of a fresh run (as the CPU loop's): passes over
    // step 1's batch that fill the amax histories, so that step 1 is scaled
    // from them. Each scale update changes the scales, so the weights' FP8
    // copies are made again before every pass and before step 1; an
    // accumulating package's gradients are zeroed after.
    if (stepIndex == 1 && resumedFrom.empty() && package.precision == "fp8" &&
        options.fp8CalibrationPasses > 0) {
      for (int64_t pass = 0; s && pass < options.fp8CalibrationPasses; ++pass)
        for (const Batch &batch : microBatches) {
          if (s)
            s = executor.castFP8Weights();
          if (s)
            s = forwardBackward(batch);
        }
      if (s)
        s = executor.castFP8Weights();
      if (s && package.accumulatesGradients)
        s = executor.run(package::kZeroGradsFunction);
    }

    double lossSum = 0;
    for (const Batch &batch : microBatches) {
      if (s)
        s = forwardBackward(batch);
      float stats[4] = {};
      if (s)
        s = executor.download("loss_stats", stats, sizeof(stats));
      lossSum += double(stats[0]);
    }
    if (!s)
      return report(s.error().message);
    double loss = counted > 0 ? lossSum / double(counted) : 0;

    // 4c. Gradients of the first step, before clipping.
    if (stepIndex == 1 && !options.dumpGradsPath.empty()) {
      Result<std::vector<HostTensor>> grads =
          downloadFused(package, "grad", DType::F32, "", download);
      if (!grads)
        return report(grads.error().message);
      if (Status w = writeSafetensors(options.dumpGradsPath, *grads); !w)
        return report(w.error().message);
    }

    // 4d. Clip, then AdamW with this step's learning rate.
    s = executor.run("optimizer_step");
    float normSq[4] = {};
    if (s)
      s = executor.download("grad_norm_sq", normSq, sizeof(normSq));
    if (!s)
      return report(s.error().message);
    run.globalStep = stepIndex;
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    if (stepIndex >= firstTimed)
      timed += seconds;

    // 4e. Progress, metrics, checkpoints; on SIGINT or SIGTERM, stop after
    // this step with a checkpoint. Without clipping the step does not
    // compute the norm (as the Hugging Face Trainer): it is logged as missing.
    double gradNorm =
        options.maxGradNorm > 0 ? std::sqrt(double(normSq[0])) : std::nan("");
    StepMetrics step{stepIndex, loss, hyper.lr, gradNorm, tokens, seconds};
    if (peak > 0 && seconds > 0)
      step.mfu = stepFlops / seconds / peak;
    Result<int> stop = finisher->finishStep(step);
    if (!stop)
      return report(stop.error().message);
    if (*stop)
      return *stop;
  }
  finisher->finish();
  if (run.globalStep >= firstTimed)
    print(io::format("mean step time %.2f ms over steps %lld-%lld\n",
                     timed / double(run.globalStep - firstTimed + 1) * 1e3,
                     (long long)firstTimed, (long long)run.globalStep));

  // 5. The fine-tuned model, loadable by Hugging Face.
  if (!options.savePath.empty()) {
    Result<std::vector<HostTensor>> weights =
        downloadFused(package, "param", DType::BF16, "", download);
    if (!weights)
      return report(weights.error().message);
    if (Status status = writeModelDirectory(
            options.savePath, checkpointConfig(package), *weights);
        !status)
      return report(status.error().message);
    print("saved " + options.savePath + "\n");
  }
  return 0;
}

} // namespace llamac
