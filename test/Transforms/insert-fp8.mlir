// RUN: llamac-opt %s --llama-autodiff "--llama-insert-fp8=amax-history=16 margin=1 amax-compute-algo=most_recent" -split-input-file -verify-diagnostics | FileCheck %s
// RUN: llamac-opt %s --llama-autodiff "--llama-insert-fp8=scaling=current" -split-input-file -verify-diagnostics | FileCheck %s --check-prefix=CURRENT

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

// The GEMMs of fused ops are not reachable from outside: rejected.
func.func @fused(%x: tensor<4x8xf32>, %ln: tensor<8xf32> {llama.param = "n"},
                 %w: tensor<8x8xf32> {llama.param = "w"},
                 %labels: tensor<4xi32> {llama.input = "labels"}) -> tensor<f32> {
  // expected-error @+1 {{llama-insert-fp8 does not quantize the GEMMs of fused ops}}
  %y = llama.norm_matmul %x, %ln, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %loss = llama.cross_entropy %y, %labels {seq_len = 4 : i64} : (tensor<4x8xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}
