// RUN: llamac-opt %s -split-input-file -verify-diagnostics | FileCheck %s
// The ops of gradient clipping parse, verify and print back.

// CHECK-LABEL: func @clip
// CHECK: %[[NORM:.*]] = llama.global_norm %{{.*}}, %{{.*}} : (tensor<4x8xbf16>, tensor<8xf32>) -> tensor<f32>
// CHECK: llama.clip_scale %[[NORM]], %{{.*}} : (tensor<f32>, tensor<f32>) -> tensor<f32>
func.func @clip(%a: tensor<4x8xbf16>, %b: tensor<8xf32>, %max: tensor<f32>) -> (tensor<f32>, tensor<f32>) {
  %norm = llama.global_norm %a, %b : (tensor<4x8xbf16>, tensor<8xf32>) -> tensor<f32>
  %scale = llama.clip_scale %norm, %max : (tensor<f32>, tensor<f32>) -> tensor<f32>
  return %norm, %scale : tensor<f32>, tensor<f32>
}

// -----

func.func @no_operands() -> tensor<f32> {
  // expected-error @+1 {{expects at least one operand}}
  %norm = llama.global_norm : () -> tensor<f32>
  return %norm : tensor<f32>
}

// -----

func.func @not_scalar(%a: tensor<4xf32>) -> tensor<1xf32> {
  // expected-error @+1 {{result #0 must be 0D tensor of floating-point values}}
  %norm = llama.global_norm %a : (tensor<4xf32>) -> tensor<1xf32>
  return %norm : tensor<1xf32>
}
