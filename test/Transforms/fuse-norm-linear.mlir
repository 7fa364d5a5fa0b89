// RUN: llamac-opt %s --llama-fuse-norm-linear -split-input-file -verify-diagnostics | FileCheck %s

// The input layernorm and q/k/v: one norm_matmul over a new qkv parameter
// (parts q, k, v in program order) with one result per projection.
// CHECK-LABEL: func.func @qkv
// CHECK-SAME: (%[[H:[a-z0-9]+]]: tensor<4x8xf32>, %[[LN:[a-z0-9]+]]: tensor<8xf32> {llama.param = "model.layers.0.input_layernorm.weight"},
// CHECK-SAME: %[[W:[a-z0-9]+]]: tensor<16x8xf32> {llama.param = "model.layers.0.self_attn.qkv_proj.weight", llama.param_parts = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"]})
// CHECK-NEXT: %[[QKV:.*]]:3 = llama.norm_matmul %[[H]], %[[LN]], %[[W]] {eps = 1.000000e-05 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>)
// CHECK-NEXT: %[[A:.*]] = llama.attention %[[QKV]]#0, %[[QKV]]#1, %[[QKV]]#2
// CHECK-NEXT: return %[[A]]
func.func @qkv(%h: tensor<4x8xf32>,
               %ln: tensor<8xf32> {llama.param = "model.layers.0.input_layernorm.weight"},
               %wq: tensor<8x8xf32> {llama.param = "model.layers.0.self_attn.q_proj.weight"},
               %wk: tensor<4x8xf32> {llama.param = "model.layers.0.self_attn.k_proj.weight"},
               %wv: tensor<4x8xf32> {llama.param = "model.layers.0.self_attn.v_proj.weight"}) -> tensor<4x8xf32> {
  %x = llama.rms_norm %h, %ln {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %q = llama.matmul %x, %wq {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %k = llama.matmul %x, %wk {transpose_rhs = true} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x4xf32>
  %v = llama.matmul %x, %wv {transpose_rhs = true} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x4xf32>
  %a = llama.attention %q, %k, %v {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x8xf32>
  return %a : tensor<4x8xf32>
}

// -----

// The post-attention norm moves into the gated_mlp that reads it.
// CHECK-LABEL: func.func @into_gated_mlp
// CHECK-SAME: (%[[H:[a-z0-9]+]]: tensor<4x8xf32>, %[[LN:[a-z0-9]+]]: tensor<8xf32>, %[[W:[a-z0-9]+]]: tensor<12x8xf32>
// CHECK-NEXT: %[[S:.*]], %{{.*}} = llama.gated_mlp %[[H]], %[[W]] norm(%[[LN]]) {eps = 9.9999999999999995E-7 : f64} : (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
// CHECK-NEXT: return %[[S]]
func.func @into_gated_mlp(%h: tensor<4x8xf32>, %ln: tensor<8xf32>,
                          %w: tensor<12x8xf32> {llama.param = "gate_up"}) -> tensor<4x6xf32> {
  %x = llama.rms_norm %h, %ln {eps = 1.0e-6 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %s, %gu = llama.gated_mlp %x, %w : (tensor<4x8xf32>, tensor<12x8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  return %s : tensor<4x6xf32>
}

// -----

// Without llama-fuse-gated-mlp, the gate and up projections concatenate like
// q/k/v, and the SwiGLU stays.
// CHECK-LABEL: func.func @gate_up
// CHECK-SAME: {llama.param = "mlp.gate_up_proj.weight", llama.param_parts = ["mlp.gate_proj.weight", "mlp.up_proj.weight"]}
// CHECK-NEXT: %[[GU:.*]]:2 = llama.norm_matmul
// CHECK-NEXT: llama.swiglu %[[GU]]#0, %[[GU]]#1
func.func @gate_up(%h: tensor<4x8xf32>, %ln: tensor<8xf32>,
                   %wg: tensor<6x8xf32> {llama.param = "mlp.gate_proj.weight"},
                   %wu: tensor<6x8xf32> {llama.param = "mlp.up_proj.weight"}) -> tensor<4x6xf32> {
  %x = llama.rms_norm %h, %ln {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %g = llama.matmul %x, %wg {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %u = llama.matmul %x, %wu {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %s = llama.swiglu %g, %u : (tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<4x6xf32>
  return %s : tensor<4x6xf32>
}

// -----

// A single projection fuses too and keeps its weight argument unchanged
// (nothing to concatenate): the final norm and an untied lm_head...
// CHECK-LABEL: func.func @final_norm_lm_head
// CHECK-SAME: %[[HEAD:[a-z0-9]+]]: tensor<16x8xf32> {llama.param = "lm_head.weight"}
// CHECK-NOT: llama.param_parts
// CHECK-NEXT: llama.norm_matmul %{{.*}}, %{{.*}}, %[[HEAD]] {eps = 1.000000e-05 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
func.func @final_norm_lm_head(%h: tensor<4x8xf32>, %ln: tensor<8xf32> {llama.param = "model.norm.weight"},
                              %head: tensor<16x8xf32> {llama.param = "lm_head.weight"},
                              %labels: tensor<4xi32>) -> tensor<f32> {
  %x = llama.rms_norm %h, %ln {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %logits = llama.matmul %x, %head {transpose_rhs = true} : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 2} : (tensor<4x16xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}

// -----

// ... and a tied one: the embedding table also feeds the gather, which is
// fine since the argument stays.
// CHECK-LABEL: func.func @tied_lm_head
// CHECK: llama.embedding %[[TABLE:[a-z0-9]+]]
// CHECK-NEXT: llama.norm_matmul %{{.*}}, %{{.*}}, %[[TABLE]]
func.func @tied_lm_head(%table: tensor<16x8xf32> {llama.param = "model.embed_tokens.weight"},
                        %ln: tensor<8xf32> {llama.param = "model.norm.weight"},
                        %ids: tensor<4xi32>, %labels: tensor<4xi32>) -> tensor<f32> {
  %h = llama.embedding %table, %ids : (tensor<16x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %x = llama.rms_norm %h, %ln {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %logits = llama.matmul %x, %table {transpose_rhs = true} : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 2} : (tensor<4x16xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}

// -----

// Negative: the normalized value also feeds a residual add; it must exist in
// memory, so the norm stays.
// CHECK-LABEL: func.func @norm_with_residual_user
// CHECK-NOT: llama.norm_matmul
// CHECK: llama.rms_norm
func.func @norm_with_residual_user(%h: tensor<4x8xf32>, %ln: tensor<8xf32>,
                                   %wq: tensor<8x8xf32> {llama.param = "q"}) -> tensor<4x8xf32> {
  %x = llama.rms_norm %h, %ln {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %q = llama.matmul %x, %wq {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %r = llama.add %x, %q : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  return %r : tensor<4x8xf32>
}

// -----

// Negative: a projection whose weight is not a parameter argument (here a
// computed value).
// CHECK-LABEL: func.func @weight_not_a_param
// CHECK-NOT: llama.norm_matmul
// CHECK: llama.rms_norm
func.func @weight_not_a_param(%h: tensor<4x8xf32>, %ln: tensor<8xf32>,
                              %wq: tensor<8x8xf32> {llama.param = "q"}) -> tensor<4x8xf32> {
  %w = llama.add %wq, %wq : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
  %x = llama.rms_norm %h, %ln {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %q = llama.matmul %x, %w {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  return %q : tensor<4x8xf32>
}

// -----

// Negative: of several projections to concatenate, one weight is shared with
// another op (a tied weight), so its argument cannot go away.
// CHECK-LABEL: func.func @shared_weight_in_group
// CHECK-NOT: llama.norm_matmul
// CHECK: llama.rms_norm
func.func @shared_weight_in_group(%h: tensor<4x8xf32>, %ln: tensor<8xf32>,
                                  %wq: tensor<8x8xf32> {llama.param = "q"},
                                  %wk: tensor<8x8xf32> {llama.param = "k"}) -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) {
  %x = llama.rms_norm %h, %ln {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %q = llama.matmul %x, %wq {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %k = llama.matmul %x, %wk {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %o = llama.matmul %h, %wq {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  return %q, %k, %o : tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>
}

// -----

// Negative: the normalized value is the right operand of a matmul, or a
// non-transposed one's left operand: not a Linear layer's input.
// CHECK-LABEL: func.func @not_a_linear_input
// CHECK-NOT: llama.norm_matmul
// CHECK: llama.rms_norm
// CHECK: llama.rms_norm
func.func @not_a_linear_input(%h: tensor<8x8xf32>, %ln: tensor<8xf32>,
                              %w: tensor<8x8xf32> {llama.param = "w"}, %v: tensor<8x8xf32> {llama.param = "v"}) -> (tensor<8x8xf32>, tensor<8x8xf32>) {
  %x = llama.rms_norm %h, %ln {eps = 1.0e-5 : f64} : (tensor<8x8xf32>, tensor<8xf32>) -> tensor<8x8xf32>
  %a = llama.matmul %h, %x {transpose_rhs = true} : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
  %y = llama.rms_norm %h, %ln {eps = 1.0e-5 : f64} : (tensor<8x8xf32>, tensor<8xf32>) -> tensor<8x8xf32>
  %b = llama.matmul %y, %v : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
  return %a, %b : tensor<8x8xf32>, tensor<8x8xf32>
}

// -----

// Negative: a gated_mlp that already has a norm, or that reads the norm as
// well as another user.
// CHECK-LABEL: func.func @gated_mlp_not_fused
// CHECK: llama.rms_norm
// CHECK: llama.gated_mlp %{{.*}}, %{{.*}} norm
// CHECK: llama.rms_norm
// CHECK: llama.gated_mlp %{{.*}}, %{{.*}} :
func.func @gated_mlp_not_fused(%h: tensor<4x8xf32>, %ln: tensor<8xf32>,
                               %w: tensor<12x8xf32>) -> (tensor<4x6xf32>, tensor<4x6xf32>, tensor<4x8xf32>) {
  %x = llama.rms_norm %h, %ln {eps = 1.0e-6 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %s, %gu = llama.gated_mlp %x, %w norm(%ln) {eps = 1.0e-6 : f64} : (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  %y = llama.rms_norm %h, %ln {eps = 1.0e-6 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %t, %gu2 = llama.gated_mlp %y, %w : (tensor<4x8xf32>, tensor<12x8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  return %s, %t, %y : tensor<4x6xf32>, tensor<4x6xf32>, tensor<4x8xf32>
}
