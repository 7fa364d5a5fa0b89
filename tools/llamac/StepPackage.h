//===- StepPackage.h - Train steps compiled to GPU packages -----*- C++ -*-===//

#ifndef LLAMAC_TOOLS_STEPPACKAGE_H
#define LLAMAC_TOOLS_STEPPACKAGE_H

#include "llamac/Frontend/ModelBuilder.h"
#include "llamac/Package/Package.h"
#include "llamac/Pipeline/Pipeline.h"

#include "llvm/Support/Error.h"

#include <string>

namespace llamac {

/// Builds the train step of `config` (forward, fusions, autodiff, optimizer)
/// and lowers it to a GPU package. The GPU backend runs bf16 steps.
llvm::Expected<package::Package>
compileStepPackage(const LlamaConfig &config, const StepShape &shape,
                   const mlir::llama::TrainStepPipelineOptions &pipeline);

/// The package of that step from the cache under `cacheRoot`, keyed by a
/// hash of everything that shapes it (config, batch, seq, packing,
/// precision, arch, passes, llamac version), compiled and stored there on a
/// miss. Returns its directory.
llvm::Expected<std::string>
cachedStepPackage(const LlamaConfig &config, const StepShape &shape,
                  const mlir::llama::TrainStepPipelineOptions &pipeline,
                  const std::string &cacheRoot);

/// $LLAMAC_CACHE_DIR, else $XDG_CACHE_HOME/llamac, else ~/.cache/llamac.
std::string defaultPackageCache();

} // namespace llamac

#endif // LLAMAC_TOOLS_STEPPACKAGE_H
