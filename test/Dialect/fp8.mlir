// RUN: llamac-opt %s -split-input-file -verify-diagnostics | FileCheck %s
// The FP8 ops: round trip of the valid forms, and each verifier error.

// CHECK-LABEL: func.func @valid
// CHECK: llama.fp8_quantize %{{.*}} scale(%{{.*}}) {format = "e4m3"} : (tensor<4x8xbf16>, tensor<f32>) -> (tensor<4x8xbf16>, tensor<f32>)
// CHECK: llama.fp8_quantize %{{.*}} {format = "e5m2", margin = 2 : i64} : (tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<f32>)
// CHECK: llama.fp8_scale_update %{{.*}}, %{{.*}}, %{{.*}} {amax_compute_algo = "most_recent", format = "e5m2"} : (tensor<16xf32>, tensor<f32>, tensor<f32>) -> (tensor<16xf32>, tensor<f32>)
func.func @valid(%x: tensor<4x8xbf16>, %y: tensor<4x8xf32>, %s: tensor<f32>, %h: tensor<16xf32>) -> (tensor<4x8xbf16>, tensor<4x8xf32>, tensor<16xf32>, tensor<f32>) {
  %xq, %a = llama.fp8_quantize %x scale(%s) {format = "e4m3"} : (tensor<4x8xbf16>, tensor<f32>) -> (tensor<4x8xbf16>, tensor<f32>)
  %yq, %b = llama.fp8_quantize %y {format = "e5m2", margin = 2 : i64} : (tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<f32>)
  %nh, %ns = llama.fp8_scale_update %h, %b, %s {format = "e5m2", amax_compute_algo = "most_recent"} : (tensor<16xf32>, tensor<f32>, tensor<f32>) -> (tensor<16xf32>, tensor<f32>)
  return %xq, %yq, %nh, %ns : tensor<4x8xbf16>, tensor<4x8xf32>, tensor<16xf32>, tensor<f32>
}

// -----

func.func @bad_format(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{format must be "e4m3" or "e5m2", got "e4m3fnuz"}}
  %xq, %a = llama.fp8_quantize %x {format = "e4m3fnuz"} : (tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<f32>)
  return %xq : tensor<4x8xf32>
}

// -----

func.func @bad_shape(%x: tensor<4x8xf32>) -> tensor<8x4xf32> {
  // expected-error @+1 {{result must have the shape of the input}}
  %xq, %a = llama.fp8_quantize %x {format = "e4m3"} : (tensor<4x8xf32>) -> (tensor<8x4xf32>, tensor<f32>)
  return %xq : tensor<8x4xf32>
}

// -----

func.func @bad_scale(%x: tensor<4x8xf32>, %s: tensor<bf16>) -> tensor<4x8xf32> {
  // expected-error @+1 {{scale must be tensor<f32>, got 'tensor<bf16>'}}
  %xq, %a = llama.fp8_quantize %x scale(%s) {format = "e4m3"} : (tensor<4x8xf32>, tensor<bf16>) -> (tensor<4x8xf32>, tensor<f32>)
  return %xq : tensor<4x8xf32>
}

// -----

func.func @bad_amax(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{amax must be tensor<f32>, got 'tensor<bf16>'}}
  %xq, %a = llama.fp8_quantize %x {format = "e4m3"} : (tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<bf16>)
  return %xq : tensor<4x8xf32>
}

// -----

func.func @bad_algo(%h: tensor<16xf32>, %a: tensor<f32>, %s: tensor<f32>) -> tensor<f32> {
  // expected-error @+1 {{amax_compute_algo must be "max" or "most_recent", got "mean"}}
  %nh, %ns = llama.fp8_scale_update %h, %a, %s {format = "e4m3", amax_compute_algo = "mean"} : (tensor<16xf32>, tensor<f32>, tensor<f32>) -> (tensor<16xf32>, tensor<f32>)
  return %ns : tensor<f32>
}

// -----

