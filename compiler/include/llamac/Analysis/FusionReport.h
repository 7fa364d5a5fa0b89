//===- FusionReport.h - What the fusions did to the train step --*- C++ -*-===//
//
// `llamac compile --emit fusion-report`: builds the train step with and
// without the fusions and reports, for a reader, which ops each decoder layer
// fused into what, how many GEMMs and other ops the whole step (forward,
// backward, optimizer) has, and how many bytes of activations the forward
// keeps for the backward.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_ANALYSIS_FUSIONREPORT_H
#define LLAMAC_ANALYSIS_FUSIONREPORT_H

#include "llamac/Pipeline/Pipeline.h"

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mlir::llama {

/// Op counts of one stage of the train step.
struct StageCounts {
  /// Matrix products: one per llama.matmul, one inside norm_matmul and
  /// gated_mlp, two (dgrad and wgrad) inside their backward ops.
  int64_t gemms = 0;
  /// llama ops that contain no GEMM (norms, RoPE, attention, SwiGLU, adds,
  /// the loss, the optimizer's ops...). A fused op with a GEMM counts as its
  /// GEMMs only: its norm or SwiGLU is part of that GEMM's kernel.
  int64_t otherOps = 0;
};

/// One llama op of the forward function and what it stands for.
struct ForwardOpInfo {
  std::string opName;            // "llama.norm_matmul"
  std::vector<std::string> from; // Hugging Face module names, in order
  std::string weight;            // "name [rows, cols]" of a fused weight
};

/// What one build of the train step contains.
struct StepStatistics {
  StageCounts forward, backward, optimizer;
  /// llama-insert-fp8's casts (llama.fp8_quantize) and delayed-scaling
  /// updates (llama.fp8_scale_update), forward and backward; the stages
  /// above count the step without them.
  StageCounts fp8;
  /// Bytes of values computed in the forward and read by backward ops, by
  /// element type ("f32", "bf16", ...).
  std::map<std::string, int64_t> savedActivationBytes;
  /// The forward's llama ops in program order.
  std::vector<ForwardOpInfo> forwardOps;
};

/// Runs the train-step pipeline `options` describes on `module` (which holds
/// the forward function the model builder made) stage by stage and gathers
/// the statistics (the saved activations before FP8 quantization). Fails if
/// a pass fails.
FailureOr<StepStatistics>
analyzeTrainStep(ModuleOp module, const TrainStepPipelineOptions &options);

/// Writes the report: `title` on the first line, then the fusions per layer
/// (from `fused`), the op counts and the saved activations of both builds.
void printFusionReport(llvm::raw_ostream &os, llvm::StringRef title,
                       const StepStatistics &unfused,
                       const StepStatistics &fused);

} // namespace mlir::llama

#endif // LLAMAC_ANALYSIS_FUSIONREPORT_H
