//===- GenerateStepPackage.cpp - A whole train step for the GPU test ------===//
//
// Built and run on the build machine: compiles the bf16 train step of a small
// Llama (GQA, llama3 RoPE scaling, two layers) to a package, draws weights and
// a batch (padded and label-masked rows), and records what the CPU reference
// interpreter computes for one step in bf16: the loss, every gradient and
// every updated parameter. StepPackageTest runs the package on the GPU and
// compares. Writes OUT/package/, OUT/inputs.safetensors and
// OUT/expected.safetensors, named by the package's buffer names. With
// --packed the step takes packed sequences (position_ids; GpuStepShapes.h
// says which data rows each holds). --flash and --flash-packed are those
// steps at test::kFlashStepSeq, where attention is the flash kernels. With
// --fp8 the step is the FP8 one
// (delayed scaling, test::kFP8AmaxHistory entries of history; with
// --fp8-current, current scaling) and the
// reference runs test::kFP8Steps steps of it, carrying the weights, AdamW
// moments and FP8 state: it records each step's loss ("loss.<step>") and
// the FP8 state after the last ("fp8_amax_history:<id>", "fp8_scale:<id>").
//
//===----------------------------------------------------------------------===//

#include "GpuStepShapes.h"

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Frontend/ModelBuilder.h"
#include "llamac/Pipeline/Pipeline.h"
#include "llamac/Plan/BuildPackage.h"
#include "llamac/Reference/Interpreter.h"
#include "llamac/Runtime/Random.h"
#include "llamac/Runtime/Safetensors.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/raw_ostream.h"

using namespace llamac;
using reference::Tensor;

/// Small, but with every structural feature: GQA (8 query heads over 2 KV
/// heads), llama3 frequency scaling with all three bands at these positions,
/// two layers, an untied head.
static LlamaConfig stepTestConfig() {
  LlamaConfig config = tinyLlamaConfig();
  config.vocabSize = 256;
  config.hiddenSize = 128;
  config.intermediateSize = 256;
  config.numLayers = 2;
  config.numHeads = 8;
  config.numKvHeads = 2;
  config.headDim = 16;
  config.ropeTheta = 500000;
  config.rope.type = "llama3";
  config.rope.factor = 8;
  config.rope.lowFreqFactor = 1;
  config.rope.highFreqFactor = 4;
  config.rope.originalMaxPositionEmbeddings = 64;
  config.tieWordEmbeddings = false;
  return config;
}

static int fail(const llvm::Twine &message) {
  llvm::errs() << "GenerateStepPackage: " << message << "\n";
  return 1;
}

/// The train step of `config` through the pipeline.
static mlir::OwningOpRef<mlir::ModuleOp>
buildStep(mlir::MLIRContext &context, const LlamaConfig &config,
          const StepShape &shape,
          const mlir::llama::TrainStepPipelineOptions &pipeline) {
  mlir::OwningOpRef<mlir::ModuleOp> module =
      buildForwardModule(context, config, shape);
  mlir::PassManager pm(&context);
  mlir::llama::buildTrainStepPipeline(pm, pipeline);
  if (mlir::failed(pm.run(*module)))
    return nullptr;
  return module;
}

/// Argument `i` of @forward_backward when it is a parameter (normal weights,
/// norm weights near 1, rounded to its type) or an input (the test batch):
/// its value, also appended to `inputs` under its package buffer name.
/// Returns false for the other arguments.
static bool stepInput(mlir::func::FuncOp func, unsigned i, int64_t vocab,
                      bool packed, Tensor &tensor,
                      std::vector<HostTensor> &inputs) {
  auto type = mlir::cast<mlir::RankedTensorType>(func.getArgument(i).getType());
  std::vector<int64_t> dims(type.getShape().begin(), type.getShape().end());
  tensor = Tensor::zeros(dims);
  if (auto name =
          func.getArgAttrOfType<mlir::StringAttr>(i, mlir::llama::kParamAttr)) {
    Random random(7, name.str());
    bool norm = name.getValue().ends_with("norm.weight");
    for (double &v : tensor.data)
      v = reference::roundTo(norm ? 1 + 0.1 * random.normal()
                                  : 0.08 * random.normal(),
                             type.getElementType());
    inputs.push_back(HostTensor::fromDouble("param:" + name.str(), DType::BF16,
                                            dims, tensor.data));
    return true;
  }
  auto input =
      func.getArgAttrOfType<mlir::StringAttr>(i, mlir::llama::kInputAttr);
  if (!input)
    return false;
  int64_t seq = int64_t(tensor.data.size()) / test::kStepBatch;
  if (input.getValue() == "position_ids")
    test::fillPositions(tensor.data, seq);
  else
    test::fillBatch(input.getValue() == "labels", vocab, tensor.data, packed,
                    seq);
  inputs.push_back(
      HostTensor::fromDouble(input.str(), DType::I32, dims, tensor.data));
  return true;
}

