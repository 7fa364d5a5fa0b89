// RUN: llamac-opt %s --llama-autodiff --llama-adamw -split-input-file -verify-diagnostics | FileCheck %s

// The differentiated function becomes @forward_backward, unchanged: it still
// returns the loss and the gradients.
// CHECK-LABEL: func.func @forward_backward
// CHECK-SAME: %{{[a-z0-9]+}}: tensor<4x8xf32> {llama.param = "w"}
// CHECK-SAME: -> (tensor<f32> {llama.loss}, tensor<4x8xf32> {llama.grad = "w"})
// CHECK: %[[DW:.*]] = llama.matmul %{{.*}}, %{{.*}} {transpose_lhs = true}
// CHECK: return %{{.*}}, %[[DW]]

// @optimizer_step takes parameters, gradients, moments and hyperparameters;
// it clips by the global norm and returns the norm, the new parameters and
// the new moments.
// CHECK-LABEL: func.func @optimizer_step
// CHECK-SAME: %[[W:[a-z0-9]+]]: tensor<4x8xf32> {llama.param = "w"}
// CHECK-SAME: %[[G:[a-z0-9]+]]: tensor<4x8xf32> {llama.grad = "w"}
// CHECK-SAME: %[[M:[a-z0-9]+]]: tensor<4x8xf32> {llama.exp_avg = "w"}
// CHECK-SAME: %[[V:[a-z0-9]+]]: tensor<4x8xf32> {llama.exp_avg_sq = "w"}
// CHECK-SAME: %[[LR:[a-z0-9]+]]: tensor<f32> {llama.hyperparameter = "lr"}
// CHECK-SAME: {llama.hyperparameter = "beta1"}
// CHECK-SAME: {llama.hyperparameter = "beta2"}
// CHECK-SAME: {llama.hyperparameter = "eps"}
// CHECK-SAME: {llama.hyperparameter = "weight_decay"}
// CHECK-SAME: %[[STEP:[a-z0-9]+]]: tensor<f32> {llama.hyperparameter = "step"}
// CHECK-SAME: %[[MAX:[a-z0-9]+]]: tensor<f32> {llama.hyperparameter = "max_grad_norm"})
// CHECK-SAME: -> (tensor<f32> {llama.grad_norm}, tensor<4x8xf32> {llama.new_param = "w"}, tensor<4x8xf32> {llama.new_exp_avg = "w"}, tensor<4x8xf32> {llama.new_exp_avg_sq = "w"})
// CHECK: %[[NORM:.*]] = llama.global_norm %[[G]] : (tensor<4x8xf32>) -> tensor<f32>
// CHECK: %[[SCALE:.*]] = llama.clip_scale %[[NORM]], %[[MAX]]
// CHECK: %[[P:.*]], %[[M2:.*]], %[[V2:.*]] = llama.adamw %[[W]], %[[G]], %[[M]], %[[V]], %[[LR]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[STEP]], %[[SCALE]]
// CHECK: return %[[NORM]], %[[P]], %[[M2]], %[[V2]]
func.func @step(%w: tensor<4x8xf32> {llama.param = "w"}, %x: tensor<2x8xf32>, %labels: tensor<2xi32>) -> tensor<f32> {
  %logits = llama.matmul %x, %w {transpose_rhs = true} : (tensor<2x8xf32>, tensor<4x8xf32>) -> tensor<2x4xf32>
  %loss = llama.cross_entropy %logits, %labels {seq_len = 2} : (tensor<2x4xf32>, tensor<2xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}

// -----

// Several parameters: one global norm over every gradient, one clip factor
// shared by every update; a fused parameter keeps its llama.param_parts.
// CHECK-LABEL: func.func @optimizer_step
// CHECK-SAME: tensor<4x8xbf16> {llama.param = "a"}
// CHECK-SAME: tensor<6x8xbf16> {llama.param = "b", llama.param_parts = ["b0", "b1"]}
// CHECK-SAME: {llama.grad = "a"}
// CHECK-SAME: {llama.grad = "b"}
// CHECK: %[[NORM:.*]] = llama.global_norm %{{.*}}, %{{.*}} : (tensor<4x8xbf16>, tensor<6x8xbf16>) -> tensor<f32>
// CHECK: %[[SCALE:.*]] = llama.clip_scale %[[NORM]]
// CHECK-COUNT-2: llama.adamw {{.*}}, %[[SCALE]] :
func.func @two(%a: tensor<4x8xbf16> {llama.param = "a"}, %b: tensor<6x8xbf16> {llama.param = "b", llama.param_parts = ["b0", "b1"]}, %x: tensor<2x8xbf16>, %labels: tensor<2xi32>) -> tensor<f32> {
  %la = llama.matmul %x, %a {transpose_rhs = true} : (tensor<2x8xbf16>, tensor<4x8xbf16>) -> tensor<2x4xbf16>
  %lb = llama.matmul %x, %b {transpose_rhs = true} : (tensor<2x8xbf16>, tensor<6x8xbf16>) -> tensor<2x6xbf16>
  %l1 = llama.cross_entropy %la, %labels {seq_len = 2} : (tensor<2x4xbf16>, tensor<2xi32>) -> tensor<f32>
  %l2 = llama.cross_entropy %lb, %labels {seq_len = 2} : (tensor<2x6xbf16>, tensor<2xi32>) -> tensor<f32>
  %loss = llama.add %l1, %l2 : (tensor<f32>, tensor<f32>) -> tensor<f32>
  return %loss : tensor<f32>
}

// -----

// expected-error @+1 {{llama-adamw expects llama.grad results; run llama-autodiff first}}
func.func @no_params(%x: tensor<2x4xf32>, %labels: tensor<2xi32>) -> tensor<f32> {
  %loss = llama.cross_entropy %x, %labels {seq_len = 2} : (tensor<2x4xf32>, tensor<2xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}
