//===- LlamaOps.cpp - Verifiers and VJPs of the llama dialect -------------===//

#include "llamac/Dialect/Llama/LlamaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/IR/OpImplementation.h"
#include "llvm/ADT/STLExtras.h"

#include <cmath>

using namespace mlir;
using namespace mlir::llama;

//===----------------------------------------------------------------------===//
// Verifier helpers
//===----------------------------------------------------------------------===//

static RankedTensorType tensorType(Value value) {
  return cast<RankedTensorType>(value.getType());
}

/// Fails unless `value` has exactly `shape` (kDynamic entries match anything).
static LogicalResult expectShape(Operation *op, Value value, StringRef name,
                                 ArrayRef<int64_t> shape) {
  ArrayRef<int64_t> actual = tensorType(value).getShape();
  bool matches = actual.size() == shape.size();
  for (auto [want, got] : llvm::zip(shape, actual))
    matches &= want == ShapedType::kDynamic || want == got;
  if (matches)
    return success();
  InFlightDiagnostic diag = op->emitOpError() << name << " must have shape [";
  llvm::interleaveComma(shape, diag, [&](int64_t d) {
    if (d == ShapedType::kDynamic)
      diag << "?";
    else
      diag << d;
  });
  return diag << "], got " << value.getType();
}

/// Fails unless every value has the same element type.
static LogicalResult expectSameElementType(Operation *op, ValueRange values) {
  Type first = tensorType(values.front()).getElementType();
  for (Value value : values.drop_front())
    if (tensorType(value).getElementType() != first)
      return op->emitOpError() << "expects one element type, got " << first
                               << " and " << value.getType();
  return success();
}

static LogicalResult expectStaticRank(Operation *op, Value value,
                                      StringRef name, int64_t rank) {
  RankedTensorType type = tensorType(value);
  if (type.getRank() != rank || !type.hasStaticShape())
    return op->emitOpError() << name << " must be a static rank-" << rank
                             << " tensor, got " << value.getType();
  return success();
}

static LogicalResult expectPositive(Operation *op, StringRef name,
                                    int64_t value) {
  if (value <= 0)
    return op->emitOpError() << name << " must be positive, got " << value;
  return success();
}

static LogicalResult verifyFP8Format(Operation *op, StringRef format) {
  if (format == "e4m3" || format == "e5m2")
    return success();
  return op->emitOpError() << "format must be \"e4m3\" or \"e5m2\", got \""
                           << format << "\"";
}

static LogicalResult expectF32Scalar(Operation *op, Value value,
                                     StringRef name) {
  auto type = tensorType(value);
  if (type.getRank() == 0 && type.getElementType().isF32())
    return success();
  return op->emitOpError() << name << " must be tensor<f32>, got "
                           << value.getType();
}

/// Token rows come in whole sequences: T must be a multiple of seq_len.
static LogicalResult expectWholeSequences(Operation *op, int64_t rows,
                                          int64_t seqLen) {
  if (failed(expectPositive(op, "seq_len", seqLen)))
    return failure();
  if (rows % seqLen != 0)
    return op->emitOpError()
           << "has " << rows << " token rows, not a multiple of seq_len "
           << seqLen;
  return success();
}

/// The optional positions of RoPE and attention ops: one per token row.
static LogicalResult verifyPositions(Operation *op, Value positions,
                                     int64_t rows) {
  if (!positions)
    return success();
  return expectShape(op, positions, "positions", {rows});
}

/// The cotangents of an op's operands: `grads`, then none for positions
/// (integer ids carry no gradient) when the op has them.
static SmallVector<Value> withPositions(SmallVector<Value> grads,
                                        Value positions) {
  if (positions)
    grads.push_back(nullptr);
  return grads;
}

//===----------------------------------------------------------------------===//
// EmbeddingOp
//===----------------------------------------------------------------------===//

LogicalResult EmbeddingOp::verify() {
  if (failed(expectStaticRank(*this, getTable(), "table", 2)) ||
      failed(expectStaticRank(*this, getIds(), "ids", 1)))
    return failure();
  int64_t hidden = tensorType(getTable()).getDimSize(1);
  int64_t rows = tensorType(getIds()).getDimSize(0);
  if (failed(expectShape(*this, getResult(), "result", {rows, hidden})))
    return failure();
  return expectSameElementType(*this, {getTable(), getResult()});
}

SmallVector<Value> EmbeddingOp::buildVJP(OpBuilder &builder,
                                         ValueRange resultCotangents) {
  Value tableGrad = EmbeddingGradOp::create(
      builder, getLoc(), getTable().getType(), resultCotangents[0], getIds());
  return {tableGrad, nullptr};
}

