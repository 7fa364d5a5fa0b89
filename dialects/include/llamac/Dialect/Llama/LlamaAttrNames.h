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
/// Result: the gradient of the named parameter.
constexpr llvm::StringLiteral kGradAttr = "llama.grad";
/// Arguments: AdamW's first and second moments of the named parameter.
constexpr llvm::StringLiteral kExpAvgAttr = "llama.exp_avg";
constexpr llvm::StringLiteral kExpAvgSqAttr = "llama.exp_avg_sq";
/// Results: the updated parameter and moments.
constexpr llvm::StringLiteral kNewParamAttr = "llama.new_param";
constexpr llvm::StringLiteral kNewExpAvgAttr = "llama.new_exp_avg";
constexpr llvm::StringLiteral kNewExpAvgSqAttr = "llama.new_exp_avg_sq";
/// Argument: a scalar optimizer hyperparameter ("lr", "beta1", "beta2",
/// "eps", "weight_decay", "step").
constexpr llvm::StringLiteral kHyperparameterAttr = "llama.hyperparameter";

} // namespace mlir::llama

#endif // LLAMAC_DIALECT_LLAMA_LLAMAATTRNAMES_H
