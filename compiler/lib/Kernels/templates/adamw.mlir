// AdamW over flat parameter, gradient and moment buffers of @N@ elements of
// type bf16 (one launch updates every parameter of the model; the memory plan
// keeps them contiguous). torch.optim.AdamW semantics, math in f32:
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p = p (1 - lr wd) - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// The gradient is first scaled by torch's clip_grad_norm_ factor
//   f = max_norm > 0 ? min(1, max_norm / (sqrt(norm_sq) + 1e-6)) : 1.
// Reads param, grad, m, v (16 bytes per thread and tensor), hyper = [lr,
// beta1, beta2, eps, weight_decay, step, max_norm] (a device buffer, so a
// captured graph sees new values each step) and norm_sq (f32 [1], the sum of
// squares of all gradients); writes param, m, v in place.
// Each thread owns 8 consecutive elements; @N@ must be a multiple of 8.
// Launch: grid [ceil(@N@ / 8 / 256)], block [256].
  gpu.func @@KERNEL@(%param: memref<@N@xbf16>, %grad: memref<@N@xbf16>, %m: memref<@N@xbf16>, %v: memref<@N@xbf16>, %hyper: memref<8xf32>, %normsq: memref<1xf32>) kernel {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c3 = arith.constant 3 : index
    %c4 = arith.constant 4 : index
    %c5 = arith.constant 5 : index
    %c8 = arith.constant 8 : index
    %n = arith.constant @N@ : index
    %one = arith.constant 1.0 : f32
    %bid = gpu.block_id x
    %bdim = gpu.block_dim x
    %tid = gpu.thread_id x
    %base = arith.muli %bid, %bdim : index
    %thread = arith.addi %base, %tid : index
    %i = arith.muli %thread, %c8 : index
    %inside = arith.cmpi slt, %i, %n : index
    scf.if %inside {
      %lr = memref.load %hyper[%c0] : memref<8xf32>
      %beta1 = memref.load %hyper[%c1] : memref<8xf32>
      %beta2 = memref.load %hyper[%c2] : memref<8xf32>
      %eps = memref.load %hyper[%c3] : memref<8xf32>
      %wd = memref.load %hyper[%c4] : memref<8xf32>
      %step = memref.load %hyper[%c5] : memref<8xf32>
      %c6 = arith.constant 6 : index
      %maxNorm = memref.load %hyper[%c6] : memref<8xf32>
      %sumsq = memref.load %normsq[%c0] : memref<1xf32>
      %zero = arith.constant 0.0 : f32
      %tiny = arith.constant 1.0e-6 : f32
      %norm = math.sqrt %sumsq : f32
      %normEps = arith.addf %norm, %tiny : f32
      %coef = arith.divf %maxNorm, %normEps : f32
      %clipped = arith.minimumf %coef, %one : f32
      %clipOn = arith.cmpf ogt, %maxNorm, %zero : f32
      %gscale = arith.select %clipOn, %clipped, %one : f32
      %b1t = math.powf %beta1, %step : f32
      %b2t = math.powf %beta2, %step : f32
      %bc1 = arith.subf %one, %b1t : f32
      %bc2 = arith.subf %one, %b2t : f32
      %stepSize = arith.divf %lr, %bc1 : f32
      %bc2sqrt = math.sqrt %bc2 : f32
      %lrwd = arith.mulf %lr, %wd : f32
      %decay = arith.subf %one, %lrwd : f32
      %omb1 = arith.subf %one, %beta1 : f32
      %omb2 = arith.subf %one, %beta2 : f32
      %pv = vector.load %param[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      %gv = vector.load %grad[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      %mv = vector.load %m[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      %vv = vector.load %v[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      %p = arith.extf %pv : vector<8xbf16> to vector<8xf32>
      %graw = arith.extf %gv : vector<8xbf16> to vector<8xf32>
      %vgscale = vector.broadcast %gscale : f32 to vector<8xf32>
      %g = arith.mulf %graw, %vgscale : vector<8xf32>
      %m0 = arith.extf %mv : vector<8xbf16> to vector<8xf32>
      %v0 = arith.extf %vv : vector<8xbf16> to vector<8xf32>
      %vb1 = vector.broadcast %beta1 : f32 to vector<8xf32>
      %vb2 = vector.broadcast %beta2 : f32 to vector<8xf32>
      %vomb1 = vector.broadcast %omb1 : f32 to vector<8xf32>
      %vomb2 = vector.broadcast %omb2 : f32 to vector<8xf32>
      %t1 = arith.mulf %vb1, %m0 : vector<8xf32>
      %t2 = arith.mulf %vomb1, %g : vector<8xf32>
      %m1 = arith.addf %t1, %t2 : vector<8xf32>
      %gg = arith.mulf %g, %g : vector<8xf32>
      %t3 = arith.mulf %vb2, %v0 : vector<8xf32>
      %t4 = arith.mulf %vomb2, %gg : vector<8xf32>
      %v1 = arith.addf %t3, %t4 : vector<8xf32>
      %sq = math.sqrt %v1 : vector<8xf32>
      %vbc2 = vector.broadcast %bc2sqrt : f32 to vector<8xf32>
      %veps = vector.broadcast %eps : f32 to vector<8xf32>
      %d0 = arith.divf %sq, %vbc2 : vector<8xf32>
      %denom = arith.addf %d0, %veps : vector<8xf32>
      %ratio = arith.divf %m1, %denom : vector<8xf32>
      %vss = vector.broadcast %stepSize : f32 to vector<8xf32>
      %upd = arith.mulf %vss, %ratio : vector<8xf32>
      %vdecay = vector.broadcast %decay : f32 to vector<8xf32>
      %pd = arith.mulf %p, %vdecay : vector<8xf32>
      %p1 = arith.subf %pd, %upd : vector<8xf32>
      %po = arith.truncf %p1 : vector<8xf32> to vector<8xbf16>
      %mo = arith.truncf %m1 : vector<8xf32> to vector<8xbf16>
      %vo = arith.truncf %v1 : vector<8xf32> to vector<8xbf16>
      vector.store %po, %param[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      vector.store %mo, %m[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      vector.store %vo, %v[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