LogicalResult EmbeddingGradOp::verify() {
  if (failed(expectStaticRank(*this, getGrad(), "grad", 2)) ||
      failed(expectStaticRank(*this, getResult(), "result", 2)))
    return failure();
  RankedTensorType grad = tensorType(getGrad());
  if (failed(expectShape(*this, getIds(), "ids", {grad.getDimSize(0)})) ||
      failed(expectShape(*this, getResult(), "result",
                         {ShapedType::kDynamic, grad.getDimSize(1)})))
    return failure();
  return expectSameElementType(*this, {getGrad(), getResult()});
}

//===----------------------------------------------------------------------===//
// RMSNormOp
//===----------------------------------------------------------------------===//

static LogicalResult verifyRMSNormOperands(Operation *op, Value input,
                                           Value weight, double eps) {
  if (failed(expectStaticRank(op, input, "input", 2)))
    return failure();
  if (failed(
          expectShape(op, weight, "weight", {tensorType(input).getDimSize(1)})))
    return failure();
  if (!(eps > 0))
    return op->emitOpError() << "eps must be positive, got " << eps;
  return success();
}

LogicalResult RMSNormOp::verify() {
  if (failed(verifyRMSNormOperands(*this, getInput(), getWeight(),
                                   getEps().convertToDouble())) ||
      failed(expectShape(*this, getResult(), "result",
                         tensorType(getInput()).getShape())))
    return failure();
  return expectSameElementType(*this, {getInput(), getWeight(), getResult()});
}

SmallVector<Value> RMSNormOp::buildVJP(OpBuilder &builder,
                                       ValueRange resultCotangents) {
  auto grad = RMSNormGradOp::create(builder, getLoc(), getInput().getType(),
                                    getWeight().getType(), resultCotangents[0],
                                    getInput(), getWeight(), getEpsAttr());
  return {grad.getInputGrad(), grad.getWeightGrad()};
}

LogicalResult RMSNormGradOp::verify() {
  if (failed(verifyRMSNormOperands(*this, getInput(), getWeight(),
                                   getEps().convertToDouble())))
    return failure();
  ArrayRef<int64_t> shape = tensorType(getInput()).getShape();
  if (failed(expectShape(*this, getGrad(), "grad", shape)) ||
      failed(expectShape(*this, getInputGrad(), "input_grad", shape)) ||
      failed(expectShape(*this, getWeightGrad(), "weight_grad", {shape[1]})))
    return failure();
  return expectSameElementType(*this, {getGrad(), getInput(), getWeight(),
                                       getInputGrad(), getWeightGrad()});
}

//===----------------------------------------------------------------------===//
// MatmulOp
//===----------------------------------------------------------------------===//

LogicalResult MatmulOp::verify() {
  if (failed(expectStaticRank(*this, getLhs(), "lhs", 2)) ||
      failed(expectStaticRank(*this, getRhs(), "rhs", 2)))
    return failure();
  ArrayRef<int64_t> lhs = tensorType(getLhs()).getShape();
  ArrayRef<int64_t> rhs = tensorType(getRhs()).getShape();
  int64_t m = getTransposeLhs() ? lhs[1] : lhs[0];
  int64_t kl = getTransposeLhs() ? lhs[0] : lhs[1];
  int64_t kr = getTransposeRhs() ? rhs[1] : rhs[0];
  int64_t n = getTransposeRhs() ? rhs[0] : rhs[1];
  if (kl != kr)
    return emitOpError() << "contracts a dimension of " << kl << " with one of "
                         << kr;
  if (failed(expectShape(*this, getResult(), "result", {m, n})))
    return failure();
  return expectSameElementType(*this, {getLhs(), getRhs(), getResult()});
}

SmallVector<Value> MatmulOp::buildVJP(OpBuilder &builder,
                                      ValueRange resultCotangents) {
  // C = A' B' with A' = op(A), B' = op(B): dA' = dC B'ᵀ and dB' = A'ᵀ dC;
  // a transposed operand takes the transpose of its primed gradient.
  Value dC = resultCotangents[0];
  bool tA = getTransposeLhs(), tB = getTransposeRhs();
  Location loc = getLoc();
  auto matmul = [&](Value a, Value b, bool ta, bool tb, Type type) -> Value {
    return MatmulOp::create(builder, loc, type, a, b, ta, tb);
  };
  Value dA = tA ? matmul(getRhs(), dC, tB, true, getLhs().getType())
                : matmul(dC, getRhs(), false, !tB, getLhs().getType());
  Value dB = tB ? matmul(dC, getLhs(), true, tA, getRhs().getType())
                : matmul(getLhs(), dC, !tA, false, getRhs().getType());
  return {dA, dB};
}

