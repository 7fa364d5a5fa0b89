//===- Compile.cpp - `llamac compile`: config to train-step IR ------------===//

#include "Commands.h"

#include "llamac/Pipeline/Pipeline.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/FileSystem.h"
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

int llamac::runCompile(const CompileOptions &options) {
  if (options.emit != "mlir")
    return reportError("--emit: unknown output '" + options.emit +
                       "' (supported: mlir)");
  llvm::Expected<LlamaConfig> config = loadModelConfig(options.configPath);
  if (!config)
    return reportError(llvm::toString(config.takeError()));

  mlir::MLIRContext context;
  mlir::OwningOpRef<mlir::ModuleOp> module =
      buildForwardModule(context, *config, options.shape);
  mlir::PassManager pm(&context);
  mlir::llama::buildTrainStepPipeline(pm, {options.autodiff, options.optimizer});
  if (mlir::failed(pm.run(*module)))
    return reportError("internal: the train-step pipeline failed");

  std::error_code error;
  llvm::ToolOutputFile output(options.outputPath, error,
                              llvm::sys::fs::OF_None);
  if (error)
    return reportError(options.outputPath + ": " + error.message());
  module->print(output.os());
  output.keep();
  return 0;
}
