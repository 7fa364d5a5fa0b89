// RUN: llamac-opt %s | llamac-opt | FileCheck %s
// Every op parses, verifies and prints back the same.

// CHECK-LABEL: func @forward_ops
func.func @forward_ops(%table: tensor<16x8xf32>, %ids: tensor<4xi32>, %norm: tensor<8xf32>,
                       %wq: tensor<8x8xf32>, %wk: tensor<4x8xf32>) -> tensor<f32> {
  // CHECK: llama.embedding
  %h = llama.embedding %table, %ids : (tensor<16x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  // CHECK: llama.rms_norm %{{.*}}, %{{.*}} {eps = 1.000000e-05 : f64}
  %x = llama.rms_norm %h, %norm {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  // CHECK: llama.matmul %{{.*}} {transpose_rhs = true}
  %q = llama.matmul %x, %wq {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %k = llama.matmul %x, %wk {transpose_rhs = true} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x4xf32>
  // CHECK: llama.rope %{{.*}} {factor = 8.000000e+00 : f64, head_dim = 4 : i64, num_heads = 2 : i64, rope_type = "llama3"
  %qr = llama.rope %q {num_heads = 2, head_dim = 4, seq_len = 2, theta = 500000.0, rope_type = "llama3", factor = 8.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %kr = llama.rope %k {num_heads = 1, head_dim = 4, seq_len = 2, theta = 500000.0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  // CHECK: llama.attention %{{.*}}, %{{.*}}, %{{.*}} {head_dim = 4 : i64, num_heads = 2 : i64, num_kv_heads = 1 : i64
  %a = llama.attention %qr, %kr, %k {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x8xf32>
  // CHECK: llama.swiglu
  %s = llama.swiglu %a, %x : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  // CHECK: llama.add
  %r = llama.add %s, %h : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %logits = llama.matmul %r, %table {transpose_rhs = true} : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  // CHECK: llama.cross_entropy %{{.*}} {seq_len = 2 : i64}
  %loss = llama.cross_entropy %logits, %ids {seq_len = 2} : (tensor<4x16xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}

// Packed sequences: RoPE and attention take each row's position.
// CHECK-LABEL: func @packed_ops
func.func @packed_ops(%q: tensor<4x8xf32>, %k: tensor<4x4xf32>, %dy: tensor<4x8xf32>, %pos: tensor<4xi32>)
    -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x4xf32>) {
  // CHECK: llama.rope %{{.*}} positions(%{{.*}}) {head_dim = 4 : i64, num_heads = 2 : i64, seq_len = 4 : i64, theta = 1.000000e+04 : f64} : (tensor<4x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %qr = llama.rope %q positions(%pos) {num_heads = 2, head_dim = 4, seq_len = 4, theta = 10000.0} : (tensor<4x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  // CHECK: llama.attention %{{.*}}, %{{.*}}, %{{.*}} positions(%{{.*}}) {{{.*}}} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %a = llama.attention %qr, %k, %k positions(%pos) {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 4, scale = 0.5} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  // CHECK: llama.attention_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} positions(%{{.*}}) {{{.*}}} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>)
  %dq, %dk, %dv = llama.attention_grad %dy, %qr, %k, %k positions(%pos) {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 4, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>)
  return %a, %dq, %dk : tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x4xf32>
}

// CHECK-LABEL: func @backward_ops
func.func @backward_ops(%dy: tensor<4x8xbf16>, %x: tensor<4x8xbf16>, %w: tensor<8xbf16>, %ids: tensor<4xi32>,
                        %dl: tensor<f32>, %logits: tensor<4x16xbf16>, %s: tensor<f32>)
    -> (tensor<4x8xbf16>, tensor<8xbf16>, tensor<16x8xbf16>, tensor<4x16xbf16>, tensor<8xbf16>) {
  // CHECK: llama.rms_norm_grad
  %dx, %dw = llama.rms_norm_grad %dy, %x, %w {eps = 1.0e-6 : f64} : (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<8xbf16>) -> (tensor<4x8xbf16>, tensor<8xbf16>)
  // CHECK: llama.attention_grad
  %dq, %dk, %dv = llama.attention_grad %dy, %x, %x, %x {num_heads = 2, num_kv_heads = 2, head_dim = 4, seq_len = 4, scale = 0.5} : (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x8xbf16>) -> (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x8xbf16>)
  // CHECK: llama.swiglu_grad
  %dg, %du = llama.swiglu_grad %dq, %dk, %dv : (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x8xbf16>) -> (tensor<4x8xbf16>, tensor<4x8xbf16>)
  // CHECK: llama.embedding_grad
  %dt = llama.embedding_grad %dg, %ids : (tensor<4x8xbf16>, tensor<4xi32>) -> tensor<16x8xbf16>
  // CHECK: llama.cross_entropy_grad
  %dlogits = llama.cross_entropy_grad %dl, %logits, %ids {seq_len = 2} : (tensor<f32>, tensor<4x16xbf16>, tensor<4xi32>) -> tensor<4x16xbf16>
  // CHECK: llama.adamw
  %p, %m, %v = llama.adamw %w, %dw, %w, %w, %s, %s, %s, %s, %s, %s, %s : (tensor<8xbf16>, tensor<8xbf16>, tensor<8xbf16>, tensor<8xbf16>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>) -> (tensor<8xbf16>, tensor<8xbf16>, tensor<8xbf16>)
  return %dx, %dw, %dt, %dlogits, %p : tensor<4x8xbf16>, tensor<8xbf16>, tensor<16x8xbf16>, tensor<4x16xbf16>, tensor<8xbf16>
}
