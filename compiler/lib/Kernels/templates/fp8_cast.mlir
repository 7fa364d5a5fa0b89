// Casts @N@ bf16 elements to FP8 (@FORMAT@) with a per-tensor scale and
// records the tensor's amax:
//   out[i] = fp8(f32(x[src(i)]) * scale[0])   (PTX cvt.rn.satfinite: round to
//            nearest even; magnitudes past the format's largest finite value,
//            infinities included, become +-448 (E4M3) or +-57344 (E5M2);
//            NaN stays NaN)
//   amax[0] = max(amax[0], max_i |x[src(i)]|)  (of the unscaled input, f32)
// src(i) = i for a flat buffer; for a matrix of @COLS@ columns whose rows
// lie @LD@ elements apart (a column slice of a wider matrix), src(i) = (i /
// @COLS@) @LD@ + i mod @COLS@: out is the slice's packed copy.
// The amax is kept as the bits of a non-negative f32 and raised with an
// integer atomic max (the bits of non-negative floats order like the floats;
// a NaN's bits exceed every other's, so a NaN input makes the amax NaN). The
// plan (or the scale update, which resets it) zeroes amax before the step.
// Reads x (@NX@ elements; 16 bytes per thread and step) and scale (f32
// [1]); writes out (8 bytes per thread and step); raises amax (f32 [1] as
// i32) once per block.
// Thread k of block b takes the 8-element chunks 256 b + k, 256 (b + @G@)
// + k, ... (a grid-stride loop); the block reduces the maxima (shuffles, one
// value per warp in shared memory). @N@, @COLS@ and @LD@ must be multiples
// of 8.
// Launch: grid [@G@], block [256].
  gpu.func @@KERNEL@(%x: memref<@NX@xbf16>, %scale: memref<1xf32>, %out: memref<@N@xi8>, %amax: memref<1xi32>)
      workgroup(%maxes : memref<32xi32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c8 = arith.constant 8 : index
    %block = arith.constant 256 : index
    %chunks = arith.constant @CHUNKS@ : index
    %stride = arith.constant @STRIDE@ : index
    %zeros = arith.constant dense<0> : vector<8xi32>
    %absMask = arith.constant dense<2147483647> : vector<8xi32>
    %s = memref.load %scale[%c0] : memref<1xf32>
    %vs = vector.broadcast %s : f32 to vector<8xf32>
    %b = gpu.block_id x
    %tid = gpu.thread_id x
    %base = arith.muli %b, %block : index
    %start = arith.addi %base, %tid : index
    %maxBits = scf.for %c = %start to %chunks step %stride iter_args(%acc = %zeros) -> (vector<8xi32>) {
      %i = arith.muli %c, %c8 : index
@SOURCE@
      %xv = vector.load %x[%src] {alignment = 16} : memref<@NX@xbf16>, vector<8xbf16>
      %xf = arith.extf %xv : vector<8xbf16> to vector<8xf32>
      %xbits = arith.bitcast %xf : vector<8xf32> to vector<8xi32>
      %absBits = arith.andi %xbits, %absMask : vector<8xi32>
      %next = arith.maxui %acc, %absBits : vector<8xi32>
      %y = arith.mulf %xf, %vs : vector<8xf32>
@CONVERT@
      vector.store %q, %out[%i] {alignment = 8} : memref<@N@xi8>, vector<8xi8>
      scf.yield %next : vector<8xi32>
    }
    %m = vector.reduction <maxui>, %maxBits : vector<8xi32> into i32
@BLOCK_MAX@
    gpu.return
  }
