// The amax of @N@ bf16 elements, for current scaling (the scale must be
// known before the cast, so the amax is taken in a pass of its own):
//   amax[0] = max(amax[0], max_i |x[src(i)]|)   (f32, unscaled)
// with src(i) and the amax's integer atomic max on f32 bits as in fp8_cast
// (a NaN input makes the amax NaN); the plan zeroes amax first.
// Reads x (@NX@ elements; 16 bytes per thread and step); raises amax (f32
// [1] as i32) once per block.
// Thread k of block b takes the 8-element chunks 256 b + k, 256 (b + @G@)
// + k, ... (a grid-stride loop); the block reduces the maxima (shuffles, one
// value per warp in shared memory). @N@, @COLS@ and @LD@ must be multiples
// of 8.
// Launch: grid [@G@], block [256].
  gpu.func @@KERNEL@(%x: memref<@NX@xbf16>, %amax: memref<1xi32>)
      workgroup(%maxes : memref<32xi32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c8 = arith.constant 8 : index
    %block = arith.constant 256 : index
    %chunks = arith.constant @CHUNKS@ : index
    %stride = arith.constant @STRIDE@ : index
    %zeros = arith.constant dense<0> : vector<8xi32>
    %absMask = arith.constant dense<2147483647> : vector<8xi32>
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
      scf.yield %next : vector<8xi32>
    }
    %m = vector.reduction <maxui>, %maxBits : vector<8xi32> into i32
@BLOCK_MAX@
    gpu.return
  }
