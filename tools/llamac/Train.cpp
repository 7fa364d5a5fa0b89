//===- Train.cpp - `llamac train` on the CPU reference backend ------------===//
//
// The fine-tune loop, top to bottom:
//   1. read the config and build the train step (forward, autodiff, AdamW);
//   2. load the weights (or initialize them as Hugging Face does) and zero
//      the AdamW moments;
//   3. read the data and cut it into [batch, seq] blocks in file order;
//   4. per step: run the step, print and record the loss, keep the new
//      parameters and moments;
//   5. write the gradients of step 1 and the final checkpoint if asked.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Dialect/Llama/LlamaOps.h"
#include "llamac/Pipeline/Pipeline.h"
#include "llamac/Reference/Interpreter.h"
#include "llamac/Runtime/Data.h"
#include "llamac/Runtime/Random.h"
#include "llamac/Runtime/Safetensors.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

#include <chrono>

using namespace llamac;
using reference::Tensor;

namespace {

/// Parameters and AdamW moments by the train step's parameter names.
struct ModelState {
  llvm::StringMap<Tensor> params, expAvg, expAvgSq;
};

/// A parameter of the train step and the Hugging Face tensors it holds,
/// concatenated along dimension 0 (one part unless a pass fused weights).
struct StepParam {
  std::string name;
  std::vector<std::string> parts;
};

std::vector<StepParam> stepParams(mlir::func::FuncOp step) {
  std::vector<StepParam> result;
  for (unsigned i = 0; i < step.getNumArguments(); ++i) {
    auto name =
        step.getArgAttrOfType<mlir::StringAttr>(i, mlir::llama::kParamAttr);
    if (!name)
      continue;
    StepParam param{name.str(), {}};
    if (auto parts = step.getArgAttrOfType<mlir::ArrayAttr>(
            i, mlir::llama::kParamPartsAttr))
      for (mlir::Attribute part : parts)
        param.parts.push_back(mlir::cast<mlir::StringAttr>(part).str());
    else
      param.parts.push_back(param.name);
    result.push_back(std::move(param));
  }
  return result;
}

/// Concatenates each step parameter's Hugging Face tensors (by name in `hf`).
llvm::StringMap<Tensor> packParams(const std::vector<StepParam> &layout,
                                   llvm::StringMap<Tensor> &hf) {
  llvm::StringMap<Tensor> packed;
  for (const StepParam &param : layout) {
    Tensor whole = std::move(hf[param.parts.front()]);
    for (size_t i = 1; i < param.parts.size(); ++i) {
      Tensor &part = hf[param.parts[i]];
      whole.shape[0] += part.shape[0];
      whole.data.insert(whole.data.end(), part.data.begin(), part.data.end());
    }
    packed[param.name] = std::move(whole);
  }
  return packed;
}

/// Splits step tensors back into Hugging Face tensors, in `specs` order.
std::vector<HostTensor> unpackParams(const std::vector<StepParam> &layout,
                                     const llvm::StringMap<Tensor> &packed,
                                     const std::vector<ParamSpec> &specs,
                                     DType dtype) {
  llvm::StringMap<std::vector<int64_t>> shapes;
  for (const ParamSpec &spec : specs)
    shapes[spec.name] = spec.shape;
  llvm::StringMap<HostTensor> byName;
  for (const StepParam &param : layout) {
    const Tensor &whole = packed.find(param.name)->second;
    size_t offset = 0;
    for (const std::string &part : param.parts) {
      const std::vector<int64_t> &shape = shapes[part];
      size_t count = 1;
      for (int64_t d : shape)
        count *= d;
      std::vector<double> values(whole.data.begin() + offset,
                                 whole.data.begin() + offset + count);
      byName[part] = HostTensor::fromDouble(part, dtype, shape, values);
      offset += count;
    }
  }
  std::vector<HostTensor> tensors;
  for (const ParamSpec &spec : specs)
    tensors.push_back(std::move(byName[spec.name]));
  return tensors;
}

DType storageDType(Precision precision) {
  switch (precision) {
  case Precision::FP32:
    return DType::F32;
  case Precision::BF16:
    return DType::BF16;
  case Precision::FP64:
    return DType::F64;
  }
  llvm_unreachable("unknown precision");
}

std::string joinNames(const std::vector<std::string> &names) {
  constexpr size_t kShown = 8;
  std::string text;
  for (size_t i = 0; i < names.size() && i < kShown; ++i)
    text += (i ? ", " : "") + names[i];
  if (names.size() > kShown)
    text += llvm::formatv(" (and {0} more)", names.size() - kShown).str();
  return text;
}

std::string shapeString(const std::vector<int64_t> &shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

/// Hugging Face's `_init_weights`: normal(0, initializer_range) for linear
/// and embedding weights, ones for RMSNorm weights. Each tensor draws from
/// its own stream, seeded by --seed and its name.
void initializeWeights(const LlamaConfig &config,
                       const std::vector<ParamSpec> &specs, uint64_t seed,
                       llvm::StringMap<Tensor> &weights) {
  for (const ParamSpec &spec : specs) {
    Tensor tensor = Tensor::zeros(spec.shape);
    if (llvm::StringRef(spec.name).ends_with("norm.weight")) {
      std::fill(tensor.data.begin(), tensor.data.end(), 1.0);
    } else {
      Random random(seed, spec.name);
      for (double &value : tensor.data)
        value = config.initializerRange * random.normal();
    }
    weights[spec.name] = std::move(tensor);
  }
}

/// Reads every expected tensor from the checkpoint, checking names, shapes
/// and dtypes against the config.
llvm::Error loadWeights(const std::string &path,
                        const std::vector<ParamSpec> &specs,
                        const LlamaConfig &config,
                        llvm::StringMap<Tensor> &weights) {
  Result<WeightStore> store = WeightStore::open(path);
  if (!store)
    return llvm::createStringError(store.error().message);

  llvm::StringSet<> expected;
  std::vector<std::string> missing, unexpected;
  for (const ParamSpec &spec : specs) {
    expected.insert(spec.name);
    if (!store->find(spec.name))
      missing.push_back(spec.name);
  }
  for (const TensorInfo &info : store->tensors()) {
    llvm::StringRef name(info.name);
    // A tied checkpoint may still carry the head; old conversions carry the
    // RoPE frequency buffers. Neither is a parameter.
    bool ignorable = (config.tieWordEmbeddings && name == "lm_head.weight") ||
                     name.ends_with(".rotary_emb.inv_freq");
    if (!expected.contains(name) && !ignorable)
      unexpected.push_back(info.name);
  }
  if (!missing.empty())
    return llvm::createStringError(llvm::formatv(
        "{0}: missing tensors for this config: {1}", store->path(),
        joinNames(missing)));
  if (!unexpected.empty())
    return llvm::createStringError(llvm::formatv(
        "{0}: tensors this config does not have: {1}", store->path(),
        joinNames(unexpected)));

  for (const ParamSpec &spec : specs) {
    const TensorInfo *info = store->find(spec.name);
    if (info->shape != spec.shape)
      return llvm::createStringError(llvm::formatv(
          "{0}: tensor '{1}': shape {2}, but the config needs {3}",
          store->path(), spec.name, shapeString(info->shape),
          shapeString(spec.shape)));
    if (info->dtype != DType::F32 && info->dtype != DType::F16 &&
        info->dtype != DType::BF16)
      return llvm::createStringError(llvm::formatv(
          "{0}: tensor '{1}': dtype {2} is not F32, F16 or BF16",
          store->path(), spec.name, dtypeName(info->dtype)));
    Result<HostTensor> tensor = store->read(spec.name);
    if (!tensor)
      return llvm::createStringError(tensor.error().message);
    weights[spec.name] = Tensor{spec.shape, tensor->toDouble()};
  }
  return llvm::Error::success();
}

/// Built-in data for the default run: arithmetic progressions modulo the
/// vocabulary, of varied start, stride and length (some longer than a
/// sequence, some padded). A model learns to continue them within steps.
std::vector<TokenRow> builtinRows(int64_t vocab) {
  std::vector<TokenRow> rows;
  for (int64_t r = 0; r < 64; ++r) {
    int64_t length = 24 + (r * 37) % 300, start = (r * 13) % vocab;
    int64_t stride = 1 + r % 4;
    TokenRow row;
    for (int64_t i = 0; i < length; ++i)
      row.inputIds.push_back(int32_t((start + i * stride) % vocab));
    row.labels = row.inputIds;
    rows.push_back(std::move(row));
  }
  return rows;
}

Tensor tokenTensor(const std::vector<int32_t> &values) {
  Tensor tensor = Tensor::zeros({int64_t(values.size())});
  std::copy(values.begin(), values.end(), tensor.data.begin());
  return tensor;
}

llvm::Error writeCheckpoint(const std::string &dir, const LlamaConfig &config,
                            const std::vector<HostTensor> &tensors) {
  if (std::error_code error = llvm::sys::fs::create_directories(dir))
    return llvm::createStringError(dir + ": " + error.message());
  llvm::SmallString<256> weights(dir), configPath(dir);
  llvm::sys::path::append(weights, "model.safetensors");
  llvm::sys::path::append(configPath, "config.json");
  // Weights first: a config.json beside them marks a complete checkpoint.
  if (Status status = writeSafetensors(std::string(weights), tensors,
                                       {{"format", "pt"}});
      !status)
    return llvm::createStringError(status.error().message);
  if (Status status =
          writeFileAtomic(std::string(configPath), toHFConfigJson(config));
      !status)
    return llvm::createStringError(status.error().message);
  return llvm::Error::success();
}

/// One argument or result slot of the train step: what it holds, and for
/// which parameter.
struct Slot {
  enum Kind { Param, ExpAvg, ExpAvgSq, Input, Hyperparameter, Loss } kind;
  std::string name;
};

llvm::Expected<Slot> classify(mlir::DictionaryAttr attrs) {
  using namespace mlir::llama;
  auto named = [&](llvm::StringRef attr) -> std::optional<std::string> {
    if (auto value = attrs ? attrs.getAs<mlir::StringAttr>(attr) : nullptr)
      return value.str();
    return std::nullopt;
  };
  if (auto name = named(kParamAttr))
    return Slot{Slot::Param, *name};
  if (auto name = named(kNewParamAttr))
    return Slot{Slot::Param, *name};
  if (auto name = named(kExpAvgAttr))
    return Slot{Slot::ExpAvg, *name};
  if (auto name = named(kNewExpAvgAttr))
    return Slot{Slot::ExpAvg, *name};
  if (auto name = named(kExpAvgSqAttr))
    return Slot{Slot::ExpAvgSq, *name};
  if (auto name = named(kNewExpAvgSqAttr))
    return Slot{Slot::ExpAvgSq, *name};
  if (auto name = named(kInputAttr))
    return Slot{Slot::Input, *name};
  if (auto name = named(kHyperparameterAttr))
    return Slot{Slot::Hyperparameter, *name};
  if (attrs && attrs.get(kLossAttr))
    return Slot{Slot::Loss, ""};
  return llvm::createStringError("internal: unnamed train-step slot");
}

llvm::StringMap<Tensor> &moments(ModelState &state, Slot::Kind kind) {
  return kind == Slot::ExpAvg ? state.expAvg : state.expAvgSq;
}

} // namespace

int llamac::runTrain(const TrainOptions &options) {
  const StepShape &shape = options.shape;
  if (options.device != "cpu")
    return reportError("--device: '" + options.device +
                       "' is not available in this build (supported: cpu)");
  if (shape.precision == Precision::FP64)
    return reportError("--precision: fp64 is for tests; use fp32 or bf16");

  // 1. The model and its train step.
  llvm::Expected<LlamaConfig> loaded = loadModelConfig(options.configPath);
  if (!loaded)
    return reportError(llvm::toString(loaded.takeError()));
  const LlamaConfig &config = *loaded;
  std::vector<ParamSpec> specs = parameterSpecs(config);

  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module =
      buildForwardModule(context, config, shape);
  mlir::PassManager pm(&context);
  mlir::llama::buildTrainStepPipeline(pm);
  if (mlir::failed(pm.run(*module)))
    return reportError("internal: the train-step pipeline failed");
  auto step = module->lookupSymbol<mlir::func::FuncOp>(kTrainStepName);

  // 2. Weights (Hugging Face tensors, packed into the step's layout) and
  // optimizer state.
  std::vector<StepParam> layout = stepParams(step);
  llvm::StringMap<Tensor> hfWeights;
  if (options.weightsPath.empty()) {
    initializeWeights(config, specs, options.seed, hfWeights);
  } else if (llvm::Error error = loadWeights(options.weightsPath, specs,
                                             config, hfWeights)) {
    return reportError(llvm::toString(std::move(error)));
  }
  ModelState state;
  state.params = packParams(layout, hfWeights);
  for (const StepParam &param : layout) {
    state.expAvg[param.name] = Tensor::zeros(state.params[param.name].shape);
    state.expAvgSq[param.name] = Tensor::zeros(state.params[param.name].shape);
  }
  DType dtype = storageDType(shape.precision);

  // 3. Data.
  std::vector<TokenRow> rows;
  if (options.dataPath.empty()) {
    rows = builtinRows(config.vocabSize);
  } else {
    Result<std::vector<TokenRow>> read =
        loadTokenRows(options.dataPath, config.vocabSize);
    if (!read)
      return reportError(read.error().message);
    rows = std::move(*read);
  }

  std::unique_ptr<llvm::raw_fd_ostream> metrics;
  if (!options.metricsPath.empty()) {
    std::error_code error;
    metrics = std::make_unique<llvm::raw_fd_ostream>(options.metricsPath,
                                                     error);
    if (error)
      return reportError(options.metricsPath + ": " + error.message());
  }

  // Gradients are operands of the AdamW ops; observe them on step 1.
  llvm::DenseMap<mlir::Value, Tensor> observed;
  llvm::StringMap<mlir::Value> gradValues;
  if (!options.dumpGradsPath.empty()) {
    step.walk([&](mlir::llama::AdamWOp update) {
      auto arg = mlir::cast<mlir::BlockArgument>(update.getParam());
      auto name = step.getArgAttrOfType<mlir::StringAttr>(
          arg.getArgNumber(), mlir::llama::kParamAttr);
      gradValues[name.getValue()] = update.getGrad();
      observed[update.getGrad()] = Tensor();
    });
  }

  llvm::StringMap<double> hyper = {
      {"lr", options.lr},     {"beta1", options.beta1},
      {"beta2", options.beta2}, {"eps", options.eps},
      {"weight_decay", options.weightDecay}};

  llvm::outs() << llvm::formatv(
      "llamac train: {0} layers, hidden {1}, vocab {2}, {3} parameters; "
      "batch {4} x seq {5}, {6}, device cpu (reference interpreter)\n",
      config.numLayers, config.hiddenSize, config.vocabSize,
      [&] {
        int64_t total = 0;
        for (const ParamSpec &spec : specs) {
          int64_t n = 1;
          for (int64_t d : spec.shape)
            n *= d;
          total += n;
        }
        return total;
      }(),
      shape.batch, shape.seq, precisionName(shape.precision));

  // 4. The loop.
  for (int64_t stepIndex = 1; stepIndex <= options.steps; ++stepIndex) {
    auto start = std::chrono::steady_clock::now();
    Batch batch = makeBatch(rows, (stepIndex - 1) * shape.batch, shape.batch,
                            shape.seq);
    hyper["step"] = double(stepIndex);

    std::vector<Tensor> args;
    for (unsigned i = 0; i < step.getNumArguments(); ++i) {
      llvm::Expected<Slot> slot = classify(step.getArgAttrDict(i));
      if (!slot)
        return reportError(llvm::toString(slot.takeError()));
      switch (slot->kind) {
      case Slot::Param:
        args.push_back(std::move(state.params[slot->name]));
        break;
      case Slot::ExpAvg:
      case Slot::ExpAvgSq:
        args.push_back(std::move(moments(state, slot->kind)[slot->name]));
        break;
      case Slot::Input:
        args.push_back(tokenTensor(slot->name == "input_ids" ? batch.inputIds
                                                             : batch.labels));
        break;
      case Slot::Hyperparameter:
        args.push_back(Tensor::scalar(hyper.lookup(slot->name)));
        break;
      case Slot::Loss:
        return reportError("internal: a loss among the arguments");
      }
    }

    llvm::Expected<std::vector<Tensor>> results = reference::interpret(
        step, args, stepIndex == 1 && !observed.empty() ? &observed : nullptr);
    if (!results)
      return reportError(llvm::toString(results.takeError()));

    double loss = 0;
    for (unsigned i = 0; i < results->size(); ++i) {
      llvm::Expected<Slot> slot = classify(step.getResultAttrDict(i));
      if (!slot)
        return reportError(llvm::toString(slot.takeError()));
      Tensor &value = (*results)[i];
      if (slot->kind == Slot::Loss)
        loss = value.data[0];
      else if (slot->kind == Slot::Param)
        state.params[slot->name] = std::move(value);
      else
        moments(state, slot->kind)[slot->name] = std::move(value);
    }
    double seconds = std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - start)
                         .count();

    llvm::outs() << llvm::formatv(
        "step {0,4}/{1} | loss {2:F6} | tokens {3} | {4:F3} s\n", stepIndex,
        options.steps, loss, batch.tokens, seconds);
    llvm::outs().flush();
    if (metrics) {
      llvm::json::Object line{{"step", stepIndex},
                              {"loss", loss},
                              {"tokens", batch.tokens},
                              {"lr", options.lr},
                              {"step_time_s", seconds}};
      *metrics << llvm::json::Value(std::move(line)) << "\n";
      metrics->flush();
    }

    // 5a. Gradients of the first step.
    if (stepIndex == 1 && !options.dumpGradsPath.empty()) {
      llvm::StringMap<Tensor> grads;
      for (const StepParam &param : layout)
        grads[param.name] = std::move(observed[gradValues.lookup(param.name)]);
      if (Status status = writeSafetensors(
              options.dumpGradsPath,
              unpackParams(layout, grads, specs, dtype));
          !status)
        return reportError(status.error().message);
    }
  }

  // 5b. The fine-tuned model, loadable by Hugging Face.
  if (!options.savePath.empty()) {
    if (llvm::Error error = writeCheckpoint(
            options.savePath, config,
            unpackParams(layout, state.params, specs, dtype)))
      return reportError(llvm::toString(std::move(error)));
    llvm::outs() << "saved " << options.savePath << "\n";
  }
  return 0;
}