func.func @empty_history(%h: tensor<0xf32>, %a: tensor<f32>, %s: tensor<f32>) -> tensor<f32> {
  // expected-error @+1 {{amax_history must not be empty}}
  %nh, %ns = llama.fp8_scale_update %h, %a, %s {format = "e4m3"} : (tensor<0xf32>, tensor<f32>, tensor<f32>) -> (tensor<0xf32>, tensor<f32>)
  return %ns : tensor<f32>
}

// -----

func.func @history_length(%h: tensor<16xf32>, %a: tensor<f32>, %s: tensor<f32>) -> tensor<f32> {
  // expected-error @+1 {{new_amax_history must have the type of amax_history, got 'tensor<8xf32>'}}
  %nh, %ns = llama.fp8_scale_update %h, %a, %s {format = "e5m2"} : (tensor<16xf32>, tensor<f32>, tensor<f32>) -> (tensor<8xf32>, tensor<f32>)
  return %ns : tensor<f32>
}

// -----

// A concatenated weight quantized per row block: one scale and amax each.
// CHECK-LABEL: func.func @row_blocks
// CHECK: llama.fp8_quantize %{{.*}} scale(%{{.*}}, %{{.*}}) {format = "e4m3", row_blocks = array<i64: 4, 2>} : (tensor<6x8xbf16>, tensor<f32>, tensor<f32>) -> (tensor<6x8xbf16>, tensor<f32>, tensor<f32>)
// CHECK: llama.fp8_quantize %{{.*}} {format = "e4m3", row_blocks = array<i64: 4, 2>} : (tensor<6x8xbf16>) -> (tensor<6x8xbf16>, tensor<f32>, tensor<f32>)
func.func @row_blocks(%w: tensor<6x8xbf16>, %s0: tensor<f32>, %s1: tensor<f32>) -> (tensor<6x8xbf16>, tensor<6x8xbf16>) {
  %wq, %a0, %a1 = llama.fp8_quantize %w scale(%s0, %s1) {format = "e4m3", row_blocks = array<i64: 4, 2>} : (tensor<6x8xbf16>, tensor<f32>, tensor<f32>) -> (tensor<6x8xbf16>, tensor<f32>, tensor<f32>)
  %wc, %c0, %c1 = llama.fp8_quantize %w {format = "e4m3", row_blocks = array<i64: 4, 2>} : (tensor<6x8xbf16>) -> (tensor<6x8xbf16>, tensor<f32>, tensor<f32>)
  return %wq, %wc : tensor<6x8xbf16>, tensor<6x8xbf16>
}

// -----

func.func @row_blocks_sum(%w: tensor<6x8xf32>) -> tensor<6x8xf32> {
  // expected-error @+1 {{row_blocks must be positive row counts that sum to the input's dimension 0}}
  %wq, %a0, %a1 = llama.fp8_quantize %w {format = "e4m3", row_blocks = array<i64: 4, 4>} : (tensor<6x8xf32>) -> (tensor<6x8xf32>, tensor<f32>, tensor<f32>)
  return %wq : tensor<6x8xf32>
}

// -----

func.func @row_blocks_scales(%w: tensor<6x8xf32>, %s: tensor<f32>) -> tensor<6x8xf32> {
  // expected-error @+1 {{takes no scale (current scaling) or one per block (2), got 1}}
  %wq, %a0, %a1 = llama.fp8_quantize %w scale(%s) {format = "e4m3", row_blocks = array<i64: 4, 2>} : (tensor<6x8xf32>, tensor<f32>) -> (tensor<6x8xf32>, tensor<f32>, tensor<f32>)
  return %wq : tensor<6x8xf32>
}

// -----

func.func @row_blocks_amaxes(%w: tensor<6x8xf32>) -> tensor<6x8xf32> {
  // expected-error @+1 {{returns one amax per block (2), got 1}}
  %wq, %a0 = llama.fp8_quantize %w {format = "e4m3", row_blocks = array<i64: 4, 2>} : (tensor<6x8xf32>) -> (tensor<6x8xf32>, tensor<f32>)
  return %wq : tensor<6x8xf32>
}
