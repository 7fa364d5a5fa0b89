//===- InsertFP8.cpp - FP8 operands for the linear layers' GEMMs ----------===//
//
// After llama-autodiff, every GEMM of the function belongs to a Linear layer:
// a llama.matmul (a forward x Wᵀ, a dgrad dY W or a wgrad dYᵀ x) or one inside
// a fused op (norm_matmul, gated_mlp and their backward ops). Each GEMM
// operand is quantized to FP8 (E4M3 for weights and activations, E5M2 for
// gradients), each tensor once:
//   - a tensor that exists in the function (an activation, an incoming
//     gradient, a weight) by a llama.fp8_quantize of it; a weight that a
//     fusion concatenated keeps one scale per Hugging Face tensor (the
//     quantize's row_blocks);
//   - a tensor that exists only inside a fused op (the normalized input, the
//     SwiGLU gradient halves) by the op itself (its fp8_formats).
// Tensors are named as without the fusions (the Hugging Face weight name,
// `<layer>.input`, `<layer>.grad_output`), so fused and unfused steps carry
// the same state. With delayed scaling each quantized tensor gets an amax
// history and a scale as new arguments, and their llama.fp8_scale_update as
// new results. The lm_head GEMMs stay in the working precision unless the
// lm-head option asks for them.
//
//===----------------------------------------------------------------------===//

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Dialect/Llama/LlamaOps.h"
#include "llamac/Transforms/Passes.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/StringSet.h"

namespace mlir::llama {
#define GEN_PASS_DEF_LLAMAINSERTFP8
#include "llamac/Transforms/Passes.h.inc"
} // namespace mlir::llama

using namespace mlir;
using namespace mlir::llama;

namespace {

constexpr StringLiteral kE4M3 = "e4m3", kE5M2 = "e5m2";

/// One quantized tensor: its id and format, the amax this step measures
/// and, with delayed scaling, its state arguments.
struct TensorState {
  std::string id, format;
  Value amax;
  BlockArgument history, scale;
};

/// The weight of a fused op split as it is quantized: one block per Hugging
/// Face tensor when the weight's llama.param_parts name one per block, else
/// the whole weight as one tensor.
struct WeightBlocks {
  SmallVector<int64_t> rows; // empty: one block
  SmallVector<std::string> ids;
  /// The Linear layer of each block, `<name>` of `<name>.weight`.
  SmallVector<std::string> layers;
};

/// Quantizes one function.
class Inserter {
public:
  Inserter(func::FuncOp func, const LlamaInsertFP8Options &options)
      : func(func), body(func.getBody().front()), options(options),
        builder(func.getContext()),
        scalarType(RankedTensorType::get({}, builder.getF32Type())),
        historyType(RankedTensorType::get({int64_t(options.amaxHistory)},
                                          builder.getF32Type())) {}

  void run() {
    // Gradients: everything computed from the logit gradient.
    SmallVector<Operation *> gemmOps;
    for (Operation &op : body.without_terminator()) {
      bool isGradient = isa<CrossEntropyGradOp>(op) ||
                        llvm::any_of(op.getOperands(), [&](Value v) {
                          return gradients.contains(v);
                        });
      if (isGradient)
        gradients.insert(op.result_begin(), op.result_end());
      if (isa<MatmulOp, NormMatmulOp, GatedMLPOp, NormMatmulGradOp,
              GatedMLPGradOp>(op) &&
          (options.lmHead || !isLmHead(&op)))
        gemmOps.push_back(&op);
    }
    for (Operation *op : gemmOps) {
      if (auto matmul = dyn_cast<MatmulOp>(op))
        quantizeMatmul(matmul);
      else if (auto fused = dyn_cast<NormMatmulOp>(op))
        quantizeNormMatmul(fused);
      else if (auto fused = dyn_cast<NormMatmulGradOp>(op))
        quantizeNormMatmulGrad(fused);
      else if (auto fused = dyn_cast<GatedMLPOp>(op))
        quantizeGatedMLP(fused);
      else
        quantizeGatedMLPGrad(cast<GatedMLPGradOp>(op));
    }
    addStateUpdates();
  }

private:
  bool delayed() const { return options.scaling == "delayed"; }

