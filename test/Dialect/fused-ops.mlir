// RUN: llamac-opt %s | llamac-opt | FileCheck %s
// The fused ops and their backward ops parse, verify and print back the same.

// CHECK-LABEL: func @fused_forward
func.func @fused_forward(%h: tensor<4x8xf32>, %ln: tensor<8xf32>, %wqkv: tensor<16x8xf32>,
                         %wgu: tensor<12x8xf32>, %x: tensor<4x8xf32>)
    -> (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4x6xf32>, tensor<4x6xf32>, tensor<4x8xf32>) {
  // CHECK: %{{.*}}:3 = llama.norm_matmul %{{.*}}, %{{.*}}, %{{.*}} {eps = 1.000000e-05 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>)
  %q, %k, %v = llama.norm_matmul %h, %ln, %wqkv {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>)
  // CHECK: llama.gated_mlp %{{.*}}, %{{.*}} : (tensor<4x8xf32>, tensor<12x8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  %s, %gu = llama.gated_mlp %x, %wgu : (tensor<4x8xf32>, tensor<12x8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  // CHECK: llama.gated_mlp %{{.*}}, %{{.*}} norm(%{{.*}}) {eps = 1.000000e-05 : f64} : (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  %sn, %gun = llama.gated_mlp %h, %wgu norm(%ln) {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  // CHECK: llama.rope_attention %{{.*}}, %{{.*}}, %{{.*}} {factor = 8.000000e+00 : f64, head_dim = 4 : i64, num_heads = 2 : i64, num_kv_heads = 1 : i64, rope_type = "llama3", scale = 5.000000e-01 : f64, seq_len = 2 : i64, theta = 5.000000e+05 : f64}
  %a = llama.rope_attention %q, %k, %v {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5, theta = 500000.0, rope_type = "llama3", factor = 8.0} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x8xf32>
  return %a, %k, %v, %s, %sn, %h : tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4x6xf32>, tensor<4x6xf32>, tensor<4x8xf32>
}

// CHECK-LABEL: func @single_projection
func.func @single_projection(%h: tensor<4x8xbf16>, %ln: tensor<8xbf16>, %head: tensor<32x8xbf16>) -> tensor<4x32xbf16> {
  // CHECK: llama.norm_matmul {{.*}} -> tensor<4x32xbf16>
  %logits = llama.norm_matmul %h, %ln, %head {eps = 1.0e-5 : f64} : (tensor<4x8xbf16>, tensor<8xbf16>, tensor<32x8xbf16>) -> tensor<4x32xbf16>
  return %logits : tensor<4x32xbf16>
}

// CHECK-LABEL: func @fused_backward
func.func @fused_backward(%dq: tensor<4x8xf32>, %dk: tensor<4x4xf32>, %dv: tensor<4x4xf32>,
                          %h: tensor<4x8xf32>, %ln: tensor<8xf32>, %wqkv: tensor<16x8xf32>,
                          %ds: tensor<4x6xf32>, %gu: tensor<4x12xf32>, %wgu: tensor<12x8xf32>)
    -> (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>, tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>, tensor<12x8xf32>, tensor<4x4xf32>) {
  // CHECK: llama.norm_matmul_grad(%{{.*}}, %{{.*}}, %{{.*}}), %{{.*}}, %{{.*}}, %{{.*}} {eps = 1.000000e-05 : f64} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>)
  %dx, %dln, %dw = llama.norm_matmul_grad(%dq, %dk, %dv), %h, %ln, %wqkv {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>)
  // CHECK: llama.gated_mlp_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : (tensor<4x6xf32>, tensor<4x8xf32>, tensor<4x12xf32>, tensor<12x8xf32>) -> (tensor<4x8xf32>, tensor<12x8xf32>)
  %dx2, %dwgu = llama.gated_mlp_grad %ds, %h, %gu, %wgu : (tensor<4x6xf32>, tensor<4x8xf32>, tensor<4x12xf32>, tensor<12x8xf32>) -> (tensor<4x8xf32>, tensor<12x8xf32>)
  // CHECK: llama.gated_mlp_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} norm(%{{.*}}) {eps = 1.000000e-05 : f64} : (tensor<4x6xf32>, tensor<4x8xf32>, tensor<4x12xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>)
  %dx3, %dwgu3, %dln3 = llama.gated_mlp_grad %ds, %h, %gu, %wgu norm(%ln) {eps = 1.0e-5 : f64} : (tensor<4x6xf32>, tensor<4x8xf32>, tensor<4x12xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>)
  // CHECK: llama.rope_attention_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} {head_dim = 4 : i64, num_heads = 2 : i64, num_kv_heads = 1 : i64, scale = 5.000000e-01 : f64, seq_len = 2 : i64, theta = 1.000000e+04 : f64}
  %gq, %gk, %gv = llama.rope_attention_grad %dq, %dq, %dk, %dv {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5, theta = 10000.0} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>)
  return %dx, %dln, %dw, %dx2, %dwgu, %dln3, %dwgu3, %gk : tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>, tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>, tensor<12x8xf32>, tensor<4x4xf32>
}