/// The string attribute `attr` of `func`'s argument `i`, or "".
static std::string argName(mlir::func::FuncOp func, unsigned i,
                           llvm::StringRef attr) {
  mlir::DictionaryAttr attrs = func.getArgAttrDict(i);
  auto value = attrs ? attrs.getAs<mlir::StringAttr>(attr) : nullptr;
  return value ? value.str() : std::string();
}

/// Compiles `module` to a package and writes it with the inputs and the
/// expected values into `out`.
static int writeStep(const std::string &out, mlir::ModuleOp module,
                     const LlamaConfig &config, const StepShape &shape,
                     const std::vector<HostTensor> &inputs,
                     const std::vector<HostTensor> &expected) {
  PackageOptions options;
  options.compiler = "llamac GPU test";
  options.configJson = toHFConfigJson(config);
  options.batch = shape.batch;
  options.seq = shape.seq;
  for (const ParamSpec &spec : parameterSpecs(config))
    options.hfShapes[spec.name] = spec.shape;
  llvm::Expected<package::Package> package = buildPackage(module, options);
  if (!package)
    return fail(llvm::toString(package.takeError()));
  if (std::error_code error =
          llvm::sys::fs::create_directories(out + "/package"))
    return fail(out + ": " + error.message());
  for (Status status :
       {package::writePackage(out + "/package", *package),
        writeSafetensors(out + "/inputs.safetensors", inputs),
        writeSafetensors(out + "/expected.safetensors", expected)})
    if (!status)
      return fail(status.error().message);
  return 0;
}

