// RUN: llamac-opt %s --llama-autodiff "--llama-insert-fp8=amax-history=16 margin=1 amax-compute-algo=most_recent" -split-input-file -verify-diagnostics | FileCheck %s
// RUN: llamac-opt %s --llama-autodiff "--llama-insert-fp8=scaling=current" -split-input-file -verify-diagnostics | FileCheck %s --check-prefix=CURRENT
// RUN: llamac-opt %s --llama-autodiff "--llama-insert-fp8=lm-head=true" -split-input-file -verify-diagnostics | FileCheck %s --check-prefix=LMHEAD

// One linear layer feeding lm_head. The layer's forward, dgrad and wgrad
// GEMMs read FP8-quantized operands: the weight (E4M3) once for forward and
// dgrad, the input (E4M3) once for forward and wgrad, the incoming gradient
// (E5M2) once for dgrad and wgrad. Each gets an amax history and a scale
// argument and their updated values as results. lm_head stays unquantized.
// CHECK-LABEL: func.func @linear_then_lm_head
// CHECK-SAME: %[[X:[a-z0-9]+]]: tensor<4x8xf32>,
// CHECK-SAME: %[[W1:[a-z0-9]+]]: tensor<6x8xf32> {llama.param = "model.layers.0.mlp.up_proj.weight"},
// CHECK-SAME: %[[W2:[a-z0-9]+]]: tensor<16x6xf32> {llama.param = "lm_head.weight"},
// CHECK-SAME: %{{.*}}: tensor<4xi32> {llama.input = "labels"},
// CHECK-SAME: %[[HX:[a-z0-9]+]]: tensor<16xf32> {llama.fp8_amax_history = "model.layers.0.mlp.up_proj.input"},
// CHECK-SAME: %[[SX:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.mlp.up_proj.input"},
// CHECK-SAME: %[[HW:[a-z0-9]+]]: tensor<16xf32> {llama.fp8_amax_history = "model.layers.0.mlp.up_proj.weight"},
// CHECK-SAME: %[[SW:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.mlp.up_proj.weight"},
// CHECK-SAME: %[[HG:[a-z0-9]+]]: tensor<16xf32> {llama.fp8_amax_history = "model.layers.0.mlp.up_proj.grad_output"},
// CHECK-SAME: %[[SG:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.mlp.up_proj.grad_output"})
// CHECK-SAME: -> (tensor<f32> {llama.loss}, tensor<6x8xf32> {llama.grad = "model.layers.0.mlp.up_proj.weight"}, tensor<16x6xf32> {llama.grad = "lm_head.weight"},
// CHECK-SAME: tensor<16xf32> {llama.new_fp8_amax_history = "model.layers.0.mlp.up_proj.input"}, tensor<f32> {llama.new_fp8_scale = "model.layers.0.mlp.up_proj.input"},
// CHECK-SAME: tensor<16xf32> {llama.new_fp8_amax_history = "model.layers.0.mlp.up_proj.weight"}, tensor<f32> {llama.new_fp8_scale = "model.layers.0.mlp.up_proj.weight"},
// CHECK-SAME: tensor<16xf32> {llama.new_fp8_amax_history = "model.layers.0.mlp.up_proj.grad_output"}, tensor<f32> {llama.new_fp8_scale = "model.layers.0.mlp.up_proj.grad_output"})
// CHECK: %[[WQ:.*]], %[[AW:.*]] = llama.fp8_quantize %[[W1]] scale(%[[SW]]) {format = "e4m3", margin = 1 : i64}
// CHECK: %[[XQ:.*]], %[[AX:.*]] = llama.fp8_quantize %[[X]] scale(%[[SX]]) {format = "e4m3", margin = 1 : i64}
// CHECK: %[[H:.*]] = llama.matmul %[[XQ]], %[[WQ]] {transpose_rhs = true}
// lm_head forward, dgrad and wgrad read their operands as they are.
// CHECK: %[[LOGITS:.*]] = llama.matmul %[[H]], %[[W2]] {transpose_rhs = true}
// CHECK: %[[DLOGITS:.*]] = llama.cross_entropy_grad
// CHECK: %[[DH:.*]] = llama.matmul %[[DLOGITS]], %[[W2]] :
// CHECK: %[[DHQ:.*]], %[[AG:.*]] = llama.fp8_quantize %[[DH]] scale(%[[SG]]) {format = "e5m2", margin = 1 : i64}
// CHECK: llama.matmul %[[DLOGITS]], %[[H]] {transpose_lhs = true}
// CHECK: %[[DX:.*]] = llama.matmul %[[DHQ]], %[[WQ]] :
// CHECK: %[[DW:.*]] = llama.matmul %[[DHQ]], %[[XQ]] {transpose_lhs = true}
// CHECK: %[[NHX:.*]], %[[NSX:.*]] = llama.fp8_scale_update %[[HX]], %[[AX]], %[[SX]] {amax_compute_algo = "most_recent", format = "e4m3", margin = 1 : i64}
// CHECK: llama.fp8_scale_update %[[HW]], %[[AW]], %[[SW]] {amax_compute_algo = "most_recent", format = "e4m3", margin = 1 : i64}
// CHECK: llama.fp8_scale_update %[[HG]], %[[AG]], %[[SG]] {amax_compute_algo = "most_recent", format = "e5m2", margin = 1 : i64}
// CHECK: return %{{.*}}, %[[DW]], %{{.*}}, %[[NHX]], %[[NSX]],

