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
// Block (bx, by) owns the tile of rows 128 by.., columns 128 bx.. (cut off
// at the matrix's edge: rows and columns in whole 16s), staged through
// workgroup memory as FP8 bytes, so that every global access of a warp is
// a run of at least 128 contiguous bytes:
// 1. Load and convert: 16 tile rows per step, each read by 16 threads of 16
//    bytes (8 elements; a warp reads two rows of 256 bytes); each thread
//    converts its 8 elements and stores their 8 bytes into the tile buffer
//    (128 bytes a row; the 16-byte chunk c of row r at chunk c xor (r / 16)
//    mod 8, so that neither phase's accesses conflict on banks).
// 2. With direct: each thread copies 4 of the tile's 16-byte row chunks to
//    direct (a warp writes 4 rows of 128 bytes).
// 3. Transposed: thread lane of warp w takes tile rows 16 (lane mod 8)..+15
//    at columns 16 w + 4 (lane / 8)..+3: it reads one 4-byte word per row,
//    transposes the 16 x 4 bytes with byte permutes and writes 4 pieces of
//    16 bytes, one per column, each 16 consecutive elements of an out row
//    (8 threads write 128 contiguous bytes of one out row).
// Reads x (@NX@ elements) and scale (f32 [1]); writes out (i8 [@C@ *
// @R@]) and, where there is one, direct (i8 [@R@ * @C@]); raises amax (f32
// [1] as i32) once per block. Arguments: x, scale, [direct,] out, amax.
// The AdamW instances (names starting adamw_; always with direct) make
// @optimizer_step's FP8 weight copies: x is a weight (packed) and step 1
// first updates it in place with adamw.mlir's math (the same generated
// lines: clip factor, f32 math, bf16 rounding of x, m and v) from grad,
// exp_avg and exp_avg_sq (each @NX@ bf16 elements, laid out as x; the last
// two updated in place), hyper and norm_sq (as adamw.mlir's), then casts
// the new bf16 weight it stored, so the copies and the amax are those of
// casting the updated weight. Arguments: x, grad, exp_avg, exp_avg_sq,
// hyper, norm_sq, scale, direct, out, amax.
// The SwiGLU instances (names starting swiglu_; always with direct) cast
// the FP8 forward's SwiGLU output without it being written in bf16: x is
// the gate half of the gate/up GEMM's output and up its up half (the same
// buffer, @C@ elements on; rows @LD@ = 2 @C@ apart), and each piece is
// h = swiglu_fwd.mlir's bf16(bf16(silu(gate)) up) (the same generated
// lines) before it is cast: the bytes and amax of casting swiglu_fwd's
// output. Arguments: x, up, scale, direct, out, amax.
// @R@ and @C@ % 16 == 0, @LD@ % 8 == 0.
// Launch: grid [ceil(@C@ / 128), ceil(@R@ / 128)], block [256].
  gpu.func @@KERNEL@(%x: memref<@NX@xbf16>, @EXTRA_ARGS@%scale: memref<1xf32>, @DIRECT_ARG@%out: memref<@RC@xi8>, %amax: memref<1xi32>)
      workgroup(%maxes : memref<32xi32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64},
                %tile : memref<16384xi8, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c2 = arith.constant 2 : index
    %c4 = arith.constant 4 : index
    %c8 = arith.constant 8 : index
    %c16 = arith.constant 16 : index
    %c32 = arith.constant 32 : index
    %c128 = arith.constant 128 : index
    %rows = arith.constant @R@ : index
    %cols = arith.constant @C@ : index
    %ld = arith.constant @LD@ : index
    %zeroX = arith.constant dense<0.0> : vector<8xbf16>
    %absMask = arith.constant dense<2147483647> : vector<8xi32>
    %s = memref.load %scale[%c0] : memref<1xf32>
    %vs = vector.broadcast %s : f32 to vector<8xf32>
@PRELUDE@
    %bx = gpu.block_id x
    %by = gpu.block_id y
    %tid = gpu.thread_id x
    %col0 = arith.muli %bx, %c128 : index
    %row0 = arith.muli %by, %c128 : index
    // 1. Thread tid reads 8 elements at tile row tid / 16 + 16 i, column
    // 8 (tid mod 16), for i = 0..7.
    %lr = arith.divui %tid, %c16 : index
    %lp = arith.remui %tid, %c16 : index
    %lc = arith.muli %lp, %c8 : index
    %lRow = arith.addi %row0, %lr : index
    %lCol = arith.addi %col0, %lc : index
    %lRowStart = arith.muli %lRow, %ld : index
    %lBase = arith.addi %lRowStart, %lCol : index
    %lChunk = arith.divui %lp, %c2 : index
    %lHalf0 = arith.remui %lp, %c2 : index
    %lHalf = arith.muli %lHalf0, %c8 : index
    %lTileRow = arith.muli %lr, %c128 : index
    %lTileBase = arith.addi %lTileRow, %lHalf : index
@LOAD@
    gpu.barrier
@DIRECT@
    // 3. Tile rows 16 (lane mod 8).., columns 16 w + 4 (lane / 8)...
    %lane = arith.remui %tid, %c32 : index
    %w = arith.divui %tid, %c32 : index
    %tm = arith.remui %lane, %c8 : index
    %tq = arith.divui %lane, %c8 : index
    %tRow = arith.muli %tm, %c16 : index
    %tRowAt = arith.muli %tRow, %c128 : index
    %tChunk = arith.xori %w, %tm : index
    %tChunkAt = arith.muli %tChunk, %c16 : index
    %tWord = arith.muli %tq, %c4 : index
    %tIn0 = arith.addi %tRowAt, %tChunkAt : index
    %tIn = arith.addi %tIn0, %tWord : index
    %tColGroup = arith.muli %w, %c16 : index
    %tCol0 = arith.addi %col0, %tColGroup : index
    %tCol = arith.addi %tCol0, %tWord : index
    %tOutRow = arith.muli %tCol, %rows : index
    %tOutRow0 = arith.addi %tOutRow, %row0 : index
    %tOut = arith.addi %tOutRow0, %tRow : index
@TRANSPOSE@
@BLOCK_MAX@
    gpu.return
  }
