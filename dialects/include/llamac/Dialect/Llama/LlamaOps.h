//===- LlamaOps.h - The llama graph dialect ---------------------*- C++ -*-===//

#ifndef LLAMAC_DIALECT_LLAMA_LLAMAOPS_H
#define LLAMAC_DIALECT_LLAMA_LLAMAOPS_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "llamac/Dialect/Llama/LlamaOpsDialect.h.inc"

#include "llamac/Dialect/Llama/LlamaInterfaces.h.inc"

#define GET_OP_CLASSES
#include "llamac/Dialect/Llama/LlamaOps.h.inc"

namespace mlir::llama {

/// RoPE frequencies f_i = theta^(-2i / head_dim), i < head_dim / 2, rescaled
/// as Llama 3.1 does when `ropeType` is "llama3" (transformers'
/// _compute_llama3_parameters). Shared by llama.rope and the fused attention
/// ops.
llvm::SmallVector<double>
ropeFrequencies(int64_t headDim, double theta, llvm::StringRef ropeType,
                double factor, double lowFreqFactor, double highFreqFactor,
                int64_t originalMaxPositionEmbeddings);

} // namespace mlir::llama

#endif // LLAMAC_DIALECT_LLAMA_LLAMAOPS_H
