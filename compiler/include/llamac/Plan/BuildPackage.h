//===- BuildPackage.h - The train step as a GPU package ---------*- C++ -*-===//
//
// Lowers the two functions of a fused bf16 train step (@forward_backward and
// @optimizer_step) to a package: buffers in one arena (weights, gradients and
// AdamW moments in flat regions; activations placed by liveness), generated
// kernels (compiler/lib/Kernels) and cuBLASLt GEMMs, in program order. The
// FP8 step of llama-insert-fp8 (delayed scaling) lowers too: casts into FP8
// copies, FP8 GEMMs with scale pointers, the scaling state in the arena.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_PLAN_BUILDPACKAGE_H
#define LLAMAC_PLAN_BUILDPACKAGE_H

#include "llamac/Package/Package.h"
#include "llamac/Target/PTX.h"

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/Error.h"

#include <map>
#include <vector>

namespace llamac {

/// Names of the package's fixed buffers.
constexpr const char *kHyperparametersBuffer = "hyperparameters";
/// f32 [4]: [sum of per-token losses, counted tokens, 1 / count, 0].
constexpr const char *kLossStatsBuffer = "loss_stats";
/// f32 [4]: [sum of squares of all gradients, 0, 0, 0].
constexpr const char *kGradNormBuffer = "grad_norm_sq";

struct PackageOptions {
  PTXOptions ptx;
  std::string compiler;   ///< Version string recorded in the manifest.
  std::string configJson; ///< The model's config.json, recorded too.
  int64_t batch = 0, seq = 0;
  /// Shapes of the Hugging Face tensors by name, so that the package can say
  /// how a fused parameter splits back into them.
  std::map<std::string, std::vector<int64_t>> hfShapes;
  /// Gradient accumulation (package::Package::accumulatesGradients): every
  /// write of a gradient adds to its slot (GEMMs with beta 1, the norm-weight
  /// and embedding gradients by accumulating kernels), the loss divides by
  /// the step's token count from the hyperparameters buffer, and the gradient
  /// region is zeroed by kZeroGradsFunction and at the end of
  /// @optimizer_step instead of at the start of @forward_backward.
  bool accumulateGradients = false;
};

/// Builds the package of `module` (after the train-step pipeline, bf16 or
/// fp8 with delayed scaling).
/// Errors name the op the GPU backend cannot lower yet.
llvm::Expected<package::Package> buildPackage(mlir::ModuleOp module,
                                              const PackageOptions &options);

} // namespace llamac

#endif // LLAMAC_PLAN_BUILDPACKAGE_H