//===----------------------------------------------------------------------===//
// RoPEOp
//===----------------------------------------------------------------------===//

SmallVector<double>
mlir::llama::ropeFrequencies(int64_t dim, double theta, StringRef ropeType,
                             double factor, double low, double high,
                             int64_t originalMaxPositionEmbeddings) {
  SmallVector<double> frequencies;
  for (int64_t i = 0; i < dim / 2; ++i)
    frequencies.push_back(std::pow(theta, -double(2 * i) / double(dim)));
  if (ropeType != "llama3")
    return frequencies;
  // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and
  // the band in between interpolated (transformers'
  // _compute_llama3_parameters).
  double context = double(originalMaxPositionEmbeddings);
  double lowFreqWavelen = context / low, highFreqWavelen = context / high;
  for (double &f : frequencies) {
    double wavelen = 2 * M_PI / f;
    if (wavelen > lowFreqWavelen) {
      f = f / factor;
    } else if (!(wavelen < highFreqWavelen)) {
      double smooth = (context / wavelen - low) / (high - low);
      f = (1 - smooth) * f / factor + smooth * f;
    }
  }
  return frequencies;
}

/// The frequencies of any op with the RoPE attributes.
template <typename RopeLikeOp>
static SmallVector<double> frequenciesOf(RopeLikeOp op) {
  return ropeFrequencies(op.getHeadDim(), op.getTheta().convertToDouble(),
                         op.getRopeType(), op.getFactor().convertToDouble(),
                         op.getLowFreqFactor().convertToDouble(),
                         op.getHighFreqFactor().convertToDouble(),
                         op.getOriginalMaxPositionEmbeddings());
}

SmallVector<double> RoPEOp::getFrequencies() { return frequenciesOf(*this); }

/// Checks theta and the rope_type's scaling attributes.
template <typename RopeLikeOp>
static LogicalResult verifyRopeAttributes(RopeLikeOp op) {
  if (!(op.getTheta().convertToDouble() > 0))
    return op.emitOpError() << "theta must be positive";
  if (op.getRopeType() == "llama3") {
    double low = op.getLowFreqFactor().convertToDouble();
    double high = op.getHighFreqFactor().convertToDouble();
    if (!(op.getFactor().convertToDouble() > 0) || !(low > 0) ||
        !(high > low) || op.getOriginalMaxPositionEmbeddings() <= 0)
      return op.emitOpError() << "needs factor > 0, high_freq_factor > "
                                 "low_freq_factor > 0 and a positive "
                                 "original_max_position_embeddings";
  } else if (op.getRopeType() != "default") {
    return op.emitOpError()
           << "unsupported rope_type '" << op.getRopeType() << "'";
  }
  return success();
}

LogicalResult RoPEOp::verify() {
  if (failed(expectStaticRank(*this, getInput(), "input", 2)) ||
      failed(expectPositive(*this, "num_heads", getNumHeads())) ||
      failed(expectPositive(*this, "head_dim", getHeadDim())))
    return failure();
  ArrayRef<int64_t> shape = tensorType(getInput()).getShape();
  if (getHeadDim() % 2 != 0)
    return emitOpError() << "head_dim must be even, got " << getHeadDim();
  if (shape[1] != getNumHeads() * getHeadDim())
    return emitOpError() << "input width " << shape[1]
                         << " is not num_heads * head_dim";
  if (failed(expectWholeSequences(*this, shape[0], getSeqLen())) ||
      failed(verifyPositions(*this, getPositions(), shape[0])) ||
      failed(expectShape(*this, getResult(), "result", shape)))
    return failure();
  if (failed(verifyRopeAttributes(*this)))
    return failure();
  return expectSameElementType(*this, {getInput(), getResult()});
}

SmallVector<Value> RoPEOp::buildVJP(OpBuilder &builder,
                                    ValueRange resultCotangents) {
  // A rotation's transpose is the rotation by the opposite angle.
  auto inverse = cast<RoPEOp>(builder.clone(*getOperation()));
  inverse->setOperand(0, resultCotangents[0]);
  inverse.setInverse(!getInverse());
  return withPositions({inverse.getResult()}, getPositions());
}

//===----------------------------------------------------------------------===//
// AttentionOp
//===----------------------------------------------------------------------===//

