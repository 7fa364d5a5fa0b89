//===- LlamaInterfaces.td - Interfaces of the llama dialect -*- tablegen -*-===//

#ifndef LLAMA_INTERFACES
#define LLAMA_INTERFACES

include "mlir/IR/OpBase.td"

def VJPOpInterface : OpInterface<"VJPOpInterface"> {
  let description = [{
    A differentiable op builds its vector-Jacobian product: given the
    cotangent of each result, it emits the ops that compute the cotangent of
    each operand. Reverse-mode autodiff (`--llama-autodiff`) walks the forward
    function backwards and calls this on every op that has a cotangent.
  }];
  let cppNamespace = "::mlir::llama";
  let methods = [
    InterfaceMethod<[{
        Emits the backward of this op at the builder's insertion point.
        `resultCotangents` holds one value per result; a null value means the
        result does not reach the loss. Returns one value per operand, null
        for operands that carry no gradient (token ids, labels).
      }],
      "::llvm::SmallVector<::mlir::Value>", "buildVJP",
      (ins "::mlir::OpBuilder &":$builder,
           "::mlir::ValueRange":$resultCotangents)>
  ];
}

#endif // LLAMA_INTERFACES
