// RUN: llamac-opt %s --llama-fuse-rope-attention -split-input-file -verify-diagnostics | FileCheck %s

// GQA with llama3 scaling: the rotations move into the attention, which
// takes the unrotated q and k and both sets of attributes.
// CHECK-LABEL: func.func @gqa_llama3
// CHECK-SAME: (%[[Q:[a-z0-9]+]]: tensor<4x16xf32>, %[[K:[a-z0-9]+]]: tensor<4x8xf32>, %[[V:[a-z0-9]+]]: tensor<4x8xf32>)
// CHECK-NEXT: %[[A:.*]] = llama.rope_attention %[[Q]], %[[K]], %[[V]] {factor = 3.200000e+01 : f64, head_dim = 4 : i64, num_heads = 4 : i64, num_kv_heads = 2 : i64, original_max_position_embeddings = 64 : i64, rope_type = "llama3", scale = 5.000000e-01 : f64, seq_len = 2 : i64, theta = 5.000000e+05 : f64}
// CHECK-NEXT: return %[[A]]
func.func @gqa_llama3(%q: tensor<4x16xf32>, %k: tensor<4x8xf32>, %v: tensor<4x8xf32>) -> tensor<4x16xf32> {
  %qr = llama.rope %q {num_heads = 4, head_dim = 4, seq_len = 2, theta = 500000.0, rope_type = "llama3", factor = 32.0, original_max_position_embeddings = 64} : (tensor<4x16xf32>) -> tensor<4x16xf32>
  %kr = llama.rope %k {num_heads = 2, head_dim = 4, seq_len = 2, theta = 500000.0, rope_type = "llama3", factor = 32.0, original_max_position_embeddings = 64} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %a = llama.attention %qr, %kr, %v {num_heads = 4, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x16xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x16xf32>
  return %a : tensor<4x16xf32>
}

// -----

// MQA with the default rotation.
// CHECK-LABEL: func.func @mqa_default
// CHECK-NEXT: llama.rope_attention %{{.*}}, %{{.*}}, %{{.*}} {head_dim = 4 : i64, num_heads = 3 : i64, num_kv_heads = 1 : i64, scale = 5.000000e-01 : f64, seq_len = 2 : i64, theta = 1.000000e+04 : f64}
// CHECK-NOT: llama.rope
func.func @mqa_default(%q: tensor<4x12xf32>, %k: tensor<4x4xf32>, %v: tensor<4x4xf32>) -> tensor<4x12xf32> {
  %qr = llama.rope %q {num_heads = 3, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x12xf32>) -> tensor<4x12xf32>
  %kr = llama.rope %k {num_heads = 1, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %a = llama.attention %qr, %kr, %v {num_heads = 3, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x12xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x12xf32>
  return %a : tensor<4x12xf32>
}

// -----

// Negative: the rotated key is also the value (two uses).
// CHECK-LABEL: func.func @rotated_key_reused
// CHECK-NOT: llama.rope_attention
// CHECK: llama.attention
func.func @rotated_key_reused(%q: tensor<4x8xf32>, %k: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %qr = llama.rope %q {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %kr = llama.rope %k {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %a = llama.attention %qr, %kr, %kr {num_heads = 2, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  return %a : tensor<4x8xf32>
}

// -----

// Negative: the rotated query has another user.
// CHECK-LABEL: func.func @rotated_query_returned
// CHECK-NOT: llama.rope_attention
// CHECK: llama.attention
func.func @rotated_query_returned(%q: tensor<4x8xf32>, %k: tensor<4x8xf32>, %v: tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>) {
  %qr = llama.rope %q {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %kr = llama.rope %k {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %a = llama.attention %qr, %kr, %v {num_heads = 2, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  return %a, %qr : tensor<4x8xf32>, tensor<4x8xf32>
}

// -----

// Negative: only the query is rotated.
// CHECK-LABEL: func.func @key_not_rotated
// CHECK-NOT: llama.rope_attention
// CHECK: llama.attention
func.func @key_not_rotated(%q: tensor<4x8xf32>, %k: tensor<4x8xf32>, %v: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %qr = llama.rope %q {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %a = llama.attention %qr, %k, %v {num_heads = 2, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  return %a : tensor<4x8xf32>
}

// -----

// Negative: the two rotations differ (theta), or one is an inverse rotation.
// CHECK-LABEL: func.func @rotations_differ
// CHECK-NOT: llama.rope_attention
// CHECK: llama.attention
// CHECK: llama.attention
func.func @rotations_differ(%q: tensor<4x8xf32>, %k: tensor<4x8xf32>, %v: tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>) {
  %qr = llama.rope %q {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %kr = llama.rope %k {num_heads = 2, head_dim = 4, seq_len = 2, theta = 500000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %a = llama.attention %qr, %kr, %v {num_heads = 2, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %qi = llama.rope %q {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0, inverse = true} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %ki = llama.rope %k {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0, inverse = true} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %b = llama.attention %qi, %ki, %v {num_heads = 2, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  return %a, %b : tensor<4x8xf32>, tensor<4x8xf32>
}

// -----

// Negative: the rotation's head split disagrees with the attention's (the
// key is rotated as 1 head of 8, attended as 2 heads of 4).
// CHECK-LABEL: func.func @head_layout_differs
// CHECK-NOT: llama.rope_attention
func.func @head_layout_differs(%q: tensor<4x8xf32>, %k: tensor<4x8xf32>, %v: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %qr = llama.rope %q {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %kr = llama.rope %k {num_heads = 1, head_dim = 8, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %a = llama.attention %qr, %kr, %v {num_heads = 2, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  return %a : tensor<4x8xf32>
}

// -----

// Packed sequences: rotations and attention share the positions, and so
// does the fused op.
// CHECK-LABEL: func.func @packed
// CHECK-SAME: %[[POS:[a-z0-9]+]]: tensor<4xi32>
// CHECK-NEXT: %[[A:.*]] = llama.rope_attention %{{.*}}, %{{.*}}, %{{.*}} positions(%[[POS]]) {head_dim = 4 : i64, num_heads = 2 : i64, num_kv_heads = 1 : i64, scale = 5.000000e-01 : f64, seq_len = 4 : i64, theta = 1.000000e+04 : f64}
// CHECK-NEXT: return %[[A]]
func.func @packed(%q: tensor<4x8xf32>, %k: tensor<4x4xf32>, %v: tensor<4x4xf32>, %pos: tensor<4xi32>) -> tensor<4x8xf32> {
  %qr = llama.rope %q positions(%pos) {num_heads = 2, head_dim = 4, seq_len = 4, theta = 10000.0} : (tensor<4x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %kr = llama.rope %k positions(%pos) {num_heads = 1, head_dim = 4, seq_len = 4, theta = 10000.0} : (tensor<4x4xf32>, tensor<4xi32>) -> tensor<4x4xf32>
  %a = llama.attention %qr, %kr, %v positions(%pos) {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 4, scale = 0.5} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  return %a : tensor<4x8xf32>
}

// -----

// Negative: the rotations and the attention do not agree on the positions
// (other positions, or none for the key or for the attention).
// CHECK-LABEL: func.func @positions_differ
// CHECK-NOT: llama.rope_attention
// CHECK-COUNT-3: llama.attention
func.func @positions_differ(%q: tensor<4x8xf32>, %k: tensor<4x4xf32>, %v: tensor<4x4xf32>, %pos: tensor<4xi32>, %other: tensor<4xi32>)
    -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) {
  %qr = llama.rope %q positions(%pos) {num_heads = 2, head_dim = 4, seq_len = 4, theta = 10000.0} : (tensor<4x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %kr = llama.rope %k positions(%other) {num_heads = 1, head_dim = 4, seq_len = 4, theta = 10000.0} : (tensor<4x4xf32>, tensor<4xi32>) -> tensor<4x4xf32>
  %a = llama.attention %qr, %kr, %v positions(%pos) {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 4, scale = 0.5} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %qr2 = llama.rope %q positions(%pos) {num_heads = 2, head_dim = 4, seq_len = 4, theta = 10000.0} : (tensor<4x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %kr2 = llama.rope %k {num_heads = 1, head_dim = 4, seq_len = 4, theta = 10000.0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %b = llama.attention %qr2, %kr2, %v positions(%pos) {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 4, scale = 0.5} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %qr3 = llama.rope %q positions(%pos) {num_heads = 2, head_dim = 4, seq_len = 4, theta = 10000.0} : (tensor<4x8xf32>, tensor<4xi32>) -> tensor<4x8xf32>
  %kr3 = llama.rope %k positions(%pos) {num_heads = 1, head_dim = 4, seq_len = 4, theta = 10000.0} : (tensor<4x4xf32>, tensor<4xi32>) -> tensor<4x4xf32>
  %c = llama.attention %qr3, %kr3, %v {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 4, scale = 0.5} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x8xf32>
  return %a, %b, %c : tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>
}
