//===- Interpreter.h - CPU reference executor of the llama dialect -*- C++ -*-//
//
// A plain, slow-but-exact executor of `llama` functions. It is the oracle for
// pass equivalence, finite-difference gradient checks and Hugging Face parity
// tests, so every op follows transformers' LlamaForCausalLM numerics: math in
// double, each result rounded to its IR element type, and the intermediate
// roundings transformers performs in the model dtype reproduced where an op
// stands for several torch ops (rms_norm, rope, swiglu).
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_REFERENCE_INTERPRETER_H
#define LLAMAC_REFERENCE_INTERPRETER_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <vector>

namespace llamac::reference {

/// A tensor held as doubles whatever its IR element type; i32 token ids are
/// exact integers. Row-major, `data.size() == numel()`.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<double> data;

  /// Number of elements: the product of `shape` (1 for a scalar).
  int64_t numel() const;
  /// A tensor of `shape` filled with zeros.
  static Tensor zeros(std::vector<int64_t> shape);
  /// A rank-0 tensor holding `value`.
  static Tensor scalar(double value);
};

/// Rounds x to the nearest value representable in `type` (f64: unchanged;
/// f32: via float; bf16 and f16: round to nearest even, saturating to inf,
/// NaN kept; other float types through APFloat's round to nearest even).
/// Integer types are returned unchanged.
double roundTo(double x, mlir::Type elementType);

/// Rounds x to the FP8 format named by `format` ("e4m3": Float8E4M3FN,
/// "e5m2": Float8E5M2) to nearest even, saturating as PTX
/// `cvt.rn.satfinite`: magnitudes past the largest finite value (infinities
/// included) become +-largest; NaN stays NaN.
double roundToFP8(double x, llvm::StringRef format);

/// The largest finite value of an FP8 format: 448 (e4m3) or 57344 (e5m2).
double fp8Max(llvm::StringRef format);

/// Transformer Engine's delayed-scaling update (llama.fp8_scale_update):
/// rolls `history` (newest first) to take `amax`, reduces it (`algo` "max":
/// the maximum, NaN propagating; "most_recent": amax), and sets `scale` to
/// f32(fp8Max / a / 2^margin), keeping the old scale when a is 0, infinite
/// or NaN.
void fp8ScaleUpdate(std::vector<double> &history, double amax, double &scale,
                    llvm::StringRef format, int64_t margin,
                    llvm::StringRef algo);

/// Runs `func` (a single block of llama ops, arith.constant and func.return)
/// on `args`. Every op computes in double and rounds each result to its IR
/// element type, so bf16 IR behaves like a bf16 program with f32-or-wider
/// accumulation. Arguments are rounded to their types on entry. If `observed`
/// is given, each Value pre-inserted as a key gets its computed tensor. Frees
/// each intermediate after its last use.
llvm::Expected<std::vector<Tensor>>
interpret(mlir::func::FuncOp func, llvm::ArrayRef<Tensor> args,
          llvm::DenseMap<mlir::Value, Tensor> *observed = nullptr);

} // namespace llamac::reference

#endif // LLAMAC_REFERENCE_INTERPRETER_H