template <typename AttentionLikeOp>
static LogicalResult verifyAttentionOperands(AttentionLikeOp op) {
  if (failed(expectStaticRank(op, op.getQuery(), "query", 2)) ||
      failed(expectPositive(op, "num_heads", op.getNumHeads())) ||
      failed(expectPositive(op, "num_kv_heads", op.getNumKvHeads())) ||
      failed(expectPositive(op, "head_dim", op.getHeadDim())))
    return failure();
  if (op.getNumHeads() % op.getNumKvHeads() != 0)
    return op.emitOpError()
           << "num_heads " << op.getNumHeads()
           << " is not a multiple of num_kv_heads " << op.getNumKvHeads();
  int64_t rows = tensorType(op.getQuery()).getDimSize(0);
  int64_t kvWidth = int64_t(op.getNumKvHeads() * op.getHeadDim());
  if (failed(
          expectShape(op, op.getQuery(), "query",
                      {rows, int64_t(op.getNumHeads() * op.getHeadDim())})) ||
      failed(expectShape(op, op.getKey(), "key", {rows, kvWidth})) ||
      failed(expectShape(op, op.getValue(), "value", {rows, kvWidth})) ||
      failed(expectWholeSequences(op, rows, op.getSeqLen())) ||
      failed(verifyPositions(op, op.getPositions(), rows)))
    return failure();
  SmallVector<Value> floats;
  for (Value operand : op->getOperands())
    if (operand != op.getPositions())
      floats.push_back(operand);
  return expectSameElementType(op, floats);
}

LogicalResult AttentionOp::verify() {
  if (failed(verifyAttentionOperands(*this)) ||
      failed(expectShape(*this, getResult(), "result",
                         tensorType(getQuery()).getShape())))
    return failure();
  return expectSameElementType(*this, {getQuery(), getResult()});
}

SmallVector<Value> AttentionOp::buildVJP(OpBuilder &builder,
                                         ValueRange resultCotangents) {
  auto grad = AttentionGradOp::create(
      builder, getLoc(), getQuery().getType(), getKey().getType(),
      getValue().getType(), resultCotangents[0], getQuery(), getKey(),
      getValue(), getPositions(), getNumHeadsAttr(), getNumKvHeadsAttr(),
      getHeadDimAttr(), getSeqLenAttr(), getScaleAttr());
  return withPositions(
      {grad.getQueryGrad(), grad.getKeyGrad(), grad.getValueGrad()},
      getPositions());
}

/// The incoming gradient has the query's shape, and so has the query's
/// gradient; the key and value gradients have the key's.
template <typename AttentionGradLikeOp>
static LogicalResult verifyAttentionGradResults(AttentionGradLikeOp op) {
  ArrayRef<int64_t> query = tensorType(op.getQuery()).getShape();
  ArrayRef<int64_t> kv = tensorType(op.getKey()).getShape();
  if (failed(expectShape(op, op.getGrad(), "grad", query)) ||
      failed(expectShape(op, op.getQueryGrad(), "query_grad", query)) ||
      failed(expectShape(op, op.getKeyGrad(), "key_grad", kv)) ||
      failed(expectShape(op, op.getValueGrad(), "value_grad", kv)))
    return failure();
  return expectSameElementType(op, op->getResults());
}

LogicalResult AttentionGradOp::verify() {
  if (failed(verifyAttentionOperands(*this)))
    return failure();
  return verifyAttentionGradResults(*this);
}

//===----------------------------------------------------------------------===//
// SwiGLUOp, AddOp
//===----------------------------------------------------------------------===//

LogicalResult SwiGLUOp::verify() {
  ArrayRef<int64_t> shape = tensorType(getGate()).getShape();
  if (failed(expectShape(*this, getUp(), "up", shape)) ||
      failed(expectShape(*this, getResult(), "result", shape)))
    return failure();
  return expectSameElementType(*this, {getGate(), getUp(), getResult()});
}

SmallVector<Value> SwiGLUOp::buildVJP(OpBuilder &builder,
                                      ValueRange resultCotangents) {
  auto grad = SwiGLUGradOp::create(builder, getLoc(), getGate().getType(),
                                   getUp().getType(), resultCotangents[0],
                                   getGate(), getUp());
  return {grad.getGateGrad(), grad.getUpGrad()};
}

LogicalResult SwiGLUGradOp::verify() {
  ArrayRef<int64_t> shape = tensorType(getGate()).getShape();
  std::pair<Value, StringRef> checked[] = {{getGrad(), "grad"},
                                           {getUp(), "up"},
                                           {getGateGrad(), "gate_grad"},
                                           {getUpGrad(), "up_grad"}};
  for (auto [value, name] : checked)
    if (failed(expectShape(*this, value, name, shape)))
      return failure();
  return expectSameElementType(*this, getOperation()->getOperands());
}

LogicalResult AddOp::verify() {
  if (getLhs().getType() != getRhs().getType() ||
      getLhs().getType() != getResult().getType())
    return emitOpError() << "expects operands and result of one type, got "
                         << getLhs().getType() << ", " << getRhs().getType()
                         << " -> " << getResult().getType();
  return success();
}

