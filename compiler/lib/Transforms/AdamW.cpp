//===- AdamW.cpp - Builds the optimizer step of the train step ------------===//
//
// Runs after llama-autodiff. The differentiated function
// `(params, input_ids, labels) -> (loss, grads)` becomes
// `@forward_backward`, unchanged but for its name, and the pass adds
//
//   @optimizer_step(params, grads, exp_avg, exp_avg_sq, hyperparameters)
//       -> (grad_norm, new params, new exp_avg, new exp_avg_sq)
//
// which clips the gradients by their global norm (torch's clip_grad_norm_)
// and applies one AdamW update per parameter. Keeping the two apart lets the
// driver run several micro-batches per optimizer step (gradient
// accumulation) and read the gradients before clipping.
//
//===----------------------------------------------------------------------===//

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Dialect/Llama/LlamaOps.h"
#include "llamac/Transforms/Passes.h"

#include "mlir/IR/SymbolTable.h"

namespace mlir::llama {
#define GEN_PASS_DEF_LLAMAADAMW
#include "llamac/Transforms/Passes.h.inc"
} // namespace mlir::llama

using namespace mlir;
using namespace mlir::llama;

namespace {

/// The scalar hyperparameter arguments of @optimizer_step, in order.
constexpr StringLiteral kHyperparameters[] = {
    "lr", "beta1", "beta2", "eps", "weight_decay", "step", "max_grad_norm"};

bool hasGradResults(func::FuncOp func) {
  for (unsigned i = 0; i < func.getNumResults(); ++i)
    if (func.getResultAttr(i, kGradAttr))
      return true;
  return false;
}

struct LlamaAdamWPass
    : public mlir::llama::impl::LlamaAdamWBase<LlamaAdamWPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<func::FuncOp> differentiated;
    for (func::FuncOp func : module.getOps<func::FuncOp>())
      if (hasGradResults(func))
        differentiated.push_back(func);
    if (differentiated.empty()) {
      auto funcs = module.getOps<func::FuncOp>();
      Operation *at = funcs.empty() ? module.getOperation()
                                    : (*funcs.begin()).getOperation();
      at->emitError("llama-adamw expects llama.grad results; run "
                    "llama-autodiff first");
      return signalPassFailure();
    }
    if (differentiated.size() > 1) {
      differentiated[1].emitError()
          << "llama-adamw expects one function with llama.grad results, "
             "found @"
          << differentiated[0].getSymName() << " and @"
          << differentiated[1].getSymName();
      return signalPassFailure();
    }
    if (failed(buildOptimizerStep(module, differentiated.front())))
      signalPassFailure();
  }

  LogicalResult buildOptimizerStep(ModuleOp module, func::FuncOp forward) {
    Location loc = forward.getLoc();
    for (StringRef name : {kForwardBackwardName, kOptimizerStepName}) {
      Operation *existing = SymbolTable::lookupSymbolIn(module, name);
      if (existing && existing != forward.getOperation())
        return existing->emitError()
               << "llama-adamw: the module already has a symbol @" << name;
    }

    // Parameter arguments by name (with all their attributes, so that
    // llama.param_parts of fused weights carries over), and the gradients.
    llvm::StringMap<unsigned> paramIndex;
    for (unsigned i = 0; i < forward.getNumArguments(); ++i)
      if (auto name = forward.getArgAttrOfType<StringAttr>(i, kParamAttr))
        paramIndex[name.getValue()] = i;
    SmallVector<std::pair<StringAttr, Type>> grads;
    for (unsigned i = 0; i < forward.getNumResults(); ++i) {
      auto name = forward.getResultAttrOfType<StringAttr>(i, kGradAttr);
      if (!name)
        continue;
      auto found = paramIndex.find(name.getValue());
      if (found == paramIndex.end())
        return forward.emitError() << "gradient of unknown parameter " << name;
      Type paramType = forward.getArgument(found->second).getType();
      if (paramType != forward.getResultTypes()[i])
        return forward.emitError() << "gradient of " << name << " has type "
                                   << forward.getResultTypes()[i]
                                   << ", but the parameter has " << paramType;
      grads.push_back({name, paramType});
    }

    forward.setSymName(kForwardBackwardName);

    OpBuilder builder(module.getContext());
    auto named = [&](StringRef attr, Attribute value) {
      return builder.getDictionaryAttr(builder.getNamedAttr(attr, value));
    };
    SmallVector<Type> argTypes;
    SmallVector<DictionaryAttr> argAttrs;
    for (auto &[name, type] : grads) {
      argTypes.push_back(type);
      argAttrs.push_back(
          forward.getArgAttrDict(paramIndex.lookup(name.getValue())));
    }
    for (StringRef attr : {kGradAttr, kExpAvgAttr, kExpAvgSqAttr})
      for (auto &[name, type] : grads) {
        argTypes.push_back(type);
        argAttrs.push_back(named(attr, name));
      }
    auto scalar = RankedTensorType::get({}, builder.getF32Type());
    for (StringLiteral name : kHyperparameters) {
      argTypes.push_back(scalar);
      argAttrs.push_back(
          named(kHyperparameterAttr, builder.getStringAttr(name)));
    }

    builder.setInsertionPointAfter(forward);
    auto step = func::FuncOp::create(builder, loc, kOptimizerStepName,
                                     builder.getFunctionType(argTypes, {}));
    step.setAllArgAttrs(argAttrs);
    Block *body = step.addEntryBlock();
    builder.setInsertionPointToStart(body);

    size_t count = grads.size();
    auto args = body->getArguments();
    ValueRange params = args.slice(0, count);
    ValueRange gradValues = args.slice(count, count);
    ValueRange expAvgs = args.slice(2 * count, count);
    ValueRange expAvgSqs = args.slice(3 * count, count);
    ValueRange hyper = args.slice(4 * count, std::size(kHyperparameters));

    // The norm and the clip factor in f32, or f64 for an f64 model.
    Type normElement = builder.getF32Type();
    for (auto &entry : grads)
      if (cast<ShapedType>(entry.second).getElementType().isF64())
        normElement = builder.getF64Type();
    auto normType = RankedTensorType::get({}, normElement);
    Value norm = GlobalNormOp::create(builder, loc, normType, gradValues);
    Value scale = ClipScaleOp::create(builder, loc, normType, norm, hyper[6]);
    SmallVector<Value> newParams, newExpAvgs, newExpAvgSqs;
    for (size_t i = 0; i < count; ++i) {
      Type type = grads[i].second;
      auto update = AdamWOp::create(builder, loc, type, type, type, params[i],
                                    gradValues[i], expAvgs[i], expAvgSqs[i],
                                    hyper[0], hyper[1], hyper[2], hyper[3],
                                    hyper[4], hyper[5], scale);
      newParams.push_back(update.getNewParam());
      newExpAvgs.push_back(update.getNewExpAvg());
      newExpAvgSqs.push_back(update.getNewExpAvgSq());
    }

    SmallVector<Value> results{norm};
    SmallVector<DictionaryAttr> resultAttrs{
        named(kGradNormAttr, builder.getUnitAttr())};
    auto append = [&](ArrayRef<Value> values, StringRef attr) {
      for (auto [value, entry] : llvm::zip_equal(values, grads)) {
        results.push_back(value);
        resultAttrs.push_back(named(attr, entry.first));
      }
    };
    append(newParams, kNewParamAttr);
    append(newExpAvgs, kNewExpAvgAttr);
    append(newExpAvgSqs, kNewExpAvgSqAttr);
    func::ReturnOp::create(builder, loc, results);
    step.setType(
        builder.getFunctionType(argTypes, ValueRange(results).getTypes()));
    step.setAllResultAttrs(resultAttrs);
    return success();
  }
};

} // namespace

std::unique_ptr<Pass> mlir::llama::createLlamaAdamWPass() {
  return std::make_unique<LlamaAdamWPass>();
}