// Current scaling: no state; each quantize scales from its own amax.
// CURRENT-LABEL: func.func @linear_then_lm_head
// CURRENT-NOT: llama.fp8_amax_history
// CURRENT-SAME: -> (tensor<f32> {llama.loss}, tensor<6x8xf32> {llama.grad = "model.layers.0.mlp.up_proj.weight"}, tensor<16x6xf32> {llama.grad = "lm_head.weight"})
// CURRENT: llama.fp8_quantize %arg1 {format = "e4m3"} : (tensor<6x8xf32>) -> (tensor<6x8xf32>, tensor<f32>)
// CURRENT: llama.fp8_quantize %arg0 {format = "e4m3"}
// CURRENT: llama.fp8_quantize %{{.*}} {format = "e5m2"}
// CURRENT-NOT: llama.fp8_quantize
// CURRENT-NOT: llama.fp8_scale_update
// CURRENT: return
// lm-head=true: lm_head's three GEMMs read FP8 operands as any layer's, its
// tensors named after lm_head.weight.
// LMHEAD-LABEL: func.func @linear_then_lm_head
// LMHEAD-SAME: %[[W2:[a-z0-9]+]]: tensor<16x6xf32> {llama.param = "lm_head.weight"},
// LMHEAD-SAME: {llama.fp8_amax_history = "lm_head.input"}
// LMHEAD-SAME: {llama.fp8_amax_history = "lm_head.weight"}
// LMHEAD-SAME: {llama.fp8_amax_history = "lm_head.grad_output"}
// LMHEAD: %[[W2Q:[a-z0-9_]+]], %{{.*}} = llama.fp8_quantize %[[W2]] scale(%{{.*}}) {format = "e4m3"}
// LMHEAD: %[[H:[0-9]+]] = llama.matmul
// LMHEAD: %[[HQ:[a-z0-9_]+]], %{{.*}} = llama.fp8_quantize %[[H]] scale(%{{.*}}) {format = "e4m3"}
// LMHEAD: %[[LOGITS:[0-9]+]] = llama.matmul %[[HQ]], %[[W2Q]] {transpose_rhs = true}
// LMHEAD: %[[DLOGITS:[0-9]+]] = llama.cross_entropy_grad %{{.*}}, %[[LOGITS]]
// LMHEAD: %[[DLQ:[a-z0-9_]+]], %{{.*}} = llama.fp8_quantize %[[DLOGITS]] scale(%{{.*}}) {format = "e5m2"}
// LMHEAD: llama.matmul %[[DLQ]], %[[W2Q]] :
// LMHEAD: llama.matmul %[[DLQ]], %[[HQ]] {transpose_lhs = true}
// LMHEAD-COUNT-6: llama.fp8_scale_update
// LMHEAD-NOT: llama.fp8_scale_update
// LMHEAD: return
func.func @linear_then_lm_head(%x: tensor<4x8xf32>,
               %w1: tensor<6x8xf32> {llama.param = "model.layers.0.mlp.up_proj.weight"},
               %w2: tensor<16x6xf32> {llama.param = "lm_head.weight"},
               %labels: tensor<4xi32> {llama.input = "labels"}) -> tensor<f32> {
  %h = llama.matmul %x, %w1 {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %logits = llama.matmul %h, %w2 {transpose_rhs = true} : (tensor<4x6xf32>, tensor<16x6xf32>) -> tensor<4x16xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 4 : i64} : (tensor<4x16xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}

// -----

// Negative: attention's products are not quantized; its operands are the
// projections' results and its gradients feed the projections' backward
// GEMMs only through one E5M2 quantize each. q/k/v share one quantized
// input. Tied lm_head (over the embedding) stays unquantized.
// CHECK-LABEL: func.func @attention_block
// CHECK: %[[XQ:.*]], %{{.*}} = llama.fp8_quantize %{{.*}} scale(%{{.*}}) {format = "e4m3", margin = 1 : i64} : (tensor<4x8xf32>
// CHECK: %[[Q:.*]] = llama.matmul %[[XQ]],
// CHECK: %[[K:.*]] = llama.matmul %[[XQ]],
// CHECK: %[[V:.*]] = llama.matmul %[[XQ]],
// CHECK-NEXT: %[[A:.*]] = llama.attention %[[Q]], %[[K]], %[[V]]
// CHECK: %[[AQ:.*]], %{{.*}} = llama.fp8_quantize %[[A]]
// CHECK: %[[O:.*]] = llama.matmul %[[AQ]],
// CHECK: llama.matmul %[[O]], %[[E:[a-z0-9]+]] {transpose_rhs = true}
// CHECK: %[[DA:.*]] = llama.matmul %{{.*}}, %{{.*}} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
// CHECK: %[[DQ:.*]], %[[DK:.*]], %[[DV:.*]] = llama.attention_grad %[[DA]], %[[Q]], %[[K]], %[[V]]
// CHECK-NEXT: llama.fp8_quantize %[[DQ]] {{.*}}format = "e5m2"
// CHECK-NEXT: llama.fp8_quantize %[[DK]] {{.*}}format = "e5m2"
// CHECK-NEXT: llama.fp8_quantize %[[DV]] {{.*}}format = "e5m2"
// 4 weights + 2 inputs + 4 incoming gradients.
// CHECK-COUNT-10: llama.fp8_scale_update
// CHECK-NOT: llama.fp8_scale_update
func.func @attention_block(%x: tensor<4x8xf32>,
    %wq: tensor<8x8xf32> {llama.param = "model.layers.0.self_attn.q_proj.weight"},
    %wk: tensor<8x8xf32> {llama.param = "model.layers.0.self_attn.k_proj.weight"},
    %wv: tensor<8x8xf32> {llama.param = "model.layers.0.self_attn.v_proj.weight"},
    %wo: tensor<8x8xf32> {llama.param = "model.layers.0.self_attn.o_proj.weight"},
    %emb: tensor<16x8xf32> {llama.param = "model.embed_tokens.weight"},
    %labels: tensor<4xi32> {llama.input = "labels"}) -> tensor<f32> {
  %q = llama.matmul %x, %wq {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %k = llama.matmul %x, %wk {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %v = llama.matmul %x, %wv {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %a = llama.attention %q, %k, %v {num_heads = 2 : i64, num_kv_heads = 2 : i64, head_dim = 4 : i64, seq_len = 4 : i64, scale = 0.5 : f64} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %o = llama.matmul %a, %wo {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %logits = llama.matmul %o, %emb {transpose_rhs = true} : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 4 : i64} : (tensor<4x16xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}

// -----

// Fused ops: the same tensors are quantized with the same scales as
// without the fusions, and their state carries the unfused names. A
// concatenated weight is quantized once per step with one scale per Hugging
// Face tensor (row_blocks); the normalized inputs, internal to the fused
// ops, are quantized by the ops (fp8_formats), the backward op with the
// forward's scale; the SwiGLU gradient halves inside gated_mlp_grad get
// E5M2 scales of their own; the k and v gradients are quantized outside.
// CHECK-LABEL: func.func @fused_layer
// CHECK-SAME: %[[SK:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.self_attn.k_proj.weight"},
// CHECK-SAME: %[[SV:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.self_attn.v_proj.weight"},
// CHECK-SAME: %[[HX:[a-z0-9]+]]: tensor<16xf32> {llama.fp8_amax_history = "model.layers.0.self_attn.k_proj.input"},
// CHECK-SAME: %[[SX:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.self_attn.k_proj.input"},
// CHECK-SAME: %[[SG:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.mlp.gate_proj.weight"},
// CHECK-SAME: %[[SU:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.mlp.up_proj.weight"},
// CHECK-SAME: %[[SM:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.mlp.gate_proj.input"},
// CHECK-SAME: %[[SDI:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.mlp.down_proj.input"},
// CHECK-SAME: %[[SDG:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.mlp.gate_proj.grad_output"},
// CHECK-SAME: %[[SDU:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.mlp.up_proj.grad_output"},
// CHECK-SAME: %[[SDK:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.self_attn.k_proj.grad_output"},
// CHECK-SAME: %[[SDV:[a-z0-9]+]]: tensor<f32> {llama.fp8_scale = "model.layers.0.self_attn.v_proj.grad_output"})
// CHECK: %[[WGU:[a-z0-9_]+]], %[[AGU:[a-z0-9_]+]]:2 = llama.fp8_quantize %arg4 scale(%[[SG]], %[[SU]]) {format = "e4m3", margin = 1 : i64, row_blocks = array<i64: 6, 6>} : (tensor<12x8xf32>, tensor<f32>, tensor<f32>) -> (tensor<12x8xf32>, tensor<f32>, tensor<f32>)
// CHECK: %[[WKV:[a-z0-9_]+]], %[[AKV:[a-z0-9_]+]]:2 = llama.fp8_quantize %arg2 scale(%[[SK]], %[[SV]]) {format = "e4m3", margin = 1 : i64, row_blocks = array<i64: 8, 8>}
// CHECK: %[[KV:[a-z0-9_]+]]:2, %[[AX:[a-z0-9_]+]] = llama.norm_matmul %arg0, %arg1, %[[WKV]] scale(%[[SX]]) {eps = 1.000000e-05 : f64, fp8_formats = ["e4m3"], fp8_margin = 1 : i64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>, tensor<f32>) -> (tensor<4x8xf32>, tensor<4x8xf32>) amax tensor<f32>
// CHECK: %[[H:[a-z0-9_]+]], %[[GU:[a-z0-9_]+]], %[[AM:[a-z0-9_]+]] = llama.gated_mlp %{{.*}}, %[[WGU]] norm(%arg3) scale(%[[SM]]) {eps = 1.000000e-05 : f64, fp8_formats = ["e4m3"], fp8_margin = 1 : i64}
// The SwiGLU output is down_proj's input: a quantize of its own.
// CHECK: %[[HQ:[a-z0-9_]+]], %{{.*}} = llama.fp8_quantize %[[H]] scale(%[[SDI]]) {format = "e4m3", margin = 1 : i64}
// CHECK: llama.matmul %[[HQ]], %{{.*}} {transpose_rhs = true}
// Negative: lm_head's norm_matmul and its backward stay unquantized.
// CHECK: llama.norm_matmul %{{.*}}, %arg6, %arg7 {eps = 1.000000e-05 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
// CHECK: llama.norm_matmul_grad(%{{.*}}), %{{.*}}, %arg6, %arg7 {eps = 1.000000e-05 : f64} : (tensor<4x16xf32>,
// CHECK: %{{.*}}, %{{.*}}, %{{.*}}, %[[AMG:[a-z0-9_]+]]:3 = llama.gated_mlp_grad %{{.*}}, %{{.*}}, %[[GU]], %[[WGU]] norm(%arg3) scale(%[[SM]], %[[SDG]], %[[SDU]]) {eps = 1.000000e-05 : f64, fp8_formats = ["e4m3", "e5m2", "e5m2"], fp8_margin = 1 : i64}
// CHECK: %[[DK:[a-z0-9_]+]], %[[DV:[a-z0-9_]+]] = llama.swiglu_grad
// CHECK-DAG: %[[DKQ:[a-z0-9_]+]], %[[ADK:[a-z0-9_]+]] = llama.fp8_quantize %[[DK]] scale(%[[SDK]]) {format = "e5m2", margin = 1 : i64}
// CHECK-DAG: %[[DVQ:[a-z0-9_]+]], %{{.*}} = llama.fp8_quantize %[[DV]] scale(%[[SDV]]) {format = "e5m2", margin = 1 : i64}
// CHECK: llama.norm_matmul_grad(%[[DKQ]], %[[DVQ]]), %arg0, %arg1, %[[WKV]] scale(%[[SX]]) {eps = 1.000000e-05 : f64, fp8_formats = ["e4m3"], fp8_margin = 1 : i64}
// Each state is updated from the amax of the forward op that measured it.
// CHECK: llama.fp8_scale_update %{{.*}}, %[[AKV]]#0, %[[SK]] {{.*}}format = "e4m3"
// CHECK-NEXT: llama.fp8_scale_update %{{.*}}, %[[AKV]]#1, %[[SV]]
// CHECK-NEXT: llama.fp8_scale_update %[[HX]], %[[AX]], %[[SX]]
// CHECK-NEXT: llama.fp8_scale_update %{{.*}}, %[[AGU]]#0, %[[SG]]
// CHECK-NEXT: llama.fp8_scale_update %{{.*}}, %[[AGU]]#1, %[[SU]]
// CHECK-NEXT: llama.fp8_scale_update %{{.*}}, %[[AM]], %[[SM]]
// CHECK: llama.fp8_scale_update %{{.*}}, %[[AMG]]#1, %[[SDG]] {{.*}}format = "e5m2"
// CHECK-NEXT: llama.fp8_scale_update %{{.*}}, %[[AMG]]#2, %[[SDU]] {{.*}}format = "e5m2"
// CHECK-NEXT: llama.fp8_scale_update %{{.*}}, %[[ADK]], %[[SDK]] {{.*}}format = "e5m2"

// Current scaling: the same quantization points, no state.
// CURRENT-LABEL: func.func @fused_layer
// CURRENT-NOT: llama.fp8_amax_history
// CURRENT: llama.fp8_quantize %arg4 {format = "e4m3", row_blocks = array<i64: 6, 6>} : (tensor<12x8xf32>) -> (tensor<12x8xf32>, tensor<f32>, tensor<f32>)
// CURRENT: llama.norm_matmul %arg0, %arg1, %{{.*}} {eps = 1.000000e-05 : f64, fp8_formats = ["e4m3"]} : (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>) amax tensor<f32>
// CURRENT: llama.gated_mlp_grad %{{.*}} norm(%arg3) {eps = 1.000000e-05 : f64, fp8_formats = ["e4m3", "e5m2", "e5m2"]} : (tensor<4x6xf32>, tensor<4x8xf32>, tensor<4x12xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>) amax tensor<f32>, tensor<f32>, tensor<f32>
// CURRENT-NOT: llama.fp8_scale_update
// CURRENT: return
func.func @fused_layer(%x: tensor<4x8xf32>,
    %ln1: tensor<8xf32> {llama.param = "model.layers.0.input_layernorm.weight"},
    %wkv: tensor<16x8xf32> {llama.param = "model.layers.0.self_attn.kv_proj.weight", llama.param_parts = ["model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"]},
    %ln2: tensor<8xf32> {llama.param = "model.layers.0.post_attention_layernorm.weight"},
    %wgu: tensor<12x8xf32> {llama.param = "model.layers.0.mlp.gate_up_proj.weight", llama.param_parts = ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"]},
    %wd: tensor<8x6xf32> {llama.param = "model.layers.0.mlp.down_proj.weight"},
    %lnf: tensor<8xf32> {llama.param = "model.norm.weight"},
    %head: tensor<16x8xf32> {llama.param = "lm_head.weight"},
    %labels: tensor<4xi32> {llama.input = "labels"}) -> tensor<f32> {
  %k, %v = llama.norm_matmul %x, %ln1, %wkv {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>)
  %kv = llama.swiglu %k, %v : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %h, %gu = llama.gated_mlp %kv, %wgu norm(%ln2) {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  %o = llama.matmul %h, %wd {transpose_rhs = true} : (tensor<4x6xf32>, tensor<8x6xf32>) -> tensor<4x8xf32>
  %logits = llama.norm_matmul %o, %lnf, %head {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 4 : i64} : (tensor<4x16xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}

// -----

// Negative: a fused weight whose llama.param_parts do not name one tensor
// per output (here none) is quantized as one tensor, with one scale; a
// gated_mlp without a norm quantizes its input inside all the same.
// The gate/up halves and the q and k gradients are named after the one
// weight.
// CHECK-LABEL: func.func @unnamed_parts
// CHECK-SAME: {llama.fp8_scale = "model.layers.0.self_attn.qk.weight"}
// CHECK-SAME: {llama.fp8_scale = "model.layers.0.self_attn.qk.input"}
// CHECK-SAME: {llama.fp8_scale = "model.layers.0.mlp.gu.weight"}
// CHECK-SAME: {llama.fp8_scale = "model.layers.0.mlp.gu.input"}
// CHECK-SAME: {llama.fp8_scale = "model.layers.0.mlp.gu.grad_output"}
// CHECK-SAME: {llama.fp8_scale = "model.layers.0.mlp.gu.grad_output.1"}
// CHECK-SAME: {llama.fp8_scale = "model.layers.0.self_attn.qk.grad_output"}
// CHECK-SAME: {llama.fp8_scale = "model.layers.0.self_attn.qk.grad_output.1"}
// CHECK-NOT: row_blocks
// CHECK: llama.norm_matmul {{.*}} scale(
// CHECK: llama.gated_mlp %{{.*}}, %{{.*}} scale(%{{.*}}) {fp8_formats = ["e4m3"], fp8_margin = 1 : i64}
// CHECK-COUNT-2: {format = "e5m2", margin = 1 : i64} : (tensor<4x4xf32>
// CHECK: llama.norm_matmul_grad
func.func @unnamed_parts(%x: tensor<4x8xf32>,
    %ln: tensor<8xf32> {llama.param = "model.layers.0.input_layernorm.weight"},
    %wqk: tensor<8x8xf32> {llama.param = "model.layers.0.self_attn.qk.weight"},
    %wgu: tensor<12x4xf32> {llama.param = "model.layers.0.mlp.gu.weight"},
    %head: tensor<16x6xf32> {llama.param = "lm_head.weight"},
    %labels: tensor<4xi32> {llama.input = "labels"}) -> tensor<f32> {
  %q, %k = llama.norm_matmul %x, %ln, %wqk {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>) -> (tensor<4x4xf32>, tensor<4x4xf32>)
  %qk = llama.swiglu %q, %k : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32>
  %h, %gu = llama.gated_mlp %qk, %wgu : (tensor<4x4xf32>, tensor<12x4xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  %logits = llama.matmul %h, %head {transpose_rhs = true} : (tensor<4x6xf32>, tensor<16x6xf32>) -> tensor<4x16xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 4 : i64} : (tensor<4x16xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}
