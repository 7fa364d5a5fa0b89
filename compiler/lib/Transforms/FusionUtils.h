//===- FusionUtils.h - Helpers of the llama-fuse-* passes -------*- C++ -*-===//
//
// The fusion passes rewrite the forward function before llama-autodiff. They
// recognize Linear layers over parameter arguments, and replace several
// parameter arguments by one that concatenates them along dimension 0 (named
// by llama.param, its Hugging Face tensors listed by llama.param_parts, so
// that checkpoints keep the Hugging Face layout).
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_COMPILER_LIB_TRANSFORMS_FUSIONUTILS_H
#define LLAMAC_COMPILER_LIB_TRANSFORMS_FUSIONUTILS_H

#include "llamac/Dialect/Llama/LlamaOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"

#include <string>

namespace mlir::llama::fusion {

/// `value` as an entry-block argument of its function that carries a
/// llama.param name; null otherwise.
BlockArgument paramArgument(Value value);

/// The op defining `value` if it is a Hugging Face Linear layer over a
/// parameter argument: `llama.matmul %x, %w {transpose_rhs = true}` with
/// `%w` a parameter argument; null otherwise.
MatmulOp linearOverParam(Value value);

/// The name of a parameter that concatenates parameters named `names`:
/// `P.qkv_proj.weight` for `P.q_proj.weight`, `P.k_proj.weight`,
/// `P.v_proj.weight`; `P.gate_up_proj.weight` for the gate and up
/// projections (stems of one letter are concatenated, longer ones joined by
/// `_`); the names joined by `+` when they are not all `P.<stem>_proj.weight`
/// with one prefix `P`.
std::string concatenatedParamName(ArrayRef<std::string> names);

/// Adds a parameter argument that concatenates the parameter arguments
/// `parts` along dimension 0, at the position of the first of them. Its
/// llama.param_parts lists the Hugging Face tensors of every part in order
/// (a part that is itself concatenated contributes all of its tensors).
BlockArgument addConcatenatedParam(func::FuncOp func,
                                   ArrayRef<BlockArgument> parts);

/// Erases arguments of `func` that no longer have uses.
void eraseArguments(func::FuncOp func, ArrayRef<BlockArgument> args);

/// Fails with a diagnostic if `func` is not a forward function: the fusions
/// run before llama-autodiff, on functions without llama.grad results.
LogicalResult expectForwardFunction(func::FuncOp func, StringRef passName);

/// The location of a fused op: the fused locations of the ops it replaces
/// (the model builder names each op by its Hugging Face module, so a fused
/// op's location lists what went into it).
Location fusedLocation(ArrayRef<Operation *> ops);

} // namespace mlir::llama::fusion

#endif // LLAMAC_COMPILER_LIB_TRANSFORMS_FUSIONUTILS_H
