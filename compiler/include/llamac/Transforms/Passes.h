//===- Passes.h - Passes over the llama dialect -----------------*- C++ -*-===//

#ifndef LLAMAC_TRANSFORMS_PASSES_H
#define LLAMAC_TRANSFORMS_PASSES_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/Pass.h"

#include <memory>

namespace mlir::llama {

#define GEN_PASS_DECL
#include "llamac/Transforms/Passes.h.inc"

std::unique_ptr<Pass> createLlamaFuseGatedMLPPass();
std::unique_ptr<Pass> createLlamaFuseNormLinearPass();
std::unique_ptr<Pass> createLlamaFuseRopeAttentionPass();
std::unique_ptr<Pass> createLlamaAutodiffPass();
std::unique_ptr<Pass> createLlamaAdamWPass();
std::unique_ptr<Pass> createLlamaInsertFP8Pass();
std::unique_ptr<Pass>
createLlamaInsertFP8Pass(const LlamaInsertFP8Options &options);

#define GEN_PASS_REGISTRATION
#include "llamac/Transforms/Passes.h.inc"

} // namespace mlir::llama

#endif // LLAMAC_TRANSFORMS_PASSES_H
