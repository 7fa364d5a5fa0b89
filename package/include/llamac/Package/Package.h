//===- Package.h - The compiled train step, as data -------------*- C++ -*-===//
//
// The contract between compiler and runtime (neither depends on the other;
// both depend on this): a manifest (JSON) and the PTX of every generated
// kernel. The manifest lists the buffers of one device arena and, per
// function of the step, the ordered launches and GEMMs over them. No host
// code is generated: the runtime interprets this plan.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_PACKAGE_PACKAGE_H
#define LLAMAC_PACKAGE_PACKAGE_H

#include "llamac/Runtime/Result.h"

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace llamac::package {

/// Version of the manifest layout; a runtime refuses other versions.
constexpr int kFormatVersion = 2;

/// Slots of the "hyperparameters" buffer (f32 [kHyperparameterCount]).
/// The optimizer reads the first seven. A package that accumulates
/// gradients reads kLossTokensSlot in @forward_backward: the tokens that the
/// loss counts over all micro-batches of the optimizer step, by which it
/// divides the summed per-token losses (the Hugging Face Trainer's
/// num_items_in_batch).
enum HyperparameterSlot {
  kLrSlot,
  kBeta1Slot,
  kBeta2Slot,
  kEpsSlot,
  kWeightDecaySlot,
  kStepSlot,
  kMaxGradNormSlot,
  kLossTokensSlot,
  kHyperparameterCount
};

/// What one optimizer step's hyperparameters buffer holds.
struct Hyperparameters {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 0;
  double maxGradNorm = 0;
  /// The optimizer step, from 1 (AdamW's bias correction).
  int64_t step = 1;
  /// Tokens the loss counts over the step's micro-batches.
  int64_t lossTokens = 0;
};

/// The hyperparameters buffer's contents, slot by slot (f32).
std::array<float, kHyperparameterCount>
packHyperparameters(const Hyperparameters &values);

/// The function of a package that accumulates gradients which zeroes the
/// gradient region (run once before the first micro-batch; @optimizer_step
/// zeroes it again after each update).
constexpr const char *kZeroGradsFunction = "zero_grads";

enum class ElementType { BF16, F32, I32, F8E4M3, F8E5M2 };
const char *elementTypeName(ElementType type);
int64_t elementBytes(ElementType type);

/// A named region of the arena. `role` says what it holds: "param",
/// "grad", "exp_avg", "exp_avg_sq" (with `param` naming the step parameter
/// and `parts` its Hugging Face tensors, concatenated along dim 0), "input"
/// (`param` = input_ids or labels), "hyperparameters", "loss", or
/// "activation"/"scratch" (reused across the step by the memory plan).
/// A package of the FP8 step (precision "fp8", delayed scaling) adds per
/// FP8 format F ("e4m3", "e5m2") four persistent f32 buffers named
/// "<role>.F", one row per quantized tensor, `parts` naming the tensors in
/// row order (the state names of llama-insert-fp8: a Hugging Face weight
/// name, `<layer>.input`, `<layer>.grad_output`; `part_rows` all 1):
/// "fp8_history" ([tensors, history length], newest first, from zeros),
/// "fp8_scale" ([tensors]) and "fp8_scale_inv" ([tensors, 4]: 16-byte rows,
/// as cuBLASLt's scale pointers must be 16-byte aligned; column 0 used),
/// both from ones (`init_f32`), and
/// "fp8_amax" ([tensors], this step's amaxes, zeroed by the scale update);
/// "fp8_copy" buffers, FP8 casts of GEMM operands placed by the memory
/// plan like activations; and (unless it accumulates gradients) per FP8
/// weight (`param`) two "fp8_weight_copy" buffers carried between steps,
/// "<param>.fp8" (the direct copy, [rows, cols]) and "<param>.fp8_t" (the
/// transposed one, per block), which @optimizer_step and
/// kFP8WeightCopiesFunction write.
struct Buffer {
  std::string name;
  std::string role;
  std::string param;
  std::vector<std::string> parts;
  /// Rows (dim 0) of each part, in order; they sum to shape[0].
  std::vector<int64_t> partRows;
  ElementType type = ElementType::BF16;
  std::vector<int64_t> shape;
  uint64_t offset = 0; ///< Bytes from the arena start (16-byte aligned).
  uint64_t bytes = 0;
  /// Contents the runtime uploads once (small constant tables, e.g. RoPE
  /// frequencies); empty for everything else.
  std::vector<float> initF32;
};

/// A device address: a buffer plus a byte offset into it, with the row
/// stride (in elements) when the operand is a matrix view.
struct Operand {
  int buffer = -1;
  uint64_t offset = 0;
  int64_t ld = 0;
};

struct Launch {
  std::string kernel;
  unsigned grid[3] = {1, 1, 1}, block[3] = {1, 1, 1};
  unsigned sharedBytes = 0;
  std::vector<Operand> args; ///< Every kernel argument is a pointer.
};

/// Row-major D = alpha op(A) op(B) + beta C (cuda::Gemm's convention; C
/// is D unless given, and has D's layout), repeated `batch` times with the
/// given element strides. FP8 operands (F8E4M3, F8E5M2; not both E5M2) need
/// the K-major layout (transposeA false, transposeB true), bf16 D and no
/// batch; they may carry device f32 scalars: the scale inverses of A and B,
/// 16-byte aligned (see cuda::Gemm).
struct Gemm {
  int64_t m = 0, n = 0, k = 0;
  bool transposeA = false, transposeB = false;
  ElementType type = ElementType::BF16;    ///< of A, and of B unless typeB
  std::optional<ElementType> typeB;        ///< of B when it differs (FP8)
  ElementType outType = ElementType::BF16; ///< of D
  float alpha = 1, beta = 0;
  Operand a, b, d;
  /// The addend when beta != 0 and it is not D (a residual); buffer -1: D.
  Operand c;
  int64_t batch = 1, strideA = 0, strideB = 0, strideD = 0;
  /// FP8 only, f32 [1] each at 16-byte aligned offsets; buffer -1: none
  /// (scale 1).
  Operand scaleInvA, scaleInvB;
};

struct Memset {
  Operand dst;
  uint64_t bytes = 0;
  uint8_t value = 0;
};

struct Step {
  enum class Kind { Launch, Gemm, Memset } kind = Kind::Launch;
  std::string label; ///< The op it implements, for error messages.
  Launch launch;
  Gemm gemm;
  Memset memset;
};

struct Function {
  std::string name;
  std::vector<Step> steps;
};

/// The package's functions: the gradients of one batch, then clipping and
/// AdamW over all of them.
constexpr const char *kForwardBackwardFunction = "forward_backward";
constexpr const char *kOptimizerStepFunction = "optimizer_step";

/// The function of an fp8 package with carried FP8 weight copies
/// ("fp8_weight_copy" buffers) that casts them from the weights and raises
/// the weights' amaxes. The forward reads the copies without casting and
/// @optimizer_step rewrites them from the weights it updates, so the runtime
/// runs it once after uploading the weights and the FP8 state (a fresh run
/// or a resumed one) and before the first @forward_backward. Each
/// @forward_backward must be followed by @optimizer_step (or this) before
/// the next one: its scale update changes the scales the copies hold, and
/// the memory plan lends each copy's memory to activations between its last
/// GEMM and @optimizer_step (the Executor refuses the wrong order).
constexpr const char *kFP8WeightCopiesFunction = "fp8_weight_copies";

struct Package {
  std::string arch = "sm_90a";
  std::string compiler;   ///< llamac version that wrote it.
  std::string configJson; ///< The model's Hugging Face config.json.
  int64_t batch = 0, seq = 0;
  std::string precision;
  /// True when @forward_backward adds its gradients to the gradient region
  /// instead of overwriting them, so that several micro-batches make one
  /// optimizer step (gradient accumulation; see kLossTokensSlot and
  /// kZeroGradsFunction). Manifests without the field do not accumulate.
  bool accumulatesGradients = false;
  /// Bytes of the one device allocation; the runtime zeroes it once.
  uint64_t arenaBytes = 0;
  std::vector<Buffer> buffers;
  std::vector<Function> functions;
  std::string ptx;

  const Function *function(const std::string &name) const;
  /// Index of the buffer called `name`, or -1.
  int bufferIndex(const std::string &name) const;
};

/// cuBLASLt's workspace, which the runtime allocates beside the arena (32
/// MiB: what cuBLAS recommends for Hopper).
constexpr uint64_t kGemmWorkspaceBytes = 32ull << 20;

/// The step's device memory by what it holds, in bytes: weights, their
/// gradients, AdamW's two moments, everything else in the arena (the
/// activations and scratch of the liveness plan at its peak, inputs,
/// padding, and the FP8 weight copies that AdamW writes for the next step,
/// which share memory with activations between their last GEMM and AdamW),
/// and the GEMM workspace. `fp8WeightCopies` (2 bytes per FP8 parameter:
/// direct and transposed) is part of `activations`' arena, not added to
/// the total.
struct MemoryUse {
  uint64_t weights = 0, gradients = 0, optimizerState = 0, activations = 0,
           workspace = 0, fp8WeightCopies = 0;
  uint64_t total() const {
    return weights + gradients + optimizerState + activations + workspace;
  }
};
MemoryUse memoryUse(const Package &package);

/// Checks every reference and bound: buffers inside the arena and aligned,
/// operands naming existing buffers and staying inside them; FP8 state
/// buffers f32 with one part (quantized tensor) per row; and that a
/// package that accumulates gradients can zero them. Errors name the field.
Status validate(const Package &package, const std::string &where);

/// Writes DIR/manifest.json and DIR/kernels.ptx, each atomically.
Status writePackage(const std::string &dir, const Package &package);
/// Reads and validates a package directory.
Result<Package> readPackage(const std::string &dir);

} // namespace llamac::package

#endif // LLAMAC_PACKAGE_PACKAGE_H
