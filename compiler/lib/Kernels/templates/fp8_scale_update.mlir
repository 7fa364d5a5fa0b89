// Delayed scaling (Transformer Engine's rule, as the reference interpreter's
// llama.fp8_scale_update) for @T@ tensors of one FP8 format, each with an
// amax history of @L@ entries (newest first). Block t, for tensor t:
//   history[t, :] = [amax[t], history[t, 0 .. @L@ - 2]]      (roll)
//   a = max(history[t, :]) (NaN propagates), or amax[t] when @MOST_RECENT@
//   scale[t] = f32((@FMAX@ / f64(a)) * 2^-margin)   if 0 < a < inf,
//              scale[t] unchanged otherwise (a zero, infinite or NaN)
//   scale_inv[t, 0] = 1 / scale[t]                   (f32; one 16-byte row
//                                    per tensor, as cuBLASLt's scale pointers
//                                    must be 16-byte aligned)
//   amax[t] = 0                       (the next step's casts raise it again)
// The quotient is taken in f64 as the reference does, so the f32 scale is
// the reference's bit for bit.
// Reads and writes history (f32 [@T@, @L@]), amax, scale (f32 [@T@]);
// writes scale_inv (f32 [@T@, 4]). Thread i moves history entry i (all are
// read before any is written); the block reduces the maximum (shuffles, one
// value per warp in shared memory). @L@ <= 1024.
// Launch: grid [@T@], block [@BLOCK@].
  gpu.func @@KERNEL@(%history: memref<@TL@xf32>, %amax: memref<@T@xf32>, %scale: memref<@T@xf32>, %scaleInv: memref<@T4@xf32>)
      workgroup(%maxes : memref<32xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c32 = arith.constant 32 : index
    %len = arith.constant @L@ : index
    %warps = arith.constant @WARPS@ : index
    %i1 = arith.constant 1 : i32
    %i2 = arith.constant 2 : i32
    %i4 = arith.constant 4 : i32
    %i8 = arith.constant 8 : i32
    %i16 = arith.constant 16 : i32
    %i32 = arith.constant 32 : i32
    %zero = arith.constant 0.0 : f32
    %one = arith.constant 1.0 : f32
    %inf = arith.constant 0x7F800000 : f32
    %fmax = arith.constant @FMAX@ : f64
    %marginScale = arith.constant @MARGIN_SCALE@ : f64
    %mostRecent = arith.constant @MOST_RECENT@
    %t = gpu.block_id x
    %tid = gpu.thread_id x
    %row = arith.muli %t, %len : index
    %inside = arith.cmpi slt, %tid, %len : index
    %first = arith.cmpi eq, %tid, %c0 : index
    %newest = memref.load %amax[%t] : memref<@T@xf32>
    %v = scf.if %inside -> (f32) {
      %entry = scf.if %first -> (f32) {
        scf.yield %newest : f32
      } else {
        %prev = arith.subi %tid, %c1 : index
        %at = arith.addi %row, %prev : index
        %old = memref.load %history[%at] : memref<@TL@xf32>
        scf.yield %old : f32
      }
      scf.yield %entry : f32
    } else {
      scf.yield %zero : f32
    }
    gpu.barrier
    scf.if %inside {
      %at = arith.addi %row, %tid : index
      memref.store %v, %history[%at] : memref<@TL@xf32>
    }
    %o1, %p1 = gpu.shuffle xor %v, %i16, %i32 : f32
    %s1 = arith.maximumf %v, %o1 : f32
    %o2, %p2 = gpu.shuffle xor %s1, %i8, %i32 : f32
    %s2 = arith.maximumf %s1, %o2 : f32
    %o3, %p3 = gpu.shuffle xor %s2, %i4, %i32 : f32
    %s3 = arith.maximumf %s2, %o3 : f32
    %o4, %p4 = gpu.shuffle xor %s3, %i2, %i32 : f32
    %s4 = arith.maximumf %s3, %o4 : f32
    %o5, %p5 = gpu.shuffle xor %s4, %i1, %i32 : f32
    %s5 = arith.maximumf %s4, %o5 : f32
    %lane = arith.remui %tid, %c32 : index
    %warp = arith.divui %tid, %c32 : index
    %leader = arith.cmpi eq, %lane, %c0 : index
    scf.if %leader {
      memref.store %s5, %maxes[%warp] : memref<32xf32, #gpu.address_space<workgroup>>
    }
    gpu.barrier
    scf.if %first {
      %all = scf.for %k = %c0 to %warps step %c1 iter_args(%acc = %zero) -> (f32) {
        %part = memref.load %maxes[%k] : memref<32xf32, #gpu.address_space<workgroup>>
        %next = arith.maximumf %acc, %part : f32
        scf.yield %next : f32
      }
      %a = arith.select %mostRecent, %newest, %all : f32
      %positive = arith.cmpf ogt, %a, %zero : f32
      %finite = arith.cmpf olt, %a, %inf : f32
      %usable = arith.andi %positive, %finite : i1
      %oldScale = memref.load %scale[%t] : memref<@T@xf32>
      %a64 = arith.extf %a : f32 to f64
      %q = arith.divf %fmax, %a64 : f64
      %qm = arith.mulf %q, %marginScale : f64
      %fresh = arith.truncf %qm : f64 to f32
      %newScale = arith.select %usable, %fresh, %oldScale : f32
      %inverse = arith.divf %one, %newScale : f32
      memref.store %newScale, %scale[%t] : memref<@T@xf32>
      %c4 = arith.constant 4 : index
      %invRow = arith.muli %t, %c4 : index
      memref.store %inverse, %scaleInv[%invRow] : memref<@T4@xf32>
      memref.store %zero, %amax[%t] : memref<@T@xf32>
    }
    gpu.return
  }
