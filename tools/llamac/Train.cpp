//===- Train.cpp - `llamac train` on the CPU reference backend ------------===//
//
// The fine-tune loop, top to bottom:
//   1. read the config and build the train step: @forward_backward and
//      @optimizer_step (one forward_backward per sequence length when
//      batches are padded to their longest row);
//   2. read the data; a RowSampler hands out rows in file or shuffled order;
//   3. load the weights (or initialize them as Hugging Face does) and zero
//      the AdamW moments -- or take both, the FP8 scaling state, and the
//      step and data position, from the checkpoint --resume names;
//   4. per optimizer step (before the first of a fresh fp8 run, the
//      --fp8-calibration-passes over its batch): --grad-accum micro-batches
//      through forward_backward, their gradients weighted by each one's
//      share of the counted tokens (the Hugging Face Trainer's
//      num_items_in_batch);
//      optimizer_step with the scheduled learning rate (clipping inside);
//      progress, metrics, periodic checkpoints; a clean stop on SIGINT or
//      SIGTERM;
//   5. the fine-tuned model (--save).
//
// Data order, schedules, checkpoints, progress and signals live in runtime/,
// shared with the GPU backend; this file binds them to the interpreter.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Dialect/Llama/LlamaOps.h"
#include "llamac/Pipeline/Pipeline.h"
#include "llamac/Reference/Interpreter.h"
#include "llamac/Runtime/Checkpoint.h"
#include "llamac/Runtime/Data.h"
#include "llamac/Runtime/DataOrder.h"
#include "llamac/Runtime/FusedParams.h"
#include "llamac/Runtime/Random.h"
#include "llamac/Runtime/Safetensors.h"
#include "llamac/Runtime/Schedule.h"
#include "llamac/Runtime/TrainLoop.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

#include <chrono>
#include <map>

using namespace llamac;
using reference::Tensor;

