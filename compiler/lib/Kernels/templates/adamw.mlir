// AdamW over flat parameter, gradient and moment buffers of @N@ elements of
// type bf16 (one launch updates every parameter of the model; the memory plan
// keeps them contiguous). torch.optim.AdamW semantics, math in f32:
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p = p (1 - lr wd) - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// The gradient is first scaled by torch's clip_grad_norm_ factor
//   f = max_norm > 0 ? min(1, max_norm / (sqrt(norm_sq) + 1e-6)) : 1.
// Reads param, grad, m, v (16 bytes per piece and tensor), hyper = [lr,
// beta1, beta2, eps, weight_decay, step, max_norm] (a device buffer, so a
// captured graph sees new values each step) and norm_sq (f32 [1], the sum of
// squares of all gradients); writes param, m, v in place.
// The math (PRELUDE: the step's scalars; UPDATE: 8 elements) is generated
// by Kernels.cpp (adamwPrelude, adamwUpdate), which fp8_cast_transpose's
// AdamW instances share. Each thread computes the step's scalars once, then
// updates pieces of 8 consecutive elements, as many threads' pieces apart
// as the grid has threads (all threads' first pieces, then their second
// ones, so that each load is coalesced); @N@ must be a multiple of 8.
// Launch: any grid of blocks of 256 (adamwKernel's gives each thread 4
// pieces).
  gpu.func @@KERNEL@(%param: memref<@N@xbf16>, %grad: memref<@N@xbf16>, %m: memref<@N@xbf16>, %v: memref<@N@xbf16>, %hyper: memref<8xf32>, %normsq: memref<1xf32>) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c8 = arith.constant 8 : index
    %n = arith.constant @N@ : index
    %bid = gpu.block_id x
    %bdim = gpu.block_dim x
    %tid = gpu.thread_id x
    %base = arith.muli %bid, %bdim : index
    %thread = arith.addi %base, %tid : index
    %first = arith.muli %thread, %c8 : index
    %blocks = gpu.grid_dim x
    %threads = arith.muli %blocks, %bdim : index
    %stride = arith.muli %threads, %c8 : index
@PRELUDE@
    scf.for %i = %first to %n step %stride {
      %pv = vector.load %param[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      %gv = vector.load %grad[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      %mv = vector.load %m[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      %vv = vector.load %v[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
@UPDATE@
      vector.store %aw_po, %param[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      vector.store %aw_mo, %m[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      vector.store %aw_vo, %v[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