SmallVector<Value> AddOp::buildVJP(OpBuilder &, ValueRange resultCotangents) {
  return {resultCotangents[0], resultCotangents[0]};
}

//===----------------------------------------------------------------------===//
// CrossEntropyOp
//===----------------------------------------------------------------------===//

static LogicalResult verifyLossOperands(Operation *op, Value logits,
                                        Value labels, int64_t seqLen) {
  if (failed(expectStaticRank(op, logits, "logits", 2)))
    return failure();
  int64_t rows = tensorType(logits).getDimSize(0);
  if (failed(expectShape(op, labels, "labels", {rows})))
    return failure();
  return expectWholeSequences(op, rows, seqLen);
}

LogicalResult CrossEntropyOp::verify() {
  return verifyLossOperands(*this, getLogits(), getLabels(), getSeqLen());
}

SmallVector<Value> CrossEntropyOp::buildVJP(OpBuilder &builder,
                                            ValueRange resultCotangents) {
  Value logitsGrad = CrossEntropyGradOp::create(
      builder, getLoc(), getLogits().getType(), resultCotangents[0],
      getLogits(), getLabels(), getSeqLenAttr());
  return {logitsGrad, nullptr};
}

LogicalResult CrossEntropyGradOp::verify() {
  if (failed(verifyLossOperands(*this, getLogits(), getLabels(), getSeqLen())))
    return failure();
  if (getResult().getType() != getLogits().getType())
    return emitOpError() << "result must have the logits' type "
                         << getLogits().getType();
  return success();
}

//===----------------------------------------------------------------------===//
// AdamWOp
//===----------------------------------------------------------------------===//

LogicalResult AdamWOp::verify() {
  Type type = getParam().getType();
  for (Value value : {getGrad(), getExpAvg(), getExpAvgSq(), getNewParam(),
                      getNewExpAvg(), getNewExpAvgSq()})
    if (value.getType() != type)
      return emitOpError() << "expects parameter, gradient and moments of one "
                              "type "
                           << type << ", got " << value.getType();
  return success();
}

LogicalResult GlobalNormOp::verify() {
  if (getInputs().empty())
    return emitOpError("expects at least one operand");
  return success();
}

//===----------------------------------------------------------------------===//
// Fused ops: NormMatmulOp, GatedMLPOp, RopeAttentionOp and their backward ops
//===----------------------------------------------------------------------===//

/// A tensor of `type` filled with zeros: the cotangent of a result that does
/// not reach the loss, where a fused backward op needs one.
static Value zerosLike(OpBuilder &builder, Location loc, Type type) {
  auto tensor = cast<RankedTensorType>(type);
  auto zero = FloatAttr::get(tensor.getElementType(), 0.0);
  return arith::ConstantOp::create(builder, loc,
                                   DenseElementsAttr::get(tensor, zero));
}

/// Checks that `slices` are [T, N_i] column slices of a [T, N] product with
/// N = the row count of `weight`; returns failure with a diagnostic.
static LogicalResult verifyColumnSlices(Operation *op, ValueRange slices,
                                        StringRef name, int64_t rows,
                                        Value weight) {
  if (slices.empty())
    return op->emitOpError() << "needs at least one " << name;
  int64_t total = 0;
  for (Value slice : slices) {
    if (failed(expectStaticRank(op, slice, name, 2)) ||
        failed(expectShape(op, slice, name, {rows, ShapedType::kDynamic})))
      return failure();
    total += tensorType(slice).getDimSize(1);
  }
  int64_t weightRows = tensorType(weight).getDimSize(0);
  if (total != weightRows)
    return op->emitOpError()
           << name << " widths sum to " << total
           << ", but the concatenated weight has " << weightRows << " rows";
  return success();
}

/// The input, an optional norm (with eps) and a weight [N, H] over the
/// input's width H.
static LogicalResult verifyNormAndWeight(Operation *op, Value input,
                                         Value normWeight,
                                         std::optional<double> eps,
                                         Value weight) {
  if (failed(expectStaticRank(op, input, "input", 2)) ||
      failed(expectStaticRank(op, weight, "weight", 2)))
    return failure();
  int64_t hidden = tensorType(input).getDimSize(1);
  if (failed(expectShape(op, weight, "weight", {ShapedType::kDynamic, hidden})))
    return failure();
  if (bool(normWeight) != eps.has_value())
    return op->emitOpError() << "takes eps exactly when it has a norm weight";
  if (normWeight && failed(verifyRMSNormOperands(op, input, normWeight, *eps)))
    return failure();
  return success();
}

