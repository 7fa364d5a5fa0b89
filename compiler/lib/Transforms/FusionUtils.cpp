//===- FusionUtils.cpp - Shared helpers of the llama-fuse-* passes --------===//

#include "FusionUtils.h"

#include "llamac/Dialect/Llama/LlamaAttrNames.h"

#include "llvm/ADT/BitVector.h"
#include "llvm/ADT/StringExtras.h"

using namespace mlir;
using namespace mlir::llama;

BlockArgument fusion::paramArgument(Value value) {
  auto arg = dyn_cast<BlockArgument>(value);
  if (!arg)
    return nullptr;
  auto func = dyn_cast<func::FuncOp>(arg.getOwner()->getParentOp());
  if (!func || arg.getOwner() != &func.getBody().front() ||
      !func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), kParamAttr))
    return nullptr;
  return arg;
}

MatmulOp fusion::linearOverParam(Value value) {
  auto matmul = value.getDefiningOp<MatmulOp>();
  if (!matmul || matmul.getTransposeLhs() || !matmul.getTransposeRhs() ||
      !paramArgument(matmul.getRhs()))
    return nullptr;
  return matmul;
}

std::string fusion::concatenatedParamName(ArrayRef<std::string> names) {
  constexpr StringLiteral kSuffix = "_proj.weight";
  std::string prefix;
  SmallVector<StringRef> stems;
  bool regular = true;
  for (StringRef name : names) {
    auto [head, last] = name.rsplit('.');
    // `P.x_proj.weight`: split off "weight", then the module name.
    auto [modulePrefix, module] = head.rsplit('.');
    if (!name.ends_with(kSuffix) || module.empty() ||
        !module.ends_with("_proj") || last != "weight" ||
        (!stems.empty() && modulePrefix != prefix)) {
      regular = false;
      break;
    }
    prefix = modulePrefix.str();
    stems.push_back(module.drop_back(StringRef("_proj").size()));
  }
  if (!regular || stems.empty())
    return llvm::join(names, "+");
  bool letters = llvm::all_of(stems, [](StringRef s) { return s.size() == 1; });
  return prefix + "." + llvm::join(stems, letters ? "" : "_") + kSuffix.str();
}

BlockArgument fusion::addConcatenatedParam(func::FuncOp func,
                                           ArrayRef<BlockArgument> parts) {
  MLIRContext *context = func.getContext();
  SmallVector<std::string> names;
  SmallVector<Attribute> tensors;
  unsigned position = parts.front().getArgNumber();
  int64_t rows = 0;
  for (BlockArgument part : parts) {
    unsigned index = part.getArgNumber();
    position = std::min(position, index);
    names.push_back(func.getArgAttrOfType<StringAttr>(index, kParamAttr).str());
    if (auto nested = func.getArgAttrOfType<ArrayAttr>(index, kParamPartsAttr))
      llvm::append_range(tensors, nested.getValue());
    else
      tensors.push_back(StringAttr::get(context, names.back()));
    rows += cast<RankedTensorType>(part.getType()).getDimSize(0);
  }
  auto first = cast<RankedTensorType>(parts.front().getType());
  SmallVector<int64_t> shape(first.getShape());
  shape[0] = rows;
  Builder builder(context);
  DictionaryAttr attrs = builder.getDictionaryAttr(
      {builder.getNamedAttr(
           kParamAttr, builder.getStringAttr(concatenatedParamName(names))),
       builder.getNamedAttr(kParamPartsAttr, builder.getArrayAttr(tensors))});
  SmallVector<Location> locs;
  for (BlockArgument part : parts)
    locs.push_back(part.getLoc());
  (void)func.insertArgument(
      position, RankedTensorType::get(shape, first.getElementType()), attrs,
      builder.getFusedLoc(locs));
  return func.getArgument(position);
}

void fusion::eraseArguments(func::FuncOp func, ArrayRef<BlockArgument> args) {
  llvm::BitVector erased(func.getNumArguments());
  for (BlockArgument arg : args) {
    assert(arg.use_empty() && "erasing an argument that is still used");
    erased.set(arg.getArgNumber());
  }
  (void)func.eraseArguments(erased);
}

LogicalResult fusion::expectForwardFunction(func::FuncOp func,
                                            StringRef passName) {
  for (unsigned i = 0; i < func.getNumResults(); ++i)
    if (func.getResultAttr(i, kGradAttr))
      return func.emitError()
             << passName
             << " runs on the forward function, before llama-autodiff; @"
             << func.getSymName() << " already returns gradients";
  return success();
}

Location fusion::fusedLocation(ArrayRef<Operation *> ops) {
  SmallVector<Location> locs;
  for (Operation *op : ops)
    locs.push_back(op->getLoc());
  return FusedLoc::get(ops.front()->getContext(), locs);
}
