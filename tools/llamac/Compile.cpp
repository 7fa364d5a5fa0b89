//===- Compile.cpp - `llamac compile`: config to train-step IR ------------===//

#include "Commands.h"
#include "StepPackage.h"

#include "llamac/Analysis/FusionReport.h"
#include "llamac/Pipeline/Pipeline.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"

using namespace llamac;

int llamac::reportError(const llvm::Twine &message) {
  llvm::WithColor::error(llvm::errs(), "llamac") << message << "\n";
  return kBadInputExit;
}

llvm::Expected<LlamaConfig>
llamac::loadModelConfig(const std::string &configPath) {
  if (configPath.empty())
    return tinyLlamaConfig();
  return loadConfig(configPath);
}

/// `--emit fusion-report`: the step built without any fusion against the
/// step built as the options say.
static int
writeFusionReport(const CompileOptions &options, const LlamaConfig &config,
                  const mlir::llama::TrainStepPipelineOptions &pipeline,
                  llvm::raw_ostream &os) {
  mlir::MLIRContext context;
  mlir::llama::TrainStepPipelineOptions unfusedPipeline = pipeline;
  unfusedPipeline.fuseGatedMLP = unfusedPipeline.fuseNormLinear =
      unfusedPipeline.fuseRopeAttention = false;
  mlir::OwningOpRef<mlir::ModuleOp> unfusedModule =
      buildForwardModule(context, config, options.shape);
  mlir::OwningOpRef<mlir::ModuleOp> fusedModule =
      buildForwardModule(context, config, options.shape);
  mlir::FailureOr<mlir::llama::StepStatistics> unfused =
      mlir::llama::analyzeTrainStep(*unfusedModule, unfusedPipeline);
  mlir::FailureOr<mlir::llama::StepStatistics> fused =
      mlir::llama::analyzeTrainStep(*fusedModule, pipeline);
  if (mlir::failed(unfused) || mlir::failed(fused))
    return reportError("internal: the train-step pipeline failed");
  const StepShape &shape = options.shape;
  std::string title = llvm::formatv(
      "llamac fusion report: {0}\n  {1} layers, hidden {2}, intermediate "
      "{3}, {4} heads / {5} kv heads of {6}, vocab {7}{8}; batch {9} x seq "
      "{10} = {11} tokens, {12}",
      config.source.empty() ? "built-in tiny model" : config.source,
      config.numLayers, config.hiddenSize, config.intermediateSize,
      config.numHeads, config.numKvHeads, config.headDim, config.vocabSize,
      config.tieWordEmbeddings ? ", tied embeddings" : "", shape.batch,
      shape.seq, shape.batch * shape.seq, precisionName(shape.precision));
  mlir::llama::printFusionReport(os, title, *unfused, *fused);
  return 0;
}

/// Prints the step's peak device memory by category; refuses (exit 2) a
/// plan larger than `gpuMemoryGiB`.
static int reportMemory(const package::Package &package, double gpuMemoryGiB) {
  package::MemoryUse use = package::memoryUse(package);
  auto gib = [](uint64_t bytes) { return double(bytes) / double(1ull << 30); };
  llvm::outs() << llvm::formatv(
      "peak device memory of the step (batch {0} x seq {1}, {2}):\n"
      "  weights           {3,8:F2} GiB\n"
      "  gradients         {4,8:F2} GiB\n"
      "  optimizer state   {5,8:F2} GiB  (AdamW's two moments)\n",
      package.batch, package.seq, package.precision, gib(use.weights),
      gib(use.gradients), gib(use.optimizerState));
  llvm::outs() << llvm::formatv(
      "  activations       {0,8:F2} GiB  (liveness plan at its peak)\n",
      gib(use.activations));
  if (use.fp8WeightCopies)
    llvm::outs() << llvm::formatv(
        "  fp8 weight copies {0,8:F2} GiB  (AdamW's for the next step; they "
        "share the activations' arena)\n",
        gib(use.fp8WeightCopies));
  llvm::outs() << llvm::formatv(
      "  workspace         {0,8:F2} GiB  (cuBLASLt)\n"
      "  total             {1,8:F2} GiB  of {2} GiB (--gpu-memory)\n",
      gib(use.workspace), gib(use.total()), gpuMemoryGiB);
  if (gib(use.total()) > gpuMemoryGiB)
    return reportError(llvm::formatv(
        "--gpu-memory: the step needs {0:F2} GiB, more than the GPU's {1} "
        "GiB; lower --batch or --seq, or give the GPU's memory",
        gib(use.total()), gpuMemoryGiB));
  return 0;
}

int llamac::runCompile(const CompileOptions &options) {
  if (options.emit != "mlir" && options.emit != "fusion-report" &&
      options.emit != "package")
    return reportError("--emit: unknown output '" + options.emit +
                       "' (supported: mlir, fusion-report, package)");
  llvm::Expected<LlamaConfig> config = loadModelConfig(options.configPath);
  if (!config)
    return reportError(llvm::toString(config.takeError()));

  mlir::llama::TrainStepPipelineOptions pipeline = fusionPipeline(options);
  pipeline.autodiff = options.autodiff;
  pipeline.optimizer = options.optimizer;

  if (options.accumulateGradients && options.emit != "package")
    return reportError("--accumulate-grads: only for --emit package");
  if (options.emit == "package") {
    // A directory: manifest.json + kernels.ptx, for llamac-run on a GPU box.
    if (options.outputPath == "-")
      return reportError("--emit package: give the package directory with -o");
    GpuPackageOptions gpu = options.target;
    gpu.accumulateGradients = options.accumulateGradients;
    llvm::Expected<package::Package> package =
        compileStepPackage(*config, options.shape, pipeline, gpu);
    if (!package)
      return reportError(llvm::toString(package.takeError()));
    if (int code = reportMemory(*package, options.gpuMemoryGiB))
      return code;
    if (std::error_code error =
            llvm::sys::fs::create_directories(options.outputPath))
      return reportError(options.outputPath + ": " + error.message());
    if (Status status = package::writePackage(options.outputPath, *package);
        !status)
      return reportError(status.error().message);
    return 0;
  }

  std::error_code error;
  llvm::ToolOutputFile output(options.outputPath, error,
                              llvm::sys::fs::OF_None);
  if (error)
    return reportError(options.outputPath + ": " + error.message());
  if (options.emit == "fusion-report") {
    if (int code = writeFusionReport(options, *config, pipeline, output.os()))
      return code;
    output.keep();
    return 0;
  }

  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module =
      buildForwardModule(context, *config, options.shape);
  mlir::PassManager pm(&context);
  mlir::llama::buildTrainStepPipeline(pm, pipeline);
  if (mlir::failed(pm.run(*module)))
    return reportError("internal: the train-step pipeline failed");
  module->print(output.os());
  output.keep();
  return 0;
}
