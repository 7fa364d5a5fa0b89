//===- Interpreter.cpp - CPU reference executor of the llama dialect ------===//
//
// Each op is a plain loop nest in double. The driver rounds every result to
// its IR element type; kernels round the intermediates that transformers
// materializes in the model dtype.
//
//===----------------------------------------------------------------------===//

#include "llamac/Reference/Interpreter.h"

#include "llamac/Dialect/Llama/LlamaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Verifier.h"
#include "llvm/ADT/APFloat.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_map>

using namespace mlir;
using namespace mlir::llama;

namespace llamac::reference {

int64_t Tensor::numel() const {
  int64_t count = 1;
  for (int64_t dim : shape)
    count *= dim;
  return count;
}

Tensor Tensor::zeros(std::vector<int64_t> shape) {
  Tensor tensor;
  tensor.shape = std::move(shape);
  tensor.data.assign(tensor.numel(), 0.0);
  return tensor;
}

Tensor Tensor::scalar(double value) { return Tensor{{}, {value}}; }

/// Rounds x to nearest even in a binary format with `precision` significand
/// bits (implicit bit included), smallest normal exponent `minExponent` and
/// largest finite value `maxFinite`; beyond it the result is an infinity.
static double roundToBinary(double x, int precision, int minExponent,
                            double maxFinite) {
  if (!std::isfinite(x) || x == 0)
    return x;
  int exponent;
  std::frexp(x, &exponent); // |x| = m * 2^exponent, m in [0.5, 1)
  // The last kept bit weighs 2^quantum; subnormals share the smallest one.
  int quantum = std::max(exponent, minExponent + 1) - precision;
  double rounded = std::ldexp(std::nearbyint(std::ldexp(x, -quantum)), quantum);
  if (std::fabs(rounded) > maxFinite)
    return std::copysign(std::numeric_limits<double>::infinity(), x);
  return rounded;
}

double roundTo(double x, Type elementType) {
  auto floatType = dyn_cast<FloatType>(elementType);
  if (!floatType || floatType.isF64())
    return x;
  // The cast rounds to nearest even within float's range; beyond it, where
  // the cast is undefined, the generic path saturates to infinity.
  if (floatType.isF32())
    return std::fabs(x) <= std::numeric_limits<float>::max()
               ? double(static_cast<float>(x))
               : roundToBinary(x, 24, -126, std::numeric_limits<float>::max());
  if (floatType.isBF16())
    return roundToBinary(x, 8, -126, 0x1.FEp127);
  if (floatType.isF16())
    return roundToBinary(x, 11, -14, 65504.0);
  llvm::APFloat value(x);
  bool losesInfo;
  value.convert(floatType.getFloatSemantics(),
                llvm::APFloat::rmNearestTiesToEven, &losesInfo);
  return value.convertToDouble();
}

static const llvm::fltSemantics &fp8Semantics(llvm::StringRef format) {
  return format == "e5m2" ? llvm::APFloat::Float8E5M2()
                          : llvm::APFloat::Float8E4M3FN();
}

double fp8Max(llvm::StringRef format) {
  return llvm::APFloat::getLargest(fp8Semantics(format)).convertToDouble();
}

double roundToFP8(double x, llvm::StringRef format) {
  if (std::isnan(x))
    return x;
  // APFloat gives NaN (E4M3FN) or infinity (E5M2) past the largest value;
  // satfinite clamps first, which rounds the same below it.
  double largest = fp8Max(format);
  x = std::clamp(x, -largest, largest);
  llvm::APFloat value(x);
  bool losesInfo;
  value.convert(fp8Semantics(format), llvm::APFloat::rmNearestTiesToEven,
                &losesInfo);
  return value.convertToDouble();
}

} // namespace llamac::reference

using namespace llamac::reference;

using Results = llvm::Expected<std::vector<Tensor>>;

