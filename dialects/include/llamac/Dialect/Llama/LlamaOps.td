//===- LlamaOps.td - The llama graph dialect ---------------*- tablegen -*-===//
//
// Ops on ranked tensors that describe a Llama decoder training step. Token
// activations are 2-D `[T, X]` with `T = batch * seq_len` rows in row-major
// (batch, position) order; ops that need the position of a row (RoPE,
// attention, the shifted loss) carry `seq_len`. With packed sequences
// (several data rows end to end in one sequence), RoPE and attention also
// take `positions`: each row's position within its data row, Hugging Face's
// `position_ids`.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMA_OPS
#define LLAMA_OPS

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "llamac/Dialect/Llama/LlamaInterfaces.td"

def Llama_Dialect : Dialect {
  let name = "llama";
  let summary = "Graph-level ops of a Llama fine-tuning step.";
  let description = [{
    The `llama` dialect holds the forward ops of a Llama decoder
    (embedding, RMSNorm, linear layers, RoPE, causal GQA attention, SwiGLU,
    the shifted causal-LM loss), the backward ops their VJPs emit, and the
    AdamW update. Passes fuse, quantize and lower it; the reference
    interpreter executes it on the CPU.
  }];
  let cppNamespace = "::mlir::llama";
}

class Llama_Op<string mnemonic, list<Trait> traits = []>
    : Op<Llama_Dialect, mnemonic, !listconcat(traits, [Pure])>;

def FloatTensor : RankedTensorOf<[AnyFloat]>;
def FloatScalar : 0DTensorOf<[AnyFloat]>;
def TokenTensor : 1DTensorOf<[I32]>;

