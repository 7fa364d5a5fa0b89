//===- LlamaAttrNames.h - Names of the train step's interface ---*- C++ -*-===//
//
// The train step is a plain func.func; its arguments and results are named by
// these attributes so that passes, the interpreter and the runtime bind
// tensors by meaning, never by position.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_DIALECT_LLAMA_LLAMAATTRNAMES_H
#define LLAMAC_DIALECT_LLAMA_LLAMAATTRNAMES_H

#include "llvm/ADT/StringRef.h"

namespace mlir::llama {

/// Argument: a model parameter, by its Hugging Face name.
constexpr llvm::StringLiteral kParamAttr = "llama.param";
/// Argument: a parameter that concatenates several Hugging Face tensors
/// along dimension 0 (e.g. a fused QKV weight), as an array of their names in
/// order. Checkpoints keep the Hugging Face tensors; the driver packs and
/// unpacks them.
constexpr llvm::StringLiteral kParamPartsAttr = "llama.param_parts";
/// Argument: a data input, "input_ids" or "labels".
constexpr llvm::StringLiteral kInputAttr = "llama.input";
/// Result: the scalar training loss.
constexpr llvm::StringLiteral kLossAttr = "llama.loss";
/// Result of @forward_backward, argument of @optimizer_step: the gradient of
/// the named parameter.
constexpr llvm::StringLiteral kGradAttr = "llama.grad";
/// Result of @optimizer_step: the global L2 norm of the gradients before
/// clipping (what the Hugging Face Trainer logs as grad_norm).
constexpr llvm::StringLiteral kGradNormAttr = "llama.grad_norm";
/// Arguments: AdamW's first and second moments of the named parameter.
constexpr llvm::StringLiteral kExpAvgAttr = "llama.exp_avg";
constexpr llvm::StringLiteral kExpAvgSqAttr = "llama.exp_avg_sq";
/// Results: the updated parameter and moments.
constexpr llvm::StringLiteral kNewParamAttr = "llama.new_param";
constexpr llvm::StringLiteral kNewExpAvgAttr = "llama.new_exp_avg";
constexpr llvm::StringLiteral kNewExpAvgSqAttr = "llama.new_exp_avg_sq";
/// Argument: a scalar optimizer hyperparameter ("lr", "beta1", "beta2",
/// "eps", "weight_decay", "step", "max_grad_norm").
constexpr llvm::StringLiteral kHyperparameterAttr = "llama.hyperparameter";

/// FP8 delayed-scaling state of @forward_backward (llama-insert-fp8), per
/// quantized tensor, named by a tensor id: the Hugging Face name for a
/// weight (each part of a fused weight too), `<layer>.input` for a GEMM's
/// activation and `<layer>.grad_output` for its incoming gradient (e.g.
/// `model.layers.0.mlp.down_proj.grad_output`); the same ids with and
/// without the fusions.
/// Arguments: the amax history (tensor<Lxf32>, newest first) and the scale
/// (tensor<f32>) this step's GEMMs use; results: both after this step's
/// update. The driver starts histories at zeros and scales at 1.
constexpr llvm::StringLiteral kFP8AmaxHistoryAttr = "llama.fp8_amax_history";
constexpr llvm::StringLiteral kFP8ScaleAttr = "llama.fp8_scale";
constexpr llvm::StringLiteral kNewFP8AmaxHistoryAttr =
    "llama.new_fp8_amax_history";
constexpr llvm::StringLiteral kNewFP8ScaleAttr = "llama.new_fp8_scale";

/// The two functions of a train step after llama-adamw:
///   @forward_backward(params, input_ids, labels) -> (loss, grads)
///   @optimizer_step(params, grads, exp_avg, exp_avg_sq, hyperparameters)
///       -> (grad_norm, new params, new exp_avg, new exp_avg_sq)
/// The driver runs forward_backward once per micro-batch, sums the weighted
/// gradients, then runs optimizer_step once.
constexpr llvm::StringLiteral kForwardBackwardName = "forward_backward";
constexpr llvm::StringLiteral kOptimizerStepName = "optimizer_step";

} // namespace mlir::llama

#endif // LLAMAC_DIALECT_LLAMA_LLAMAATTRNAMES_H
