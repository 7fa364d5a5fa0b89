//===- GpuTrainer.h - The fine-tune loop over a package ---------*- C++ -*-===//
//
// Runs a package (written by `llamac compile --emit package` or the package
// cache of `llamac train --device cuda`) on GPU 0, with nothing but the CUDA
// driver and cuBLASLt: this is what `llamac-run` is, so a GPU machine without
// LLVM can fine-tune from a package built elsewhere. It offers what the CPU
// loop (tools/llamac/Train.cpp) offers, from the same runtime pieces: token
// or text data with shuffling, gradient accumulation, clipping, schedules,
// checkpoints in the same format (a checkpoint of either loop resumes in the
// other; an fp8 package's hold its FP8 delayed-scaling state), a clean stop on
// SIGINT/SIGTERM, progress and metrics (with MFU).
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
  /// JSON Lines of token or text rows; empty: the built-in rows.
  std::string dataPath;
  /// For text rows: tokenizer.json or its directory; empty: the one in
  /// modelDir, if it has one (see loadRunRows).
  std::string tokenizerPath, modelDir;
  std::string savePath, dumpGradsPath, metricsPath;
  /// A checkpoint-<step> directory, or the directory holding them.
  std::string resumePath;
  int64_t steps = 10;
  LRSchedule schedule;
  double weightDecay = 0.01, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double maxGradNorm = 1.0;
  uint64_t seed = 0;
  /// Micro-batches of the package's batch per optimizer step; more than one
  /// needs a package that accumulates gradients.
  int64_t gradAccum = 1;
  /// An fp8 package from a fresh FP8 state: forward-and-backward passes over
  /// step 1's batch that only fill the amax histories before step 1 (as the
  /// CPU loop's --fp8-calibration-passes).
  int64_t fp8CalibrationPasses = 0;
  /// Checkpoints under savePath every saveEvery steps (0: none), keeping the
  /// newest `keep` (0: all); one on SIGINT/SIGTERM unless !saveOnInterrupt.
  int64_t saveEvery = 0, keep = 0;
  bool saveOnInterrupt = true;
  /// Data order (with `seed`), and padding: the package has a fixed
  /// sequence length, so a --pad-to-longest batch is padded to it, which
  /// gives the same loss and gradients (see the README) and is recorded in
  /// checkpoints as the CPU loop records it.
  bool shuffle = false, padToLongest = false;
  /// What checkpoints record as the llamac version.
  std::string llamacVersion = "unknown";
  /// Steps excluded from the reported mean step time (graph capture, GEMM
  /// algorithm choice and caches warm up in the first ones).
  int64_t untimedSteps = 2;
};

class Executor;

/// Fills every parameter of the executor's package with Hugging Face's random
/// init (_init_weights: normal(0, initializerRange) per tensor, drawn from a
/// stream of `seed` and the tensor's name; ones for norm weights) and zeroes
/// the AdamW moments: the model `llamac train` starts from without --weights.
Status uploadRandomInit(Executor &executor, double initializerRange,
                        uint64_t seed);

/// Trains; prints one line per step (a progress bar on a terminal) and a
/// summary; returns the process exit code: 0, 2 after printing a one-line
/// error, or 128 + the signal after a SIGINT or SIGTERM.
int trainOnGpu(const GpuTrainOptions &options);

} // namespace llamac

#endif // LLAMAC_RUNTIME_GPUTRAINER_H
