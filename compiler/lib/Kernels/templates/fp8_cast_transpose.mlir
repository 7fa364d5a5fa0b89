// Casts a row-major bf16 matrix x [@R@, @C@] whose rows lie @LD@ elements
// apart (@LD@ = @C@: packed; more: a column slice of a wider matrix) to the
// FP8 (@FORMAT@) copy of its transpose, out [@C@, @R@] packed (the K-major
// operand of a dgrad or wgrad GEMM), with a per-tensor scale, and records
// the amax; the instances with a direct output (a %direct argument; names
// ending in _both before the format) also write the direct copy, direct
// [@R@, @C@] packed (fp8_cast's output), from the same read of x, as
// Transformer Engine's cast_transpose does:
//   out[j, i] = fp8(f32(x[i, j]) * scale[0])   (cvt.rn.satfinite, as
//               fp8_cast: nearest even, saturating to +-448 / +-57344,
//               NaN kept)
//   direct[i, j] = out[j, i]                    (the same conversion)
//   amax[0] = max(amax[0], max |x|)             (unscaled, f32 bits, integer
//               atomic max as in fp8_cast; the plan zeroes it first)
// Thread t owns a tile of 16 rows x 8 columns, tile t = g * @CCH@ + h at rows
// 16 g.., columns 8 h..: it reads 16 row pieces of 16 bytes (neighbouring
// threads read neighbouring pieces of the same rows) and writes 8 pieces of
// 16 bytes, one per column, each 16 consecutive elements of an out row;
// with direct also 16 pieces of 8 bytes, one per row (neighbouring threads
// write neighbouring pieces of the same direct rows).
// Reads x (@NX@ elements) and scale (f32 [1]); writes out (i8 [@C@ *
// @R@]) and, where there is one, direct (i8 [@R@ * @C@]); raises amax (f32
// [1] as i32) once per block. Arguments: x, scale, [direct,] out, amax.
// @R@ % 16 == 0, @C@ and @LD@ % 8 == 0.
// Launch: grid [ceil(@TILES@ / 256)], block [256].
  gpu.func @@KERNEL@(%x: memref<@NX@xbf16>, %scale: memref<1xf32>, @DIRECT_ARG@%out: memref<@RC@xi8>, %amax: memref<1xi32>)
      workgroup(%maxes : memref<32xi32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c8 = arith.constant 8 : index
    %c16 = arith.constant 16 : index
    %block = arith.constant 256 : index
    %tiles = arith.constant @TILES@ : index
    %cch = arith.constant @CCH@ : index
    %cols = arith.constant @C@ : index
    %rows = arith.constant @R@ : index
    %ld = arith.constant @LD@ : index
    %zero = arith.constant 0 : i32
    %absMask = arith.constant dense<2147483647> : vector<8xi32>
    %b = gpu.block_id x
    %tid = gpu.thread_id x
    %tbase = arith.muli %b, %block : index
    %tile = arith.addi %tbase, %tid : index
    %inside = arith.cmpi slt, %tile, %tiles : index
    %m = scf.if %inside -> (i32) {
      %s = memref.load %scale[%c0] : memref<1xf32>
      %vs = vector.broadcast %s : f32 to vector<8xf32>
      %g = arith.divui %tile, %cch : index
      %h = arith.remui %tile, %cch : index
      %r0 = arith.muli %g, %c16 : index
      %c00 = arith.muli %h, %c8 : index
      %rowBase = arith.muli %r0, %ld : index
      %base = arith.addi %rowBase, %c00 : index
      %outBase0 = arith.muli %c00, %rows : index
      %outBase = arith.addi %outBase0, %r0 : index
@TILE@
      scf.yield %tileMax : i32
    } else {
      scf.yield %zero : i32
    }
@BLOCK_MAX@
    gpu.return
  }
