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
// says which data rows each holds).
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

int main(int argc, char **argv) {
  bool packed = argc == 3 && llvm::StringRef(argv[2]) == "--packed";
  if (argc != 2 && !packed)
    return fail("usage: GenerateStepPackage OUTPUT_DIR [--packed]");
  std::string out = argv[1];
  LlamaConfig config = stepTestConfig();
  StepShape shape{test::kStepBatch, test::kStepSeq, Precision::BF16, packed};

  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module =
      buildForwardModule(context, config, shape);
  mlir::PassManager pm(&context);
  mlir::llama::buildTrainStepPipeline(pm);
  if (mlir::failed(pm.run(*module)))
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
    auto type = mlir::cast<mlir::RankedTensorType>(
        forwardBackward.getArgument(i).getType());
    std::vector<int64_t> dims(type.getShape().begin(), type.getShape().end());
    Tensor tensor = Tensor::zeros(dims);
    if (auto name = forwardBackward.getArgAttrOfType<mlir::StringAttr>(
            i, mlir::llama::kParamAttr)) {
      Random random(7, name.str());
      bool norm = name.getValue().ends_with("norm.weight");
      for (double &v : tensor.data)
        v = reference::roundTo(norm ? 1 + 0.1 * random.normal()
                                    : 0.08 * random.normal(),
                               type.getElementType());
      params[name.getValue()] = tensor;
      inputs.push_back(HostTensor::fromDouble("param:" + name.str(),
                                              DType::BF16, dims, tensor.data));
    } else {
      auto input = forwardBackward.getArgAttrOfType<mlir::StringAttr>(
          i, mlir::llama::kInputAttr);
      if (input.getValue() == "position_ids")
        test::fillPositions(tensor.data);
      else
        test::fillBatch(input.getValue() == "labels", config.vocabSize,
                        tensor.data, packed);
      inputs.push_back(
          HostTensor::fromDouble(input.str(), DType::I32, dims, tensor.data));
    }
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
    mlir::DictionaryAttr attrs = optimizer.getArgAttrDict(i);
    auto named = [&](llvm::StringRef key) {
      auto value = attrs.getAs<mlir::StringAttr>(key);
      return value ? value.str() : std::string();
    };
    auto type =
        mlir::cast<mlir::RankedTensorType>(optimizer.getArgument(i).getType());
    std::vector<int64_t> dims(type.getShape().begin(), type.getShape().end());
    if (std::string p = named(mlir::llama::kParamAttr); !p.empty())
      optArgs.push_back(params[p]);
    else if (std::string g = named(mlir::llama::kGradAttr); !g.empty())
      optArgs.push_back(grads[g]);
    else if (std::string h = named(mlir::llama::kHyperparameterAttr);
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

  PackageOptions options;
  options.compiler = "llamac GPU test";
  options.configJson = toHFConfigJson(config);
  options.batch = shape.batch;
  options.seq = shape.seq;
  for (const ParamSpec &spec : parameterSpecs(config))
    options.hfShapes[spec.name] = spec.shape;
  llvm::Expected<package::Package> package = buildPackage(*module, options);
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
