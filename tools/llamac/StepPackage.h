//===- StepPackage.h - Train steps compiled to GPU packages -----*- C++ -*-===//

#ifndef LLAMAC_TOOLS_STEPPACKAGE_H
#define LLAMAC_TOOLS_STEPPACKAGE_H

#include "llamac/Frontend/ModelBuilder.h"
#include "llamac/Package/Package.h"
#include "llamac/Pipeline/Pipeline.h"

#include "llvm/Support/Error.h"

#include <string>

namespace llamac {

/// What a GPU package is compiled for.
struct GpuPackageOptions {
  /// PTX target: sm_90a (Hopper, the default), sm_90, sm_89, sm_86, sm_80.
  std::string arch = "sm_90a";
  /// Gradients summed over micro-batches (PackageOptions).
  bool accumulateGradients = false;
};

/// Fails naming --arch when `arch` is not a target llamac compiles for.
llvm::Error checkArch(const std::string &arch);

/// Builds the train step of `config` (forward, fusions, autodiff, optimizer)
/// and lowers it to a GPU package for `gpu`. The GPU backend runs bf16
/// steps, and fp8 ones (bf16 storage) with delayed scaling.
llvm::Expected<package::Package>
compileStepPackage(const LlamaConfig &config, const StepShape &shape,
                   const mlir::llama::TrainStepPipelineOptions &pipeline,
                   const GpuPackageOptions &gpu = GpuPackageOptions());

/// The package of that step from the cache under `cacheRoot`, keyed by a
/// hash of everything that shapes it (config, batch, seq, packing,
/// precision and the FP8 settings, arch, passes, gradient accumulation,
/// llamac version), compiled
/// and stored there on a miss. Returns its directory.
llvm::Expected<std::string>
cachedStepPackage(const LlamaConfig &config, const StepShape &shape,
                  const mlir::llama::TrainStepPipelineOptions &pipeline,
                  const std::string &cacheRoot,
                  const GpuPackageOptions &gpu = GpuPackageOptions());

/// $LLAMAC_CACHE_DIR, else $XDG_CACHE_HOME/llamac, else ~/.cache/llamac.
std::string defaultPackageCache();

} // namespace llamac

#endif // LLAMAC_TOOLS_STEPPACKAGE_H
