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

#endif // LLAMAC_DIALECT_LLAMA_LLAMAOPS_H
