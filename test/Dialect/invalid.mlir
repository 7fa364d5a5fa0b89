// RUN: llamac-opt %s -split-input-file -verify-diagnostics
// Each verifier rejects malformed ops with a message naming what is wrong.

func.func @matmul_contraction(%a: tensor<4x8xf32>, %b: tensor<4x8xf32>) -> tensor<4x4xf32> {
  // expected-error @+1 {{contracts a dimension of 8 with one of 4}}
  %0 = llama.matmul %a, %b : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x4xf32>
  return %0 : tensor<4x4xf32>
}

// -----

func.func @matmul_result_shape(%a: tensor<4x8xf32>, %b: tensor<6x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{result must have shape [4, 6]}}
  %0 = llama.matmul %a, %b {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @mixed_types(%a: tensor<4x8xf32>, %b: tensor<8x8xbf16>) -> tensor<4x8xf32> {
  // expected-error @+1 {{expects one element type}}
  %0 = llama.matmul %a, %b : (tensor<4x8xf32>, tensor<8x8xbf16>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @norm_weight(%x: tensor<4x8xf32>, %w: tensor<6xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{weight must have shape [8]}}
  %0 = llama.rms_norm %x, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<6xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @norm_eps(%x: tensor<4x8xf32>, %w: tensor<8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{eps must be positive}}
  %0 = llama.rms_norm %x, %w {eps = 0.0 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @rope_width(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{input width 8 is not num_heads * head_dim}}
  %0 = llama.rope %x {num_heads = 3, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @rope_odd_head_dim(%x: tensor<4x6xf32>) -> tensor<4x6xf32> {
  // expected-error @+1 {{head_dim must be even}}
  %0 = llama.rope %x {num_heads = 2, head_dim = 3, seq_len = 2, theta = 10000.0} : (tensor<4x6xf32>) -> tensor<4x6xf32>
  return %0 : tensor<4x6xf32>
}

// -----

func.func @rope_type(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{unsupported rope_type 'yarn'}}
  %0 = llama.rope %x {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0, rope_type = "yarn"} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @rope_llama3_factors(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{needs factor > 0, high_freq_factor > low_freq_factor > 0}}
  %0 = llama.rope %x {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0, rope_type = "llama3", low_freq_factor = 4.0, high_freq_factor = 1.0} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @rope_sequences(%x: tensor<5x8xf32>) -> tensor<5x8xf32> {
  // expected-error @+1 {{has 5 token rows, not a multiple of seq_len 2}}
  %0 = llama.rope %x {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<5x8xf32>) -> tensor<5x8xf32>
  return %0 : tensor<5x8xf32>
}

// -----

func.func @attention_groups(%q: tensor<4x12xf32>, %k: tensor<4x8xf32>) -> tensor<4x12xf32> {
  // expected-error @+1 {{num_heads 3 is not a multiple of num_kv_heads 2}}
  %0 = llama.attention %q, %k, %k {num_heads = 3, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x12xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x12xf32>
  return %0 : tensor<4x12xf32>
}

// -----

func.func @attention_kv_width(%q: tensor<4x8xf32>, %k: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{key must have shape [4, 4]}}
  %0 = llama.attention %q, %k, %k {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @embedding_ids(%t: tensor<16x8xf32>, %ids: tensor<4xi32>) -> tensor<3x8xf32> {
  // expected-error @+1 {{result must have shape [4, 8]}}
  %0 = llama.embedding %t, %ids : (tensor<16x8xf32>, tensor<4xi32>) -> tensor<3x8xf32>
  return %0 : tensor<3x8xf32>
}

// -----

func.func @embedding_id_type(%t: tensor<16x8xf32>, %ids: tensor<4xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{must be 1D tensor of 32-bit signless integer values}}
  %0 = llama.embedding %t, %ids : (tensor<16x8xf32>, tensor<4xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @loss_labels(%l: tensor<4x16xf32>, %y: tensor<2xi32>) -> tensor<f32> {
  // expected-error @+1 {{labels must have shape [4]}}
  %0 = llama.cross_entropy %l, %y {seq_len = 2} : (tensor<4x16xf32>, tensor<2xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @swiglu_shapes(%g: tensor<4x8xf32>, %u: tensor<4x6xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{up must have shape [4, 8]}}
  %0 = llama.swiglu %g, %u : (tensor<4x8xf32>, tensor<4x6xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @add_types(%a: tensor<4x8xf32>, %b: tensor<4x8xbf16>) -> tensor<4x8xf32> {
  // expected-error @+1 {{expects operands and result of one type}}
  %0 = llama.add %a, %b : (tensor<4x8xf32>, tensor<4x8xbf16>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @adamw_moments(%p: tensor<8xf32>, %m: tensor<4xf32>, %s: tensor<f32>) -> tensor<8xf32> {
  // expected-error @+1 {{expects parameter, gradient and moments of one type}}
  %a, %b, %c = llama.adamw %p, %p, %m, %p, %s, %s, %s, %s, %s, %s, %s : (tensor<8xf32>, tensor<8xf32>, tensor<4xf32>, tensor<8xf32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>) -> (tensor<8xf32>, tensor<8xf32>, tensor<8xf32>)
  return %a : tensor<8xf32>
}

// -----

func.func @rope_positions_length(%x: tensor<4x8xf32>, %pos: tensor<2xi32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{positions must have shape [4], got 'tensor<2xi32>'}}
  %0 = llama.rope %x positions(%pos) {num_heads = 2, head_dim = 4, seq_len = 2, theta = 10000.0} : (tensor<4x8xf32>, tensor<2xi32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @attention_positions_type(%q: tensor<4x8xf32>, %pos: tensor<4xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{operand #3 must be 1D tensor of 32-bit signless integer values}}
  %0 = llama.attention %q, %q, %q positions(%pos) {num_heads = 2, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<4xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @attention_grad_positions_length(%q: tensor<4x8xf32>, %pos: tensor<8xi32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{positions must have shape [4], got 'tensor<8xi32>'}}
  %dq, %dk, %dv = llama.attention_grad %q, %q, %q, %q positions(%pos) {num_heads = 2, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<8xi32>) -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>)
  return %dq : tensor<4x8xf32>
}