// The optional `positions` operand of RoPE and attention ops.
defvar PositionsDoc = [{

    With `positions` (i32 `[T]`, Hugging Face's `position_ids`) a sequence
    holds several packed data rows: row `t` is at position `positions[t]`
    instead of `t mod seq_len`, and a data row starts where its position is
    0.
}];

//===----------------------------------------------------------------------===//
// Forward ops
//===----------------------------------------------------------------------===//

def Llama_EmbeddingOp : Llama_Op<"embedding",
    [DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "Row gather from an embedding table.";
  let description = [{
    `result[t, :] = table[ids[t], :]` for `table : [V, H]`, `ids : [T]`.
    Ids outside `[0, V)` are rejected by the data loader before the step runs.
  }];
  let arguments = (ins FloatTensor:$table, TokenTensor:$ids);
  let results = (outs FloatTensor:$result);
  let assemblyFormat = "$table `,` $ids attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Llama_RMSNormOp : Llama_Op<"rms_norm",
    [DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "Root-mean-square normalization with a learned scale.";
  let description = [{
    `result[t, i] = x[t, i] * rsqrt(mean_j(x[t, j]^2) + eps) * weight[i]`,
    as Hugging Face's `LlamaRMSNorm` (statistics in f32 or wider).
  }];
  let arguments = (ins FloatTensor:$input, FloatTensor:$weight, F64Attr:$eps);
  let results = (outs FloatTensor:$result);
  let assemblyFormat = "$input `,` $weight attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Llama_MatmulOp : Llama_Op<"matmul",
    [DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "Matrix product with optional transposes.";
  let description = [{
    `result = op(lhs) * op(rhs)` on 2-D tensors, where `op` transposes when
    the matching flag is set. A Hugging Face `Linear` layer `y = x Wᵀ` is
    `llama.matmul %x, %w {transpose_rhs = true}`; its backward uses the other
    flag combinations for the data and weight gradients.
  }];
  let arguments = (ins FloatTensor:$lhs, FloatTensor:$rhs,
                   DefaultValuedAttr<BoolAttr, "false">:$transpose_lhs,
                   DefaultValuedAttr<BoolAttr, "false">:$transpose_rhs);
  let results = (outs FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Llama_RoPEOp : Llama_Op<"rope",
    [DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "Rotary position embedding, Hugging Face half-split layout.";
  let description = [{
    For each row `t` at position `p = t mod seq_len` and each head, with
    `h = head_dim / 2` and frequency `f_i` (i < h):
    `out[i] = x[i] cos(p f_i) - x[i+h] sin(p f_i)`,
    `out[i+h] = x[i+h] cos(p f_i) + x[i] sin(p f_i)`.
    `f_i = theta^(-2i/head_dim)`; `rope_type = "llama3"` rescales the
    frequencies as Llama 3.1 does (`factor`, `low_freq_factor`,
    `high_freq_factor`, `original_max_position_embeddings`).
    `inverse` rotates by the negative angle, which is the exact transpose of
    the rotation and therefore its VJP.
  }] # PositionsDoc;
  let arguments = (ins FloatTensor:$input, Optional<TokenTensor>:$positions,
                   I64Attr:$num_heads, I64Attr:$head_dim, I64Attr:$seq_len,
                   F64Attr:$theta,
                   DefaultValuedAttr<StrAttr, "\"default\"">:$rope_type,
                   DefaultValuedAttr<F64Attr, "1.0">:$factor,
                   DefaultValuedAttr<F64Attr, "1.0">:$low_freq_factor,
                   DefaultValuedAttr<F64Attr, "4.0">:$high_freq_factor,
                   DefaultValuedAttr<I64Attr, "8192">:$original_max_position_embeddings,
                   DefaultValuedAttr<BoolAttr, "false">:$inverse);
  let results = (outs FloatTensor:$result);
  let assemblyFormat = [{
    $input (`positions` `(` $positions^ `)`)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// Rotation frequencies f_i, i < head_dim / 2, after any rope scaling.
    ::llvm::SmallVector<double> getFrequencies();
  }];
}

// How attention ops mask with `positions`.
defvar PackedMaskDoc = PositionsDoc # [{
    Query `i` of a sequence (its row index within the sequence) then
    attends to keys `j` with `i - p <= j <= i`, `p = min(max(positions[i],
    0), i)`: to the earlier rows of its own data row only, as transformers'
    flash attention does with `position_ids` (DataCollatorWithFlattening).
    Positions `0, 1, ..., seq_len - 1` give the plain causal mask.
}];

def Llama_AttentionOp : Llama_Op<"attention",
    [DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "Causal scaled-dot-product attention with grouped KV heads.";
  let description = [{
    Per sequence and query head `n` (kv head `n / (num_heads /
    num_kv_heads)`): `out = softmax(scale * q kᵀ + causal mask) v`, with
    `q : [T, num_heads * head_dim]`, `k, v : [T, num_kv_heads * head_dim]`.
    Row `t` attends to rows of its own sequence at positions `<= t`.
  }] # PackedMaskDoc;
  let arguments = (ins FloatTensor:$query, FloatTensor:$key, FloatTensor:$value,
                   Optional<TokenTensor>:$positions,
                   I64Attr:$num_heads, I64Attr:$num_kv_heads, I64Attr:$head_dim,
                   I64Attr:$seq_len, F64Attr:$scale);
  let results = (outs FloatTensor:$result);
  let assemblyFormat = [{
    $query `,` $key `,` $value (`positions` `(` $positions^ `)`)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Llama_SwiGLUOp : Llama_Op<"swiglu",
    [DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "SiLU-gated linear unit.";
  let description = [{ `result = gate * sigmoid(gate) * up`, elementwise. }];
  let arguments = (ins FloatTensor:$gate, FloatTensor:$up);
  let results = (outs FloatTensor:$result);
  let assemblyFormat = "$gate `,` $up attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Llama_AddOp : Llama_Op<"add",
    [DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "Elementwise sum (residual connections, gradient accumulation).";
  let description = [{ `result = lhs + rhs` on tensors of one type. }];
  let arguments = (ins FloatTensor:$lhs, FloatTensor:$rhs);
  let results = (outs FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Llama_CrossEntropyOp : Llama_Op<"cross_entropy",
    [DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "Hugging Face's shifted causal-LM loss.";
  let description = [{
    Within each sequence, position `p < seq_len - 1` predicts
    `labels[p + 1]`; labels equal to -100 are ignored. The result is the
    mean of `logsumexp(logits[t]) - logits[t, label]` over counted positions
    (0 when no position counts). Statistics are kept in f32 or wider.
  }];
  let arguments = (ins FloatTensor:$logits, TokenTensor:$labels, I64Attr:$seq_len);
  let results = (outs FloatScalar:$loss);
  let assemblyFormat = "$logits `,` $labels attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Backward ops (emitted by the VJPs above)
//===----------------------------------------------------------------------===//

def Llama_EmbeddingGradOp : Llama_Op<"embedding_grad"> {
  let summary = "Scatter-add of row gradients into an embedding table.";
  let description = [{
    `result[v, :] = sum over t with ids[t] == v of grad[t, :]`,
    `result : [vocab_size, H]`.
  }];
  let arguments = (ins FloatTensor:$grad, TokenTensor:$ids);
  let results = (outs FloatTensor:$result);
  let assemblyFormat = "$grad `,` $ids attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Llama_RMSNormGradOp : Llama_Op<"rms_norm_grad"> {
  let summary = "Backward of rms_norm.";
  let description = [{
    With `r = rsqrt(mean(x^2) + eps)` per row and `g = grad * weight`:
    `input_grad = r * (g - x * r^2 * mean(g * x))`,
    `weight_grad[i] = sum_t grad[t, i] * x[t, i] * r_t`.
  }];
  let arguments = (ins FloatTensor:$grad, FloatTensor:$input, FloatTensor:$weight,
                   F64Attr:$eps);
  let results = (outs FloatTensor:$input_grad, FloatTensor:$weight_grad);
  let assemblyFormat = "$grad `,` $input `,` $weight attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Llama_AttentionGradOp : Llama_Op<"attention_grad"> {
  let summary = "Backward of attention (recomputes the probabilities).";
  let description = [{
    With `P = softmax(scale * q kᵀ + mask)` recomputed per head and
    `dP = grad vᵀ`: `value_grad = Pᵀ grad`,
    `dS = P * (dP - rowsum(dP * P))`, `query_grad = scale * dS k`,
    `key_grad = scale * dSᵀ q`; key and value gradients of a shared KV head
    sum over the query heads of its group. The mask is `llama.attention`'s,
    with the same `positions`.
  }];
  let arguments = (ins FloatTensor:$grad, FloatTensor:$query, FloatTensor:$key,
                   FloatTensor:$value, Optional<TokenTensor>:$positions,
                   I64Attr:$num_heads, I64Attr:$num_kv_heads,
                   I64Attr:$head_dim, I64Attr:$seq_len, F64Attr:$scale);
  let results = (outs FloatTensor:$query_grad, FloatTensor:$key_grad,
                 FloatTensor:$value_grad);
  let assemblyFormat = [{
    $grad `,` $query `,` $key `,` $value (`positions` `(` $positions^ `)`)?
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Llama_SwiGLUGradOp : Llama_Op<"swiglu_grad"> {
  let summary = "Backward of swiglu.";
  let description = [{
    With `s = sigmoid(gate)`: `up_grad = grad * gate * s`,
    `gate_grad = grad * up * s * (1 + gate * (1 - s))`.
  }];
  let arguments = (ins FloatTensor:$grad, FloatTensor:$gate, FloatTensor:$up);
  let results = (outs FloatTensor:$gate_grad, FloatTensor:$up_grad);
  let assemblyFormat = "$grad `,` $gate `,` $up attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Llama_CrossEntropyGradOp : Llama_Op<"cross_entropy_grad"> {
  let summary = "Backward of cross_entropy: the logit gradient.";
  let description = [{
    For a counted position `t` with target `y`:
    `result[t, :] = grad * (softmax(logits[t]) - onehot(y)) / count`;
    rows that are not counted get zeros.
  }];
  let arguments = (ins FloatScalar:$grad, FloatTensor:$logits, TokenTensor:$labels,
                   I64Attr:$seq_len);
  let results = (outs FloatTensor:$result);
  let assemblyFormat = "$grad `,` $logits `,` $labels attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Optimizer
//===----------------------------------------------------------------------===//

def Llama_AdamWOp : Llama_Op<"adamw"> {
  let summary = "One torch.optim.AdamW update of a parameter.";
  let description = [{
    Decoupled weight decay and bias correction, as `torch.optim.AdamW`
    (amsgrad off), with scalar hyperparameters as operands so that one
    compiled step serves every learning rate and step count. The gradient
    is first multiplied by `grad_scale` (the clipping factor of
    `llama.clip_scale`; 1 when clipping is off):
    ```
    g  = grad * grad_scale
    p  = param * (1 - lr * weight_decay)
    m' = beta1 * m + (1 - beta1) * g
    v' = beta2 * v + (1 - beta2) * g^2
    new_param = p - lr / (1 - beta1^step) * m' / (sqrt(v') / sqrt(1 - beta2^step) + eps)
    ```
  }];
  let arguments = (ins FloatTensor:$param, FloatTensor:$grad, FloatTensor:$exp_avg,
                   FloatTensor:$exp_avg_sq, FloatScalar:$lr, FloatScalar:$beta1,
                   FloatScalar:$beta2, FloatScalar:$eps, FloatScalar:$weight_decay,
                   FloatScalar:$step, FloatScalar:$grad_scale);
  let results = (outs FloatTensor:$new_param, FloatTensor:$new_exp_avg,
                 FloatTensor:$new_exp_avg_sq);
  let assemblyFormat = [{
    $param `,` $grad `,` $exp_avg `,` $exp_avg_sq `,` $lr `,` $beta1 `,` $beta2 `,`
    $eps `,` $weight_decay `,` $step `,` $grad_scale attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Llama_GlobalNormOp : Llama_Op<"global_norm"> {
  let summary = "Euclidean norm of several tensors taken together.";
  let description = [{
    `result = sqrt(sum over every operand x and element i of x[i]^2)`, the
    `total_norm` of `torch.nn.utils.clip_grad_norm_` (norm type 2) over a
    model's gradients. The sum is accumulated in f64 or wider and the norm
    rounded once to the result type. Operands may have different shapes and
    element types; there must be at least one.
    ```
    %norm = llama.global_norm %g0, %g1 : (tensor<4x8xbf16>, tensor<8xbf16>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Variadic<FloatTensor>:$inputs);
  let results = (outs FloatScalar:$norm);
  let assemblyFormat = "$inputs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Llama_ClipScaleOp : Llama_Op<"clip_scale"> {
  let summary = "The factor by which clip_grad_norm_ scales the gradients.";
  let description = [{
    With `coef = max_norm / (norm + 1e-6)`, as `torch.nn.utils.clip_grad_norm_`:
    `result = min(coef, 1)` when `max_norm > 0`, and `1` when `max_norm <= 0`
    (clipping off, as the Hugging Face Trainer's `max_grad_norm = 0`). A NaN
    norm gives a NaN factor, as in torch. The factor feeds the `grad_scale`
    operand of `llama.adamw`.
  }];
  let arguments = (ins FloatScalar:$norm, FloatScalar:$max_norm);
  let results = (outs FloatScalar:$result);
  let assemblyFormat = "$norm `,` $max_norm attr-dict `:` functional-type(operands, results)";
}

//===----------------------------------------------------------------------===//
// Fused ops (introduced by the llama-fuse-* passes on the forward function,
// before llama-autodiff) and the fused backward ops their VJPs emit
//===----------------------------------------------------------------------===//

// The RoPE attributes of llama.rope, shared by the fused attention ops.
defvar RopeAttrs = (ins F64Attr:$theta,
    DefaultValuedAttr<StrAttr, "\"default\"">:$rope_type,
    DefaultValuedAttr<F64Attr, "1.0">:$factor,
    DefaultValuedAttr<F64Attr, "1.0">:$low_freq_factor,
    DefaultValuedAttr<F64Attr, "4.0">:$high_freq_factor,
    DefaultValuedAttr<I64Attr, "8192">:$original_max_position_embeddings);

// The head layout of llama.attention.
defvar AttentionAttrs = (ins I64Attr:$num_heads, I64Attr:$num_kv_heads,
    I64Attr:$head_dim, I64Attr:$seq_len, F64Attr:$scale);

// FP8 quantization of the GEMM operands that exist only inside a fused op
// (set by llama-insert-fp8): the FP8 format of each, in the op's order; the
// margin of current scaling. With the formats come the operands
// `fp8_scales` (delayed scaling: one per format; current scaling: none) and
// the results `fp8_amaxes` (one per format).
defvar FP8Attrs = (ins OptionalAttr<StrArrayAttr>:$fp8_formats,
    DefaultValuedAttr<I64Attr, "0">:$fp8_margin);

def Llama_NormMatmulOp : Llama_Op<"norm_matmul",
    [AttrSizedResultSegments, DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "RMSNorm feeding one GEMM over concatenated Linear weights.";
  let description = [{
    With `xn = rms_norm(input, norm_weight, eps)` (rounded to the element
    type, as the unfused rms_norm result is) and `weight : [N, H]` the
    concatenation along dim 0 of the weights of the Linear layers that read
    `xn` (`N = N_0 + N_1 + ...`):
    `y = xn weightᵀ : [T, N]`, and result `i : [T, N_i]` is the column slice
    `y[:, o_i : o_i + N_i]` with `o_i = N_0 + ... + N_(i-1)`.

    `llama-fuse-norm-linear` builds it from an rms_norm whose every user is
    a Linear layer over a parameter, e.g. the input layernorm and q/k/v (one
    QKV GEMM over `self_attn.qkv_proj.weight`), or the final norm and an
    lm_head alone. The VJP emits one `llama.norm_matmul_grad`.

    FP8 (`fp8_formats = [f]`, set by `llama-insert-fp8`): the GEMM reads
    `xn` quantized as `llama.fp8_quantize` does (format `f`, scale
    `fp8_scales[0]` or, without it, current scaling with `fp8_margin`), and
    `fp8_amaxes[0]` is the amax of `xn`. The weight operand is then the
    result of a `llama.fp8_quantize` with one row block (own scale) per
    Linear layer. A GPU lowering writes `xn` in FP8 from the norm kernel and
    runs, per row block `i` of the weight, one FP8 GEMM into the columns of
    result `i` with the scale pair (input, block `i`).
    ```
    %q, %k, %v, %amax = llama.norm_matmul %x, %ln, %wqkv scale(%s)
        {eps = 1.0e-05 : f64, fp8_formats = ["e4m3"]}
        : (tensor<64x32xbf16>, tensor<32xbf16>, tensor<64x32xbf16>, tensor<f32>)
        -> (tensor<64x32xbf16>, tensor<64x16xbf16>, tensor<64x16xbf16>) amax tensor<f32>
    ```
  }];
  let arguments = !con((ins FloatTensor:$input, FloatTensor:$norm_weight,
                            FloatTensor:$weight,
                            Variadic<FloatScalar>:$fp8_scales, F64Attr:$eps),
                       FP8Attrs);
  let results = (outs Variadic<FloatTensor>:$outputs,
                 Variadic<FloatScalar>:$fp8_amaxes);
  let assemblyFormat = [{
    $input `,` $norm_weight `,` $weight (`scale` `(` $fp8_scales^ `)`)?
    attr-dict `:` functional-type(operands, $outputs)
    (`amax` type($fp8_amaxes)^)?
  }];
  let hasVerifier = 1;
}

def Llama_GatedMLPOp : Llama_Op<"gated_mlp",
    [AttrSizedOperandSegments, DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "Gate‖up GEMM + SwiGLU, optionally behind an RMSNorm.";
  let description = [{
    With `xn = rms_norm(input, norm_weight, eps)` when `norm_weight` is given
    (then `eps` is required; rounded to the element type) and `xn = input`
    otherwise, and `weight : [2F, H]` the gate weight stacked over the up
    weight (`gate_proj.weight` rows `[0, F)`, `up_proj.weight` rows
    `[F, 2F)`):
    ```
    gate_up = xn weightᵀ                           : [T, 2F]  (one GEMM)
    result  = swiglu(gate_up[:, :F], gate_up[:, F:]) : [T, F]
    ```
    `gate_up` is the GEMM's output (the pre-activation), returned as a second
    result only to be saved for `llama.gated_mlp_grad`: the verifier rejects
    any other user of it, so it never carries a cotangent.

    `llama-fuse-gated-mlp` builds it from `swiglu(x gate_projᵀ, x up_projᵀ)`;
    `llama-fuse-norm-linear` then moves the post-attention layernorm into it
    (the `norm(...)` operand).

    FP8 (`fp8_formats = [f]`): the GEMM reads `xn` quantized to format `f`
    (scale `fp8_scales[0]`, or current scaling), `fp8_amaxes[0]` is its
    amax, and the weight is a `llama.fp8_quantize` result with the gate and
    up rows as two blocks, as for `llama.norm_matmul`. The SwiGLU output is
    the down projection's input, quantized by a `llama.fp8_quantize` of its
    own.
  }];
  let arguments = !con((ins FloatTensor:$input, FloatTensor:$weight,
                            Optional<FloatTensor>:$norm_weight,
                            Variadic<FloatScalar>:$fp8_scales,
                            OptionalAttr<F64Attr>:$eps),
                       FP8Attrs);
  let results = (outs FloatTensor:$result, FloatTensor:$gate_up,
                 Variadic<FloatScalar>:$fp8_amaxes);
  let assemblyFormat = [{
    $input `,` $weight (`norm` `(` $norm_weight^ `)`)?
    (`scale` `(` $fp8_scales^ `)`)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Llama_RopeAttentionOp : Llama_Op<"rope_attention",
    [DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "Causal GQA attention that applies RoPE to q and k itself.";
  let description = [{
    `result = attention(rope(query), rope(key), value)`, with `rope` and
    `attention` exactly as `llama.rope` (num_heads heads for the query,
    num_kv_heads for the key, the same theta / rope_type / scaling
    attributes, positions `t mod seq_len`) and `llama.attention`. A kernel
    rotates q and k as it loads them, so the rotated tensors never reach
    memory. `llama-fuse-rope-attention` builds it from
    `attention(rope(q), rope(k), v)`; the VJP emits
    `llama.rope_attention_grad`. With `positions`, the rotations and the
    mask both use them, as `llama.rope` and `llama.attention` do.
  }];
  let arguments = !con((ins FloatTensor:$query, FloatTensor:$key,
                            FloatTensor:$value,
                            Optional<TokenTensor>:$positions),
                       AttentionAttrs, RopeAttrs);
  let results = (outs FloatTensor:$result);
  let assemblyFormat = [{
    $query `,` $key `,` $value (`positions` `(` $positions^ `)`)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// Rotation frequencies f_i, i < head_dim / 2, after any rope scaling.
    ::llvm::SmallVector<double> getFrequencies();
  }];
}

def Llama_NormMatmulGradOp : Llama_Op<"norm_matmul_grad",
    [AttrSizedOperandSegments]> {
  let summary = "Backward of norm_matmul: one dgrad and one wgrad GEMM.";
  let description = [{
    With `dY = [grads_0 | grads_1 | ...] : [T, N]` (one cotangent per
    norm_matmul result, side by side) and `xn = rms_norm(input, norm_weight,
    eps)` recomputed (rounded to the element type):
    ```
    weight_grad = dYᵀ xn          : [N, H]   (one wgrad GEMM)
    dxn         = dY weight       : [T, H]   (one dgrad GEMM, rounded)
    input_grad, norm_weight_grad = rms_norm_grad(dxn, input, norm_weight)
    ```
    The data gradients of the projections are summed inside the dgrad GEMM's
    reduction over N instead of by separate adds.

    FP8 (`fp8_formats = [f]`): the wgrad GEMM reads the recomputed `xn`
    quantized as in the forward `llama.norm_matmul` (same format and scale,
    so the same values; `fp8_amaxes[0]` is its amax again). The `grads` and
    the weight are `llama.fp8_quantize` results (one scale per gradient, one
    per weight block). The dgrad GEMM's reduction runs over the blocks: a
    GPU lowering accumulates one FP8 GEMM per block in f32.
  }];
  let arguments = !con((ins Variadic<FloatTensor>:$grads, FloatTensor:$input,
                            FloatTensor:$norm_weight, FloatTensor:$weight,
                            Variadic<FloatScalar>:$fp8_scales, F64Attr:$eps),
                       FP8Attrs);
  let results = (outs FloatTensor:$input_grad, FloatTensor:$norm_weight_grad,
                 FloatTensor:$weight_grad, Variadic<FloatScalar>:$fp8_amaxes);
  let assemblyFormat = [{
    `(` $grads `)` `,` $input `,` $norm_weight `,` $weight
    (`scale` `(` $fp8_scales^ `)`)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Llama_GatedMLPGradOp : Llama_Op<"gated_mlp_grad",
    [AttrSizedOperandSegments, AttrSizedResultSegments]> {
  let summary = "Backward of gated_mlp: SwiGLU backward, then two GEMMs.";
  let description = [{
    With `gate, up` the halves of the saved `gate_up`, `xn` recomputed as in
    `llama.gated_mlp` (the normalized input when `norm_weight` is given),
    and each intermediate rounded to the element type:
    ```
    dgate, dup  = swiglu_grad(grad, gate, up);  dGU = [dgate | dup] : [T, 2F]
    weight_grad = dGUᵀ xn       : [2F, H]  (one wgrad GEMM)
    dxn         = dGU weight    : [T, H]   (one dgrad GEMM)
    input_grad  = dxn, or with a norm:
    input_grad, norm_weight_grad = rms_norm_grad(dxn, input, norm_weight)
    ```
    `norm_weight_grad` is present exactly when `norm_weight` is.

    FP8 (`fp8_formats = [fx, fg, fu]`): the GEMMs read `xn` quantized as in
    the forward `llama.gated_mlp` (format `fx`), and `dgate` and `dup` each
    quantized as a tensor of its own (formats `fg`, `fu`), as the unfused
    gate and up projections' incoming gradients are; `fp8_scales` and
    `fp8_amaxes` follow the same order. The weight is a `llama.fp8_quantize`
    result with the gate and up rows as two blocks.
  }];
  let arguments = !con((ins FloatTensor:$grad, FloatTensor:$input,
                            FloatTensor:$gate_up, FloatTensor:$weight,
                            Optional<FloatTensor>:$norm_weight,
                            Variadic<FloatScalar>:$fp8_scales,
                            OptionalAttr<F64Attr>:$eps),
                       FP8Attrs);
  let results = (outs FloatTensor:$input_grad, FloatTensor:$weight_grad,
                 Optional<FloatTensor>:$norm_weight_grad,
                 Variadic<FloatScalar>:$fp8_amaxes);
  let assemblyFormat = [{
    $grad `,` $input `,` $gate_up `,` $weight (`norm` `(` $norm_weight^ `)`)?
    (`scale` `(` $fp8_scales^ `)`)? attr-dict `:` `(` type(operands) `)` `->`
    `(` type($input_grad) `,` type($weight_grad)
    (`,` type($norm_weight_grad)^)? `)` (`amax` type($fp8_amaxes)^)?
  }];
  let hasVerifier = 1;
}

def Llama_RopeAttentionGradOp : Llama_Op<"rope_attention_grad"> {
  let summary = "Backward of rope_attention: gradients of the unrotated q, k.";
  let description = [{
    Recomputes `qr = rope(query)`, `kr = rope(key)` (rounded to the element
    type), runs the backward of `llama.attention` on them, and rotates the
    query and key gradients back by the inverse rotation (the transpose of
    RoPE): `query_grad = rope⁻¹(dqr)`, `key_grad = rope⁻¹(dkr)`,
    `value_grad = dv`; rotations and mask use `positions` when given.
  }];
  let arguments = !con((ins FloatTensor:$grad, FloatTensor:$query,
                            FloatTensor:$key, FloatTensor:$value,
                            Optional<TokenTensor>:$positions),
                       AttentionAttrs, RopeAttrs);
  let results = (outs FloatTensor:$query_grad, FloatTensor:$key_grad,
                 FloatTensor:$value_grad);
  let assemblyFormat = [{
    $grad `,` $query `,` $key `,` $value (`positions` `(` $positions^ `)`)?
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// Rotation frequencies f_i, i < head_dim / 2, after any rope scaling.
    ::llvm::SmallVector<double> getFrequencies();
  }];
}

//===----------------------------------------------------------------------===//
// FP8 (introduced by llama-insert-fp8 after llama-autodiff)
//===----------------------------------------------------------------------===//

def Llama_FP8QuantizeOp : Llama_Op<"fp8_quantize",
    [DeclareOpInterfaceMethods<VJPOpInterface>]> {
  let summary = "FP8 fake quantization of a GEMM operand, and its amax.";
  let description = [{
    Emulates the cast of a GEMM operand to FP8 with a per-tensor scale, as
    Transformer Engine does before an FP8 GEMM:
    ```
    amax   = max |input|                                      (f32; NaN stays)
    q      = cast_satfinite<format>(f32(input * scale))
    result = q / scale                       (rounded to the result type)
    ```
    `format` is `"e4m3"` (Float8E4M3FN: no infinities, largest 448) or
    `"e5m2"` (Float8E5M2: largest 57344). The cast rounds to nearest even and
    saturates: magnitudes past the largest finite value (infinities
    included) become ±largest, NaN stays NaN — PTX
    `cvt.rn.satfinite.{e4m3,e5m2}x2.f32`. `result` is the value the FP8 GEMM
    effectively multiplies (the GEMM applies `1 / scale` after accumulating),
    so the GEMM ops themselves need no FP8 mode. When `result` is bf16 the
    division is rounded to bf16, a relative error of at most 2^-9 on top of
    the FP8 rounding that the real FP8 GEMM (which unscales in f32) avoids.

    With a `scale` operand the scale is given (delayed scaling: computed
    from the amax history by `llama.fp8_scale_update` of the previous step).
    Without one, the op scales just in time (current scaling):
    `scale = (fp8_max / amax) / 2^margin`, or 1 when amax is 0 or not
    finite.

    `row_blocks = [R_0, R_1, ...]` (summing to the input's dimension 0)
    splits the rows into consecutive blocks that are quantized as tensors of
    their own: block `i` has scale `scales[i]` (or its own current scale) and
    amax `amaxes[i]`. A weight that a fusion concatenated from several
    Hugging Face tensors (q/k/v, gate/up) keeps one scale per tensor that
    way, as unfused. Without `row_blocks` the input is one block: one scale
    (or none) and one amax.

    The VJP is the straight-through estimator: the cotangent of `result`
    passes to `input` unchanged (FP8 training's convention); `scales` and
    `amaxes` carry no gradient.
    ```
    %xq, %amax = llama.fp8_quantize %x scale(%s) {format = "e4m3"}
        : (tensor<64x32xbf16>, tensor<f32>) -> (tensor<64x32xbf16>, tensor<f32>)
    %wq, %aq, %ak, %av = llama.fp8_quantize %wqkv scale(%sq, %sk, %sv)
        {format = "e4m3", row_blocks = array<i64: 32, 16, 16>}
        : (tensor<64x32xbf16>, tensor<f32>, tensor<f32>, tensor<f32>)
        -> (tensor<64x32xbf16>, tensor<f32>, tensor<f32>, tensor<f32>)
    ```
  }];
  let arguments = (ins FloatTensor:$input, Variadic<FloatScalar>:$scales,
                   StrAttr:$format, DefaultValuedAttr<I64Attr, "0">:$margin,
                   OptionalAttr<DenseI64ArrayAttr>:$row_blocks);
  let results = (outs FloatTensor:$result, Variadic<FloatScalar>:$amaxes);
  let assemblyFormat = [{
    $input (`scale` `(` $scales^ `)`)? attr-dict `:` functional-type(operands, results)
  }];
  let extraClassDeclaration = [{
    /// The rows of each block: `row_blocks`, or the whole input's.
    ::llvm::SmallVector<int64_t> getBlockRows();
  }];
  let hasVerifier = 1;
}

def Llama_FP8ScaleUpdateOp : Llama_Op<"fp8_scale_update"> {
  let summary = "Transformer Engine's delayed-scaling update of one tensor.";
  let description = [{
    With `L` the history length and `fp8_max` 448 (`"e4m3"`) or 57344
    (`"e5m2"`), as TE's `DelayedScaling` recipe:
    ```
    new_amax_history = [amax, amax_history[0], ..., amax_history[L - 2]]
    a = max(new_amax_history)          (amax_compute_algo = "max")
      | new_amax_history[0]            (amax_compute_algo = "most_recent")
    new_scale = (fp8_max / a) / 2^margin   if a > 0 and a is finite
              | scale                      otherwise
    ```
    The GEMM of this step used `scale` (computed from the history before
    this step); `new_scale` is what the next step uses.
  }];
  let arguments = (ins 1DTensorOf<[F32]>:$amax_history, FloatScalar:$amax,
                   FloatScalar:$scale, StrAttr:$format,
                   DefaultValuedAttr<I64Attr, "0">:$margin,
                   DefaultValuedAttr<StrAttr, "\"max\"">:$amax_compute_algo);
  let results = (outs 1DTensorOf<[F32]>:$new_amax_history,
                 FloatScalar:$new_scale);
  let assemblyFormat = [{
    $amax_history `,` $amax `,` $scale attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

#endif // LLAMA_OPS