/// --fp8 (or --fp8-current: current scaling, no FP8 state; --fp8-lm-head:
/// delayed scaling with the lm_head GEMMs in FP8 too): test::kFP8Steps
/// steps of the FP8 train step on the reference.
static int generateFP8(const std::string &out, const std::string &scaling,
                       bool lmHead) {
  LlamaConfig config = stepTestConfig();
  StepShape shape{test::kStepBatch, test::kStepSeq, Precision::BF16, false};
  mlir::llama::TrainStepPipelineOptions pipeline;
  pipeline.fp8 = true;
  pipeline.fp8Scaling = scaling;
  pipeline.fp8AmaxHistory = test::kFP8AmaxHistory;
  pipeline.fp8LmHead = lmHead;
  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module =
      buildStep(context, config, shape, pipeline);
  if (!module)
    return fail("the FP8 train-step pipeline failed");
  auto forwardBackward = module->lookupSymbol<mlir::func::FuncOp>(
      mlir::llama::kForwardBackwardName);
  auto optimizer =
      module->lookupSymbol<mlir::func::FuncOp>(mlir::llama::kOptimizerStepName);

  // The carried state: weights, FP8 histories (zeros) and scales (ones),
  // AdamW moments (zeros), by name.
  std::vector<HostTensor> inputs;
  std::vector<Tensor> fbArgs(forwardBackward.getNumArguments());
  llvm::StringMap<Tensor> params, expAvg, expAvgSq, histories, scales;
  for (unsigned i = 0; i < forwardBackward.getNumArguments(); ++i) {
    if (stepInput(forwardBackward, i, config.vocabSize, false, fbArgs[i],
                  inputs)) {
      if (std::string p = argName(forwardBackward, i, mlir::llama::kParamAttr);
          !p.empty())
        params[p] = fbArgs[i];
    } else if (std::string id = argName(forwardBackward, i,
                                        mlir::llama::kFP8AmaxHistoryAttr);
               !id.empty()) {
      histories[id] = fbArgs[i];
    } else if (std::string id =
                   argName(forwardBackward, i, mlir::llama::kFP8ScaleAttr);
               !id.empty()) {
      scales[id] = Tensor::scalar(1);
    } else {
      return fail("unexpected @forward_backward argument " + llvm::Twine(i));
    }
  }

  std::vector<HostTensor> expected;
  for (int step = 1; step <= test::kFP8Steps; ++step) {
    for (unsigned i = 0; i < forwardBackward.getNumArguments(); ++i)
      for (auto [attr, held] :
           {std::pair{mlir::llama::kParamAttr, &params},
            std::pair{mlir::llama::kFP8AmaxHistoryAttr, &histories},
            std::pair{mlir::llama::kFP8ScaleAttr, &scales}})
        if (std::string name = argName(forwardBackward, i, attr); !name.empty())
          fbArgs[i] = (*held)[name];
    llvm::Expected<std::vector<Tensor>> fb =
        reference::interpret(forwardBackward, fbArgs);
    if (!fb)
      return fail(llvm::toString(fb.takeError()));
    llvm::StringMap<Tensor> grads;
    for (unsigned i = 0; i < fb->size(); ++i) {
      mlir::DictionaryAttr attrs = forwardBackward.getResultAttrDict(i);
      auto named = [&](llvm::StringRef key) {
        auto value = attrs ? attrs.getAs<mlir::StringAttr>(key) : nullptr;
        return value ? value.str() : std::string();
      };
      if (std::string g = named(mlir::llama::kGradAttr); !g.empty())
        grads[g] = (*fb)[i];
      else if (std::string h = named(mlir::llama::kNewFP8AmaxHistoryAttr);
               !h.empty())
        histories[h] = (*fb)[i];
      else if (std::string s = named(mlir::llama::kNewFP8ScaleAttr); !s.empty())
        scales[s] = (*fb)[i];
      else
        expected.push_back(HostTensor::fromDouble(
            "loss." + std::to_string(step), DType::F32, {}, (*fb)[i].data));
    }
    std::vector<Tensor> optArgs;
    for (unsigned i = 0; i < optimizer.getNumArguments(); ++i) {
      auto type = mlir::cast<mlir::RankedTensorType>(
          optimizer.getArgument(i).getType());
      std::vector<int64_t> dims(type.getShape().begin(), type.getShape().end());
      if (std::string p = argName(optimizer, i, mlir::llama::kParamAttr);
          !p.empty())
        optArgs.push_back(params[p]);
      else if (std::string g = argName(optimizer, i, mlir::llama::kGradAttr);
               !g.empty())
        optArgs.push_back(grads[g]);
      else if (std::string h =
                   argName(optimizer, i, mlir::llama::kHyperparameterAttr);
               !h.empty())
        optArgs.push_back(Tensor::scalar(h == "step" ? double(step)
                                         : h == "lr"
                                             ? test::kFP8Lr
                                             : test::hyperparameter(h)));
      else if (std::string m = argName(optimizer, i, mlir::llama::kExpAvgAttr);
               !m.empty())
        optArgs.push_back(expAvg.count(m) ? expAvg[m] : Tensor::zeros(dims));
      else if (std::string m =
                   argName(optimizer, i, mlir::llama::kExpAvgSqAttr);
               !m.empty())
        optArgs.push_back(expAvgSq.count(m) ? expAvgSq[m]
                                            : Tensor::zeros(dims));
      else
        return fail("unexpected @optimizer_step argument " + llvm::Twine(i));
    }
    llvm::Expected<std::vector<Tensor>> opt =
        reference::interpret(optimizer, optArgs);
    if (!opt)
      return fail(llvm::toString(opt.takeError()));
    for (unsigned i = 0; i < opt->size(); ++i) {
      mlir::DictionaryAttr attrs = optimizer.getResultAttrDict(i);
      if (!attrs)
        continue;
      for (auto [attr, held] :
           {std::pair{mlir::llama::kNewParamAttr, &params},
            std::pair{mlir::llama::kNewExpAvgAttr, &expAvg},
            std::pair{mlir::llama::kNewExpAvgSqAttr, &expAvgSq}})
        if (auto name = attrs.getAs<mlir::StringAttr>(attr))
          (*held)[name.getValue()] = (*opt)[i];
    }
  }
  for (auto [prefix, held] : {std::pair{"fp8_amax_history:", &histories},
                              std::pair{"fp8_scale:", &scales}})
    for (const auto &entry : *held)
      expected.push_back(HostTensor::fromDouble(
          prefix + entry.getKey().str(), DType::F32, entry.getValue().shape,
          entry.getValue().data));
  return writeStep(out, *module, config, shape, inputs, expected);
}

