// RUN: llamac-opt %s -split-input-file -verify-diagnostics
// The verifiers of the fused ops and their backward ops.

func.func @norm_matmul_widths(%h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<16x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{result widths sum to 12, but the concatenated weight has 16 rows}}
  %q, %k = llama.norm_matmul %h, %ln, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> (tensor<4x8xf32>, tensor<4x4xf32>)
  return %q : tensor<4x8xf32>
}

// -----

func.func @norm_matmul_rows(%h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<8x8xf32>) -> tensor<2x8xf32> {
  // expected-error @+1 {{result must have shape [4, ?]}}
  %q = llama.norm_matmul %h, %ln, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>) -> tensor<2x8xf32>
  return %q : tensor<2x8xf32>
}

// -----

func.func @norm_matmul_no_result(%h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<8x8xf32>) {
  // expected-error @+1 {{needs at least one result}}
  llama.norm_matmul %h, %ln, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>) -> ()
  return
}

// -----

func.func @norm_matmul_weight_width(%h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<8x6xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{weight must have shape [?, 8]}}
  %q = llama.norm_matmul %h, %ln, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x6xf32>) -> tensor<4x8xf32>
  return %q : tensor<4x8xf32>
}

// -----

func.func @norm_matmul_norm_weight(%h: tensor<4x8xf32>, %ln: tensor<6xf32>, %w: tensor<8x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{weight must have shape [8]}}
  %q = llama.norm_matmul %h, %ln, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<6xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  return %q : tensor<4x8xf32>
}

// -----

func.func @norm_matmul_eps(%h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<8x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{eps must be positive}}
  %q = llama.norm_matmul %h, %ln, %w {eps = 0.0 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  return %q : tensor<4x8xf32>
}

// -----

func.func @norm_matmul_types(%h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<8x8xbf16>) -> tensor<4x8xf32> {
  // expected-error @+1 {{expects one element type}}
  %q = llama.norm_matmul %h, %ln, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xbf16>) -> tensor<4x8xf32>
  return %q : tensor<4x8xf32>
}

// -----

func.func @norm_matmul_grad_widths(%dq: tensor<4x8xf32>, %h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<16x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{grad widths sum to 8, but the concatenated weight has 16 rows}}
  %dx, %dln, %dw = llama.norm_matmul_grad(%dq), %h, %ln, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> (tensor<4x8xf32>, tensor<8xf32>, tensor<16x8xf32>)
  return %dx : tensor<4x8xf32>
}

// -----

func.func @norm_matmul_grad_weight_grad(%dq: tensor<4x8xf32>, %h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<8x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{weight_grad must have shape [8, 8]}}
  %dx, %dln, %dw = llama.norm_matmul_grad(%dq), %h, %ln, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>) -> (tensor<4x8xf32>, tensor<8xf32>, tensor<8x4xf32>)
  return %dx : tensor<4x8xf32>
}

// -----

func.func @gated_mlp_odd_weight(%x: tensor<4x8xf32>, %w: tensor<11x8xf32>) -> tensor<4x5xf32> {
  // expected-error @+1 {{weight must stack gate and up weights of one width, got 11 rows}}
  %s, %gu = llama.gated_mlp %x, %w : (tensor<4x8xf32>, tensor<11x8xf32>) -> (tensor<4x5xf32>, tensor<4x11xf32>)
  return %s : tensor<4x5xf32>
}

// -----

func.func @gated_mlp_result(%x: tensor<4x8xf32>, %w: tensor<12x8xf32>) -> tensor<4x12xf32> {
  // expected-error @+1 {{result must have shape [4, 6]}}
  %s, %gu = llama.gated_mlp %x, %w : (tensor<4x8xf32>, tensor<12x8xf32>) -> (tensor<4x12xf32>, tensor<4x12xf32>)
  return %s : tensor<4x12xf32>
}

// -----

func.func @gated_mlp_gate_up(%x: tensor<4x8xf32>, %w: tensor<12x8xf32>) -> tensor<4x6xf32> {
  // expected-error @+1 {{gate_up must have shape [4, 12]}}
  %s, %gu = llama.gated_mlp %x, %w : (tensor<4x8xf32>, tensor<12x8xf32>) -> (tensor<4x6xf32>, tensor<4x6xf32>)
  return %s : tensor<4x6xf32>
}

// -----

