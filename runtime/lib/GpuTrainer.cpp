//===- GpuTrainer.cpp - The fine-tune loop over a compiled package --------===//
//
//   1. load the package and put it on the GPU;
//   2. upload the weights (Hugging Face tensors concatenated into the fused
//      parameters the package names) or initialize them, zero the moments;
//   3. per step: upload a batch (rows packed into sequences, with their
//      position_ids, when the package takes them: `--pack`), run
//      @forward_backward, read the loss; set the hyperparameters, run
//      @optimizer_step, read the gradient norm;
//   4. write step 1's gradients and the final checkpoint under HF names.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/GpuTrainer.h"

#include "llamac/Runtime/Data.h"
#include "llamac/Runtime/DataOrder.h"
#include "llamac/Runtime/Executor.h"
#include "llamac/Runtime/Random.h"
#include "llamac/Runtime/Safetensors.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <thread>

namespace llamac {
namespace {

using json = nlohmann::json;

int report(const std::string &message) {
  std::fprintf(stderr, "llamac: error: %s\n", message.c_str());
  return 2;
}

/// The Hugging Face tensors packed into one parameter buffer, concatenated
/// along dim 0.
struct Packed {
  const package::Buffer *buffer;
  std::vector<std::vector<int64_t>> partShapes;
};

std::vector<int64_t> partShape(const package::Buffer &buffer, size_t part) {
  std::vector<int64_t> shape = buffer.shape;
  shape[0] = buffer.partRows.empty() ? buffer.shape[0] : buffer.partRows[part];
  return shape;
}

/// HF's _init_weights: normal(0, initializer_range), ones for norms; the
/// same streams as the CPU backend, so one seed gives the same model.
std::vector<double> initialValues(const std::string &name,
                                  const std::vector<int64_t> &shape,
                                  double range, uint64_t seed) {
  int64_t count = 1;
  for (int64_t d : shape)
    count *= d;
  std::vector<double> values(count, 1.0);
  if (name.size() >= 11 &&
      name.compare(name.size() - 11, 11, "norm.weight") == 0)
    return values;
  Random random(seed, name);
  for (double &v : values)
    v = range * random.normal();
  return values;
}

Status uploadParameters(Executor &executor, const GpuTrainOptions &options,
                        double initializerRange) {
  std::unique_ptr<WeightStore> store;
  if (!options.weightsPath.empty()) {
    Result<WeightStore> opened = WeightStore::open(options.weightsPath);
    if (!opened)
      return opened.error();
    store = std::make_unique<WeightStore>(std::move(*opened));
  }
  // One task per parameter: reading and converting (or drawing) a 7B model
  // on one thread takes minutes.
  auto prepare = [&](const package::Buffer &buffer) -> Result<HostTensor> {
    std::vector<double> values;
    for (size_t i = 0; i < buffer.parts.size(); ++i) {
      const std::string &part = buffer.parts[i];
      std::vector<int64_t> shape = partShape(buffer, i);
      std::vector<double> partValues;
      if (store) {
        const TensorInfo *info = store->find(part);
        if (!info)
          return Error{store->path() + ": missing tensor '" + part + "'"};
        if (info->shape != shape)
          return Error{store->path() + ": tensor '" + part +
                       "' does not have the shape the package expects"};
        Result<HostTensor> tensor = store->read(part);
        if (!tensor)
          return tensor.error();
        partValues = tensor->toDouble();
      } else {
        partValues = initialValues(part, shape, initializerRange, options.seed);
      }
      values.insert(values.end(), partValues.begin(), partValues.end());
    }
    return HostTensor::fromDouble(buffer.name, DType::BF16, buffer.shape,
                                  values);
  };
  std::vector<const package::Buffer *> params;
  for (const package::Buffer &buffer : executor.package().buffers)
    if (buffer.role == "param")
      params.push_back(&buffer);
  size_t workers = std::max(1u, std::thread::hardware_concurrency());
  for (size_t begin = 0; begin < params.size(); begin += workers) {
    std::vector<std::future<Result<HostTensor>>> tasks;
    for (size_t i = begin; i < std::min(params.size(), begin + workers); ++i)
      tasks.push_back(std::async(std::launch::async, prepare, *params[i]));
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
  for (const package::Buffer &buffer : executor.package().buffers)
    if (buffer.role == "exp_avg" || buffer.role == "exp_avg_sq") {
      std::vector<uint8_t> zeros(buffer.bytes, 0);
      if (Status s = executor.upload(buffer.name, zeros.data(), zeros.size());
          !s)
        return s;
    }
  return {};
}

/// The tensors of every buffer with `role`, split back into HF tensors.
Result<std::vector<HostTensor>>
downloadAsHF(Executor &executor, const std::string &role, DType dtype) {
  std::vector<HostTensor> tensors;
  for (const package::Buffer &buffer : executor.package().buffers) {
    if (buffer.role != role)
      continue;
    HostTensor whole;
    whole.dtype = DType::BF16;
    whole.shape = buffer.shape;
    whole.bytes.resize(buffer.bytes);
    if (Status s =
            executor.download(buffer.name, whole.bytes.data(), buffer.bytes);
        !s)
      return s.error();
    std::vector<double> values = whole.toDouble();
    size_t offset = 0;
    for (size_t i = 0; i < buffer.parts.size(); ++i) {
      std::vector<int64_t> shape = partShape(buffer, i);
      size_t count = 1;
      for (int64_t d : shape)
        count *= size_t(d);
      std::vector<double> part(values.begin() + offset,
                               values.begin() + offset + count);
      tensors.push_back(
          HostTensor::fromDouble(buffer.parts[i], dtype, shape, part));
      offset += count;
    }
  }
  return tensors;
}

Status writeCheckpoint(Executor &executor, const std::string &dir) {
  Result<std::vector<HostTensor>> weights =
      downloadAsHF(executor, "param", DType::BF16);
  if (!weights)
    return weights.error();
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error)
    return Error{dir + ": " + error.message()};
  if (Status s = writeSafetensors(dir + "/model.safetensors", *weights,
                                  {{"format", "pt"}});
      !s)
    return s;
  json config = json::parse(executor.package().configJson, nullptr, false);
  return writeFileAtomic(dir + "/config.json", config.dump(2) + "\n");
}

} // namespace

int trainOnGpu(const GpuTrainOptions &options) {
  // 1. The package, on the GPU.
  Result<package::Package> package = package::readPackage(options.packageDir);
  if (!package)
    return report(package.error().message);
  json config = json::parse(package->configJson, nullptr, false);
  if (!config.is_object() || !config.contains("vocab_size"))
    return report(options.packageDir + "/manifest.json: config: no vocab_size");
  int64_t vocab = config["vocab_size"].get<int64_t>();
  double initializerRange = config.value("initializer_range", 0.02);
  int64_t batchSize = package->batch, seq = package->seq;
  Result<std::shared_ptr<cuda::Device>> device = cuda::Device::open();
  if (!device)
    return report(device.error().message);
  Result<std::unique_ptr<Executor>> created =
      Executor::create(*device, std::move(*package));
  if (!created)
    return report(created.error().message);
  Executor &executor = **created;

  // 2. Weights and optimizer state.
  if (Status s = uploadParameters(executor, options, initializerRange); !s)
    return report(s.error().message);

  // 3. Data and the loop.
  if (options.dataPath.empty())
    return report("--data: a JSON Lines file of token rows is required");
  Result<std::vector<TokenRow>> rows = loadTokenRows(options.dataPath, vocab);
  if (!rows)
    return report(rows.error().message);
  std::ofstream metrics;
  if (!options.metricsPath.empty()) {
    metrics.open(options.metricsPath);
    if (!metrics)
      return report(options.metricsPath + ": cannot write");
  }
  // A package compiled with --pack takes each token's position in its row.
  const bool packed = executor.package().bufferIndex("position_ids") >= 0;
  RowSampler sampler(int64_t(rows->size()), /*shuffle=*/false, options.seed);
  std::printf("llamac-run: %s, batch %lld x seq %lld%s, bf16, device %s\n",
              options.packageDir.c_str(), (long long)batchSize, (long long)seq,
              packed ? " (packed rows)" : "", (*device)->name().c_str());
  double timed = 0;
  int64_t timedSteps = 0;
  for (int64_t step = 1; step <= options.steps; ++step) {
    auto start = std::chrono::steady_clock::now();
    Batch batch =
        packed ? packBatch(*rows, sampler, batchSize, seq)
               : makeBatch(*rows, (step - 1) * batchSize, batchSize, seq);
    Status s = executor.upload("input_ids", batch.inputIds.data(),
                               batch.inputIds.size() * 4);
    if (s)
      s = executor.upload("labels", batch.labels.data(),
                          batch.labels.size() * 4);
    if (s && packed)
      s = executor.upload("position_ids", batch.positionIds.data(),
                          batch.positionIds.size() * 4);
    if (s)
      s = executor.run("forward_backward");
    float stats[4] = {};
    if (s)
      s = executor.download("loss_stats", stats, sizeof(stats));
    if (!s)
      return report(s.error().message);
    double loss = double(stats[0]) * double(stats[2]);

    if (step == 1 && !options.dumpGradsPath.empty()) {
      Result<std::vector<HostTensor>> grads =
          downloadAsHF(executor, "grad", DType::F32);
      if (!grads)
        return report(grads.error().message);
      if (Status w = writeSafetensors(options.dumpGradsPath, *grads); !w)
        return report(w.error().message);
    }

    double lr = options.schedule.at(step);
    float hyper[8] = {float(lr),
                      float(options.beta1),
                      float(options.beta2),
                      float(options.eps),
                      float(options.weightDecay),
                      float(step),
                      float(options.maxGradNorm),
                      0};
    s = executor.upload("hyperparameters", hyper, sizeof(hyper));
    if (s)
      s = executor.run("optimizer_step");
    float normSq[4] = {};
    if (s)
      s = executor.download("grad_norm_sq", normSq, sizeof(normSq));
    if (!s)
      return report(s.error().message);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    if (step > options.warmupSteps) {
      timed += seconds;
      ++timedSteps;
    }
    double gradNorm = std::sqrt(double(normSq[0]));
    std::printf("step %4lld/%lld | loss %.6f | lr %.3g | grad norm %.4f | "
                "tokens %lld | %.1f ms\n",
                (long long)step, (long long)options.steps, loss, lr, gradNorm,
                (long long)batch.tokens, seconds * 1e3);
    std::fflush(stdout);
    if (metrics.is_open()) {
      metrics << json{{"step", step},
                      {"loss", loss},
                      {"lr", lr},
                      {"grad_norm", gradNorm},
                      {"tokens", batch.tokens},
                      {"step_time_s", seconds},
                      {"tokens_per_s", double(batch.tokens) / seconds}}
                     .dump()
              << "\n";
      metrics.flush();
    }
  }
  if (timedSteps > 0)
    std::printf("mean step time %.2f ms over steps %lld-%lld\n",
                timed / double(timedSteps) * 1e3,
                (long long)(options.warmupSteps + 1), (long long)options.steps);

  // 4. The fine-tuned model.
  if (!options.savePath.empty()) {
    if (Status s = writeCheckpoint(executor, options.savePath); !s)
      return report(s.error().message);
    std::printf("saved %s\n", options.savePath.c_str());
  }
  return 0;
}

} // namespace llamac
