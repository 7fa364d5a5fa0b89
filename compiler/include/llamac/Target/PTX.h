//===- PTX.h - GPU kernels in MLIR to PTX text ------------------*- C++ -*-===//

#ifndef LLAMAC_TARGET_PTX_H
#define LLAMAC_TARGET_PTX_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/DialectRegistry.h"
#include "llvm/Support/Error.h"

#include <string>

namespace llamac {

struct PTXOptions {
  std::string chip = "sm_90a";
  std::string features = "+ptx80";
  int optLevel = 3;
};

/// Dialects, translations and conversion interfaces the lowering needs.
void registerPTXDialects(mlir::DialectRegistry &registry);

/// Lowers every `gpu.module` in `module` (kernels written with gpu, scf,
/// arith, math, memref and vector ops on statically shaped memrefs) through
/// NVVM and LLVM's NVPTX backend, and returns the PTX of each gpu.module,
/// concatenated. Kernels take bare pointers: one `.u64` parameter per memref.
/// The module is consumed (rewritten in place).
llvm::Expected<std::string> emitPTX(mlir::ModuleOp module,
                                    const PTXOptions &options = {});

} // namespace llamac

#endif // LLAMAC_TARGET_PTX_H
