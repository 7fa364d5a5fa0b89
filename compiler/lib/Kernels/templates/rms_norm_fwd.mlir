// RMSNorm forward (LlamaRMSNorm) over @T@ rows of @H@ bf16 elements:
//   rstd = rsqrt(sum(x^2) / @H@ + eps)      (f32; eps = @EPS@ as f32 bits)
//   normed = bf16(x rstd);  y = bf16(w normed)
// Reads x ([@T@, @H@]) and w ([@H@]); writes y ([@T@, @H@]) and rstd (f32
// [@T@], for the backward). The FP8 instances (names ending in the format)
// write no y but its FP8 copy with a per-tensor scale, exactly
// what fp8_cast of y would write, and raise y's amax as fp8_cast does:
//   out[i] = fp8(f32(y[i]) * scale[0]);  amax[0] = max(amax[0], max |y|)
// (arguments x, w, scale (f32 [1]), out (i8 [@T@ * @H@]), amax (f32 [1] as
// i32 bits), rstd), so that an FP8 GEMM's normalized input is not written
// and read back in bf16.
// One block of @BLOCK@ threads per row; thread k owns the 8-element chunks
// k, k + @BLOCK@, ... (16-byte accesses): it sums their squares, the block
// reduces the sums (shuffles, then one f32 per warp in shared memory), and
// the thread reads its chunks again (from L1/L2) to write y. @H@ must be a
// multiple of 8.
// Launch: grid [@T@], block [@BLOCK@].
  gpu.func @@KERNEL@(%x: memref<@TH@xbf16>, %w: memref<@H@xbf16>, @OUTPUT_ARGS@, %rstd: memref<@T@xf32>)
      workgroup(%sums : memref<32xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}@AMAX_WORKGROUP@) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c8 = arith.constant 8 : index
    %c32 = arith.constant 32 : index
    %block = arith.constant @BLOCK@ : index
    %warps = arith.constant @WARPS@ : index
    %chunks = arith.constant @CHUNKS@ : index
    %h = arith.constant @H@ : index
    %i1 = arith.constant 1 : i32
    %i2 = arith.constant 2 : i32
    %i4 = arith.constant 4 : i32
    %i8 = arith.constant 8 : i32
    %i16 = arith.constant 16 : i32
    %i32 = arith.constant 32 : i32
    %zero = arith.constant 0.0 : f32
    %zeros = arith.constant dense<0.0> : vector<8xf32>
    %zeroBits = arith.constant dense<0> : vector<8xi32>
    %width = arith.constant @H@.0 : f32
    %eps = arith.constant @EPS@ : f32
    %t = gpu.block_id x
    %tid = gpu.thread_id x
    %rowBase = arith.muli %t, %h : index
    %squares = scf.for %c = %tid to %chunks step %block iter_args(%acc = %zeros) -> (vector<8xf32>) {
      %off = arith.muli %c, %c8 : index
      %i = arith.addi %rowBase, %off : index
      %xv = vector.load %x[%i] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
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
    %total = scf.for %k = %c0 to %warps step %c1 iter_args(%acc = %zero) -> (f32) {
      %part = memref.load %sums[%k] : memref<32xf32, #gpu.address_space<workgroup>>
      %next = arith.addf %acc, %part : f32
      scf.yield %next : f32
    }
    %mean = arith.divf %total, %width : f32
    %var = arith.addf %mean, %eps : f32
    %r = math.rsqrt %var : f32
    %first = arith.cmpi eq, %tid, %c0 : index
    scf.if %first {
      memref.store %r, %rstd[%t] : memref<@T@xf32>
    }
    %rv = vector.broadcast %r : f32 to vector<8xf32>
@OUTPUT_PRELUDE@
    %yMax = scf.for %c = %tid to %chunks step %block iter_args(%acc = %zeroBits) -> (vector<8xi32>) {
      %off = arith.muli %c, %c8 : index
      %i = arith.addi %rowBase, %off : index
      %xv = vector.load %x[%i] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
      %wv = vector.load %w[%off] {alignment = 16} : memref<@H@xbf16>, vector<8xbf16>
      %xf = arith.extf %xv : vector<8xbf16> to vector<8xf32>
      %wf = arith.extf %wv : vector<8xbf16> to vector<8xf32>
      %n = arith.mulf %xf, %rv : vector<8xf32>
      %nb = arith.truncf %n : vector<8xf32> to vector<8xbf16>
      %nf = arith.extf %nb : vector<8xbf16> to vector<8xf32>
      %yf = arith.mulf %wf, %nf : vector<8xf32>
      %yb = arith.truncf %yf : vector<8xf32> to vector<8xbf16>
@STORE@
      scf.yield %next : vector<8xi32>
    }
@BLOCK_MAX@
    gpu.return
  }