static llvm::Error fail(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

static std::string shapeString(llvm::ArrayRef<int64_t> shape) {
  std::string text = "[";
  for (auto [index, dim] : llvm::enumerate(shape))
    text += (index ? ", " : "") + std::to_string(dim);
  return text + "]";
}

static Type elementTypeOf(Value value) {
  return cast<ShapedType>(value.getType()).getElementType();
}

static void roundAll(Tensor &tensor, Type elementType) {
  if (elementType.isF64())
    return;
  for (double &x : tensor.data)
    x = roundTo(x, elementType);
}

static Results one(Tensor tensor) {
  std::vector<Tensor> results;
  results.push_back(std::move(tensor));
  return results;
}

/// Reads an id or label: an exact integer in [0, limit).
static llvm::Expected<int64_t> tokenAt(Operation *op, const Tensor &ids,
                                       int64_t row, int64_t limit) {
  double id = ids.data[row];
  if (id >= 0 && id < double(limit) && id == std::floor(id))
    return int64_t(id);
  std::string message;
  llvm::raw_string_ostream os(message);
  os << op->getName() << ": id " << llvm::format("%g", id) << " at row " << row
     << " is outside [0, " << limit << ")";
  return fail(message);
}

static double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

/// result[t, :] = table[ids[t], :].
static Results embedding(EmbeddingOp op, const Tensor &table,
                         const Tensor &ids) {
  int64_t vocab = table.shape[0], hidden = table.shape[1];
  int64_t rows = ids.shape[0];
  Tensor out = Tensor::zeros({rows, hidden});
  for (int64_t t = 0; t < rows; ++t) {
    llvm::Expected<int64_t> id = tokenAt(op, ids, t, vocab);
    if (!id)
      return id.takeError();
    std::copy_n(&table.data[*id * hidden], hidden, &out.data[t * hidden]);
  }
  return one(std::move(out));
}

/// result[v, :] = sum over t with ids[t] == v of grad[t, :].
static Results embeddingGrad(EmbeddingGradOp op, const Tensor &grad,
                             const Tensor &ids) {
  auto type = cast<RankedTensorType>(op.getResult().getType());
  int64_t vocab = type.getDimSize(0), hidden = grad.shape[1];
  Tensor out = Tensor::zeros({vocab, hidden});
  for (int64_t t = 0; t < grad.shape[0]; ++t) {
    llvm::Expected<int64_t> id = tokenAt(op, ids, t, vocab);
    if (!id)
      return id.takeError();
    for (int64_t i = 0; i < hidden; ++i)
      out.data[*id * hidden + i] += grad.data[t * hidden + i];
  }
  return one(std::move(out));
}

//===----------------------------------------------------------------------===//
// RMSNorm
//===----------------------------------------------------------------------===//

/// rsqrt(mean(x^2) + eps) of one row.
static double inverseRms(const double *x, int64_t width, double eps) {
  double sumSquares = 0;
  for (int64_t i = 0; i < width; ++i)
    sumSquares += x[i] * x[i];
  return 1 / std::sqrt(sumSquares / double(width) + eps);
}

/// normed = x * rsqrt(mean(x^2) + eps), rounded to the element type, then
/// result = weight * normed (LlamaRMSNorm's two steps).
static Tensor rmsNormKernel(const Tensor &x, const Tensor &weight, double eps,
                            Type type) {
  int64_t rows = x.shape[0], width = x.shape[1];
  Tensor out = Tensor::zeros(x.shape);
  for (int64_t t = 0; t < rows; ++t) {
    const double *row = &x.data[t * width];
    double r = inverseRms(row, width, eps);
    for (int64_t i = 0; i < width; ++i)
      out.data[t * width + i] = weight.data[i] * roundTo(row[i] * r, type);
  }
  return out;
}

static Results rmsNorm(RMSNormOp op, const Tensor &x, const Tensor &weight) {
  return one(rmsNormKernel(x, weight, op.getEps().convertToDouble(),
                           elementTypeOf(op.getResult())));
}

/// With r = rsqrt(mean(x^2) + eps) per row and g = grad * weight:
/// input_grad = r (g - x r^2 mean(g x)), weight_grad[i] = sum_t grad x r.
static std::vector<Tensor> rmsNormGradKernel(const Tensor &grad,
                                             const Tensor &x,
                                             const Tensor &weight, double eps) {
  int64_t rows = x.shape[0], width = x.shape[1];
  Tensor inputGrad = Tensor::zeros(x.shape);
  Tensor weightGrad = Tensor::zeros({width});
  for (int64_t t = 0; t < rows; ++t) {
    const double *row = &x.data[t * width];
    const double *dy = &grad.data[t * width];
    double r = inverseRms(row, width, eps);
    double meanGx = 0;
    for (int64_t i = 0; i < width; ++i)
      meanGx += dy[i] * weight.data[i] * row[i];
    meanGx /= double(width);
    for (int64_t i = 0; i < width; ++i) {
      inputGrad.data[t * width + i] =
          r * (dy[i] * weight.data[i] - row[i] * r * r * meanGx);
      weightGrad.data[i] += dy[i] * row[i] * r;
    }
  }
  std::vector<Tensor> results;
  results.push_back(std::move(inputGrad));
  results.push_back(std::move(weightGrad));
  return results;
}

static Results rmsNormGrad(RMSNormGradOp op, const Tensor &grad,
                           const Tensor &x, const Tensor &weight) {
  return rmsNormGradKernel(grad, x, weight, op.getEps().convertToDouble());
}

//===----------------------------------------------------------------------===//
// Matmul
//===----------------------------------------------------------------------===//

static Tensor transposed(const Tensor &t) {
  int64_t rows = t.shape[0], cols = t.shape[1];
  Tensor out = Tensor::zeros({cols, rows});
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      out.data[j * rows + i] = t.data[i * cols + j];
  return out;
}

/// result[i, j] = sum_k op(lhs)[i, k] op(rhs)[k, j], accumulated in double.
/// Operands are first made row-major [M, K] and [K, N]; the product runs
/// i-k-j over blocks of rows and columns so that a block of the result stays
/// in cache while rows of the right operand stream through.
static Tensor matmulKernel(const Tensor &lhs, const Tensor &rhs,
                           bool transposeLhs, bool transposeRhs) {
  Tensor lhsT, rhsT;
  const Tensor *a = &lhs, *b = &rhs;
  if (transposeLhs)
    a = &(lhsT = transposed(lhs));
  if (transposeRhs)
    b = &(rhsT = transposed(rhs));
  int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
  Tensor c = Tensor::zeros({m, n});
  constexpr int64_t kRowBlock = 4, kColBlock = 512;
  for (int64_t i0 = 0; i0 < m; i0 += kRowBlock) {
    int64_t i1 = std::min(i0 + kRowBlock, m);
    for (int64_t j0 = 0; j0 < n; j0 += kColBlock) {
      int64_t j1 = std::min(j0 + kColBlock, n);
      for (int64_t p = 0; p < k; ++p) {
        const double *bRow = &b->data[p * n];
        for (int64_t i = i0; i < i1; ++i) {
          double aip = a->data[i * k + p];
          double *cRow = &c.data[i * n];
          for (int64_t j = j0; j < j1; ++j)
            cRow[j] += aip * bRow[j];
        }
      }
    }
  }
  return c;
}

static Results matmul(MatmulOp op, const Tensor &lhs, const Tensor &rhs) {
  return one(
      matmulKernel(lhs, rhs, op.getTransposeLhs(), op.getTransposeRhs()));
}

//===----------------------------------------------------------------------===//
// RoPE
//===----------------------------------------------------------------------===//

/// Per row t (position p = positions[t] when given, else t mod seq_len),
/// head and i < h = head_dim / 2, with angle a = p f_i (negated when
/// `inverse`):
///   out[i]   = x[i] cos a - x[i+h] sin a,
///   out[i+h] = x[i+h] cos a + x[i] sin a.
/// As transformers: the angle is f32 unless the IR is f64, cos and sin are
/// rounded to the element type, and so is each product before the sum.
static Tensor ropeKernel(const Tensor &x, llvm::ArrayRef<double> frequencies,
                         int64_t heads, int64_t dim, int64_t seqLen,
                         const Tensor *positions, bool inverse, Type type) {
  int64_t half = dim / 2;
  double sign = inverse ? -1 : 1;
  // cos and sin of each position that occurs, computed once.
  std::unordered_map<int64_t, size_t> tableRow;
  std::vector<double> cosines, sines;
  auto table = [&](int64_t p) {
    auto [entry, added] = tableRow.try_emplace(p, cosines.size());
    for (int64_t i = 0; added && i < half; ++i) {
      double angle =
          type.isF64() ? double(p) * frequencies[i]
                       : double(float(p) * static_cast<float>(frequencies[i]));
      cosines.push_back(roundTo(std::cos(angle), type));
      sines.push_back(roundTo(sign * std::sin(angle), type));
    }
    return entry->second;
  };
  int64_t rows = x.shape[0], width = x.shape[1];
  Tensor out = Tensor::zeros(x.shape);
  for (int64_t t = 0; t < rows; ++t) {
    size_t at = table(positions ? int64_t(positions->data[t]) : t % seqLen);
    const double *c = &cosines[at];
    const double *s = &sines[at];
    for (int64_t n = 0; n < heads; ++n) {
      const double *in = &x.data[t * width + n * dim];
      double *o = &out.data[t * width + n * dim];
      for (int64_t i = 0; i < half; ++i) {
        o[i] = roundTo(in[i] * c[i], type) - roundTo(in[i + half] * s[i], type);
        o[i + half] =
            roundTo(in[i + half] * c[i], type) + roundTo(in[i] * s[i], type);
      }
    }
  }
  return out;
}

static Results rope(RoPEOp op, const Tensor &x, const Tensor *positions) {
  return one(ropeKernel(x, op.getFrequencies(), op.getNumHeads(),
                        op.getHeadDim(), op.getSeqLen(), positions,
                        op.getInverse(), elementTypeOf(op.getResult())));
}

//===----------------------------------------------------------------------===//
// Attention
//===----------------------------------------------------------------------===//

namespace {

/// The head layout and mask shared by attention and attention_grad.
struct AttentionLayout {
  int64_t heads, kvHeads, dim, seqLen, rows;
  double scale;
  /// Each row's position within its packed data row, or null (causal).
  const Tensor *positions;

  template <typename AttentionLikeOp>
  AttentionLayout(AttentionLikeOp op, const Tensor &query,
                  const Tensor *positions)
      : heads(op.getNumHeads()), kvHeads(op.getNumKvHeads()),
        dim(op.getHeadDim()), seqLen(op.getSeqLen()), rows(query.shape[0]),
        scale(op.getScale().convertToDouble()), positions(positions) {}

  /// The first key that query i of the sequence starting at row `first`
  /// sees: 0, or with positions i - min(max(positions[first + i], 0), i).
  int64_t windowStart(int64_t first, int64_t i) const {
    if (!positions)
      return 0;
    int64_t p = int64_t(positions->data[first + i]);
    return i - std::clamp<int64_t>(p, 0, i);
  }

  int64_t queryWidth() const { return heads * dim; }
  int64_t kvWidth() const { return kvHeads * dim; }
  /// Offset of query head n's slice within a query row.
  int64_t queryOffset(int64_t n) const { return n * dim; }
  /// Offset of the kv head that query head n reads within a key/value row.
  int64_t kvOffset(int64_t n) const { return n / (heads / kvHeads) * dim; }
};

} // namespace

/// Fills probs[start..i] with softmax_j(scale * q_t . k_{first+j}) over the
/// keys j in [start, i] for the query row t = first + i and query head n: the
/// masked row of one head, start = l.windowStart(first, i).
static void attentionRow(const AttentionLayout &l, const Tensor &query,
                         const Tensor &key, int64_t first, int64_t i, int64_t n,
                         std::vector<double> &probs) {
  const double *q =
      &query.data[(first + i) * l.queryWidth() + l.queryOffset(n)];
  double maxScore = -std::numeric_limits<double>::infinity();
  const int64_t start = l.windowStart(first, i);
  for (int64_t j = start; j <= i; ++j) {
    const double *k = &key.data[(first + j) * l.kvWidth() + l.kvOffset(n)];
    double dot = 0;
    for (int64_t c = 0; c < l.dim; ++c)
      dot += q[c] * k[c];
    probs[j] = l.scale * dot;
    maxScore = std::max(maxScore, probs[j]);
  }
  double sum = 0;
  for (int64_t j = start; j <= i; ++j)
    sum += probs[j] = std::exp(probs[j] - maxScore);
  for (int64_t j = start; j <= i; ++j)
    probs[j] /= sum;
}

/// Per sequence and query head n (kv head n / (num_heads / num_kv_heads)):
/// P = softmax(scale q k^T + mask), out = P v; the mask is causal, or with
/// `positions` keeps each query within its packed data row.
template <typename AttentionLikeOp>
static Results attention(AttentionLikeOp op, const Tensor &query,
                         const Tensor &key, const Tensor &value,
                         const Tensor *positions) {
  AttentionLayout l(op, query, positions);
  Tensor out = Tensor::zeros(query.shape);
  std::vector<double> probs(l.seqLen);
  for (int64_t first = 0; first < l.rows; first += l.seqLen) {
    for (int64_t n = 0; n < l.heads; ++n) {
      for (int64_t i = 0; i < l.seqLen; ++i) {
        attentionRow(l, query, key, first, i, n, probs);
        double *o = &out.data[(first + i) * l.queryWidth() + l.queryOffset(n)];
        for (int64_t j = l.windowStart(first, i); j <= i; ++j) {
          const double *v =
              &value.data[(first + j) * l.kvWidth() + l.kvOffset(n)];
          for (int64_t c = 0; c < l.dim; ++c)
            o[c] += probs[j] * v[c];
        }
      }
    }
  }
  return one(std::move(out));
}

/// With P recomputed per head and dP = grad v^T: value_grad = P^T grad,
/// dS = P (dP - rowsum(dP P)), query_grad = scale dS k,
/// key_grad = scale dS^T q; a shared kv head sums over its query heads.
template <typename AttentionLikeOp>
static Results attentionGrad(AttentionLikeOp op, const Tensor &grad,
                             const Tensor &query, const Tensor &key,
                             const Tensor &value, const Tensor *positions) {
  AttentionLayout l(op, query, positions);
  Tensor queryGrad = Tensor::zeros(query.shape);
  Tensor keyGrad = Tensor::zeros(key.shape);
  Tensor valueGrad = Tensor::zeros(value.shape);
  std::vector<double> probs(l.seqLen), dProbs(l.seqLen);
  for (int64_t first = 0; first < l.rows; first += l.seqLen) {
    for (int64_t n = 0; n < l.heads; ++n) {
      for (int64_t i = 0; i < l.seqLen; ++i) {
        attentionRow(l, query, key, first, i, n, probs);
        int64_t qIndex = (first + i) * l.queryWidth() + l.queryOffset(n);
        const double *dy = &grad.data[qIndex];
        const double *q = &query.data[qIndex];
        double *dq = &queryGrad.data[qIndex];
        double rowSum = 0;
        const int64_t start = l.windowStart(first, i);
        for (int64_t j = start; j <= i; ++j) {
          int64_t kvIndex = (first + j) * l.kvWidth() + l.kvOffset(n);
          const double *v = &value.data[kvIndex];
          double *dv = &valueGrad.data[kvIndex];
          double dot = 0;
          for (int64_t c = 0; c < l.dim; ++c) {
            dot += dy[c] * v[c];
            dv[c] += probs[j] * dy[c];
          }
          dProbs[j] = dot;
          rowSum += dot * probs[j];
        }
        for (int64_t j = start; j <= i; ++j) {
          int64_t kvIndex = (first + j) * l.kvWidth() + l.kvOffset(n);
          const double *k = &key.data[kvIndex];
          double *dk = &keyGrad.data[kvIndex];
          double dScore = l.scale * probs[j] * (dProbs[j] - rowSum);
          for (int64_t c = 0; c < l.dim; ++c) {
            dq[c] += dScore * k[c];
            dk[c] += dScore * q[c];
          }
        }
      }
    }
  }
  std::vector<Tensor> results;
  results.push_back(std::move(queryGrad));
  results.push_back(std::move(keyGrad));
  results.push_back(std::move(valueGrad));
  return results;
}

//===----------------------------------------------------------------------===//
// SwiGLU, Add
//===----------------------------------------------------------------------===//

/// silu(gate) = gate * sigmoid(gate), rounded to the element type (it is
/// transformers' act_fn output), then result = silu(gate) * up.
static Tensor swigluKernel(const Tensor &gate, const Tensor &up, Type type) {
  Tensor out = Tensor::zeros(gate.shape);
  for (size_t i = 0; i < out.data.size(); ++i)
    out.data[i] =
        roundTo(gate.data[i] * sigmoid(gate.data[i]), type) * up.data[i];
  return out;
}

static Results swiglu(SwiGLUOp op, const Tensor &gate, const Tensor &up) {
  return one(swigluKernel(gate, up, elementTypeOf(op.getResult())));
}

/// With s = sigmoid(gate): up_grad = grad gate s,
/// gate_grad = grad up s (1 + gate (1 - s)).
static Results swigluGrad(const Tensor &grad, const Tensor &gate,
                          const Tensor &up) {
  Tensor gateGrad = Tensor::zeros(gate.shape), upGrad = Tensor::zeros(up.shape);
  for (size_t i = 0; i < grad.data.size(); ++i) {
    double g = gate.data[i], s = sigmoid(g);
    upGrad.data[i] = grad.data[i] * g * s;
    gateGrad.data[i] = grad.data[i] * up.data[i] * s * (1 + g * (1 - s));
  }
  std::vector<Tensor> results;
  results.push_back(std::move(gateGrad));
  results.push_back(std::move(upGrad));
  return results;
}

/// result = lhs + rhs.
static Results add(const Tensor &lhs, const Tensor &rhs) {
  Tensor out = Tensor::zeros(lhs.shape);
  for (size_t i = 0; i < out.data.size(); ++i)
    out.data[i] = lhs.data[i] + rhs.data[i];
  return one(std::move(out));
}

//===----------------------------------------------------------------------===//
// Cross entropy
//===----------------------------------------------------------------------===//

/// The target of each row under the shifted loss, -1 when the row does not
/// count: position p < seq_len - 1 predicts labels[t + 1] unless it is -100.
static llvm::Expected<std::vector<int64_t>> shiftedTargets(Operation *op,
                                                           const Tensor &labels,
                                                           int64_t seqLen,
                                                           int64_t vocab) {
  int64_t rows = labels.shape[0];
  std::vector<int64_t> targets(rows, -1);
  for (int64_t t = 0; t < rows; ++t) {
    if (t % seqLen == seqLen - 1 || labels.data[t + 1] == -100)
      continue;
    llvm::Expected<int64_t> label = tokenAt(op, labels, t + 1, vocab);
    if (!label)
      return label.takeError();
    targets[t] = *label;
  }
  return targets;
}

/// log(sum_i exp(x_i)), shifted by the maximum.
static double logSumExp(const double *x, int64_t width) {
  double maxValue = *std::max_element(x, x + width);
  double sum = 0;
  for (int64_t i = 0; i < width; ++i)
    sum += std::exp(x[i] - maxValue);
  return maxValue + std::log(sum);
}

/// loss = mean over counted rows t of logsumexp(logits[t]) - logits[t, y_t]
/// (0 when no row counts).
static Results crossEntropy(CrossEntropyOp op, const Tensor &logits,
                            const Tensor &labels) {
  int64_t vocab = logits.shape[1];
  llvm::Expected<std::vector<int64_t>> targets =
      shiftedTargets(op, labels, op.getSeqLen(), vocab);
  if (!targets)
    return targets.takeError();
  double total = 0;
  int64_t count = 0;
  for (auto [t, target] : llvm::enumerate(*targets)) {
    if (target < 0)
      continue;
    const double *row = &logits.data[t * vocab];
    total += logSumExp(row, vocab) - row[target];
    ++count;
  }
  return one(Tensor::scalar(count ? total / double(count) : 0.0));
}

/// For a counted row with target y:
/// result[t, :] = grad (softmax(logits[t]) - onehot(y)) / count; zeros
/// elsewhere.
static Results crossEntropyGrad(CrossEntropyGradOp op, const Tensor &grad,
                                const Tensor &logits, const Tensor &labels) {
  int64_t vocab = logits.shape[1];
  llvm::Expected<std::vector<int64_t>> targets =
      shiftedTargets(op, labels, op.getSeqLen(), vocab);
  if (!targets)
    return targets.takeError();
  int64_t count = llvm::count_if(*targets, [](int64_t y) { return y >= 0; });
  Tensor out = Tensor::zeros(logits.shape);
  for (auto [t, target] : llvm::enumerate(*targets)) {
    if (target < 0)
      continue;
    const double *row = &logits.data[t * vocab];
    double *o = &out.data[t * vocab];
    double lse = logSumExp(row, vocab), weight = grad.data[0] / double(count);
    for (int64_t i = 0; i < vocab; ++i)
      o[i] = weight * std::exp(row[i] - lse);
    o[target] -= weight;
  }
  return one(std::move(out));
}

//===----------------------------------------------------------------------===//
// AdamW
//===----------------------------------------------------------------------===//

/// torch.optim.AdamW (amsgrad off), hyperparameters from rank-0 operands:
///   g  = grad grad_scale,  p  = param (1 - lr weight_decay)
///   m' = beta1 m + (1 - beta1) g,  v' = beta2 v + (1 - beta2) g^2
///   new_param = p - lr / (1 - beta1^step) m'
///                   / (sqrt(v') / sqrt(1 - beta2^step) + eps).
static Results adamw(llvm::ArrayRef<const Tensor *> in) {
  const Tensor &param = *in[0], &grad = *in[1], &m = *in[2], &v = *in[3];
  double lr = in[4]->data[0], beta1 = in[5]->data[0], beta2 = in[6]->data[0];
  double eps = in[7]->data[0], weightDecay = in[8]->data[0];
  double step = in[9]->data[0], gradScale = in[10]->data[0];
  double stepSize = lr / (1 - std::pow(beta1, step));
  double correction2Sqrt = std::sqrt(1 - std::pow(beta2, step));
  Tensor newParam = Tensor::zeros(param.shape);
  Tensor newM = Tensor::zeros(param.shape), newV = Tensor::zeros(param.shape);
  for (size_t i = 0; i < param.data.size(); ++i) {
    double g = grad.data[i] * gradScale;
    newM.data[i] = beta1 * m.data[i] + (1 - beta1) * g;
    newV.data[i] = beta2 * v.data[i] + (1 - beta2) * g * g;
    double denom = std::sqrt(newV.data[i]) / correction2Sqrt + eps;
    newParam.data[i] = param.data[i] * (1 - lr * weightDecay) -
                       stepSize * newM.data[i] / denom;
  }
  std::vector<Tensor> results;
  results.push_back(std::move(newParam));
  results.push_back(std::move(newM));
  results.push_back(std::move(newV));
  return results;
}

/// sqrt of the sum of squares of every element of every operand.
static Results globalNorm(llvm::ArrayRef<const Tensor *> in) {
  double sum = 0;
  for (const Tensor *tensor : in)
    for (double x : tensor->data)
      sum += x * x;
  return one(Tensor::scalar(std::sqrt(sum)));
}

/// torch.nn.utils.clip_grad_norm_'s factor: min(max_norm / (norm + 1e-6), 1)
/// (NaN stays NaN), or 1 when max_norm <= 0.
static Results clipScale(const Tensor &norm, const Tensor &maxNorm) {
  double limit = maxNorm.data[0];
  if (!(limit > 0))
    return one(Tensor::scalar(1.0));
  double coef = limit / (norm.data[0] + 1e-6);
  return one(Tensor::scalar(coef < 1 || std::isnan(coef) ? coef : 1.0));
}

//===----------------------------------------------------------------------===//
// FP8
//===----------------------------------------------------------------------===//

/// (fp8_max / amax) / 2^margin, or `fallback` when amax is 0 or not finite
/// (Transformer Engine's scale computation).
static double fp8ScaleFrom(double amax, llvm::StringRef format, int64_t margin,
                           double fallback) {
  if (!(amax > 0) || !std::isfinite(amax))
    return fallback;
  return double(float(fp8Max(format) / amax / std::ldexp(1.0, int(margin))));
}

/// Quantizes `count` values from `x` into `out` as one tensor of
/// llama.fp8_quantize: with `scale` (delayed scaling) or scaled from their
/// own amax (current scaling), the dequantized values rounded to `type`.
/// Returns the amax (f32; NaN if any value is NaN).
static double quantizeBlock(const double *x, double *out, size_t count,
                            llvm::StringRef format, int64_t margin,
                            const Tensor *scale, Type type) {
  double amax = 0;
  for (size_t i = 0; i < count; ++i)
    if (std::isnan(x[i]) || std::isnan(amax))
      amax = std::numeric_limits<double>::quiet_NaN();
    else
      amax = std::max(amax, std::fabs(x[i]));
  amax = double(float(amax));
  double s = scale ? scale->data[0] : fp8ScaleFrom(amax, format, margin, 1.0);
  for (size_t i = 0; i < count; ++i)
    out[i] = roundTo(roundToFP8(double(float(x[i] * s)), format) / s, type);
  return amax;
}

/// Each row block quantized with its own scale and amax.
static Results fp8Quantize(FP8QuantizeOp op,
                           llvm::ArrayRef<const Tensor *> in) {
  const Tensor &x = *in[0];
  llvm::SmallVector<int64_t> blocks = op.getBlockRows();
  size_t rowSize = x.data.size() / size_t(llvm::accumulate(blocks, 0));
  std::vector<Tensor> results(1, Tensor::zeros(x.shape));
  size_t offset = 0;
  for (auto [index, rows] : llvm::enumerate(blocks)) {
    size_t count = size_t(rows) * rowSize;
    const Tensor *scale = in.size() > 1 ? in[1 + index] : nullptr;
    results.push_back(Tensor::scalar(quantizeBlock(
        &x.data[offset], &results[0].data[offset], count, op.getFormat(),
        op.getMargin(), scale, elementTypeOf(op.getResult()))));
    offset += count;
  }
  return results;
}

void llamac::reference::fp8ScaleUpdate(std::vector<double> &history,
                                       double amax, double &scale,
                                       llvm::StringRef format, int64_t margin,
                                       llvm::StringRef algo) {
  std::copy_backward(history.begin(), history.end() - 1, history.end());
  history[0] = amax;
  double a = amax;
  if (algo == "max")
    for (double v : history)
      a = std::isnan(v) || std::isnan(a) ? v + a : std::max(a, v);
  scale = fp8ScaleFrom(a, format, margin, scale);
}

static Results fp8ScaleUpdate(FP8ScaleUpdateOp op, const Tensor &history,
                              const Tensor &amax, const Tensor &scale) {
  Tensor newHistory = history;
  double newScale = scale.data[0];
  fp8ScaleUpdate(newHistory.data, amax.data[0], newScale, op.getFormat(),
                 op.getMargin(), op.getAmaxComputeAlgo());
  std::vector<Tensor> results;
  results.push_back(std::move(newHistory));
  results.push_back(Tensor::scalar(newScale));
  return results;
}

namespace {

/// The FP8 quantization of the GEMM operands internal to a fused op (see
/// `fp8_formats` in LlamaOps.td); the identity when the op has none.
class FusedQuantizer {
public:
  template <typename FusedOp>
  FusedQuantizer(FusedOp op, llvm::ArrayRef<const Tensor *> in)
      : formats(op.getFp8Formats()), margin(op.getFp8Margin()),
        scales(in.take_back(op.getFp8Scales().size())),
        amaxes(formats ? formats->size() : 0) {}

  /// Internal operand `k` (format fp8_formats[k]) as the GEMM reads it.
  Tensor operator()(size_t k, const Tensor &x, Type type) {
    if (!formats)
      return x;
    Tensor out = Tensor::zeros(x.shape);
    amaxes[k] =
        quantizeBlock(x.data.data(), out.data.data(), x.data.size(),
                      cast<StringAttr>((*formats)[k]).getValue(), margin,
                      scales.empty() ? nullptr : scales[k], type);
    return out;
  }

  /// Appends the amaxes: the op's last results.
  void appendAmaxes(std::vector<Tensor> &results) const {
    for (double amax : amaxes)
      results.push_back(Tensor::scalar(amax));
  }

private:
  std::optional<ArrayAttr> formats;
  int64_t margin;
  llvm::ArrayRef<const Tensor *> scales;
  std::vector<double> amaxes;
};

} // namespace

//===----------------------------------------------------------------------===//
// Fused ops
//===----------------------------------------------------------------------===//
//
// Each fused op composes the kernels above and rounds every intermediate the
// unfused ops would have rounded (a result of theirs), so that a fused
// forward computes the same values as the ops it replaces. The backward ops
// sum the projections' data gradients inside one GEMM instead of by adds.

static Tensor rounded(Tensor tensor, Type elementType) {
  roundAll(tensor, elementType);
  return tensor;
}

/// Columns [begin, begin + width) of a [T, N] tensor.
static Tensor columns(const Tensor &tensor, int64_t begin, int64_t width) {
  int64_t rows = tensor.shape[0], stride = tensor.shape[1];
  Tensor out = Tensor::zeros({rows, width});
  for (int64_t t = 0; t < rows; ++t)
    std::copy_n(&tensor.data[t * stride + begin], width, &out.data[t * width]);
  return out;
}

/// [T, N_0], [T, N_1], ... side by side: [T, N_0 + N_1 + ...].
static Tensor concatColumns(llvm::ArrayRef<const Tensor *> parts) {
  int64_t rows = parts.front()->shape[0], width = 0;
  for (const Tensor *part : parts)
    width += part->shape[1];
  Tensor out = Tensor::zeros({rows, width});
  int64_t offset = 0;
  for (const Tensor *part : parts) {
    int64_t partWidth = part->shape[1];
    for (int64_t t = 0; t < rows; ++t)
      std::copy_n(&part->data[t * partWidth], partWidth,
                  &out.data[t * width + offset]);
    offset += partWidth;
  }
  return out;
}

/// The left operand of a fused GEMM: rms_norm(x) rounded to the element type
/// when there is a norm weight, x itself otherwise.
static Tensor gemmInput(const Tensor &x, const Tensor *normWeight, double eps,
                        Type type) {
  if (!normWeight)
    return x;
  return rounded(rmsNormKernel(x, *normWeight, eps, type), type);
}

/// y = rms_norm(x) W^T, returned as column slices of the result widths; with
/// FP8, the normalized input quantized first and its amax last.
static Results normMatmul(NormMatmulOp op, llvm::ArrayRef<const Tensor *> in) {
  const Tensor &x = *in[0], &normWeight = *in[1], &weight = *in[2];
  Type type = elementTypeOf(op.getInput());
  FusedQuantizer quantize(op, in);
  Tensor xn = quantize(
      0, gemmInput(x, &normWeight, op.getEps().convertToDouble(), type), type);
  Tensor y = matmulKernel(xn, weight, /*transposeLhs=*/false,
                          /*transposeRhs=*/true);
  std::vector<Tensor> results;
  int64_t offset = 0;
  for (Value output : op.getOutputs()) {
    int64_t width = cast<ShapedType>(output.getType()).getDimSize(1);
    results.push_back(columns(y, offset, width));
    offset += width;
  }
  quantize.appendAmaxes(results);
  return results;
}

/// dY = [grads...]: weight_grad = dY^T xn, dxn = dY W, then the norm's
/// backward.
static Results normMatmulGrad(NormMatmulGradOp op,
                              llvm::ArrayRef<const Tensor *> in) {
  size_t count = op.getGrads().size();
  const Tensor &x = *in[count], &normWeight = *in[count + 1];
  const Tensor &weight = *in[count + 2];
  Type type = elementTypeOf(op.getInput());
  double eps = op.getEps().convertToDouble();
  FusedQuantizer quantize(op, in);
  Tensor dy = concatColumns(in.take_front(count));
  Tensor weightGrad = matmulKernel(
      dy, quantize(0, gemmInput(x, &normWeight, eps, type), type), true, false);
  Tensor dxn = rounded(matmulKernel(dy, weight, false, false), type);
  std::vector<Tensor> results = rmsNormGradKernel(dxn, x, normWeight, eps);
  results.push_back(std::move(weightGrad));
  quantize.appendAmaxes(results);
  return results;
}

/// gate_up = xn W^T (rounded), result = swiglu(gate_up[:, :F], gate_up[:, F:]).
static Results gatedMLP(GatedMLPOp op, llvm::ArrayRef<const Tensor *> in) {
  Type type = elementTypeOf(op.getResult());
  const Tensor &x = *in[0], &weight = *in[1];
  const Tensor *normWeight = op.getNormWeight() ? in[2] : nullptr;
  double eps = op.getEps() ? op.getEps()->convertToDouble() : 0;
  FusedQuantizer quantize(op, in);
  Tensor gateUp = rounded(
      matmulKernel(quantize(0, gemmInput(x, normWeight, eps, type), type),
                   weight, false, true),
      type);
  int64_t width = weight.shape[0] / 2;
  std::vector<Tensor> results;
  results.push_back(swigluKernel(columns(gateUp, 0, width),
                                 columns(gateUp, width, width), type));
  results.push_back(std::move(gateUp));
  quantize.appendAmaxes(results);
  return results;
}

/// dGU = swiglu_grad (rounded), weight_grad = dGU^T xn, dxn = dGU W, then the
/// norm's backward if there is a norm. With FP8, xn, dgate and dup are
/// quantized, each as a tensor of its own.
static Results gatedMLPGrad(GatedMLPGradOp op,
                            llvm::ArrayRef<const Tensor *> in) {
  Type type = elementTypeOf(op.getInputGrad());
  const Tensor &grad = *in[0], &x = *in[1], &gateUp = *in[2];
  const Tensor &weight = *in[3];
  const Tensor *normWeight = op.getNormWeight() ? in[4] : nullptr;
  double eps = op.getEps() ? op.getEps()->convertToDouble() : 0;
  FusedQuantizer quantize(op, in);
  int64_t width = weight.shape[0] / 2;
  std::vector<Tensor> halves = llvm::cantFail(swigluGrad(
      grad, columns(gateUp, 0, width), columns(gateUp, width, width)));
  Tensor xn = quantize(0, gemmInput(x, normWeight, eps, type), type);
  Tensor dGate = quantize(1, rounded(std::move(halves[0]), type), type);
  Tensor dUp = quantize(2, rounded(std::move(halves[1]), type), type);
  Tensor dGateUp = concatColumns({&dGate, &dUp});
  Tensor weightGrad = matmulKernel(dGateUp, xn, true, false);
  Tensor dxn = matmulKernel(dGateUp, weight, false, false);
  std::vector<Tensor> results;
  if (!normWeight) {
    results.push_back(std::move(dxn));
    results.push_back(std::move(weightGrad));
  } else {
    std::vector<Tensor> norm =
        rmsNormGradKernel(rounded(std::move(dxn), type), x, *normWeight, eps);
    results.push_back(std::move(norm[0]));
    results.push_back(std::move(weightGrad));
    results.push_back(std::move(norm[1]));
  }
  quantize.appendAmaxes(results);
  return results;
}

/// rope(x) for the query (num_heads heads) or the key (num_kv_heads heads)
/// of a fused attention op, or its inverse; rounded to the element type.
template <typename RopeAttentionLikeOp>
static Tensor rotate(RopeAttentionLikeOp op, const Tensor &x,
                     const Tensor *positions, bool isQuery, bool inverse,
                     Type type) {
  return rounded(ropeKernel(x, op.getFrequencies(),
                            isQuery ? op.getNumHeads() : op.getNumKvHeads(),
                            op.getHeadDim(), op.getSeqLen(), positions, inverse,
                            type),
                 type);
}

/// attention(rope(q), rope(k), v).
static Results ropeAttention(RopeAttentionOp op, const Tensor &query,
                             const Tensor &key, const Tensor &value,
                             const Tensor *positions) {
  Type type = elementTypeOf(op.getResult());
  return attention(op, rotate(op, query, positions, true, false, type),
                   rotate(op, key, positions, false, false, type), value,
                   positions);
}

/// attention_grad at the rotated q and k, then the inverse rotation of the
/// query and key gradients.
static Results ropeAttentionGrad(RopeAttentionGradOp op, const Tensor &grad,
                                 const Tensor &query, const Tensor &key,
                                 const Tensor &value, const Tensor *positions) {
  Type type = elementTypeOf(op.getQueryGrad());
  Results grads = attentionGrad(
      op, grad, rotate(op, query, positions, true, false, type),
      rotate(op, key, positions, false, false, type), value, positions);
  if (!grads)
    return grads;
  std::vector<Tensor> &g = *grads;
  g[0] =
      rotate(op, rounded(std::move(g[0]), type), positions, true, true, type);
  g[1] =
      rotate(op, rounded(std::move(g[1]), type), positions, false, true, type);
  return grads;
}

//===----------------------------------------------------------------------===//
// Driver
//===----------------------------------------------------------------------===//

/// A dense tensor constant, float or integer.
static Results constant(arith::ConstantOp op) {
  auto attr = dyn_cast<DenseElementsAttr>(op.getValue());
  if (!attr)
    return fail(
        llvm::formatv("arith.constant: unsupported value {0}", op.getValue()));
  Tensor tensor;
  tensor.shape.assign(attr.getType().getShape().begin(),
                      attr.getType().getShape().end());
  if (isa<FloatType>(attr.getElementType()))
    for (const llvm::APFloat &value : attr.getValues<llvm::APFloat>())
      tensor.data.push_back(value.convertToDouble());
  else
    for (const llvm::APInt &value : attr.getValues<llvm::APInt>())
      tensor.data.push_back(double(value.getSExtValue()));
  return one(std::move(tensor));
}

/// Runs one op on its operand tensors.
static Results evaluate(Operation *operation,
                        llvm::ArrayRef<const Tensor *> in) {
  // The optional positions of RoPE and attention ops follow `count` tensors.
  auto positionsAfter = [&](size_t count) {
    return in.size() > count ? in[count] : nullptr;
  };
  return llvm::TypeSwitch<Operation *, Results>(operation)
      .Case([&](EmbeddingOp op) { return embedding(op, *in[0], *in[1]); })
      .Case(
          [&](EmbeddingGradOp op) { return embeddingGrad(op, *in[0], *in[1]); })
      .Case([&](RMSNormOp op) { return rmsNorm(op, *in[0], *in[1]); })
      .Case([&](RMSNormGradOp op) {
        return rmsNormGrad(op, *in[0], *in[1], *in[2]);
      })
      .Case([&](MatmulOp op) { return matmul(op, *in[0], *in[1]); })
      .Case([&](RoPEOp op) { return rope(op, *in[0], positionsAfter(1)); })
      .Case([&](AttentionOp op) {
        return attention(op, *in[0], *in[1], *in[2], positionsAfter(3));
      })
      .Case([&](AttentionGradOp op) {
        return attentionGrad(op, *in[0], *in[1], *in[2], *in[3],
                             positionsAfter(4));
      })
      .Case([&](SwiGLUOp op) { return swiglu(op, *in[0], *in[1]); })
      .Case([&](SwiGLUGradOp) { return swigluGrad(*in[0], *in[1], *in[2]); })
      .Case([&](AddOp) { return add(*in[0], *in[1]); })
      .Case([&](CrossEntropyOp op) { return crossEntropy(op, *in[0], *in[1]); })
      .Case([&](CrossEntropyGradOp op) {
        return crossEntropyGrad(op, *in[0], *in[1], *in[2]);
      })
      .Case([&](NormMatmulOp op) { return normMatmul(op, in); })
      .Case([&](NormMatmulGradOp op) { return normMatmulGrad(op, in); })
      .Case([&](GatedMLPOp op) { return gatedMLP(op, in); })
      .Case([&](GatedMLPGradOp op) { return gatedMLPGrad(op, in); })
      .Case([&](RopeAttentionOp op) {
        return ropeAttention(op, *in[0], *in[1], *in[2], positionsAfter(3));
      })
      .Case([&](RopeAttentionGradOp op) {
        return ropeAttentionGrad(op, *in[0], *in[1], *in[2], *in[3],
                                 positionsAfter(4));
      })
      .Case([&](FP8QuantizeOp op) { return fp8Quantize(op, in); })
      .Case([&](FP8ScaleUpdateOp op) {
        return fp8ScaleUpdate(op, *in[0], *in[1], *in[2]);
      })
      .Case([&](AdamWOp) { return adamw(in); })
      .Case([&](GlobalNormOp) { return globalNorm(in); })
      .Case([&](ClipScaleOp) { return clipScale(*in[0], *in[1]); })
      .Case([&](arith::ConstantOp op) { return constant(op); })
      .Default([&](Operation *op) -> Results {
        return fail(llvm::formatv("reference interpreter: unsupported op '{0}'",
                                  op->getName()));
      });
}

llvm::Expected<std::vector<Tensor>>
llamac::reference::interpret(func::FuncOp func, llvm::ArrayRef<Tensor> args,
                             llvm::DenseMap<Value, Tensor> *observed) {
  if (!func.getBody().hasOneBlock())
    return fail(llvm::formatv("reference interpreter: @{0} is not a "
                              "single-block function",
                              func.getSymName()));
  Block &body = func.getBody().front();
  if (args.size() != body.getNumArguments())
    return fail(llvm::formatv(
        "reference interpreter: @{0} takes {1} arguments, got {2}",
        func.getSymName(), body.getNumArguments(), args.size()));
  if (failed(verify(func)))
    return fail(llvm::formatv("reference interpreter: @{0} fails verification",
                              func.getSymName()));

  // Position of the last op that reads each value.
  llvm::DenseMap<Value, size_t> lastUse;
  for (auto [index, op] : llvm::enumerate(body))
    for (Value operand : op.getOperands())
      lastUse[operand] = index;

  llvm::DenseMap<Value, Tensor> env;
  auto define = [&](Value value, Tensor tensor) {
    if (observed)
      if (auto it = observed->find(value); it != observed->end())
        it->second = tensor;
    if (!value.use_empty())
      env[value] = std::move(tensor);
  };

  for (auto [index, arg] : llvm::enumerate(body.getArguments())) {
    auto type = dyn_cast<RankedTensorType>(arg.getType());
    if (!type)
      return fail(llvm::formatv("reference interpreter: argument {0} of @{1} "
                                "has type {2}, not a ranked tensor",
                                index, func.getSymName(), arg.getType()));
    const Tensor &given = args[index];
    if (llvm::ArrayRef(given.shape) != type.getShape() ||
        int64_t(given.data.size()) != given.numel())
      return fail(llvm::formatv(
          "reference interpreter: argument {0} of @{1} has shape {2} with {3} "
          "values, expected shape {4}",
          index, func.getSymName(), shapeString(given.shape), given.data.size(),
          shapeString(type.getShape())));
    Tensor tensor = given;
    roundAll(tensor, type.getElementType());
    define(arg, std::move(tensor));
  }

  for (auto [index, op] : llvm::enumerate(body.without_terminator())) {
    llvm::SmallVector<const Tensor *> operands;
    for (Value operand : op.getOperands())
      operands.push_back(&env.find(operand)->second);
    Results results = evaluate(&op, operands);
    if (!results)
      return results.takeError();
    for (Value operand : op.getOperands())
      if (lastUse[operand] == index)
        env.erase(operand);
    for (auto [value, tensor] : llvm::zip_equal(op.getResults(), *results)) {
      roundAll(tensor, elementTypeOf(value));
      define(value, std::move(tensor));
    }
  }

  std::vector<Tensor> results;
  for (Value value : body.getTerminator()->getOperands())
    results.push_back(env.find(value)->second);
  return results;
}
