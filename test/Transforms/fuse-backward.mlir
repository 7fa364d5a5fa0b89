// RUN: llamac-opt %s --llama-fuse-gated-mlp --llama-fuse-norm-linear --llama-fuse-rope-attention --llama-autodiff | FileCheck %s

// One decoder layer and the loss: after the three fusions, autodiff emits
// the fused backward ops, each fed by the fused forward's own operands.
// CHECK-LABEL: func.func @layer
// CHECK-SAME: %[[QKV:[a-z0-9]+]]: tensor<16x8xf32> {llama.param = "l.self_attn.qkv_proj.weight", llama.param_parts = ["l.self_attn.q_proj.weight", "l.self_attn.k_proj.weight", "l.self_attn.v_proj.weight"]}
// CHECK-SAME: %[[GU:[a-z0-9]+]]: tensor<12x8xf32> {llama.param = "l.mlp.gate_up_proj.weight", llama.param_parts = ["l.mlp.gate_proj.weight", "l.mlp.up_proj.weight"]}
// CHECK-SAME: -> (tensor<f32> {llama.loss}, {{.*}}{llama.grad = "l.self_attn.qkv_proj.weight"}{{.*}}{llama.grad = "l.mlp.gate_up_proj.weight"}
// Forward:
// CHECK: %[[P:.*]]:3 = llama.norm_matmul %[[X:[a-z0-9]+]], %{{.*}}, %[[QKV]]
// CHECK: %[[A:.*]] = llama.rope_attention %[[P]]#0, %[[P]]#1, %[[P]]#2
// CHECK: %[[H:.*]] = llama.add
// CHECK: %[[S:.*]], %[[SAVED:.*]] = llama.gated_mlp %[[H]], %[[GU]] norm(
// CHECK: %[[LOGITS:.*]] = llama.norm_matmul
// Backward: the final norm and the lm_head, then the MLP with its norm, then
// attention and q/k/v with the input norm.
// CHECK: %[[DLOGITS:.*]] = llama.cross_entropy_grad
// CHECK: llama.norm_matmul_grad(%[[DLOGITS]])
// CHECK: llama.gated_mlp_grad %{{.*}}, %[[H]], %[[SAVED]], %[[GU]] norm(
// CHECK: %[[DQ:.*]], %[[DK:.*]], %[[DV:.*]] = llama.rope_attention_grad %{{.*}}, %[[P]]#0, %[[P]]#1, %[[P]]#2
// CHECK: llama.norm_matmul_grad(%[[DQ]], %[[DK]], %[[DV]]), %[[X]], %{{.*}}, %[[QKV]]
// CHECK-NOT: llama.rope
// CHECK-NOT: llama.swiglu
// CHECK-NOT: llama.rms_norm_grad
func.func @layer(%h0: tensor<4x8xf32>,
                 %ln1: tensor<8xf32> {llama.param = "l.input_layernorm.weight"},
                 %wq: tensor<8x8xf32> {llama.param = "l.self_attn.q_proj.weight"},
                 %wk: tensor<4x8xf32> {llama.param = "l.self_attn.k_proj.weight"},
                 %wv: tensor<4x8xf32> {llama.param = "l.self_attn.v_proj.weight"},
                 %wo: tensor<8x8xf32> {llama.param = "l.self_attn.o_proj.weight"},
                 %ln2: tensor<8xf32> {llama.param = "l.post_attention_layernorm.weight"},
                 %wg: tensor<6x8xf32> {llama.param = "l.mlp.gate_proj.weight"},
                 %wu: tensor<6x8xf32> {llama.param = "l.mlp.up_proj.weight"},
                 %wd: tensor<8x6xf32> {llama.param = "l.mlp.down_proj.weight"},
                 %lnf: tensor<8xf32> {llama.param = "model.norm.weight"},
                 %head: tensor<16x8xf32> {llama.param = "lm_head.weight"},
                 %labels: tensor<4xi32> {llama.input = "labels"}) -> tensor<f32> {
  %x = llama.rms_norm %h0, %ln1 {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %q = llama.matmul %x, %wq {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %k = llama.matmul %x, %wk {transpose_rhs = true} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x4xf32>
  %v = llama.matmul %x, %wv {transpose_rhs = true} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x4xf32>
  %qr = llama.rope %q {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %kr = llama.rope %k {num_heads = 1, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %a = llama.attention %qr, %kr, %v {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x8xf32>
  %o = llama.matmul %a, %wo {transpose_rhs = true} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %h = llama.add %h0, %o : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %x2 = llama.rms_norm %h, %ln2 {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %g = llama.matmul %x2, %wg {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %u = llama.matmul %x2, %wu {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %s = llama.swiglu %g, %u : (tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<4x6xf32>
  %d = llama.matmul %s, %wd {transpose_rhs = true} : (tensor<4x6xf32>, tensor<8x6xf32>) -> tensor<4x8xf32>
  %h2 = llama.add %h, %d : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %xf = llama.rms_norm %h2, %lnf {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  %logits = llama.matmul %xf, %head {transpose_rhs = true} : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 2} : (tensor<4x16xf32>, tensor<4xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}
