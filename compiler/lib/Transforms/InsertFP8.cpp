//===- InsertFP8.cpp - FP8 operands for the linear layers' GEMMs ----------===//
//
// After llama-autodiff, every llama.matmul of the function is a GEMM of a
// Linear layer: a forward x Wᵀ, a dgrad dY W or a wgrad dYᵀ x. Each operand
// is replaced by a llama.fp8_quantize of it (E4M3 for weights and
// activations, E5M2 for gradients), each tensor quantized once. With delayed
// scaling each quantized tensor gets an amax history and a scale as new
// arguments, and their llama.fp8_scale_update as new results.
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

/// One quantized tensor and, with delayed scaling, its state.
struct Quantized {
  std::string id;
  std::string format;
  FP8QuantizeOp op;
  BlockArgument history, scale;
};

struct LlamaInsertFP8Pass
    : public mlir::llama::impl::LlamaInsertFP8Base<LlamaInsertFP8Pass> {
  using Base::Base;

  void runOnOperation() override {
    if (failed(insert(getOperation())))
      signalPassFailure();
  }

  /// The lm_head GEMMs stay in the working precision: the forward one
  /// feeds the loss, the backward ones read the logit gradient.
  static bool isLmHead(MatmulOp matmul) {
    for (Operation *user : matmul.getResult().getUsers())
      if (isa<CrossEntropyOp>(user))
        return true;
    for (Value operand : matmul->getOperands())
      if (operand.getDefiningOp<CrossEntropyGradOp>())
        return true;
    return false;
  }

  LogicalResult insert(func::FuncOp func) {
    if (scaling != "delayed" && scaling != "current")
      return func.emitError("llama-insert-fp8: scaling must be delayed or "
                            "current, got '")
             << scaling << "'";
    if (amaxComputeAlgo != "max" && amaxComputeAlgo != "most_recent")
      return func.emitError("llama-insert-fp8: amax-compute-algo must be max "
                            "or most_recent, got '")
             << amaxComputeAlgo << "'";
    if (amaxHistory < 1)
      return func.emitError("llama-insert-fp8: amax-history must be at "
                            "least 1");
    if (!func.getBody().hasOneBlock())
      return func.emitError("llama-insert-fp8 expects a single-block "
                            "function");
    Block &body = func.getBody().front();
    bool delayed = scaling == "delayed";

    // Gradients: everything computed from the logit gradient.
    DenseSet<Value> gradients;
    SmallVector<MatmulOp> matmuls;
    for (Operation &op : body.without_terminator()) {
      if (isa<NormMatmulOp, NormMatmulGradOp, GatedMLPOp, GatedMLPGradOp>(op))
        return op.emitError("llama-insert-fp8 does not quantize the GEMMs of "
                            "fused ops; run it without llama-fuse-norm-linear "
                            "and llama-fuse-gated-mlp");
      bool isGradient = isa<CrossEntropyGradOp>(op) ||
                        llvm::any_of(op.getOperands(), [&](Value v) {
                          return gradients.contains(v);
                        });
      if (isGradient)
        gradients.insert(op.result_begin(), op.result_end());
      if (auto matmul = dyn_cast<MatmulOp>(op))
        if (!isLmHead(matmul))
          matmuls.push_back(matmul);
    }

    MLIRContext *context = func.getContext();
    OpBuilder builder(context);
    Location loc = func.getLoc();
    auto scalarType = RankedTensorType::get({}, builder.getF32Type());
    auto historyType =
        RankedTensorType::get({int64_t(amaxHistory)}, builder.getF32Type());
    auto paramName = [&](Value value) -> StringAttr {
      auto arg = dyn_cast<BlockArgument>(value);
      if (!arg || arg.getOwner() != &body)
        return nullptr;
      return func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), kParamAttr);
    };

    DenseMap<Value, unsigned> quantizedIndex;
    std::vector<Quantized> quantized;
    llvm::StringSet<> ids;
    auto uniqueId = [&](std::string id) {
      std::string unique = id;
      for (int n = 1; ids.contains(unique); ++n)
        unique = id + "." + std::to_string(n);
      ids.insert(unique);
      return unique;
    };

    for (MatmulOp matmul : matmuls) {
      // The layer: the weight's name without ".weight", when one operand
      // is a parameter (forward and dgrad GEMMs, which come before the
      // wgrad reading the same activation and gradient).
      std::string layer;
      for (Value operand : matmul->getOperands())
        if (StringAttr name = paramName(operand))
          layer = StringRef(name.getValue()).rsplit(".weight").first.str();
      for (OpOperand &use : matmul->getOpOperands()) {
        Value value = use.get();
        auto found = quantizedIndex.find(value);
        if (found != quantizedIndex.end()) {
          use.set(quantized[found->second].op.getResult());
          continue;
        }
        std::string id, format = "e4m3";
        if (StringAttr name = paramName(value)) {
          id = name.str();
        } else if (gradients.contains(value)) {
          format = "e5m2";
          id = (layer.empty() ? "gemm" : layer) + ".grad_output";
        } else {
          id = (layer.empty() ? "gemm" : layer) + ".input";
        }
        Quantized entry{uniqueId(id), format, nullptr, nullptr, nullptr};
        Value scale;
        if (delayed) {
          unsigned index = func.getNumArguments();
          auto named = [&](StringRef attr) {
            return builder.getDictionaryAttr(
                builder.getNamedAttr(attr, builder.getStringAttr(entry.id)));
          };
          if (failed(func.insertArgument(index, historyType,
                                         named(kFP8AmaxHistoryAttr), loc)) ||
              failed(func.insertArgument(index + 1, scalarType,
                                         named(kFP8ScaleAttr), loc)))
            return func.emitError("llama-insert-fp8: cannot add arguments");
          entry.history = body.getArgument(index);
          entry.scale = body.getArgument(index + 1);
          scale = entry.scale;
        }
        if (isa<BlockArgument>(value))
          builder.setInsertionPointToStart(&body);
        else
          builder.setInsertionPointAfterValue(value);
        entry.op = FP8QuantizeOp::create(
            builder, matmul.getLoc(), value.getType(), scalarType, value, scale,
            builder.getStringAttr(format), builder.getI64IntegerAttr(margin));
        use.set(entry.op.getResult());
        quantizedIndex[value] = quantized.size();
        quantized.push_back(std::move(entry));
      }
    }
    if (!delayed || quantized.empty())
      return success();

    // The state's update, returned beside the existing results.
    auto ret = cast<func::ReturnOp>(body.getTerminator());
    builder.setInsertionPoint(ret);
    SmallVector<Value> results(ret.getOperands());
    SmallVector<DictionaryAttr> resultAttrs;
    for (unsigned i = 0; i < func.getNumResults(); ++i) {
      DictionaryAttr attrs = func.getResultAttrDict(i);
      resultAttrs.push_back(attrs ? attrs : builder.getDictionaryAttr({}));
    }
    for (Quantized &entry : quantized) {
      auto update = FP8ScaleUpdateOp::create(
          builder, loc, historyType, scalarType, entry.history,
          entry.op.getAmax(), entry.scale, builder.getStringAttr(entry.format),
          builder.getI64IntegerAttr(margin),
          builder.getStringAttr(amaxComputeAlgo));
      auto named = [&](StringRef attr) {
        return builder.getDictionaryAttr(
            builder.getNamedAttr(attr, builder.getStringAttr(entry.id)));
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
    return success();
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