  /// The lm_head GEMMs stay in the working precision (unless
  /// options.lmHead): the forward one feeds the loss, the backward ones read
  /// the logit gradient.
  static bool isLmHead(Operation *op) {
    for (Operation *user : op->getUsers())
      if (isa<CrossEntropyOp>(user))
        return true;
    return llvm::any_of(op->getOperands(), [](Value operand) {
      return bool(operand.getDefiningOp<CrossEntropyGradOp>());
    });
  }

  StringAttr paramName(Value value) {
    auto arg = dyn_cast<BlockArgument>(value);
    if (!arg || arg.getOwner() != &body)
      return nullptr;
    return func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), kParamAttr);
  }

  static std::string layerOf(StringRef weightName) {
    return weightName.rsplit(".weight").first.str();
  }

  std::string uniqueId(const std::string &id) {
    std::string unique = id;
    for (int n = 1; ids.contains(unique); ++n)
      unique = id + "." + std::to_string(n);
    ids.insert(unique);
    return unique;
  }

  /// A new quantized tensor; with delayed scaling, its history and scale
  /// arguments. Returns its index in `states`.
  size_t newState(const std::string &id, StringRef format) {
    TensorState state{uniqueId(id), format.str(), nullptr, nullptr, nullptr};
    if (delayed()) {
      unsigned index = func.getNumArguments();
      auto named = [&](StringRef attr) {
        return builder.getDictionaryAttr(
            builder.getNamedAttr(attr, builder.getStringAttr(state.id)));
      };
      // A func.func takes arguments of any type: inserting cannot fail.
      Location loc = func.getLoc();
      (void)func.insertArgument(index, historyType, named(kFP8AmaxHistoryAttr),
                                loc);
      (void)func.insertArgument(index + 1, scalarType, named(kFP8ScaleAttr),
                                loc);
      state.history = body.getArgument(index);
      state.scale = body.getArgument(index + 1);
    }
    states.push_back(std::move(state));
    return states.size() - 1;
  }

  /// `count` amax result types.
  SmallVector<Type> amaxTypes(size_t count) {
    return SmallVector<Type>(count, scalarType);
  }

  /// The scales of `indices` (none with current scaling).
  SmallVector<Value> scalesOf(ArrayRef<size_t> indices) {
    SmallVector<Value> scales;
    if (delayed())
      for (size_t index : indices)
        scales.push_back(states[index].scale);
    return scales;
  }

  /// `value` quantized to `format` with one scale per row block (`rows`,
  /// empty: one block) named by `blockIds`; the same quantized value for
  /// every GEMM that reads `value`.
  Value quantize(Value value, ArrayRef<int64_t> rows,
                 ArrayRef<std::string> blockIds, StringRef format,
                 Location loc) {
    auto found = quantizedValues.find(value);
    if (found != quantizedValues.end())
      return found->second;
    SmallVector<size_t> blocks;
    for (const std::string &id : blockIds)
      blocks.push_back(newState(id, format));
    if (isa<BlockArgument>(value))
      builder.setInsertionPointToStart(&body);
    else
      builder.setInsertionPointAfterValue(value);
    auto op = FP8QuantizeOp::create(
        builder, loc, value.getType(), amaxTypes(blocks.size()), value,
        scalesOf(blocks), format, options.margin,
        rows.empty() ? nullptr : builder.getDenseI64ArrayAttr(rows));
    for (auto [index, amax] : llvm::zip_equal(blocks, op.getAmaxes()))
      states[index].amax = amax;
    quantizedValues[value] = op.getResult();
    return op.getResult();
  }

  /// A plain tensor with an id of its own.
  Value quantize(Value value, const std::string &id, StringRef format,
                 Location loc) {
    return quantize(value, {}, {id}, format, loc);
  }

  /// Each operand of a Linear layer's GEMM: the layer's weight by its name,
  /// a gradient as `<layer>.grad_output`, an activation as `<layer>.input`.
  void quantizeMatmul(MatmulOp matmul) {
    // The layer: the weight's name without ".weight", when one operand is a
    // parameter (forward and dgrad GEMMs, which come before the wgrad
    // reading the same activation and gradient).
    std::string layer = "gemm";
    for (Value operand : matmul->getOperands())
      if (StringAttr name = paramName(operand))
        layer = layerOf(name.getValue());
    for (OpOperand &use : matmul->getOpOperands()) {
      Value value = use.get();
      if (StringAttr name = paramName(value))
        use.set(quantize(value, name.str(), kE4M3, matmul.getLoc()));
      else if (gradients.contains(value))
        use.set(
            quantize(value, layer + ".grad_output", kE5M2, matmul.getLoc()));
      else
        use.set(quantize(value, layer + ".input", kE4M3, matmul.getLoc()));
    }
  }

  /// The blocks of a fused op's weight whose Linear layers have output
  /// widths `widths`.
  WeightBlocks weightBlocks(Value weight, ArrayRef<int64_t> widths) {
    WeightBlocks blocks;
    StringAttr name = paramName(weight);
    std::string whole = name ? name.str() : "gemm.weight";
    auto arg = dyn_cast<BlockArgument>(weight);
    auto parts = name ? func.getArgAttrOfType<ArrayAttr>(arg.getArgNumber(),
                                                         kParamPartsAttr)
                      : nullptr;
    if (parts && parts.size() == widths.size() && widths.size() > 1) {
      blocks.rows.assign(widths.begin(), widths.end());
      for (Attribute part : parts)
        blocks.ids.push_back(cast<StringAttr>(part).str());
    } else {
      blocks.ids.push_back(whole);
    }
    for (const std::string &id : blocks.ids)
      blocks.layers.push_back(layerOf(id));
    return blocks;
  }

  Value quantizeWeight(Value weight, const WeightBlocks &blocks, Location loc) {
    return quantize(weight, blocks.rows, blocks.ids, kE4M3, loc);
  }

  /// The state of a fused op's normalized input: the forward op's, which
  /// its backward op (same weight) reuses, or a new one.
  size_t normInputState(Value weight, const WeightBlocks &blocks) {
    auto found = normInputs.find(weight);
    if (found != normInputs.end())
      return found->second;
    size_t index = newState(blocks.layers.front() + ".input", kE4M3);
    normInputs[weight] = index;
    return index;
  }

  /// Replaces `old`'s results by `results` (gradients stay gradients) and
  /// erases it.
  void replace(Operation *old, ValueRange results) {
    for (auto [from, to] : llvm::zip(old->getResults(), results)) {
      if (gradients.contains(from))
        gradients.insert(to);
      from.replaceAllUsesWith(to);
    }
    old->erase();
  }

  ArrayAttr formats(ArrayRef<StringRef> names) {
    return builder.getStrArrayAttr(names);
  }

  /// The normalized input quantized inside, the weight per Linear layer.
  void quantizeNormMatmul(NormMatmulOp op) {
    SmallVector<int64_t> widths;
    for (Value output : op.getOutputs())
      widths.push_back(cast<RankedTensorType>(output.getType()).getDimSize(1));
    WeightBlocks blocks = weightBlocks(op.getWeight(), widths);
    Value weight = quantizeWeight(op.getWeight(), blocks, op.getLoc());
    size_t input = normInputState(op.getWeight(), blocks);
    builder.setInsertionPoint(op);
    auto fused = NormMatmulOp::create(
        builder, op.getLoc(), op.getOutputs().getTypes(), amaxTypes(1),
        op.getInput(), op.getNormWeight(), weight, scalesOf({input}),
        op.getEpsAttr(), formats({kE4M3}),
        builder.getI64IntegerAttr(options.margin));
    states[input].amax = fused.getFp8Amaxes()[0];
    replace(op, fused.getOutputs());
  }

  /// The incoming gradient of each Linear layer, the weight and the
  /// normalized input as in the forward.
  void quantizeNormMatmulGrad(NormMatmulGradOp op) {
    SmallVector<int64_t> widths;
    for (Value grad : op.getGrads())
      widths.push_back(cast<RankedTensorType>(grad.getType()).getDimSize(1));
    WeightBlocks blocks = weightBlocks(op.getWeight(), widths);
    SmallVector<Value> grads;
    for (auto [index, grad] : llvm::enumerate(op.getGrads())) {
      const std::string &layer =
          blocks.layers[blocks.layers.size() > 1 ? index : 0];
      grads.push_back(
          quantize(grad, layer + ".grad_output", kE5M2, op.getLoc()));
    }
    Value weight = quantizeWeight(op.getWeight(), blocks, op.getLoc());
    bool fresh = !normInputs.count(op.getWeight());
    size_t input = normInputState(op.getWeight(), blocks);
    builder.setInsertionPoint(op);
    auto fused = NormMatmulGradOp::create(
        builder, op.getLoc(), op.getInputGrad().getType(),
        op.getNormWeightGrad().getType(), op.getWeightGrad().getType(),
        amaxTypes(1), grads, op.getInput(), op.getNormWeight(), weight,
        scalesOf({input}), op.getEpsAttr(), formats({kE4M3}),
        builder.getI64IntegerAttr(options.margin));
    if (fresh)
      states[input].amax = fused.getFp8Amaxes()[0];
    replace(op, {fused.getInputGrad(), fused.getNormWeightGrad(),
                 fused.getWeightGrad()});
  }

  /// The gate and up rows of a gated MLP's weight.
  WeightBlocks gatedWeightBlocks(Value weight) {
    int64_t width = cast<RankedTensorType>(weight.getType()).getDimSize(0) / 2;
    return weightBlocks(weight, {width, width});
  }

  /// The (normalized) input quantized inside, the weight per projection.
  void quantizeGatedMLP(GatedMLPOp op) {
    WeightBlocks blocks = gatedWeightBlocks(op.getWeight());
    Value weight = quantizeWeight(op.getWeight(), blocks, op.getLoc());
    size_t input = normInputState(op.getWeight(), blocks);
    builder.setInsertionPoint(op);
    auto fused = GatedMLPOp::create(
        builder, op.getLoc(), op.getResult().getType(),
        op.getGateUp().getType(), amaxTypes(1), op.getInput(), weight,
        op.getNormWeight(), scalesOf({input}), op.getEpsAttr(),
        formats({kE4M3}), builder.getI64IntegerAttr(options.margin));
    states[input].amax = fused.getFp8Amaxes()[0];
    replace(op, {fused.getResult(), fused.getGateUp()});
  }

  /// The input as in the forward, the gate and up gradient halves inside
  /// (each a tensor of its own, as the unfused projections' incoming
  /// gradients), the weight per projection.
  void quantizeGatedMLPGrad(GatedMLPGradOp op) {
    WeightBlocks blocks = gatedWeightBlocks(op.getWeight());
    Value weight = quantizeWeight(op.getWeight(), blocks, op.getLoc());
    bool fresh = !normInputs.count(op.getWeight());
    size_t input = normInputState(op.getWeight(), blocks);
    const std::string &upLayer = blocks.layers.back();
    size_t gateGrad = newState(blocks.layers.front() + ".grad_output", kE5M2);
    size_t upGrad = newState(upLayer + ".grad_output", kE5M2);
    Value norm = op.getNormWeight();
    builder.setInsertionPoint(op);
    auto fused = GatedMLPGradOp::create(
        builder, op.getLoc(), op.getInputGrad().getType(),
        op.getWeightGrad().getType(), norm ? norm.getType() : Type(),
        amaxTypes(3), op.getGrad(), op.getInput(), op.getGateUp(), weight, norm,
        scalesOf({input, gateGrad, upGrad}), op.getEpsAttr(),
        formats({kE4M3, kE5M2, kE5M2}),
        builder.getI64IntegerAttr(options.margin));
    if (fresh)
      states[input].amax = fused.getFp8Amaxes()[0];
    states[gateGrad].amax = fused.getFp8Amaxes()[1];
    states[upGrad].amax = fused.getFp8Amaxes()[2];
    SmallVector<Value> results{fused.getInputGrad(), fused.getWeightGrad()};
    if (norm)
      results.push_back(fused.getNormWeightGrad());
    replace(op, results);
  }

  /// With delayed scaling, each state's update, returned beside the
  /// existing results.
  void addStateUpdates() {
    if (!delayed() || states.empty())
      return;
    auto ret = cast<func::ReturnOp>(body.getTerminator());
    builder.setInsertionPoint(ret);
    SmallVector<Value> results(ret.getOperands());
    SmallVector<DictionaryAttr> resultAttrs;
    for (unsigned i = 0; i < func.getNumResults(); ++i) {
      DictionaryAttr attrs = func.getResultAttrDict(i);
      resultAttrs.push_back(attrs ? attrs : builder.getDictionaryAttr({}));
    }
    Location loc = func.getLoc();
    for (TensorState &state : states) {
      auto update = FP8ScaleUpdateOp::create(
          builder, loc, historyType, scalarType, state.history, state.amax,
          state.scale, builder.getStringAttr(state.format),
          builder.getI64IntegerAttr(options.margin),
          builder.getStringAttr(options.amaxComputeAlgo));
      auto named = [&](StringRef attr) {
        return builder.getDictionaryAttr(
            builder.getNamedAttr(attr, builder.getStringAttr(state.id)));
      };
      results.push_back(update.getNewAmaxHistory());
      resultAttrs.push_back(named(kNewFP8AmaxHistoryAttr));
      results.push_back(update.getNewScale());
      resultAttrs.push_back(named(kNewFP8ScaleAttr));
    }
    func::ReturnOp::create(builder, ret.getLoc(), results);
    ret.erase();
    func.setType(builder.getFunctionType(func.getArgumentTypes(),
                                         ValueRange(results).getTypes()));
    func.setAllResultAttrs(resultAttrs);
  }

  func::FuncOp func;
  Block &body;
  const LlamaInsertFP8Options &options;
  OpBuilder builder;
  RankedTensorType scalarType, historyType;

  DenseSet<Value> gradients;
  std::vector<TensorState> states;
  llvm::StringSet<> ids;
  /// Each quantized tensor's llama.fp8_quantize result.
  DenseMap<Value, Value> quantizedValues;
  /// The state of the normalized input of the fused op over each weight.
  DenseMap<Value, size_t> normInputs;
};

