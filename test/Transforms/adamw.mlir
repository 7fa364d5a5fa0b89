// RUN: llamac-opt %s --llama-autodiff --llama-adamw -split-input-file -verify-diagnostics | FileCheck %s

// The gradient results become AdamW updates; moments and hyperparameters
// become named arguments, the updated tensors named results.
// CHECK-LABEL: func.func @step
// CHECK-SAME: %[[W:[a-z0-9]+]]: tensor<4x8xf32> {llama.param = "w"}
// CHECK-SAME: %[[M:[a-z0-9]+]]: tensor<4x8xf32> {llama.exp_avg = "w"}
// CHECK-SAME: %[[V:[a-z0-9]+]]: tensor<4x8xf32> {llama.exp_avg_sq = "w"}
// CHECK-SAME: %[[LR:[a-z0-9]+]]: tensor<f32> {llama.hyperparameter = "lr"}
// CHECK-SAME: {llama.hyperparameter = "beta1"}
// CHECK-SAME: {llama.hyperparameter = "beta2"}
// CHECK-SAME: {llama.hyperparameter = "eps"}
// CHECK-SAME: {llama.hyperparameter = "weight_decay"}
// CHECK-SAME: %[[STEP:[a-z0-9]+]]: tensor<f32> {llama.hyperparameter = "step"})
// CHECK-SAME: -> (tensor<f32> {llama.loss}, tensor<4x8xf32> {llama.new_param = "w"}, tensor<4x8xf32> {llama.new_exp_avg = "w"}, tensor<4x8xf32> {llama.new_exp_avg_sq = "w"})
func.func @step(%w: tensor<4x8xf32> {llama.param = "w"}, %x: tensor<2x8xf32>, %labels: tensor<2xi32>) -> tensor<f32> {
  %logits = llama.matmul %x, %w {transpose_rhs = true} : (tensor<2x8xf32>, tensor<4x8xf32>) -> tensor<2x4xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 2} : (tensor<2x4xf32>, tensor<2xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}
// CHECK: %[[DW:.*]] = llama.matmul %{{.*}}, %{{.*}} {transpose_lhs = true}
// CHECK: %[[P:.*]], %[[M2:.*]], %[[V2:.*]] = llama.adamw %[[W]], %[[DW]], %[[M]], %[[V]], %[[LR]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[STEP]]
// CHECK: return %{{.*}}, %[[P]], %[[M2]], %[[V2]]

// -----

// expected-error @+1 {{llama-adamw expects llama.grad results; run llama-autodiff first}}
func.func @no_params(%x: tensor<2x4xf32>, %labels: tensor<2xi32>) -> tensor<f32> {
  %loss = llama.cross_entropy %x, %labels {seq_len = 2} : (tensor<2x4xf32>, tensor<2xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}