/// The FP8 quantization a fused op carries: without `fp8_formats` no
/// scales and no amaxes; with them, `count` formats, one amax each and one
/// scale each or none.
static LogicalResult verifyFusedFP8(Operation *op,
                                    std::optional<ArrayAttr> formats,
                                    size_t count, ValueRange scales,
                                    ValueRange amaxes) {
  if (!formats) {
    if (!scales.empty() || !amaxes.empty())
      return op->emitOpError() << "has FP8 scales or amaxes but no fp8_formats";
    return success();
  }
  if (formats->size() != count)
    return op->emitOpError() << "fp8_formats must list " << count
                             << " format(s), got " << formats->size();
  for (Attribute format : *formats)
    if (failed(verifyFP8Format(op, cast<StringAttr>(format).getValue())))
      return failure();
  if (!scales.empty() && scales.size() != count)
    return op->emitOpError() << "takes no FP8 scale (current scaling) or "
                             << count << ", got " << scales.size();
  if (amaxes.size() != count)
    return op->emitOpError()
           << "returns " << count << " FP8 amax(es), got " << amaxes.size();
  for (Value scale : scales)
    if (failed(expectF32Scalar(op, scale, "FP8 scale")))
      return failure();
  for (Value amax : amaxes)
    if (failed(expectF32Scalar(op, amax, "FP8 amax")))
      return failure();
  return success();
}

/// The tensors of a fused op (operands and results but its FP8 scales and
/// amaxes) share one element type.
static LogicalResult expectSameTensorElementType(Operation *op,
                                                 ValueRange scales,
                                                 ValueRange amaxes) {
  SmallVector<Value> values;
  for (Value value : op->getOperands())
    if (!llvm::is_contained(scales, value))
      values.push_back(value);
  for (Value value : op->getResults())
    if (!llvm::is_contained(amaxes, value))
      values.push_back(value);
  return expectSameElementType(op, values);
}

LogicalResult NormMatmulOp::verify() {
  if (failed(verifyNormAndWeight(*this, getInput(), getNormWeight(),
                                 getEps().convertToDouble(), getWeight())) ||
      failed(verifyColumnSlices(*this, getOutputs(), "result",
                                tensorType(getInput()).getDimSize(0),
                                getWeight())) ||
      failed(verifyFusedFP8(*this, getFp8Formats(), 1, getFp8Scales(),
                            getFp8Amaxes())))
    return failure();
  return expectSameTensorElementType(*this, getFp8Scales(), getFp8Amaxes());
}

// The VJPs of the fused ops ignore their FP8 quantization (straight-through,
// as llama.fp8_quantize's VJP; the scales get no cotangent): llama-insert-fp8
// runs after llama-autodiff and quantizes the forward and backward ops
// itself.

SmallVector<Value> NormMatmulOp::buildVJP(OpBuilder &builder,
                                          ValueRange resultCotangents) {
  SmallVector<Value> grads;
  for (auto [result, cotangent] : llvm::zip(getOutputs(), resultCotangents))
    grads.push_back(cotangent ? cotangent
                              : zerosLike(builder, getLoc(), result.getType()));
  auto grad = NormMatmulGradOp::create(
      builder, getLoc(), getInput().getType(), getNormWeight().getType(),
      getWeight().getType(), /*fp8_amaxes=*/TypeRange(), grads, getInput(),
      getNormWeight(), getWeight(), /*fp8_scales=*/ValueRange(), getEpsAttr(),
      /*fp8_formats=*/nullptr, /*fp8_margin=*/nullptr);
  SmallVector<Value> result{grad.getInputGrad(), grad.getNormWeightGrad(),
                            grad.getWeightGrad()};
  result.append(getFp8Scales().size(), Value());
  return result;
}

LogicalResult NormMatmulGradOp::verify() {
  int64_t rows = tensorType(getInput()).getDimSize(0);
  if (failed(verifyNormAndWeight(*this, getInput(), getNormWeight(),
                                 getEps().convertToDouble(), getWeight())) ||
      failed(verifyColumnSlices(*this, getGrads(), "grad", rows, getWeight())))
    return failure();
  if (failed(expectShape(*this, getInputGrad(), "input_grad",
                         tensorType(getInput()).getShape())) ||
      failed(expectShape(*this, getNormWeightGrad(), "norm_weight_grad",
                         tensorType(getNormWeight()).getShape())) ||
      failed(expectShape(*this, getWeightGrad(), "weight_grad",
                         tensorType(getWeight()).getShape())) ||
      failed(verifyFusedFP8(*this, getFp8Formats(), 1, getFp8Scales(),
                            getFp8Amaxes())))
    return failure();
  return expectSameTensorElementType(*this, getFp8Scales(), getFp8Amaxes());
}

