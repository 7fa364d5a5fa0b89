// Gradient clipping's rescale of a flat bf16 buffer of @N@ elements, with
// torch.nn.utils.clip_grad_norm_'s factor computed from device scalars:
//   f = max_norm[0] > 0 ? min(max_norm[0] / (sqrt(sum_sq[0]) + 1e-6), 1) : 1
//   x = bf16(x f)   (f32 product; NaN propagates, as in torch)
// Each thread computes f itself; when f == 1 it writes nothing (x f == x).
// Reads sum_sq (f32 [1], global_norm_sq's result), max_norm (f32 [1]) and
// x; writes x in place (16 bytes per thread). Each thread owns 8 consecutive
// elements; @N@ must be a multiple of 8.
// Launch: grid [ceil(@N@ / 8 / 256)], block [256].
  gpu.func @@KERNEL@(%x: memref<@N@xbf16>, %sumSq: memref<1xf32>, %maxNorm: memref<1xf32>) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c8 = arith.constant 8 : index
    %n = arith.constant @N@ : index
    %zero = arith.constant 0.0 : f32
    %one = arith.constant 1.0 : f32
    %tiny = arith.constant 1.0e-06 : f32
    %bid = gpu.block_id x
    %bdim = gpu.block_dim x
    %tid = gpu.thread_id x
    %base = arith.muli %bid, %bdim : index
    %thread = arith.addi %base, %tid : index
    %i = arith.muli %thread, %c8 : index
    %inside = arith.cmpi slt, %i, %n : index
    %ss = memref.load %sumSq[%c0] : memref<1xf32>
    %limit = memref.load %maxNorm[%c0] : memref<1xf32>
    %norm = math.sqrt %ss : f32
    %den = arith.addf %norm, %tiny : f32
    %coef = arith.divf %limit, %den : f32
    %clamped = arith.minimumf %coef, %one : f32
    %positive = arith.cmpf ogt, %limit, %zero : f32
    %factor = arith.select %positive, %clamped, %one : f32
    // une: true for NaN too, which must propagate.
    %changes = arith.cmpf une, %factor, %one : f32
    %work = arith.andi %inside, %changes : i1
    scf.if %work {
      %xv = vector.load %x[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      %xf = arith.extf %xv : vector<8xbf16> to vector<8xf32>
      %fv = vector.broadcast %factor : f32 to vector<8xf32>
      %y = arith.mulf %xf, %fv : vector<8xf32>
      %yb = arith.truncf %y : vector<8xf32> to vector<8xbf16>
      vector.store %yb, %x[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
