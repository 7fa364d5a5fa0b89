//===- Autodiff.cpp - Reverse-mode differentiation of the loss ------------===//
//
// Walks the forward function from the loss back to the parameters. Each op
// emits its own backward through VJPOpInterface; this pass only orders the
// calls, sums cotangents of values with several uses and returns one gradient
// per parameter.
//
//===----------------------------------------------------------------------===//

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Dialect/Llama/LlamaOps.h"
#include "llamac/Transforms/Passes.h"

#include "mlir/IR/BuiltinAttributes.h"

namespace mlir::llama {
#define GEN_PASS_DEF_LLAMAAUTODIFF
#include "llamac/Transforms/Passes.h.inc"
} // namespace mlir::llama

using namespace mlir;
using namespace mlir::llama;

namespace {

Value filledConstant(OpBuilder &builder, Location loc, Type type,
                     double value) {
  auto tensor = cast<RankedTensorType>(type);
  auto element = FloatAttr::get(tensor.getElementType(), value);
  return arith::ConstantOp::create(builder, loc,
                                   DenseElementsAttr::get(tensor, element));
}

struct LlamaAutodiffPass
    : public mlir::llama::impl::LlamaAutodiffBase<LlamaAutodiffPass> {
  void runOnOperation() override {
    func::FuncOp func = getOperation();
    if (failed(differentiate(func)))
      signalPassFailure();
  }

  LogicalResult differentiate(func::FuncOp func) {
    if (!func.getBody().hasOneBlock())
      return func.emitError("llama-autodiff expects a single-block function");
    Block &body = func.getBody().front();
    auto ret = cast<func::ReturnOp>(body.getTerminator());
    if (ret.getNumOperands() != 1 ||
        cast<RankedTensorType>(ret.getOperand(0).getType()).getRank() != 0)
      return func.emitError("llama-autodiff expects the function to return "
                            "one scalar loss and nothing else");

    OpBuilder builder(ret);
    Location loc = func.getLoc();
    DenseMap<Value, Value> cotangents;
    auto accumulate = [&](Value value, Value cotangent) {
      Value &slot = cotangents[value];
      slot = slot ? AddOp::create(builder, loc, slot.getType(), slot, cotangent)
                        .getResult()
                  : cotangent;
    };
    Value loss = ret.getOperand(0);
    accumulate(loss, filledConstant(builder, loc, loss.getType(), 1.0));

    for (Operation &op :
         llvm::make_early_inc_range(llvm::reverse(body.without_terminator()))) {
      SmallVector<Value> resultCotangents;
      bool reachesLoss = false;
      for (Value result : op.getResults()) {
        resultCotangents.push_back(cotangents.lookup(result));
        reachesLoss |= resultCotangents.back() != nullptr;
      }
      if (!reachesLoss || op.getNumOperands() == 0)
        continue;
      auto vjp = dyn_cast<VJPOpInterface>(op);
      if (!vjp)
        return op.emitError("llama-autodiff: op has no VJP");
      SmallVector<Value> operandCotangents =
          vjp.buildVJP(builder, resultCotangents);
      for (auto [operand, cotangent] :
           llvm::zip_equal(op.getOperands(), operandCotangents))
        if (cotangent)
          accumulate(operand, cotangent);
    }

    SmallVector<Value> results{loss};
    SmallVector<Type> resultTypes{loss.getType()};
    SmallVector<DictionaryAttr> resultAttrs{builder.getDictionaryAttr(
        builder.getNamedAttr(kLossAttr, builder.getUnitAttr()))};
    for (BlockArgument arg : func.getArguments()) {
      auto name =
          func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), kParamAttr);
      if (!name)
        continue;
      Value grad = cotangents.lookup(arg);
      if (!grad)
        grad = filledConstant(builder, loc, arg.getType(), 0.0);
      results.push_back(grad);
      resultTypes.push_back(grad.getType());
      resultAttrs.push_back(
          builder.getDictionaryAttr(builder.getNamedAttr(kGradAttr, name)));
    }
    func::ReturnOp::create(builder, ret.getLoc(), results);
    ret.erase();
    func.setType(builder.getFunctionType(func.getArgumentTypes(), resultTypes));
    func.setAllResultAttrs(resultAttrs);
    return success();
  }
};

} // namespace

std::unique_ptr<Pass> mlir::llama::createLlamaAutodiffPass() {
  return std::make_unique<LlamaAutodiffPass>();
}