namespace {

//===----------------------------------------------------------------------===//
// Parameters: Hugging Face tensors <-> the step's (possibly fused) layout
//===----------------------------------------------------------------------===//

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

/// Splits step tensors back into Hugging Face tensors, in `specs` order,
/// each named `prefix` + its Hugging Face name.
std::vector<HostTensor> unpackParams(const std::vector<StepParam> &layout,
                                     const llvm::StringMap<Tensor> &packed,
                                     const std::vector<ParamSpec> &specs,
                                     DType dtype,
                                     const std::string &prefix = "") {
  llvm::StringMap<std::vector<int64_t>> shapes;
  for (const ParamSpec &spec : specs)
    shapes[spec.name] = spec.shape;
  llvm::StringMap<HostTensor> byName;
  for (const StepParam &param : layout) {
    FusedParts parts;
    for (const std::string &part : param.parts) {
      parts.names.push_back(part);
      parts.shapes.push_back(shapes[part]);
    }
    std::vector<HostTensor> split =
        splitFused(parts, packed.find(param.name)->second.data, dtype, prefix);
    for (size_t i = 0; i < split.size(); ++i)
      byName[param.parts[i]] = std::move(split[i]);
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
    return llvm::createStringError(
        llvm::formatv("{0}: missing tensors for this config: {1}",
                      store->path(), joinNames(missing)));
  if (!unexpected.empty())
    return llvm::createStringError(
        llvm::formatv("{0}: tensors this config does not have: {1}",
                      store->path(), joinNames(unexpected)));

  for (const ParamSpec &spec : specs) {
    const TensorInfo *info = store->find(spec.name);
    if (info->shape != spec.shape)
      return llvm::createStringError(llvm::formatv(
          "{0}: tensor '{1}': shape {2}, but the config needs {3}",
          store->path(), spec.name, shapeString(info->shape),
          shapeString(spec.shape)));
    if (info->dtype != DType::F32 && info->dtype != DType::F16 &&
        info->dtype != DType::BF16)
      return llvm::createStringError(
          llvm::formatv("{0}: tensor '{1}': dtype {2} is not F32, F16 or BF16",
                        store->path(), spec.name, dtypeName(info->dtype)));
    Result<HostTensor> tensor = store->read(spec.name);
    if (!tensor)
      return llvm::createStringError(tensor.error().message);
    weights[spec.name] = Tensor{spec.shape, tensor->toDouble()};
  }
  return llvm::Error::success();
}

/// Reads AdamW's moments of a checkpoint (`exp_avg.<name>`,
/// `exp_avg_sq.<name>` for every Hugging Face tensor).
llvm::Error loadMoments(const std::string &path,
                        const std::vector<ParamSpec> &specs,
                        llvm::StringMap<Tensor> &expAvg,
                        llvm::StringMap<Tensor> &expAvgSq) {
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  if (!file)
    return llvm::createStringError(file.error().message);
  for (const ParamSpec &spec : specs) {
    for (auto [prefix, into] : {std::pair{"exp_avg.", &expAvg},
                                std::pair{"exp_avg_sq.", &expAvgSq}}) {
      std::string name = prefix + spec.name;
      const TensorInfo *info = file->find(name);
      if (!info || info->shape != spec.shape)
        return llvm::createStringError(
            llvm::formatv("{0}: {1} for this config: '{2}'{3}", path,
                          info ? "wrong shape" : "missing moment", name,
                          info ? " is " + shapeString(info->shape) +
                                     ", expected " + shapeString(spec.shape)
                               : ""));
      Result<HostTensor> tensor = file->read(name);
      if (!tensor)
        return llvm::createStringError(tensor.error().message);
      (*into)[spec.name] = Tensor{spec.shape, tensor->toDouble()};
    }
  }
  return llvm::Error::success();
}

//===----------------------------------------------------------------------===//
// Data
//===----------------------------------------------------------------------===//

Tensor tokenTensor(const std::vector<int32_t> &values) {
  Tensor tensor = Tensor::zeros({int64_t(values.size())});
  std::copy(values.begin(), values.end(), tensor.data.begin());
  return tensor;
}

/// The step input `name` (input_ids, labels, or position_ids of a packed
/// batch) of `batch`.
llvm::Expected<Tensor> inputTensor(const Batch &batch, llvm::StringRef name) {
  if (name == "input_ids")
    return tokenTensor(batch.inputIds);
  if (name == "labels")
    return tokenTensor(batch.labels);
  if (name == "position_ids" && !batch.positionIds.empty())
    return tokenTensor(batch.positionIds);
  return llvm::createStringError("internal: the batch has no " + name);
}

//===----------------------------------------------------------------------===//
// The compiled step and how its arguments and results are bound
//===----------------------------------------------------------------------===//

/// One argument or result slot of a step function: what it holds, and for
/// which parameter.
struct Slot {
  enum Kind {
    Param,
    Grad,
    ExpAvg,
    ExpAvgSq,
    Input,
    Hyperparameter,
    Loss,
    GradNorm,
    FP8AmaxHistory,
    FP8Scale
  } kind;
  std::string name;
};

llvm::Expected<Slot> classify(mlir::DictionaryAttr attrs) {
  using namespace mlir::llama;
  auto named = [&](llvm::StringRef attr) -> std::optional<std::string> {
    if (auto value = attrs ? attrs.getAs<mlir::StringAttr>(attr) : nullptr)
      return value.str();
    return std::nullopt;
  };
  static const std::pair<llvm::StringLiteral, Slot::Kind> kNamed[] = {
      {kParamAttr, Slot::Param},
      {kNewParamAttr, Slot::Param},
      {kGradAttr, Slot::Grad},
      {kExpAvgAttr, Slot::ExpAvg},
      {kNewExpAvgAttr, Slot::ExpAvg},
      {kExpAvgSqAttr, Slot::ExpAvgSq},
      {kNewExpAvgSqAttr, Slot::ExpAvgSq},
      {kInputAttr, Slot::Input},
      {kHyperparameterAttr, Slot::Hyperparameter},
      {kFP8AmaxHistoryAttr, Slot::FP8AmaxHistory},
      {kNewFP8AmaxHistoryAttr, Slot::FP8AmaxHistory},
      {kFP8ScaleAttr, Slot::FP8Scale},
      {kNewFP8ScaleAttr, Slot::FP8Scale}};
  for (auto &[attr, kind] : kNamed)
    if (auto name = named(attr))
      return Slot{kind, *name};
  if (attrs && attrs.get(kLossAttr))
    return Slot{Slot::Loss, ""};
  if (attrs && attrs.get(kGradNormAttr))
    return Slot{Slot::GradNorm, ""};
  return llvm::createStringError("internal: unnamed train-step slot");
}

/// The train step compiled for each sequence length it has been asked for.
/// Every length gets the same parameters and the same @optimizer_step.
class StepCache {
public:
  StepCache(const LlamaConfig &config, StepShape shape,
            mlir::llama::TrainStepPipelineOptions pipeline)
      : config(config), shape(shape), pipeline(pipeline) {}

  /// @forward_backward for sequences of `seq` tokens.
  llvm::Expected<mlir::func::FuncOp> forwardBackward(int64_t seq) {
    if (llvm::Error error = compile(seq))
      return std::move(error);
    return modules[seq]->lookupSymbol<mlir::func::FuncOp>(
        mlir::llama::kForwardBackwardName);
  }

  /// @optimizer_step (of the first length compiled).
  mlir::func::FuncOp optimizerStep() {
    return modules.begin()->second->lookupSymbol<mlir::func::FuncOp>(
        mlir::llama::kOptimizerStepName);
  }

private:
  llvm::Error compile(int64_t seq) {
    if (modules.count(seq))
      return llvm::Error::success();
    StepShape lengthShape = shape;
    lengthShape.seq = seq;
    mlir::OwningOpRef<mlir::ModuleOp> module =
        buildForwardModule(context, config, lengthShape);
    mlir::PassManager pm(&context);
    mlir::llama::buildTrainStepPipeline(pm, pipeline);
    if (mlir::failed(pm.run(*module)))
      return llvm::createStringError("internal: the train-step pipeline "
                                     "failed");
    if (!module->lookupSymbol<mlir::func::FuncOp>(
            mlir::llama::kForwardBackwardName) ||
        !module->lookupSymbol<mlir::func::FuncOp>(
            mlir::llama::kOptimizerStepName))
      return llvm::createStringError("internal: the train step lacks "
                                     "@forward_backward or @optimizer_step");
    modules[seq] = std::move(module);
    return llvm::Error::success();
  }

  mlir::MLIRContext context;
  const LlamaConfig &config;
  StepShape shape;
  mlir::llama::TrainStepPipelineOptions pipeline;
  std::map<int64_t, mlir::OwningOpRef<mlir::ModuleOp>> modules;
};

/// Parameters and AdamW moments by the train step's parameter names, and
/// the FP8 delayed-scaling state (amax histories and scales) by tensor id.
struct ModelState {
  llvm::StringMap<Tensor> params, expAvg, expAvgSq;
  llvm::StringMap<Tensor> fp8AmaxHistory, fp8Scale;
};

/// What one micro-batch gives back.
struct MicroBatchResult {
  double loss = 0;
  llvm::StringMap<Tensor> grads;
};

/// Runs @forward_backward on one batch. The parameters are lent to the
/// interpreter and given back to `state`.
llvm::Expected<MicroBatchResult> runForwardBackward(mlir::func::FuncOp func,
                                                    ModelState &state,
                                                    const Batch &batch) {
  std::vector<Tensor> args(func.getNumArguments());
  std::vector<std::string> lent(func.getNumArguments());
  llvm::Error error = llvm::Error::success();
  for (unsigned i = 0; i < func.getNumArguments() && !error; ++i) {
    llvm::Expected<Slot> slot = classify(func.getArgAttrDict(i));
    if (!slot) {
      error = slot.takeError();
    } else if (slot->kind == Slot::Param) {
      args[i] = std::move(state.params[slot->name]);
      lent[i] = slot->name;
    } else if (slot->kind == Slot::Input) {
      llvm::Expected<Tensor> input = inputTensor(batch, slot->name);
      if (input)
        args[i] = std::move(*input);
      else
        error = input.takeError();
    } else if (slot->kind == Slot::FP8AmaxHistory ||
               slot->kind == Slot::FP8Scale) {
      // FP8 state carried from the previous micro-batch; a run starts with
      // zero histories and unit scales, as Transformer Engine does.
      bool isHistory = slot->kind == Slot::FP8AmaxHistory;
      llvm::StringMap<Tensor> &held =
          isHistory ? state.fp8AmaxHistory : state.fp8Scale;
      auto found = held.find(slot->name);
      if (found != held.end()) {
        args[i] = found->second;
      } else if (isHistory) {
        auto type =
            mlir::cast<mlir::RankedTensorType>(func.getArgument(i).getType());
        args[i] = Tensor::zeros(std::vector<int64_t>(type.getShape().begin(),
                                                     type.getShape().end()));
      } else {
        args[i] = Tensor::scalar(1.0);
      }
    } else {
      error = llvm::createStringError("internal: unexpected argument of "
                                      "@forward_backward");
    }
  }
  llvm::Expected<std::vector<Tensor>> results =
      error ? llvm::Expected<std::vector<Tensor>>(std::move(error))
            : reference::interpret(func, args);
  for (unsigned i = 0; i < args.size(); ++i)
    if (!lent[i].empty())
      state.params[lent[i]] = std::move(args[i]);
  if (!results)
    return results.takeError();

  MicroBatchResult out;
  for (unsigned i = 0; i < results->size(); ++i) {
    llvm::Expected<Slot> slot = classify(func.getResultAttrDict(i));
    if (!slot)
      return slot.takeError();
    if (slot->kind == Slot::Loss)
      out.loss = (*results)[i].data[0];
    else if (slot->kind == Slot::Grad)
      out.grads[slot->name] = std::move((*results)[i]);
    else if (slot->kind == Slot::FP8AmaxHistory)
      state.fp8AmaxHistory[slot->name] = std::move((*results)[i]);
    else if (slot->kind == Slot::FP8Scale)
      state.fp8Scale[slot->name] = std::move((*results)[i]);
  }
  return out;
}

/// Runs @optimizer_step: consumes `grads`, updates `state`, returns the
/// gradient norm before clipping.
llvm::Expected<double> runOptimizerStep(mlir::func::FuncOp func,
                                        ModelState &state,
                                        llvm::StringMap<Tensor> &grads,
                                        const llvm::StringMap<double> &hyper) {
  std::vector<Tensor> args;
  for (unsigned i = 0; i < func.getNumArguments(); ++i) {
    llvm::Expected<Slot> slot = classify(func.getArgAttrDict(i));
    if (!slot)
      return slot.takeError();
    switch (slot->kind) {
    case Slot::Param:
      args.push_back(std::move(state.params[slot->name]));
      break;
    case Slot::Grad:
      args.push_back(std::move(grads[slot->name]));
      break;
    case Slot::ExpAvg:
      args.push_back(std::move(state.expAvg[slot->name]));
      break;
    case Slot::ExpAvgSq:
      args.push_back(std::move(state.expAvgSq[slot->name]));
      break;
    case Slot::Hyperparameter: {
      auto found = hyper.find(slot->name);
      if (found == hyper.end())
        return llvm::createStringError("internal: no value for "
                                       "hyperparameter " +
                                       slot->name);
      args.push_back(Tensor::scalar(found->second));
      break;
    }
    default:
      return llvm::createStringError("internal: unexpected argument of "
                                     "@optimizer_step");
    }
  }
  llvm::Expected<std::vector<Tensor>> results =
      reference::interpret(func, args);
  if (!results)
    return results.takeError();
  double norm = 0;
  for (unsigned i = 0; i < results->size(); ++i) {
    llvm::Expected<Slot> slot = classify(func.getResultAttrDict(i));
    if (!slot)
      return slot.takeError();
    Tensor &value = (*results)[i];
    if (slot->kind == Slot::GradNorm)
      norm = value.data[0];
    else if (slot->kind == Slot::Param)
      state.params[slot->name] = std::move(value);
    else if (slot->kind == Slot::ExpAvg)
      state.expAvg[slot->name] = std::move(value);
    else if (slot->kind == Slot::ExpAvgSq)
      state.expAvgSq[slot->name] = std::move(value);
  }
  return norm;
}

//===----------------------------------------------------------------------===//
// FP8 delayed-scaling state in checkpoints (fp8_state.safetensors)
//===----------------------------------------------------------------------===//

/// The FP8 state as checkpoint tensors (F32, exact: the interpreter keeps
/// histories and scales in f32), by name.
std::vector<HostTensor> fp8StateTensors(const ModelState &state) {
  std::vector<HostTensor> tensors;
  for (auto [kind, held] :
       {std::pair{FP8StateKind::AmaxHistory, &state.fp8AmaxHistory},
        std::pair{FP8StateKind::Scale, &state.fp8Scale}})
    for (const auto &entry : *held)
      tensors.push_back(HostTensor::fromDouble(
          fp8StateTensorName(kind, entry.first().str()), DType::F32,
          entry.second.shape, entry.second.data));
  llvm::sort(tensors, [](const HostTensor &a, const HostTensor &b) {
    return a.name < b.name;
  });
  return tensors;
}

/// Reads the FP8 state that @forward_backward `step` takes from checkpoint
/// directory `dir` into `state` (nothing for current scaling, which has
/// none).
llvm::Error loadFP8State(const std::string &dir, mlir::func::FuncOp step,
                         ModelState &state) {
  std::optional<SafetensorsFile> file;
  for (unsigned i = 0; i < step.getNumArguments(); ++i) {
    llvm::Expected<Slot> slot = classify(step.getArgAttrDict(i));
    if (!slot)
      return slot.takeError();
    bool isHistory = slot->kind == Slot::FP8AmaxHistory;
    if (!isHistory && slot->kind != Slot::FP8Scale)
      continue;
    if (!file) {
      Result<SafetensorsFile> opened = openFP8State(dir);
      if (!opened)
        return llvm::createStringError(opened.error().message);
      file = std::move(*opened);
    }
    auto type =
        mlir::cast<mlir::RankedTensorType>(step.getArgument(i).getType());
    std::vector<int64_t> shape(type.getShape().begin(), type.getShape().end());
    Result<std::vector<double>> values = readFP8StateTensor(
        *file, isHistory ? FP8StateKind::AmaxHistory : FP8StateKind::Scale,
        slot->name, shape, "--fp8-amax-history");
    if (!values)
      return llvm::createStringError(values.error().message);
    (isHistory ? state.fp8AmaxHistory : state.fp8Scale)[slot->name] =
        Tensor{shape, std::move(*values)};
  }
  return llvm::Error::success();
}

/// Adds `weight * grads` into `sum` (which starts empty).
void accumulate(llvm::StringMap<Tensor> &sum, llvm::StringMap<Tensor> &grads,
                double weight) {
  for (auto &entry : grads) {
    Tensor &grad = entry.second;
    auto found = sum.find(entry.first());
    if (found == sum.end()) {
      for (double &x : grad.data)
        x *= weight;
      sum[entry.first()] = std::move(grad);
      continue;
    }
    std::vector<double> &into = found->second.data;
    for (size_t i = 0; i < into.size(); ++i)
      into[i] += weight * grad.data[i];
  }
}

int64_t countParameters(const std::vector<ParamSpec> &specs) {
  int64_t total = 0;
  for (const ParamSpec &spec : specs) {
    int64_t n = 1;
    for (int64_t d : spec.shape)
      n *= d;
    total += n;
  }
  return total;
}

} // namespace

int llamac::runTrain(const TrainOptions &options) {
  const StepShape &shape = options.shape;
  if (options.device == "cuda")
    return runTrainOnCuda(options);
  if (options.device != "cpu")
    return reportError("--device: unknown device '" + options.device +
                       "' (supported: cpu, cuda)");
  if (shape.precision == Precision::FP64)
    return reportError("--precision: fp64 is for tests; use fp32 or bf16");

  // 1. The model and its train step.
  llvm::Expected<LlamaConfig> loaded = loadModelConfig(options.configPath);
  if (!loaded)
    return reportError(llvm::toString(loaded.takeError()));
  const LlamaConfig &config = *loaded;
  std::vector<ParamSpec> specs = parameterSpecs(config);
  const std::string configJson = toHFConfigJson(config);
  DType dtype = storageDType(shape.precision);

  StepCache steps(config, shape, fusionPipeline(options));
  llvm::Expected<mlir::func::FuncOp> fullLength =
      steps.forwardBackward(shape.seq);
  if (!fullLength)
    return reportError(llvm::toString(fullLength.takeError()));
  std::vector<StepParam> layout = stepParams(*fullLength);
  mlir::func::FuncOp optimizerStep = steps.optimizerStep();

  // 2. The data (text rows need the model's tokenizer: --tokenizer, else
  // the model directory's).
  Result<std::vector<TokenRow>> read =
      loadRunRows(options.dataPath, options.tokenizerPath, options.configPath,
                  config.vocabSize);
  if (!read)
    return reportError(read.error().message);
  std::vector<TokenRow> rows = std::move(*read);

  // What a checkpoint of this run records.
  const GpuTrainOptions runOptions = runtimeOptions(options);
  TrainerState run = describeRun(runOptions, rows);
  run.batch = shape.batch;
  run.seq = shape.seq;
  run.precision =
      options.fp8.enabled ? "fp8" : precisionName(shape.precision).str();
  run.pack = shape.packed;

  // 3. Weights and optimizer state: fresh, or from a checkpoint.
  llvm::StringMap<Tensor> hfWeights, hfExpAvg, hfExpAvgSq;
  std::string resumedFrom;
  if (!options.resumePath.empty()) {
    Result<std::string> dir = resolveResumePath(options.resumePath);
    if (!dir)
      return reportError("--resume: " + dir.error().message);
    resumedFrom = *dir;
    Result<TrainerState> saved = readTrainerState(resumedFrom);
    if (!saved)
      return reportError(saved.error().message);
    llvm::SmallString<256> savedConfig(resumedFrom);
    llvm::sys::path::append(savedConfig, "config.json");
    llvm::Expected<LlamaConfig> savedModel = loadConfig(savedConfig);
    if (!savedModel)
      return reportError(llvm::toString(savedModel.takeError()));
    if (Status status = compareConfigs(toHFConfigJson(*savedModel), configJson);
        !status)
      return reportError(resumedFrom + ": " + status.error().message);
    if (Status status = checkResumable(*saved, run); !status)
      return reportError(resumedFrom + ": " + status.error().message);
    llvm::SmallString<256> optimizerPath(resumedFrom);
    llvm::sys::path::append(optimizerPath, "optimizer.safetensors");
    if (llvm::Error error = loadWeights(resumedFrom, specs, config, hfWeights))
      return reportError(llvm::toString(std::move(error)));
    if (llvm::Error error = loadMoments(std::string(optimizerPath), specs,
                                        hfExpAvg, hfExpAvgSq))
      return reportError(llvm::toString(std::move(error)));
    run.globalStep = saved->globalStep;
    run.dataPosition = saved->dataPosition;
    run.logHistory = saved->logHistory;
  } else if (options.weightsPath.empty()) {
    initializeWeights(config, specs, options.seed, hfWeights);
  } else if (llvm::Error error =
                 loadWeights(options.weightsPath, specs, config, hfWeights)) {
    return reportError(llvm::toString(std::move(error)));
  }
  ModelState state;
  state.params = packParams(layout, hfWeights);
  if (resumedFrom.empty()) {
    for (const StepParam &param : layout) {
      state.expAvg[param.name] = Tensor::zeros(state.params[param.name].shape);
      state.expAvgSq[param.name] =
          Tensor::zeros(state.params[param.name].shape);
    }
  } else {
    state.expAvg = packParams(layout, hfExpAvg);
    state.expAvgSq = packParams(layout, hfExpAvgSq);
    if (llvm::Error error = loadFP8State(resumedFrom, *fullLength, state))
      return reportError(llvm::toString(std::move(error)));
  }
  RowSampler sampler(int64_t(rows.size()), options.shuffle, options.seed,
                     run.dataPosition);

  // What ends each step: progress, metrics, and checkpoints of the tensors
  // and state of the run so far.
  Result<StepFinisher> finisher = StepFinisher::start(
      runOptions, run, sampler, [&]() -> Result<CheckpointContents> {
        CheckpointContents contents;
        contents.configJson = configJson;
        contents.model = unpackParams(layout, state.params, specs, dtype);
        contents.optimizer =
            unpackParams(layout, state.expAvg, specs, dtype, "exp_avg.");
        for (HostTensor &tensor :
             unpackParams(layout, state.expAvgSq, specs, dtype, "exp_avg_sq."))
          contents.optimizer.push_back(std::move(tensor));
        contents.fp8State = fp8StateTensors(state);
        return contents;
      });
  if (!finisher)
    return reportError(finisher.error().message);

  llvm::outs() << llvm::formatv(
      "llamac train: {0} layers, hidden {1}, vocab {2}, {3} parameters; "
      "batch {4} x seq {5}, {6}, device cpu (reference interpreter)\n",
      config.numLayers, config.hiddenSize, config.vocabSize,
      countParameters(specs), shape.batch, shape.seq, run.precision);
  llvm::outs() << llvm::formatv(
      "optimizer: AdamW, lr {0} ({1} schedule, {2} warmup steps), "
      "grad-accum {3}, max grad norm {4}; data: {5} rows{6}{7}\n",
      llvm::format("%g", options.lr), lrScheduleName(options.lrSchedule),
      options.warmupSteps, options.gradAccum,
      llvm::format("%g", options.maxGradNorm), rows.size(),
      options.shuffle ? ", shuffled" : "",
      options.padToLongest ? ", padded to the longest row"
      : shape.packed       ? ", packed into sequences"
                           : "");
  if (!resumedFrom.empty())
    llvm::outs() << "resuming from " << resumedFrom << " at step "
                 << run.globalStep << "\n";
  llvm::outs().flush();

  // 4. The loop.
  llvm::StringMap<double> hyper = {{"beta1", options.beta1},
                                   {"beta2", options.beta2},
                                   {"eps", options.eps},
                                   {"weight_decay", options.weightDecay},
                                   {"max_grad_norm", options.maxGradNorm}};
  while (run.globalStep < options.steps) {
    int64_t stepIndex = run.globalStep + 1;
    auto start = std::chrono::steady_clock::now();

    // 4a. The micro-batches of this step, and the tokens the loss counts in
    // each (HF's num_items_in_batch is their sum).
    auto [microBatches, counted, tokens] =
        takeStepBatches(rows, sampler, options.gradAccum, shape.batch,
                        shape.seq, shape.packed, options.padToLongest);

    // 4a'. FP8 calibration of a fresh run: delayed scaling has no amax
    // before step 1, whose casts would use the initial scales of 1 (E5M2's
    // smallest value, 2^-16, is far above the per-element gradients of a
    // mean loss), so passes over step 1's batch fill the histories first;
    // their losses and gradients are dropped.
    if (stepIndex == 1 && resumedFrom.empty())
      for (int64_t pass = 0; pass < options.fp8CalibrationPasses; ++pass)
        for (const Batch &batch : microBatches) {
          llvm::Expected<mlir::func::FuncOp> func =
              steps.forwardBackward(batch.seq);
          if (!func)
            return reportError(llvm::toString(func.takeError()));
          if (llvm::Error error =
                  runForwardBackward(*func, state, batch).takeError())
            return reportError(llvm::toString(std::move(error)));
        }

    // 4b. Forward and backward per micro-batch: the window's loss is the
    // sum over its counted tokens divided by their number, so micro-batch i
    // (mean loss over count_i tokens) weighs count_i / counted.
    double loss = 0;
    llvm::StringMap<Tensor> grads;
    for (const Batch &batch : microBatches) {
      llvm::Expected<mlir::func::FuncOp> func =
          steps.forwardBackward(batch.seq);
      if (!func)
        return reportError(llvm::toString(func.takeError()));
      llvm::Expected<MicroBatchResult> result =
          runForwardBackward(*func, state, batch);
      if (!result)
        return reportError(llvm::toString(result.takeError()));
      double weight =
          counted > 0 ? double(countLossTokens(batch)) / double(counted) : 0;
      loss += weight * result->loss;
      accumulate(grads, result->grads, weight);
    }

    // 4c. Gradients of the first step, before clipping.
    if (stepIndex == 1 && !options.dumpGradsPath.empty())
      if (Status status = writeSafetensors(
              options.dumpGradsPath, unpackParams(layout, grads, specs, dtype));
          !status)
        return reportError(status.error().message);

    // 4d. Clip, then AdamW with this step's learning rate.
    double lr = runOptions.schedule.at(stepIndex);
    hyper["lr"] = lr;
    hyper["step"] = double(stepIndex);
    llvm::Expected<double> gradNorm =
        runOptimizerStep(optimizerStep, state, grads, hyper);
    if (!gradNorm)
      return reportError(llvm::toString(gradNorm.takeError()));
    run.globalStep = stepIndex;
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();

    // 4e. Progress, metrics, checkpoints; on SIGINT or SIGTERM, stop after
    // this step with a checkpoint.
    Result<int> stop =
        finisher->finishStep({stepIndex, loss, lr, *gradNorm, tokens, seconds});
    if (!stop)
      return reportError(stop.error().message);
    if (*stop)
      return *stop;
  }
  finisher->finish();

  // 5. The fine-tuned model, loadable by Hugging Face.
  if (!options.savePath.empty()) {
    if (Status status = writeModelDirectory(
            options.savePath, configJson,
            unpackParams(layout, state.params, specs, dtype));
        !status)
      return reportError(status.error().message);
    llvm::outs() << "saved " << options.savePath << "\n";
  }
  return 0;
}
