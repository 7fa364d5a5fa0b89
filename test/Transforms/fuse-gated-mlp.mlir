// RUN: llamac-opt %s --llama-fuse-gated-mlp -split-input-file -verify-diagnostics | FileCheck %s

// The gate and up projections of one input, over parameters read nowhere
// else, and the SwiGLU become one gated_mlp over a new stacked parameter that
// takes the place of the gate weight; the old arguments are gone.
// CHECK-LABEL: func.func @mlp
// CHECK-SAME: (%[[X:[a-z0-9]+]]: tensor<4x8xf32>,
// CHECK-SAME: %[[W:[a-z0-9]+]]: tensor<12x8xf32> {llama.param = "model.layers.0.mlp.gate_up_proj.weight", llama.param_parts = ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"]},
// CHECK-SAME: %[[WD:[a-z0-9]+]]: tensor<8x6xf32> {llama.param = "model.layers.0.mlp.down_proj.weight"})
// CHECK-NOT: gate_proj.weight"}
// CHECK-NEXT: %[[S:.*]], %{{.*}} = llama.gated_mlp %[[X]], %[[W]] : (tensor<4x8xf32>, tensor<12x8xf32>) -> (tensor<4x6xf32>, tensor<4x12xf32>)
// CHECK-NEXT: %[[D:.*]] = llama.matmul %[[S]], %[[WD]] {transpose_rhs = true}
// CHECK-NEXT: return %[[D]]
func.func @mlp(%x: tensor<4x8xf32>,
               %wg: tensor<6x8xf32> {llama.param = "model.layers.0.mlp.gate_proj.weight"},
               %wu: tensor<6x8xf32> {llama.param = "model.layers.0.mlp.up_proj.weight"},
               %wd: tensor<8x6xf32> {llama.param = "model.layers.0.mlp.down_proj.weight"}) -> tensor<4x8xf32> {
  %g = llama.matmul %x, %wg {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %u = llama.matmul %x, %wu {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %s = llama.swiglu %g, %u : (tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<4x6xf32>
  %d = llama.matmul %s, %wd {transpose_rhs = true} : (tensor<4x6xf32>, tensor<8x6xf32>) -> tensor<4x8xf32>
  return %d : tensor<4x8xf32>
}

// -----

// Names that do not follow `P.<stem>_proj.weight` are joined by `+`; the new
// argument sits where the first of the old ones was.
// CHECK-LABEL: func.func @other_names
// CHECK-SAME: %{{.*}}: tensor<2xf32> {llama.param = "a"}, %{{.*}}: tensor<8x8xf32> {llama.param = "w1+w3", llama.param_parts = ["w1", "w3"]}, %{{.*}}: tensor<4x8xf32>)
// CHECK: llama.gated_mlp
func.func @other_names(%a: tensor<2xf32> {llama.param = "a"},
                       %w1: tensor<4x8xf32> {llama.param = "w1"}, %x: tensor<4x8xf32>,
                       %w3: tensor<4x8xf32> {llama.param = "w3"}) -> tensor<4x4xf32> {
  %g = llama.matmul %x, %w1 {transpose_rhs = true} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x4xf32>
  %u = llama.matmul %x, %w3 {transpose_rhs = true} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x4xf32>
  %s = llama.swiglu %g, %u : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32>
  return %s : tensor<4x4xf32>
}

// -----

// Negative: the gate projection has another user (its value would have to be
// kept), so nothing changes.
// CHECK-LABEL: func.func @gate_used_twice
// CHECK-NOT: llama.gated_mlp
// CHECK: llama.swiglu
func.func @gate_used_twice(%x: tensor<4x8xf32>,
                           %wg: tensor<6x8xf32> {llama.param = "g"},
                           %wu: tensor<6x8xf32> {llama.param = "u"}) -> (tensor<4x6xf32>, tensor<4x6xf32>) {
  %g = llama.matmul %x, %wg {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %u = llama.matmul %x, %wu {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %s = llama.swiglu %g, %u : (tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<4x6xf32>
  return %s, %g : tensor<4x6xf32>, tensor<4x6xf32>
}

// -----

// Negative: the up weight is not a parameter argument.
// CHECK-LABEL: func.func @up_not_a_param
// CHECK-NOT: llama.gated_mlp
// CHECK: llama.swiglu
func.func @up_not_a_param(%x: tensor<4x8xf32>,
                          %wg: tensor<6x8xf32> {llama.param = "g"},
                          %wu: tensor<6x8xf32>) -> tensor<4x6xf32> {
  %g = llama.matmul %x, %wg {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %u = llama.matmul %x, %wu {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %s = llama.swiglu %g, %u : (tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<4x6xf32>
  return %s : tensor<4x6xf32>
}

// -----

// Negative: the gate weight is shared with another op, so its argument cannot
// be replaced by the stacked one.
// CHECK-LABEL: func.func @shared_weight
// CHECK-NOT: llama.gated_mlp
// CHECK: llama.swiglu
func.func @shared_weight(%x: tensor<4x8xf32>,
                         %wg: tensor<6x8xf32> {llama.param = "g"},
                         %wu: tensor<6x8xf32> {llama.param = "u"}) -> (tensor<4x6xf32>, tensor<6x8xf32>) {
  %g = llama.matmul %x, %wg {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %u = llama.matmul %x, %wu {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %s = llama.swiglu %g, %u : (tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<4x6xf32>
  %w2 = llama.add %wg, %wg : (tensor<6x8xf32>, tensor<6x8xf32>) -> tensor<6x8xf32>
  return %s, %w2 : tensor<4x6xf32>, tensor<6x8xf32>
}

// -----

// Negative: gate and up read different inputs.
// CHECK-LABEL: func.func @two_inputs
// CHECK-NOT: llama.gated_mlp
func.func @two_inputs(%x: tensor<4x8xf32>, %y: tensor<4x8xf32>,
                      %wg: tensor<6x8xf32> {llama.param = "g"},
                      %wu: tensor<6x8xf32> {llama.param = "u"}) -> tensor<4x6xf32> {
  %g = llama.matmul %x, %wg {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %u = llama.matmul %y, %wu {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %s = llama.swiglu %g, %u : (tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<4x6xf32>
  return %s : tensor<4x6xf32>
}

// -----

// Negative: the up projection is not a Linear layer (no transpose_rhs).
// CHECK-LABEL: func.func @not_linear
// CHECK-NOT: llama.gated_mlp
func.func @not_linear(%x: tensor<4x8xf32>,
                      %wg: tensor<6x8xf32> {llama.param = "g"},
                      %wu: tensor<8x6xf32> {llama.param = "u"}) -> tensor<4x6xf32> {
  %g = llama.matmul %x, %wg {transpose_rhs = true} : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
  %u = llama.matmul %x, %wu : (tensor<4x8xf32>, tensor<8x6xf32>) -> tensor<4x6xf32>
  %s = llama.swiglu %g, %u : (tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<4x6xf32>
  return %s : tensor<4x6xf32>
}

// -----

// The fusions run before autodiff.
// expected-error @+1 {{llama-fuse-gated-mlp runs on the forward function, before llama-autodiff; @differentiated already returns gradients}}
func.func @differentiated(%w: tensor<4x8xf32> {llama.param = "w"}) -> (tensor<f32> {llama.loss}, tensor<4x8xf32> {llama.grad = "w"}) {
  %c = arith.constant dense<1.0> : tensor<f32>
  return %c, %w : tensor<f32>, tensor<4x8xf32>
}
