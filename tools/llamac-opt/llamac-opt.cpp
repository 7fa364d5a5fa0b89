//===- llamac-opt.cpp - Runs llama passes on MLIR files ---------*- C++ -*-===//
//
// mlir-opt for the llama dialect: registers only the dialects and passes the
// project uses, for lit tests and debugging.
//
//===----------------------------------------------------------------------===//

#include "llamac/Dialect/Llama/LlamaOps.h"
#include "llamac/Pipeline/Pipeline.h"
#include "llamac/Transforms/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::DialectRegistry registry;
  registry.insert<mlir::llama::LlamaDialect, mlir::func::FuncDialect,
                  mlir::arith::ArithDialect>();
  mlir::llama::registerLlamaPasses();
  mlir::llama::registerTrainStepPipeline();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "llama optimizer driver\n", registry));
}
