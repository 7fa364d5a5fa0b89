//===- Passes.td - Passes over the llama dialect -----------*- tablegen -*-===//

#ifndef LLAMAC_TRANSFORMS_PASSES
#define LLAMAC_TRANSFORMS_PASSES

include "mlir/Pass/PassBase.td"

//===----------------------------------------------------------------------===//
// Fusions: run on the forward function, before llama-autodiff, so that each
// fused op's VJP emits a fused backward op. Run them in the order below
// (llamac's pipeline does): gated-mlp first, so that norm-linear can move the
// post-attention norm into the gated_mlp it made.
//===----------------------------------------------------------------------===//

def LlamaFuseGatedMLP : Pass<"llama-fuse-gated-mlp", "::mlir::func::FuncOp"> {
  let summary = "Fuses the gate and up projections and SwiGLU into gated_mlp";
  let description = [{
    Matches `llama.swiglu(matmul(x, Wg), matmul(x, Wu))`, both matmuls Linear
    layers (`transpose_rhs`) of one input `x` over parameter arguments `Wg`
    and `Wu` that nothing else reads, and the projections read by the SwiGLU
    alone. It replaces them by `llama.gated_mlp %x, %w_gate_up`: one GEMM
    over the stacked weight and SwiGLU on its output. `Wg` and `Wu` are
    removed from the function and replaced by one parameter argument
    `…mlp.gate_up_proj.weight : [2F, H]` with
    `llama.param_parts = [gate name, up name]`, so that the driver packs and
    unpacks the Hugging Face tensors. Anything else is left alone.
  }];
  let constructor = "::mlir::llama::createLlamaFuseGatedMLPPass()";
}

def LlamaFuseNormLinear : Pass<"llama-fuse-norm-linear", "::mlir::func::FuncOp"> {
  let summary = "Fuses an RMSNorm with the projections that consume it";
  let description = [{
    For an `llama.rms_norm` whose every user reads it as the input of a
    Linear layer over a parameter argument (`llama.matmul %xn, %w
    {transpose_rhs = true}`), the norm and the projections become one
    `llama.norm_matmul` with one result per projection (column slices of one
    GEMM). With several projections (q/k/v) the weights are concatenated
    along dim 0 into one new parameter (`…self_attn.qkv_proj.weight`,
    `llama.param_parts = [q, k, v]`) and the old arguments removed; each must
    then be read by its projection alone. A single projection (the final norm
    and lm_head, tied or not) keeps its weight argument unchanged.

    An rms_norm read only as the input of a `llama.gated_mlp` without a norm
    moves into it: `llama.gated_mlp %h, %w norm(%norm_weight) {eps}`.

    Left alone: a norm with any other user (a residual add, a matmul reading
    it as its right operand, a non-transposed matmul), a projection whose
    weight is not a `llama.param` argument, and projections whose weights
    have other users when there are several to concatenate.
  }];
  let constructor = "::mlir::llama::createLlamaFuseNormLinearPass()";
}

def LlamaFuseRopeAttention
    : Pass<"llama-fuse-rope-attention", "::mlir::func::FuncOp"> {
  let summary = "Applies RoPE inside attention";
  let description = [{
    Matches `llama.attention(rope(q), rope(k), v)` where both `llama.rope`
    ops are forward rotations (not `inverse`) read by the attention alone,
    use the same theta, rope_type, scaling attributes, head_dim and seq_len,
    and have the attention's query and kv head counts. It replaces the three
    ops by `llama.rope_attention %q, %k, %v` carrying the attention's and the
    rotation's attributes (default and llama3 scaling; causal, GQA and MQA as
    `llama.attention`). Its backward, `llama.rope_attention_grad`, returns the
    gradients of the unrotated q and k.
  }];
  let constructor = "::mlir::llama::createLlamaFuseRopeAttentionPass()";
}

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

def LlamaAdamW : Pass<"llama-adamw", "::mlir::ModuleOp"> {
  let summary = "Builds @optimizer_step: gradient clipping and AdamW";
  let description = [{
    Runs after `llama-autodiff`, on a module with exactly one function whose
    results carry `llama.grad`. That function is renamed `@forward_backward`
    (otherwise unchanged: `(params, input_ids, labels) -> (loss, grads)`),
    and the pass adds

    ```
    @optimizer_step(params, grads, exp_avg, exp_avg_sq, hyperparameters)
        -> (grad_norm, new params, new exp_avg, new exp_avg_sq)
    ```

    Parameters keep the argument attributes they have in the forward
    function (`llama.param`, `llama.param_parts`); gradients are named by
    `llama.grad`, moments by `llama.exp_avg` / `llama.exp_avg_sq`. The
    hyperparameters lr, beta1, beta2, eps, weight_decay, step and
    max_grad_norm are scalar f32 arguments named by `llama.hyperparameter`,
    so one compiled step serves any schedule. The body takes the global norm
    of the gradients (`llama.global_norm`, returned as `llama.grad_norm`),
    turns it into torch's `clip_grad_norm_` factor (`llama.clip_scale`;
    max_grad_norm 0 turns clipping off) and applies one `llama.adamw` per
    parameter, returning `llama.new_param`, `llama.new_exp_avg` and
    `llama.new_exp_avg_sq`.

    The driver runs `@forward_backward` once per micro-batch, sums the
    gradients weighted by each micro-batch's share of the counted tokens
    (gradient accumulation), and runs `@optimizer_step` once.
  }];
  let constructor = "::mlir::llama::createLlamaAdamWPass()";
}

#endif // LLAMAC_TRANSFORMS_PASSES
