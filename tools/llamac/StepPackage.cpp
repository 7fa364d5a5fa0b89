//===- StepPackage.cpp - Train steps compiled to GPU packages -------------===//

#include "StepPackage.h"

#include "llamac/Plan/BuildPackage.h"
#include "llamac/Version.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Process.h"
#include "llvm/Support/SHA256.h"

using namespace llamac;

llvm::Error llamac::checkArch(const std::string &arch) {
  for (const char *known : {"sm_90a", "sm_90", "sm_89", "sm_86", "sm_80"})
    if (arch == known)
      return llvm::Error::success();
  return llvm::createStringError(
      "--arch: '" + arch +
      "' is not a target llamac compiles for (sm_90a, sm_90, sm_89, sm_86, "
      "sm_80)");
}

static PackageOptions packageOptions(const LlamaConfig &config,
                                     const StepShape &shape,
                                     const GpuPackageOptions &gpu) {
  PackageOptions options;
  options.ptx.chip = gpu.arch;
  options.accumulateGradients = gpu.accumulateGradients;
  options.compiler = "llamac " LLAMAC_VERSION_STRING;
  options.configJson = toHFConfigJson(config);
  options.batch = shape.batch;
  options.seq = shape.seq;
  for (const ParamSpec &spec : parameterSpecs(config))
    options.hfShapes[spec.name] = spec.shape;
  return options;
}

llvm::Expected<package::Package> llamac::compileStepPackage(
    const LlamaConfig &config, const StepShape &shape,
    const mlir::llama::TrainStepPipelineOptions &pipeline,
    const GpuPackageOptions &gpu) {
  if (llvm::Error error = checkArch(gpu.arch))
    return std::move(error);
  if (shape.precision != Precision::BF16)
    return llvm::createStringError(
        "--precision: the GPU backend runs bf16 steps (use --precision bf16)");
  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module =
      buildForwardModule(context, config, shape);
  mlir::PassManager pm(&context);
  mlir::llama::buildTrainStepPipeline(pm, pipeline);
  if (mlir::failed(pm.run(*module)))
    return llvm::createStringError("internal: the train-step pipeline failed");
  return buildPackage(*module, packageOptions(config, shape, gpu));
}

std::string llamac::defaultPackageCache() {
  if (auto dir = llvm::sys::Process::GetEnv("LLAMAC_CACHE_DIR"))
    return *dir;
  llvm::SmallString<256> path;
  if (auto xdg = llvm::sys::Process::GetEnv("XDG_CACHE_HOME"))
    path = *xdg;
  else if (auto home = llvm::sys::Process::GetEnv("HOME"))
    llvm::sys::path::append(path, *home, ".cache");
  else
    path = "/tmp";
  llvm::sys::path::append(path, "llamac");
  return std::string(path);
}

llvm::Expected<std::string>
llamac::cachedStepPackage(const LlamaConfig &config, const StepShape &shape,
                          const mlir::llama::TrainStepPipelineOptions &pipeline,
                          const std::string &cacheRoot,
                          const GpuPackageOptions &gpu) {
  PackageOptions options = packageOptions(config, shape, gpu);
  std::string key =
      options.compiler + "\n" + options.configJson + "\n" +
      std::to_string(shape.batch) + "x" + std::to_string(shape.seq) +
      (shape.packed ? " packed" : "") + "\n" +
      precisionName(shape.precision).str() + "\n" + options.ptx.chip +
      options.ptx.features + "\n" + std::to_string(pipeline.fuseGatedMLP) +
      std::to_string(pipeline.fuseNormLinear) +
      std::to_string(pipeline.fuseRopeAttention) + "\n" +
      (gpu.accumulateGradients ? "accumulate" : "") + "\n" +
      (pipeline.fp8 ? "fp8 " + pipeline.fp8Scaling + " margin " +
                          std::to_string(pipeline.fp8Margin) + " history " +
                          std::to_string(pipeline.fp8AmaxHistory) + " " +
                          pipeline.fp8AmaxComputeAlgo +
                          (pipeline.fp8LmHead ? " lm_head" : "")
                    : "");
  llvm::SHA256 sha;
  sha.update(key);
  std::string hash = llvm::toHex(sha.final(), /*LowerCase=*/true).substr(0, 24);
  llvm::SmallString<256> dir(cacheRoot);
  llvm::sys::path::append(dir, "packages", hash);
  if (package::readPackage(std::string(dir)).ok())
    return std::string(dir);
  llvm::Expected<package::Package> package =
      compileStepPackage(config, shape, pipeline, gpu);
  if (!package)
    return package.takeError();
  if (std::error_code error = llvm::sys::fs::create_directories(dir))
    return llvm::createStringError(std::string(dir) + ": " + error.message());
  if (Status status = package::writePackage(std::string(dir), *package);
      !status)
    return llvm::createStringError(status.error().message);
  return std::string(dir);
}