/// Shapes shared by gated_mlp and gated_mlp_grad: input [T, H], weight
/// [2F, H], gate_up [T, 2F]; returns F through `width`.
static LogicalResult verifyGatedMLPOperands(Operation *op, Value input,
                                            Value weight, Value normWeight,
                                            std::optional<double> eps,
                                            Value gateUp, int64_t &width) {
  if (failed(verifyNormAndWeight(op, input, normWeight, eps, weight)))
    return failure();
  int64_t doubled = tensorType(weight).getDimSize(0);
  if (doubled % 2 != 0)
    return op->emitOpError() << "weight must stack gate and up weights of "
                                "one width, got "
                             << doubled << " rows";
  width = doubled / 2;
  return expectShape(op, gateUp, "gate_up",
                     {tensorType(input).getDimSize(0), doubled});
}

static std::optional<double> optionalEps(std::optional<llvm::APFloat> eps) {
  if (!eps)
    return std::nullopt;
  return eps->convertToDouble();
}

LogicalResult GatedMLPOp::verify() {
  int64_t width;
  if (failed(verifyGatedMLPOperands(*this, getInput(), getWeight(),
                                    getNormWeight(), optionalEps(getEps()),
                                    getGateUp(), width)) ||
      failed(expectShape(*this, getResult(), "result",
                         {tensorType(getInput()).getDimSize(0), width})) ||
      failed(verifyFusedFP8(*this, getFp8Formats(), 1, getFp8Scales(),
                            getFp8Amaxes())))
    return failure();
  for (OpOperand &use : getGateUp().getUses())
    if (!isa<GatedMLPGradOp>(use.getOwner()) || use.getOperandNumber() != 2)
      return emitOpError() << "gate_up is saved for llama.gated_mlp_grad and "
                              "must have no other user";
  return expectSameTensorElementType(*this, getFp8Scales(), getFp8Amaxes());
}

SmallVector<Value> GatedMLPOp::buildVJP(OpBuilder &builder,
                                        ValueRange resultCotangents) {
  // gate_up has no user but gated_mlp_grad (the verifier says so), hence no
  // cotangent.
  Value grad = resultCotangents[0]
                   ? resultCotangents[0]
                   : zerosLike(builder, getLoc(), getResult().getType());
  Value norm = getNormWeight();
  auto grads = GatedMLPGradOp::create(
      builder, getLoc(), getInput().getType(), getWeight().getType(),
      norm ? norm.getType() : Type(), /*fp8_amaxes=*/TypeRange(), grad,
      getInput(), getGateUp(), getWeight(), norm, /*fp8_scales=*/ValueRange(),
      getEpsAttr(), /*fp8_formats=*/nullptr, /*fp8_margin=*/nullptr);
  SmallVector<Value> result{grads.getInputGrad(), grads.getWeightGrad()};
  if (norm)
    result.push_back(grads.getNormWeightGrad());
  result.append(getFp8Scales().size(), Value());
  return result;
}

LogicalResult GatedMLPGradOp::verify() {
  int64_t width;
  if (failed(verifyGatedMLPOperands(*this, getInput(), getWeight(),
                                    getNormWeight(), optionalEps(getEps()),
                                    getGateUp(), width)) ||
      failed(expectShape(*this, getGrad(), "grad",
                         {tensorType(getInput()).getDimSize(0), width})) ||
      failed(expectShape(*this, getInputGrad(), "input_grad",
                         tensorType(getInput()).getShape())) ||
      failed(expectShape(*this, getWeightGrad(), "weight_grad",
                         tensorType(getWeight()).getShape())))
    return failure();
  if (bool(getNormWeight()) != bool(getNormWeightGrad()))
    return emitOpError()
           << "returns norm_weight_grad exactly when it has a norm weight";
  if (getNormWeight() &&
      failed(expectShape(*this, getNormWeightGrad(), "norm_weight_grad",
                         tensorType(getNormWeight()).getShape())))
    return failure();
  if (failed(verifyFusedFP8(*this, getFp8Formats(), 3, getFp8Scales(),
                            getFp8Amaxes())))
    return failure();
  return expectSameTensorElementType(*this, getFp8Scales(), getFp8Amaxes());
}

SmallVector<double> RopeAttentionOp::getFrequencies() {
  return frequenciesOf(*this);
}

SmallVector<double> RopeAttentionGradOp::getFrequencies() {
  return frequenciesOf(*this);
}

