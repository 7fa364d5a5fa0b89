// RUN: llamac-opt %s --llama-autodiff -split-input-file -verify-diagnostics | FileCheck %s

// A tied embedding: the table's gradient sums the lm_head use and the gather.
// CHECK-LABEL: func.func @tied
// CHECK-SAME: -> (tensor<f32> {llama.loss}, tensor<16x8xf32> {llama.grad = "model.embed_tokens.weight"}, tensor<8xf32> {llama.grad = "model.norm.weight"}, tensor<4x8xf32> {llama.grad = "unused.weight"})
func.func @tied(%table: tensor<16x8xf32> {llama.param = "model.embed_tokens.weight"},
                %norm: tensor<8xf32> {llama.param = "model.norm.weight"},
                %unused: tensor<4x8xf32> {llama.param = "unused.weight"},
                %ids: tensor<4xi32> {llama.input = "input_ids"},
                %labels: tensor<4xi32> {llama.input = "labels"}) -> tensor<f32> {
  %h = llama.embedding %table, %ids : (tensor<16x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %x = llama.rms_norm %h, %norm {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %logits = llama.matmul %x, %table {transpose_rhs = true} : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 2} : (tensor<4x16xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}
// CHECK: %[[LOSS:.*]] = llama.cross_entropy
// CHECK: %[[ONE:.*]] = arith.constant dense<1.000000e+00> : tensor<f32>
// CHECK: %[[DLOGITS:.*]] = llama.cross_entropy_grad %[[ONE]], %{{.*}}, %{{.*}} {seq_len = 2 : i64}
// dx = dlogits · table, dtable = dlogitsᵀ · x
// CHECK: %[[DX:.*]] = llama.matmul %[[DLOGITS]], %{{.*}} : (tensor<4x16xf32>, tensor<16x8xf32>) -> tensor<4x8xf32>
// CHECK: %[[DHEAD:.*]] = llama.matmul %[[DLOGITS]], %{{.*}} {transpose_lhs = true} : (tensor<4x16xf32>, tensor<4x8xf32>) -> tensor<16x8xf32>
// CHECK: %[[DH:.*]], %[[DNORM:.*]] = llama.rms_norm_grad %[[DX]]
// CHECK: %[[DGATHER:.*]] = llama.embedding_grad %[[DH]]
// CHECK: %[[DTABLE:.*]] = llama.add %[[DHEAD]], %[[DGATHER]]
// CHECK: %[[ZERO:.*]] = arith.constant dense<0.000000e+00> : tensor<4x8xf32>
// CHECK: return %[[LOSS]], %[[DTABLE]], %[[DNORM]], %[[ZERO]]

// -----

// Attention: RoPE's VJP is the inverse rotation; GQA keys and values get their
// gradients from attention_grad.
// CHECK-LABEL: func.func @attention
func.func @attention(%wq: tensor<8x8xf32> {llama.param = "q"}, %wk: tensor<4x8xf32> {llama.param = "k"},
                     %x: tensor<4x8xf32>, %labels: tensor<4xi32>) -> tensor<f32> {
  %q = llama.matmul %x, %wq {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %k = llama.matmul %x, %wk {transpose_rhs = true} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x4xf32>
  %qr = llama.rope %q {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %a = llama.attention %qr, %k, %k {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x8xf32>
  %l = llama.swiglu %a, %qr : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %loss = llama.cross_entropy %l, %labels {seq_len = 2} : (tensor<4x8xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}
// CHECK: %[[DG:.*]], %[[DU:.*]] = llama.swiglu_grad
// CHECK: %[[DQ:.*]], %[[DK:.*]], %[[DV:.*]] = llama.attention_grad
// The key feeds both the key and value operands: both cotangents are summed.
// CHECK: %[[DQR:.*]] = llama.add %[[DU]], %[[DQ]]
// CHECK: %[[DKV:.*]] = llama.add %[[DK]], %[[DV]]
// CHECK: llama.rope %[[DQR]] {{{.*}}inverse = true
// CHECK: return %{{.*}}, %{{.*}}, %{{.*}} : tensor<f32>, tensor<8x8xf32>, tensor<4x8xf32>

// -----

// Packed sequences: the backward ops take the forward's positions, which get
// no cotangent.
// CHECK-LABEL: func.func @packed_attention
// CHECK-SAME: %[[POS:[a-z0-9]+]]: tensor<4xi32>) ->
func.func @packed_attention(%wq: tensor<8x8xf32> {llama.param = "q"}, %x: tensor<4x8xf32>,
                            %labels: tensor<4xi32>, %pos: tensor<4xi32>) -> tensor<f32> {
  %q = llama.matmul %x, %wq {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %qr = llama.rope %q positions(%pos) {num_heads = 2, head_dim = 4, seq_len = 4, theta = 10000.0} : (tensor<4x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %a = llama.attention %qr, %qr, %qr positions(%pos) {num_heads = 2, num_kv_heads = 2, head_dim = 4, seq_len = 4, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %loss = llama.cross_entropy %a, %labels {seq_len = 4} : (tensor<4x8xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}
// CHECK: llama.attention_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} positions(%[[POS]])
// CHECK: %[[DQR:.*]] = llama.add
// CHECK: %[[DQR2:.*]] = llama.add %[[DQR]]
// CHECK: llama.rope %[[DQR2]] positions(%[[POS]]) {{{.*}}inverse = true
// CHECK: return %{{.*}}, %{{.*}} : tensor<f32>, tensor<8x8xf32>

// -----

// expected-error @+1 {{llama-autodiff expects the function to return one scalar loss and nothing else}}
func.func @not_a_loss(%x: tensor<4x8xf32> {llama.param = "x"}) -> tensor<4x8xf32> {
  return %x : tensor<4x8xf32>
}

// -----

// FP8 fused ops (as llama-insert-fp8 leaves them) differentiate as the
// unquantized ops, straight-through: the backward ops carry no FP8
// quantization and the scales get no gradient.
// CHECK-LABEL: func.func @fp8_fused
// CHECK-SAME: -> (tensor<f32> {llama.loss}, tensor<8xf32> {llama.grad = "n"}, tensor<8x8xf32> {llama.grad = "wy"}, tensor<12x8xf32> {llama.grad = "w"}, tensor<16x6xf32> {llama.grad = "head"})
// CHECK: llama.gated_mlp_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} norm(%{{.*}}) {eps = 1.000000e-05 : f64} : (tensor<4x6xf32>, tensor<4x8xf32>, tensor<4x12xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>)
// CHECK: llama.norm_matmul_grad(%{{.*}}), %{{.*}}, %{{.*}}, %{{.*}} {eps = 1.000000e-05 : f64} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>) -> (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>)
func.func @fp8_fused(%x: tensor<4x8xf32>, %ln: tensor<8xf32> {llama.param = "n"},
                     %wy: tensor<8x8xf32> {llama.param = "wy"},
                     %w: tensor<12x8xf32> {llama.param = "w"},
                     %head: tensor<16x6xf32> {llama.param = "head"},
                     %s: tensor<f32>, %labels: tensor<4xi32> {llama.input = "labels"}) -> tensor<f32> {
  %y, %ay = llama.norm_matmul %x, %ln, %wy scale(%s) {eps = 1.0e-5 : f64, fp8_formats = ["e4m3"]} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>, tensor<f32>) -> tensor<4x8xf32> amax tensor<f32>
  %h, %gu, %a = llama.gated_mlp %y, %w norm(%ln) scale(%s) {eps = 1.0e-5 : f64, fp8_formats = ["e4m3"]} : (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>, tensor<f32>) -> (tensor<4x6xf32>, tensor<4x12xf32>, tensor<f32>)
  %logits = llama.matmul %h, %head {transpose_rhs = true} : (tensor<4x6xf32>, tensor<16x6xf32>) -> tensor<4x16xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 4 : i64} : (tensor<4x16xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}
