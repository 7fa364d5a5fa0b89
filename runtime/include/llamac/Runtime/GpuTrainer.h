//===- GpuTrainer.h - The fine-tune loop over a compiled package -*- C++
//-*-===//
//
// Runs a package (written by `llamac compile --emit package` or the package
// cache of `llamac train --device cuda`) on GPU 0, with nothing but the CUDA
// driver and cuBLASLt: this is what `llamac-run` is, so a GPU machine without
// LLVM can fine-tune from a package built elsewhere.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_GPUTRAINER_H
#define LLAMAC_RUNTIME_GPUTRAINER_H

#include "llamac/Runtime/Result.h"
#include "llamac/Runtime/Schedule.h"

#include <cstdint>
#include <string>

namespace llamac {

struct GpuTrainOptions {
  std::string packageDir;
  std::string weightsPath; ///< empty: Hugging Face's random init
  std::string dataPath;    ///< token JSON Lines; required
  std::string savePath, dumpGradsPath, metricsPath;
  int64_t steps = 10;
  LRSchedule schedule;
  double weightDecay = 0.01, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double maxGradNorm = 1.0;
  uint64_t seed = 0;
  /// Steps excluded from the reported mean step time (graph capture, GEMM
  /// algorithm choice and caches warm up in the first ones).
  int64_t warmupSteps = 2;
};

/// Trains; prints one line per step and a summary; returns the process exit
/// code (0, or 2 after printing a one-line error).
int trainOnGpu(const GpuTrainOptions &options);

} // namespace llamac

#endif // LLAMAC_RUNTIME_GPUTRAINER_H