// FP8 (llama-insert-fp8): the internal GEMM inputs' formats, their scales
// (delayed scaling) and amaxes.
// CHECK-LABEL: func @fused_fp8
func.func @fused_fp8(%h: tensor<4x8xbf16>, %ln: tensor<8xbf16>, %wqkv: tensor<16x8xbf16>,
                     %wgu: tensor<12x8xbf16>, %ds: tensor<4x6xbf16>, %s: tensor<f32>,
                     %sg: tensor<f32>, %su: tensor<f32>)
    -> (tensor<4x8xbf16>, tensor<f32>, tensor<4x6xbf16>, tensor<8xbf16>, tensor<12x8xbf16>, tensor<f32>, tensor<f32>) {
  // CHECK: %{{.*}}:2, %{{.*}} = llama.norm_matmul %{{.*}}, %{{.*}}, %{{.*}} scale(%{{.*}}) {eps = 1.000000e-05 : f64, fp8_formats = ["e4m3"]} : (tensor<4x8xbf16>, tensor<8xbf16>, tensor<16x8xbf16>, tensor<f32>) -> (tensor<4x8xbf16>, tensor<4x8xbf16>) amax tensor<f32>
  %q, %k, %aq = llama.norm_matmul %h, %ln, %wqkv scale(%s) {eps = 1.0e-5 : f64, fp8_formats = ["e4m3"]} : (tensor<4x8xbf16>, tensor<8xbf16>, tensor<16x8xbf16>, tensor<f32>) -> (tensor<4x8xbf16>, tensor<4x8xbf16>) amax tensor<f32>
  // Current scaling: no scale operand, a margin.
  // CHECK: llama.gated_mlp %{{.*}}, %{{.*}} norm(%{{.*}}) {eps = 1.000000e-05 : f64, fp8_formats = ["e4m3"], fp8_margin = 1 : i64} : (tensor<4x8xbf16>, tensor<12x8xbf16>, tensor<8xbf16>) -> (tensor<4x6xbf16>, tensor<4x12xbf16>, tensor<f32>)
  %r, %gu, %ag = llama.gated_mlp %h, %wgu norm(%ln) {eps = 1.0e-5 : f64, fp8_formats = ["e4m3"], fp8_margin = 1 : i64} : (tensor<4x8xbf16>, tensor<12x8xbf16>, tensor<8xbf16>) -> (tensor<4x6xbf16>, tensor<4x12xbf16>, tensor<f32>)
  // CHECK: llama.norm_matmul_grad(%{{.*}}, %{{.*}}), %{{.*}}, %{{.*}}, %{{.*}} scale(%{{.*}}) {eps = 1.000000e-05 : f64, fp8_formats = ["e4m3"]} : (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<8xbf16>, tensor<16x8xbf16>, tensor<f32>) -> (tensor<4x8xbf16>, tensor<8xbf16>, tensor<16x8xbf16>, tensor<f32>)
  %dx, %dln, %dw, %ax = llama.norm_matmul_grad(%q, %k), %h, %ln, %wqkv scale(%s) {eps = 1.0e-5 : f64, fp8_formats = ["e4m3"]} : (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<8xbf16>, tensor<16x8xbf16>, tensor<f32>) -> (tensor<4x8xbf16>, tensor<8xbf16>, tensor<16x8xbf16>, tensor<f32>)
  // CHECK: llama.gated_mlp_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} norm(%{{.*}}) scale(%{{.*}}, %{{.*}}, %{{.*}}) {eps = 1.000000e-05 : f64, fp8_formats = ["e4m3", "e5m2", "e5m2"]} : (tensor<4x6xbf16>, tensor<4x8xbf16>, tensor<4x12xbf16>, tensor<12x8xbf16>, tensor<8xbf16>, tensor<f32>, tensor<f32>, tensor<f32>) -> (tensor<4x8xbf16>, tensor<12x8xbf16>, tensor<8xbf16>) amax tensor<f32>, tensor<f32>, tensor<f32>
  %dx2, %dwgu, %dln2, %a0, %a1, %a2 = llama.gated_mlp_grad %ds, %h, %gu, %wgu norm(%ln) scale(%s, %sg, %su) {eps = 1.0e-5 : f64, fp8_formats = ["e4m3", "e5m2", "e5m2"]} : (tensor<4x6xbf16>, tensor<4x8xbf16>, tensor<4x12xbf16>, tensor<12x8xbf16>, tensor<8xbf16>, tensor<f32>, tensor<f32>, tensor<f32>) -> (tensor<4x8xbf16>, tensor<12x8xbf16>, tensor<8xbf16>) amax tensor<f32>, tensor<f32>, tensor<f32>
  // CHECK: llama.gated_mlp_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} {fp8_formats = ["e4m3", "e5m2", "e5m2"]} : (tensor<4x6xbf16>, tensor<4x8xbf16>, tensor<4x12xbf16>, tensor<12x8xbf16>) -> (tensor<4x8xbf16>, tensor<12x8xbf16>) amax tensor<f32>, tensor<f32>, tensor<f32>
  %dx3, %dwgu3, %b0, %b1, %b2 = llama.gated_mlp_grad %ds, %h, %gu, %wgu {fp8_formats = ["e4m3", "e5m2", "e5m2"]} : (tensor<4x6xbf16>, tensor<4x8xbf16>, tensor<4x12xbf16>, tensor<12x8xbf16>) -> (tensor<4x8xbf16>, tensor<12x8xbf16>) amax tensor<f32>, tensor<f32>, tensor<f32>
  return %dx, %aq, %r, %dln2, %dwgu3, %a1, %b2 : tensor<4x8xbf16>, tensor<f32>, tensor<4x6xbf16>, tensor<8xbf16>, tensor<12x8xbf16>, tensor<f32>, tensor<f32>
}

// -----

// Packed sequences: the fused attention and its backward take the positions.
// CHECK-LABEL: func @packed_rope_attention
func.func @packed_rope_attention(%q: tensor<4x8xf32>, %k: tensor<4x4xf32>, %v: tensor<4x4xf32>, %pos: tensor<4xi32>)
    -> (tensor<4x8xf32>, tensor<4x8xf32>) {
  // CHECK: llama.rope_attention %{{.*}}, %{{.*}}, %{{.*}} positions(%{{.*}}) {{{.*}}} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %a = llama.rope_attention %q, %k, %v positions(%pos) {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 4, scale = 0.5, theta = 10000.0} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  // CHECK: llama.rope_attention_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} positions(%{{.*}}) {{{.*}}} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>)
  %gq, %gk, %gv = llama.rope_attention_grad %a, %q, %k, %v positions(%pos) {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 4, scale = 0.5, theta = 10000.0} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>)
  return %a, %gq : tensor<4x8xf32>, tensor<4x8xf32>
}
