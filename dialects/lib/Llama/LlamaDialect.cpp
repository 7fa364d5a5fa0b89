//===- LlamaDialect.cpp - The llama graph dialect -------------------------===//

#include "llamac/Dialect/Llama/LlamaOps.h"

using namespace mlir;
using namespace mlir::llama;

#include "llamac/Dialect/Llama/LlamaOpsDialect.cpp.inc"

#include "llamac/Dialect/Llama/LlamaInterfaces.cpp.inc"

void LlamaDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "llamac/Dialect/Llama/LlamaOps.cpp.inc"
      >();
}