func.func @gated_mlp_norm_without_eps(%x: tensor<4x8xf32>, %w: tensor<12x8xf32>, %ln: tensor<8xf32>) -> tensor<4x6xf32> {
  // expected-error @+1 {{takes eps exactly when it has a norm weight}}
  %s, %gu = llama.gated_mlp %x, %w norm(%ln) : (tensor<4x8xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  return %s : tensor<4x6xf32>
}

// -----

func.func @gated_mlp_eps_without_norm(%x: tensor<4x8xf32>, %w: tensor<12x8xf32>) -> tensor<4x6xf32> {
  // expected-error @+1 {{takes eps exactly when it has a norm weight}}
  %s, %gu = llama.gated_mlp %x, %w {eps = 1.0e-5 : f64} : (tensor<4x8xf32>, tensor<12x8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  return %s : tensor<4x6xf32>
}

// -----

// gate_up is saved for the backward; a forward use would get no cotangent.
func.func @gated_mlp_gate_up_used(%x: tensor<4x8xf32>, %w: tensor<12x8xf32>) -> tensor<4x12xf32> {
  // expected-error @+1 {{gate_up is saved for llama.gated_mlp_grad and must have no other user}}
  %s, %gu = llama.gated_mlp %x, %w : (tensor<4x8xf32>, tensor<12x8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  return %gu : tensor<4x12xf32>
}

// -----

func.func @gated_mlp_grad_norm_weight_grad(%ds: tensor<4x6xf32>, %x: tensor<4x8xf32>, %gu: tensor<4x12xf32>, %w: tensor<12x8xf32>, %ln: tensor<8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{returns norm_weight_grad exactly when it has a norm weight}}
  %dx, %dw = llama.gated_mlp_grad %ds, %x, %gu, %w norm(%ln) {eps = 1.0e-5 : f64} : (tensor<4x6xf32>, tensor<4x8xf32>, tensor<4x12xf32>, tensor<12x8xf32>, tensor<8xf32>) -> (tensor<4x8xf32>, tensor<12x8xf32>)
  return %dx : tensor<4x8xf32>
}

// -----

func.func @gated_mlp_grad_grad(%ds: tensor<4x12xf32>, %x: tensor<4x8xf32>, %gu: tensor<4x12xf32>, %w: tensor<12x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{grad must have shape [4, 6]}}
  %dx, %dw = llama.gated_mlp_grad %ds, %x, %gu, %w : (tensor<4x12xf32>, tensor<4x8xf32>, tensor<4x12xf32>, tensor<12x8xf32>) -> (tensor<4x8xf32>, tensor<12x8xf32>)
  return %dx : tensor<4x8xf32>
}

// -----

func.func @rope_attention_kv_width(%q: tensor<4x8xf32>, %k: tensor<4x8xf32>, %v: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{key must have shape [4, 4]}}
  %a = llama.rope_attention %q, %k, %v {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5, theta = 10000.0} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  return %a : tensor<4x8xf32>
}

// -----

func.func @rope_attention_odd_head_dim(%q: tensor<4x6xf32>, %k: tensor<4x6xf32>, %v: tensor<4x6xf32>) -> tensor<4x6xf32> {
  // expected-error @+1 {{head_dim must be even, got 3}}
  %a = llama.rope_attention %q, %k, %v {num_heads = 2, num_kv_heads = 2, head_dim = 3, seq_len = 2, scale = 0.5, theta = 10000.0} : (tensor<4x6xf32>, tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<4x6xf32>
  return %a : tensor<4x6xf32>
}

// -----

func.func @rope_attention_groups(%q: tensor<4x12xf32>, %k: tensor<4x8xf32>, %v: tensor<4x8xf32>) -> tensor<4x12xf32> {
  // expected-error @+1 {{num_heads 3 is not a multiple of num_kv_heads 2}}
  %a = llama.rope_attention %q, %k, %v {num_heads = 3, num_kv_heads = 2, head_dim = 4, seq_len = 2, scale = 0.5, theta = 10000.0} : (tensor<4x12xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x12xf32>
  return %a : tensor<4x12xf32>
}

// -----

func.func @rope_attention_rope_type(%q: tensor<4x8xf32>, %k: tensor<4x4xf32>, %v: tensor<4x4xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{unsupported rope_type 'yarn'}}
  %a = llama.rope_attention %q, %k, %v {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5, theta = 10000.0, rope_type = "yarn"} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x8xf32>
  return %a : tensor<4x8xf32>
}

// -----

func.func @rope_attention_llama3(%q: tensor<4x8xf32>, %k: tensor<4x4xf32>, %v: tensor<4x4xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{needs factor > 0, high_freq_factor > low_freq_factor > 0}}
  %a = llama.rope_attention %q, %k, %v {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5, theta = 10000.0, rope_type = "llama3", factor = 8.0, low_freq_factor = 4.0, high_freq_factor = 1.0} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x8xf32>
  return %a : tensor<4x8xf32>
}

// -----