template <typename RopeAttentionLikeOp>
static LogicalResult verifyRopeAttention(RopeAttentionLikeOp op) {
  if (failed(verifyAttentionOperands(op)))
    return failure();
  if (op.getHeadDim() % 2 != 0)
    return op.emitOpError() << "head_dim must be even, got " << op.getHeadDim();
  return verifyRopeAttributes(op);
}

LogicalResult RopeAttentionOp::verify() {
  if (failed(verifyRopeAttention(*this)) ||
      failed(expectShape(*this, getResult(), "result",
                         tensorType(getQuery()).getShape())))
    return failure();
  return expectSameElementType(*this, {getQuery(), getResult()});
}

SmallVector<Value> RopeAttentionOp::buildVJP(OpBuilder &builder,
                                             ValueRange resultCotangents) {
  // The backward op carries the same attributes and positions.
  SmallVector<Value> operands{resultCotangents[0], getQuery(), getKey(),
                              getValue()};
  if (Value positions = getPositions())
    operands.push_back(positions);
  auto grad = RopeAttentionGradOp::create(
      builder, getLoc(),
      TypeRange{getQuery().getType(), getKey().getType(), getValue().getType()},
      operands, (*this)->getAttrs());
  return withPositions(
      {grad.getQueryGrad(), grad.getKeyGrad(), grad.getValueGrad()},
      getPositions());
}

LogicalResult RopeAttentionGradOp::verify() {
  if (failed(verifyRopeAttention(*this)))
    return failure();
  return verifyAttentionGradResults(*this);
}

//===----------------------------------------------------------------------===//
// FP8
//===----------------------------------------------------------------------===//

SmallVector<int64_t> FP8QuantizeOp::getBlockRows() {
  if (std::optional<ArrayRef<int64_t>> blocks = getRowBlocks())
    return SmallVector<int64_t>(*blocks);
  RankedTensorType type = tensorType(getInput());
  return {type.getRank() ? type.getDimSize(0) : 1};
}

LogicalResult FP8QuantizeOp::verify() {
  if (failed(verifyFP8Format(*this, getFormat())))
    return failure();
  RankedTensorType input = tensorType(getInput());
  if (input.getShape() != tensorType(getResult()).getShape())
    return emitOpError() << "result must have the shape of the input, got "
                         << getResult().getType() << " for " << input;
  if (std::optional<ArrayRef<int64_t>> blocks = getRowBlocks()) {
    if (input.getRank() == 0 || blocks->empty() ||
        llvm::any_of(*blocks, [](int64_t rows) { return rows <= 0; }) ||
        llvm::accumulate(*blocks, int64_t(0)) != input.getDimSize(0))
      return emitOpError() << "row_blocks must be positive row counts that "
                              "sum to the input's dimension 0";
  }
  size_t count = getBlockRows().size();
  if (!getScales().empty() && getScales().size() != count)
    return emitOpError() << "takes no scale (current scaling) or one per "
                            "block ("
                         << count << "), got " << getScales().size();
  if (getAmaxes().size() != count)
    return emitOpError() << "returns one amax per block (" << count << "), got "
                         << getAmaxes().size();
  for (Value scale : getScales())
    if (failed(expectF32Scalar(*this, scale, "scale")))
      return failure();
  for (Value amax : getAmaxes())
    if (failed(expectF32Scalar(*this, amax, "amax")))
      return failure();
  return success();
}

SmallVector<Value> FP8QuantizeOp::buildVJP(OpBuilder &builder,
                                           ValueRange resultCotangents) {
  // Straight-through: d input = d result; the scales carry no gradient.
  SmallVector<Value> grads{resultCotangents[0]};
  grads.append(getScales().size(), Value());
  return grads;
}

LogicalResult FP8ScaleUpdateOp::verify() {
  if (failed(verifyFP8Format(*this, getFormat())))
    return failure();
  if (getAmaxComputeAlgo() != "max" && getAmaxComputeAlgo() != "most_recent")
    return emitOpError()
           << "amax_compute_algo must be \"max\" or \"most_recent\", got \""
           << getAmaxComputeAlgo() << "\"";
  int64_t length = tensorType(getAmaxHistory()).getDimSize(0);
  if (length < 1)
    return emitOpError() << "amax_history must not be empty";
  if (getNewAmaxHistory().getType() != getAmaxHistory().getType())
    return emitOpError() << "new_amax_history must have the type of "
                            "amax_history, got "
                         << getNewAmaxHistory().getType();
  if (failed(expectF32Scalar(*this, getAmax(), "amax")) ||
      failed(expectF32Scalar(*this, getScale(), "scale")) ||
      failed(expectF32Scalar(*this, getNewScale(), "new_scale")))
    return failure();
  return success();
}

#define GET_OP_CLASSES
#include "llamac/Dialect/Llama/LlamaOps.cpp.inc"
