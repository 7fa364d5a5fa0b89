//===- Passes.td - Passes over the llama dialect -----------*- tablegen -*-===//

#ifndef LLAMAC_TRANSFORMS_PASSES
#define LLAMAC_TRANSFORMS_PASSES

include "mlir/Pass/PassBase.td"

def LlamaAutodiff : Pass<"llama-autodiff", "::mlir::func::FuncOp"> {
  let summary = "Reverse-mode differentiation of the loss";
  let description = [{
    The function must return one scalar loss. Its arguments that carry a
    `llama.param` name are the parameters: the pass walks the body backwards,
    asks every op for its VJP (`VJPOpInterface`), sums the cotangents of
    values with several uses, and appends one result per parameter, named by
    `llama.grad`. A parameter with two uses (a tied embedding) gets the sum
    of both gradients. Parameters that do not reach the loss get zeros.
  }];
  let constructor = "::mlir::llama::createLlamaAutodiffPass()";
  let dependentDialects = ["::mlir::arith::ArithDialect"];
}

def LlamaAdamW : Pass<"llama-adamw", "::mlir::func::FuncOp"> {
  let summary = "Appends the AdamW update of every parameter";
  let description = [{
    Runs after `llama-autodiff`. For each `llama.grad` result the pass adds
    the two moment arguments (`llama.exp_avg`, `llama.exp_avg_sq`), one
    `llama.adamw` op, and returns the new parameter and moments in place of
    the gradient (`llama.new_param`, `llama.new_exp_avg`,
    `llama.new_exp_avg_sq`). The hyperparameters lr, beta1, beta2, eps,
    weight_decay and step become scalar f32 arguments named by
    `llama.hyperparameter`, so one compiled step serves any schedule.
  }];
  let constructor = "::mlir::llama::createLlamaAdamWPass()";
}

#endif // LLAMAC_TRANSFORMS_PASSES