func.func @rope_attention_seq_len(%q: tensor<6x8xf32>, %k: tensor<6x4xf32>, %v: tensor<6x4xf32>) -> tensor<6x8xf32> {
  // expected-error @+1 {{has 6 token rows, not a multiple of seq_len 4}}
  %a = llama.rope_attention %q, %k, %v {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 4, scale = 0.5, theta = 10000.0} : (tensor<6x8xf32>, tensor<6x4xf32>, tensor<6x4xf32>) -> tensor<6x8xf32>
  return %a : tensor<6x8xf32>
}

// -----

func.func @rope_attention_grad_key_grad(%g: tensor<4x8xf32>, %q: tensor<4x8xf32>, %k: tensor<4x4xf32>, %v: tensor<4x4xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{key_grad must have shape [4, 4]}}
  %dq, %dk, %dv = llama.rope_attention_grad %g, %q, %k, %v {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5, theta = 10000.0} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x4xf32>)
  return %dq : tensor<4x8xf32>
}

// -----

func.func @fp8_format_count(%h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<8x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{fp8_formats must list 1 format(s), got 2}}
  %q, %a = llama.norm_matmul %h, %ln, %w {eps = 1.0e-5 : f64, fp8_formats = ["e4m3", "e4m3"]} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32> amax tensor<f32>
  return %q : tensor<4x8xf32>
}

// -----

func.func @fp8_bad_format(%h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<8x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{format must be "e4m3" or "e5m2", got "e3m4"}}
  %q, %a = llama.norm_matmul %h, %ln, %w {eps = 1.0e-5 : f64, fp8_formats = ["e3m4"]} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32> amax tensor<f32>
  return %q : tensor<4x8xf32>
}

// -----

func.func @fp8_no_amax(%h: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<8x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{returns 1 FP8 amax(es), got 0}}
  %q = llama.norm_matmul %h, %ln, %w {eps = 1.0e-5 : f64, fp8_formats = ["e4m3"]} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  return %q : tensor<4x8xf32>
}

// -----

func.func @fp8_scales_without_formats(%x: tensor<4x8xf32>, %w: tensor<12x8xf32>, %s: tensor<f32>) -> tensor<4x6xf32> {
  // expected-error @+1 {{has FP8 scales or amaxes but no fp8_formats}}
  %r, %gu = llama.gated_mlp %x, %w scale(%s) : (tensor<4x8xf32>, tensor<12x8xf32>, tensor<f32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
  return %r : tensor<4x6xf32>
}

// -----

func.func @fp8_scale_count(%g: tensor<4x6xf32>, %x: tensor<4x8xf32>, %gu: tensor<4x12xf32>, %w: tensor<12x8xf32>, %s: tensor<f32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{takes no FP8 scale (current scaling) or 3, got 1}}
  %dx, %dw, %a0, %a1, %a2 = llama.gated_mlp_grad %g, %x, %gu, %w scale(%s) {fp8_formats = ["e4m3", "e5m2", "e5m2"]} : (tensor<4x6xf32>, tensor<4x8xf32>, tensor<4x12xf32>, tensor<12x8xf32>, tensor<f32>) -> (tensor<4x8xf32>, tensor<12x8xf32>) amax tensor<f32>, tensor<f32>, tensor<f32>
  return %dx : tensor<4x8xf32>
}

// -----

func.func @fp8_scale_type(%g: tensor<4x8xf32>, %x: tensor<4x8xf32>, %ln: tensor<8xf32>, %w: tensor<8x8xf32>, %s: tensor<bf16>) -> tensor<4x8xf32> {
  // expected-error @+1 {{FP8 scale must be tensor<f32>, got 'tensor<bf16>'}}
  %dx, %dln, %dw, %a = llama.norm_matmul_grad(%g), %x, %ln, %w scale(%s) {eps = 1.0e-5 : f64, fp8_formats = ["e4m3"]} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>, tensor<bf16>) -> (tensor<4x8xf32>, tensor<8xf32>, tensor<8x8xf32>, tensor<f32>)
  return %dx : tensor<4x8xf32>
}

// -----

func.func @rope_attention_positions_length(%q: tensor<4x8xf32>, %k: tensor<4x4xf32>, %v: tensor<4x4xf32>, %pos: tensor<2xi32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{positions must have shape [4], got 'tensor<2xi32>'}}
  %a = llama.rope_attention %q, %k, %v positions(%pos) {num_heads = 2, num_kv_heads = 1, head_dim = 4, seq_len = 2, scale = 0.5, theta = 10000.0} : (tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x4xf32>, tensor<2xi32>) -> tensor<4x8xf32>
  return %a : tensor<4x8xf32>
}
