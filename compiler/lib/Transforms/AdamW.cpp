//===- AdamW.cpp - Appends the optimizer update to the step ---------------===//
//
// Turns `(params, data) -> (loss, grads)` into the whole train step
// `(params, data, moments, hyperparameters) -> (loss, new params, new moments)`.
// Gradients stop being results, so later passes may keep them out of memory.
//
//===----------------------------------------------------------------------===//

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Dialect/Llama/LlamaOps.h"
#include "llamac/Transforms/Passes.h"

namespace mlir::llama {
#define GEN_PASS_DEF_LLAMAADAMW
#include "llamac/Transforms/Passes.h.inc"
} // namespace mlir::llama

using namespace mlir;
using namespace mlir::llama;

namespace {

constexpr StringLiteral kHyperparameters[] = {"lr",  "beta1",        "beta2",
                                              "eps", "weight_decay", "step"};

struct LlamaAdamWPass : public mlir::llama::impl::LlamaAdamWBase<LlamaAdamWPass> {
  void runOnOperation() override {
    if (failed(appendOptimizer(getOperation())))
      signalPassFailure();
  }

  LogicalResult appendOptimizer(func::FuncOp func) {
    Block &body = func.getBody().front();
    auto ret = cast<func::ReturnOp>(body.getTerminator());
    OpBuilder builder(ret);
    Location loc = func.getLoc();

    // Parameter arguments by name, and the gradient results to replace.
    llvm::StringMap<BlockArgument> params;
    for (BlockArgument arg : func.getArguments())
      if (auto name = func.getArgAttrOfType<StringAttr>(arg.getArgNumber(),
                                                        kParamAttr))
        params[name.getValue()] = arg;
    SmallVector<std::pair<StringAttr, Value>> grads;
    SmallVector<Value> kept;
    SmallVector<DictionaryAttr> keptAttrs;
    for (auto [index, value] : llvm::enumerate(ret.getOperands())) {
      if (auto name = func.getResultAttrOfType<StringAttr>(index, kGradAttr)) {
        if (!params.count(name.getValue()))
          return func.emitError() << "gradient of unknown parameter " << name;
        grads.push_back({name, value});
        continue;
      }
      kept.push_back(value);
      keptAttrs.push_back(func.getResultAttrDict(index));
    }
    if (grads.empty())
      return func.emitError("llama-adamw expects llama.grad results; run "
                            "llama-autodiff first");

    auto named = [&](StringRef attr, Attribute value) {
      return builder.getDictionaryAttr(builder.getNamedAttr(attr, value));
    };
    auto addArgument = [&](Type type, DictionaryAttr attrs) -> Value {
      unsigned index = func.getNumArguments();
      if (failed(func.insertArgument(index, type, attrs, loc)))
        return nullptr;
      return func.getArgument(index);
    };

    SmallVector<Value> expAvgs, expAvgSqs;
    for (auto &[name, grad] : grads)
      expAvgs.push_back(addArgument(grad.getType(), named(kExpAvgAttr, name)));
    for (auto &[name, grad] : grads)
      expAvgSqs.push_back(
          addArgument(grad.getType(), named(kExpAvgSqAttr, name)));
    auto scalar = RankedTensorType::get({}, builder.getF32Type());
    SmallVector<Value> hyper;
    for (StringLiteral name : kHyperparameters)
      hyper.push_back(addArgument(
          scalar, named(kHyperparameterAttr, builder.getStringAttr(name))));
    if (llvm::is_contained(expAvgs, nullptr) ||
        llvm::is_contained(expAvgSqs, nullptr) ||
        llvm::is_contained(hyper, nullptr))
      return func.emitError("llama-adamw could not add arguments");

    SmallVector<Value> newParams, newExpAvgs, newExpAvgSqs;
    for (auto [index, entry] : llvm::enumerate(grads)) {
      auto &[name, grad] = entry;
      Type type = grad.getType();
      auto update = AdamWOp::create(
          builder, loc, type, type, type, params[name.getValue()], grad,
          expAvgs[index], expAvgSqs[index], hyper[0], hyper[1], hyper[2],
          hyper[3], hyper[4], hyper[5]);
      newParams.push_back(update.getNewParam());
      newExpAvgs.push_back(update.getNewExpAvg());
      newExpAvgSqs.push_back(update.getNewExpAvgSq());
    }

    SmallVector<Value> results(kept);
    SmallVector<DictionaryAttr> resultAttrs(keptAttrs);
    auto append = [&](ArrayRef<Value> values, StringRef attr) {
      for (auto [value, entry] : llvm::zip_equal(values, grads)) {
        results.push_back(value);
        resultAttrs.push_back(named(attr, entry.first));
      }
    };
    append(newParams, kNewParamAttr);
    append(newExpAvgs, kNewExpAvgAttr);
    append(newExpAvgSqs, kNewExpAvgSqAttr);
    func::ReturnOp::create(builder, ret.getLoc(), results);
    ret.erase();
    func.setType(builder.getFunctionType(func.getArgumentTypes(),
                                         ValueRange(results).getTypes()));
    func.setAllResultAttrs(resultAttrs);
    return success();
  }
};

} // namespace

std::unique_ptr<Pass> mlir::llama::createLlamaAdamWPass() {
  return std::make_unique<LlamaAdamWPass>();
}
