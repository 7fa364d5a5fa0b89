//===- Commands.h - The llamac subcommands ----------------------*- C++ -*-===//

#ifndef LLAMAC_TOOLS_COMMANDS_H
#define LLAMAC_TOOLS_COMMANDS_H

#include "llamac/Frontend/ModelBuilder.h"

#include "llvm/ADT/Twine.h"

#include <string>

namespace llamac {

/// Exit code of every rejected input (config, checkpoint, data, flags).
constexpr int kBadInputExit = 2;

/// Prints `llamac: error: <message>` on one line and returns kBadInputExit.
int reportError(const llvm::Twine &message);

/// The model to build: a config.json (file or model directory), or the
/// built-in tiny model when the path is empty.
llvm::Expected<LlamaConfig> loadModelConfig(const std::string &configPath);

struct CompileOptions {
  std::string configPath;
  StepShape shape;
  std::string emit = "mlir";
  bool autodiff = true;
  bool optimizer = true;
  std::string outputPath = "-";
};

struct TrainOptions {
  std::string configPath, weightsPath, dataPath;
  std::string savePath, dumpGradsPath, metricsPath;
  StepShape shape;
  int64_t steps = 10;
  double lr = 1.41e-5, weightDecay = 0.01, beta1 = 0.9, beta2 = 0.999,
         eps = 1e-8;
  std::string device = "cpu";
  uint64_t seed = 0;
};

int runCompile(const CompileOptions &options);
int runTrain(const TrainOptions &options);

} // namespace llamac

#endif // LLAMAC_TOOLS_COMMANDS_H