int main(int argc, char **argv) {
  llvm::StringRef flag = argc == 3 ? argv[2] : "";
  bool flash = flag == "--flash" || flag == "--flash-packed";
  bool packed = flag == "--packed" || flag == "--flash-packed";
  bool fp8 = flag == "--fp8";
  bool fp8Current = flag == "--fp8-current";
  bool fp8LmHead = flag == "--fp8-lm-head";
  if (argc != 2 && !packed && !flash && !fp8 && !fp8Current && !fp8LmHead)
    return fail("usage: GenerateStepPackage OUTPUT_DIR [--packed | --flash | "
                "--flash-packed | --fp8 | --fp8-current | --fp8-lm-head]");
  std::string out = argv[1];
  if (fp8 || fp8Current || fp8LmHead)
    return generateFP8(out, fp8Current ? "current" : "delayed", fp8LmHead);
  LlamaConfig config = stepTestConfig();
  StepShape shape{test::kStepBatch,
                  flash ? test::kFlashStepSeq : test::kStepSeq, Precision::BF16,
                  packed};

  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module =
      buildStep(context, config, shape, {});
  if (!module)
    return fail("the train-step pipeline failed");

  // Inputs: weights (normal, norm weights near 1) and one batch.
  auto forwardBackward = module->lookupSymbol<mlir::func::FuncOp>(
      mlir::llama::kForwardBackwardName);
  auto optimizer =
      module->lookupSymbol<mlir::func::FuncOp>(mlir::llama::kOptimizerStepName);
  llvm::StringMap<Tensor> params;
  std::vector<HostTensor> inputs;
  std::vector<Tensor> fbArgs;
  for (unsigned i = 0; i < forwardBackward.getNumArguments(); ++i) {
    Tensor tensor;
    if (!stepInput(forwardBackward, i, config.vocabSize, packed, tensor,
                   inputs))
      return fail("unexpected @forward_backward argument " + llvm::Twine(i));
    if (std::string p = argName(forwardBackward, i, mlir::llama::kParamAttr);
        !p.empty())
      params[p] = tensor;
    fbArgs.push_back(std::move(tensor));
  }

  llvm::Expected<std::vector<Tensor>> fb =
      reference::interpret(forwardBackward, fbArgs);
  if (!fb)
    return fail(llvm::toString(fb.takeError()));
  std::vector<HostTensor> expected;
  llvm::StringMap<Tensor> grads;
  for (unsigned i = 0; i < fb->size(); ++i) {
    if (auto name = forwardBackward.getResultAttrOfType<mlir::StringAttr>(
            i, mlir::llama::kGradAttr)) {
      grads[name.getValue()] = (*fb)[i];
      expected.push_back(HostTensor::fromDouble(
          "grad:" + name.str(), DType::F32, (*fb)[i].shape, (*fb)[i].data));
    } else {
      expected.push_back(
          HostTensor::fromDouble("loss", DType::F32, {}, (*fb)[i].data));
    }
  }

  std::vector<Tensor> optArgs;
  for (unsigned i = 0; i < optimizer.getNumArguments(); ++i) {
    auto type =
        mlir::cast<mlir::RankedTensorType>(optimizer.getArgument(i).getType());
    std::vector<int64_t> dims(type.getShape().begin(), type.getShape().end());
    if (std::string p = argName(optimizer, i, mlir::llama::kParamAttr);
        !p.empty())
      optArgs.push_back(params[p]);
    else if (std::string g = argName(optimizer, i, mlir::llama::kGradAttr);
             !g.empty())
      optArgs.push_back(grads[g]);
    else if (std::string h =
                 argName(optimizer, i, mlir::llama::kHyperparameterAttr);
             !h.empty())
      optArgs.push_back(Tensor::scalar(test::hyperparameter(h)));
    else
      optArgs.push_back(Tensor::zeros(dims)); // AdamW moments start at zero
  }
  llvm::Expected<std::vector<Tensor>> opt =
      reference::interpret(optimizer, optArgs);
  if (!opt)
    return fail(llvm::toString(opt.takeError()));
  for (unsigned i = 0; i < opt->size(); ++i) {
    if (auto name = optimizer.getResultAttrOfType<mlir::StringAttr>(
            i, mlir::llama::kNewParamAttr))
      expected.push_back(HostTensor::fromDouble(
          "param:" + name.str(), DType::F32, (*opt)[i].shape, (*opt)[i].data));
    else if (optimizer.getResultAttrDict(i).get(mlir::llama::kGradNormAttr))
      expected.push_back(
          HostTensor::fromDouble("grad_norm", DType::F32, {}, (*opt)[i].data));
  }

  return writeStep(out, *module, config, shape, inputs, expected);
}
