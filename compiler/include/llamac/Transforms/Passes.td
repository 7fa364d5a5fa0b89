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

def LlamaInsertFP8 : Pass<"llama-insert-fp8", "::mlir::func::FuncOp"> {
  let summary = "FP8 operands for the GEMMs of every linear layer";
  let description = [{
    Runs after `llama-autodiff` (before `llama-adamw`). Every GEMM of a
    Linear layer gets FP8 operands: a plain `llama.matmul` (the forward
    `x Wᵀ`, the dgrad `dY W` and the wgrad `dYᵀ x` that its VJP emits) and
    the GEMMs inside the fused `llama.norm_matmul`, `llama.gated_mlp` and
    their backward ops. E4M3 for weights and activations, E5M2 for gradients
    (Transformer Engine's HYBRID format); a gradient is a value computed
    from the result of a `llama.cross_entropy_grad`. Each tensor is
    quantized once, however many GEMMs read it: one cast per weight per step
    (forward and dgrad share it), one per activation (forward and wgrad
    share it, as do q/k/v reading one normalized input), one per incoming
    gradient (dgrad and wgrad share it).

    A tensor that exists in the function is replaced, as a GEMM operand, by
    a `llama.fp8_quantize` of it (the emulated FP8 cast, a fake quant). A
    weight that a fusion concatenated (`llama.param_parts`: q/k/v,
    gate/up) is quantized with one scale per Hugging Face tensor
    (`row_blocks`), as the unfused weights are. A GEMM operand that exists
    only inside a fused op is quantized by the op (its `fp8_formats`, with
    the scales as operands and the amaxes as results): the normalized input
    of `norm_matmul` / `gated_mlp` (its backward op recomputes it and reuses
    the forward's scale) and the SwiGLU gradient halves of
    `gated_mlp_grad` (two tensors, as the unfused gate and up projections'
    incoming gradients). Fused and unfused steps so quantize the same
    tensors with the same scales and name their state alike.

    Left in the working precision, as TE does: the lm_head GEMMs (the
    matmul or norm_matmul feeding `llama.cross_entropy`, and those reading
    the logit gradient): the loss is most sensitive to them. `lm-head=true`
    quantizes them too (to measure what keeping them costs and saves). The attention
    products (`q kᵀ`, `P v` and their backward) are inside `llama.attention`
    / `llama.rope_attention` and never quantized: their inputs feed or come
    from the softmax.

    `scaling=delayed` (default; TE's DelayedScaling): every quantized tensor
    gets an amax history (`tensor<Lxf32>`, L = `amax-history`, newest first)
    and a scale (`tensor<f32>`) as new arguments (`llama.fp8_amax_history`,
    `llama.fp8_scale`, valued by a tensor id: the Hugging Face weight name,
    or `<layer>.input` / `<layer>.grad_output`) and their updates as new
    results (`llama.new_fp8_amax_history`, `llama.new_fp8_scale`) computed
    by `llama.fp8_scale_update`: this step's GEMMs use the scale from the
    history before the step; the new scale is `(fp8_max / amax) / 2^margin`
    with amax the `max` over the history including this step's amax
    (`amax-compute-algo=most_recent`: this step's alone), keeping the old
    scale when that amax is 0 or not finite. `scaling=current` scales each
    tensor just in time from its own amax and adds no state.
  }];
  let constructor = "::mlir::llama::createLlamaInsertFP8Pass()";
  let options = [
    Option<"scaling", "scaling", "std::string", "\"delayed\"",
           "delayed (amax history, TE's default) or current (just in time)">,
    Option<"margin", "margin", "int64_t", "0",
           "Scales are divided by 2^margin">,
    Option<"amaxHistory", "amax-history", "int64_t", "1024",
           "Length of the amax history (delayed scaling)">,
    Option<"amaxComputeAlgo", "amax-compute-algo", "std::string", "\"max\"",
           "max (over the history) or most_recent">,
    Option<"lmHead", "lm-head", "bool", "false",
           "Quantize the lm_head GEMMs too">
  ];
}

#endif // LLAMAC_TRANSFORMS_PASSES