struct LlamaInsertFP8Pass
    : public mlir::llama::impl::LlamaInsertFP8Base<LlamaInsertFP8Pass> {
  using Base::Base;

  void runOnOperation() override {
    func::FuncOp func = getOperation();
    if (scaling != "delayed" && scaling != "current") {
      func.emitError("llama-insert-fp8: scaling must be delayed or current, "
                     "got '")
          << scaling << "'";
      return signalPassFailure();
    }
    if (amaxComputeAlgo != "max" && amaxComputeAlgo != "most_recent") {
      func.emitError("llama-insert-fp8: amax-compute-algo must be max or "
                     "most_recent, got '")
          << amaxComputeAlgo << "'";
      return signalPassFailure();
    }
    if (amaxHistory < 1) {
      func.emitError("llama-insert-fp8: amax-history must be at least 1");
      return signalPassFailure();
    }
    if (!func.getBody().hasOneBlock()) {
      func.emitError("llama-insert-fp8 expects a single-block function");
      return signalPassFailure();
    }
    LlamaInsertFP8Options options;
    options.scaling = scaling;
    options.margin = margin;
    options.amaxHistory = amaxHistory;
    options.amaxComputeAlgo = amaxComputeAlgo;
    options.lmHead = lmHead;
    Inserter(func, options).run();
  }
};

} // namespace

std::unique_ptr<Pass> mlir::llama::createLlamaInsertFP8Pass() {
  return std::make_unique<LlamaInsertFP8Pass>();
}

std::unique_ptr<Pass>
mlir::llama::createLlamaInsertFP8Pass(const LlamaInsertFP8Options &options) {
  return std::make_unique<LlamaInsertFP8Pass>(options);
}
