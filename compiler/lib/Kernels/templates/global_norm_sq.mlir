// Sum of squares of a flat bf16 buffer of @N@ elements, for gradient
// clipping: sum[0] += sum_i x_i^2 (f32 accumulation; the plan zeroes sum
// first, and several launches over different buffers may add into one sum).
// Only when clipping: with hyper[6] (max_grad_norm) <= 0 nothing needs the
// norm (the Hugging Face Trainer does not compute it either) and the kernel
// returns at once, leaving sum as it was.
// Reads hyper and x (16 bytes per thread and step); atomically adds into sum
// (f32 [1]), once per block. Thread k of block b takes the 8-element chunks
// 256 b + k, 256 (b + @G@) + k, ... (a grid-stride loop), keeping 8 partial
// sums; the block reduces them (shuffles, one f32 per warp in shared
// memory). @N@ must be a multiple of 8.
// Launch: grid [@G@], block [256].
  gpu.func @@KERNEL@(%x: memref<@N@xbf16>, %sum: memref<1xf32>, %hyper: memref<8xf32>)
      workgroup(%sums : memref<32xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c8 = arith.constant 8 : index
    %c32 = arith.constant 32 : index
    %block = arith.constant 256 : index
    %warps = arith.constant 8 : index
    %chunks = arith.constant @CHUNKS@ : index
    %stride = arith.constant @STRIDE@ : index
    %i1 = arith.constant 1 : i32
    %i2 = arith.constant 2 : i32
    %i4 = arith.constant 4 : i32
    %i8 = arith.constant 8 : i32
    %i16 = arith.constant 16 : i32
    %i32 = arith.constant 32 : i32
    %zero = arith.constant 0.0 : f32
    %zeros = arith.constant dense<0.0> : vector<8xf32>
    %c6 = arith.constant 6 : index
    %maxNorm = memref.load %hyper[%c6] : memref<8xf32>
    %clipping = arith.cmpf ogt, %maxNorm, %zero : f32
    scf.if %clipping {
      %b = gpu.block_id x
      %tid = gpu.thread_id x
      %base = arith.muli %b, %block : index
      %start = arith.addi %base, %tid : index
      %squares = scf.for %c = %start to %chunks step %stride iter_args(%acc = %zeros) -> (vector<8xf32>) {
        %i = arith.muli %c, %c8 : index
        %xv = vector.load %x[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
        %xf = arith.extf %xv : vector<8xbf16> to vector<8xf32>
        %next = vector.fma %xf, %xf, %acc : vector<8xf32>
        scf.yield %next : vector<8xf32>
      }
      %s0 = vector.reduction <add>, %squares : vector<8xf32> into f32
      %o1, %v1 = gpu.shuffle xor %s0, %i16, %i32 : f32
      %s1 = arith.addf %s0, %o1 : f32
      %o2, %v2 = gpu.shuffle xor %s1, %i8, %i32 : f32
      %s2 = arith.addf %s1, %o2 : f32
      %o3, %v3 = gpu.shuffle xor %s2, %i4, %i32 : f32
      %s3 = arith.addf %s2, %o3 : f32
      %o4, %v4 = gpu.shuffle xor %s3, %i2, %i32 : f32
      %s4 = arith.addf %s3, %o4 : f32
      %o5, %v5 = gpu.shuffle xor %s4, %i1, %i32 : f32
      %s5 = arith.addf %s4, %o5 : f32
      %lane = arith.remui %tid, %c32 : index
      %warp = arith.divui %tid, %c32 : index
      %leader = arith.cmpi eq, %lane, %c0 : index
      scf.if %leader {
        memref.store %s5, %sums[%warp] : memref<32xf32, #gpu.address_space<workgroup>>
      }
      gpu.barrier
      %first = arith.cmpi eq, %tid, %c0 : index
      scf.if %first {
        %total = scf.for %k = %c0 to %warps step %c1 iter_args(%acc = %zero) -> (f32) {
          %part = memref.load %sums[%k] : memref<32xf32, #gpu.address_space<workgroup>>
          %next = arith.addf %acc, %part : f32
          scf.yield %next : f32
        }
        %old = memref.atomic_rmw addf %total, %sum[%c0] : (f32, memref<1xf32>) -> f32
      }
    }
    gpu.return
  }
