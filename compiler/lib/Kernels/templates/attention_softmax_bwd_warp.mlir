// attention_softmax_bwd for rows of at most 256 columns (@SEQ@): the same
// dS (attention_softmax_bwd.mlir says what it is) from one warp per row
// that holds the whole row in registers, lane k its 8-column chunk k, so
// that P and dP are read once and with no shared memory or barrier:
//   D = sum of P dP over the row's unmasked columns   (a warp sum)
//   dS = bf16(P (dP - D)) there, written over P
// The general kernel reduces D across warps in shared memory and reads P
// and dP again to write dS; at 256 columns a row is one warp's chunks.
// Chunks wholly outside the window s <= j <= i are neither read nor
// written (the window start s as in causal_softmax_fwd: WINDOW_START,
// POSITIONS_ARG): P is already exactly 0 there, and so is dS.
// Reads P (bf16 [@R@, @SEQ@]), dP (@STYPE@ [@R@, @SEQ@]) and positions
// when given; writes dS over P.
// @SEQ@ must be a multiple of 8 and at most 256, @R@ a multiple of 8.
// Launch: grid [@R@ / 8], block [256] (8 rows a block).
  gpu.func @@KERNEL@(%p: memref<@RS@xbf16>, %dp: memref<@RS@x@STYPE@>@POSITIONS_ARG@) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c8 = arith.constant 8 : index
    %c32 = arith.constant 32 : index
    %seq = arith.constant @SEQ@ : index
    %i1 = arith.constant 1 : i32
    %i2 = arith.constant 2 : i32
    %i4 = arith.constant 4 : i32
    %i8 = arith.constant 8 : i32
    %i16 = arith.constant 16 : i32
    %i32 = arith.constant 32 : i32
    %zerosv = arith.constant dense<0.0> : vector<8xf32>
    %lanes = arith.constant dense<[0, 1, 2, 3, 4, 5, 6, 7]> : vector<8xindex>
    %bid = gpu.block_id x
    %t = gpu.thread_id x
    %slot = arith.divui %t, %c32 : index
    %lane = arith.remui %t, %c32 : index
    %firstRow = arith.muli %bid, %c8 : index
    %r = arith.addi %firstRow, %slot : index
    %q = arith.remui %r, %seq : index
    %rowBase = arith.muli %r, %seq : index
    @WINDOW_START@
    // Lane k's chunk: columns 8 k .. 8 k + 7; read and written only when
    // it holds a column of the window (chunks start / 8 .. q / 8).
    %off = arith.muli %lane, %c8 : index
    %i = arith.addi %rowBase, %off : index
    %first = arith.divui %start, %c8 : index
    %q8 = arith.divui %q, %c8 : index
    %afterStart = arith.cmpi uge, %lane, %first : index
    %upToQuery = arith.cmpi ule, %lane, %q8 : index
    %live = arith.andi %afterStart, %upToQuery : i1
    %read:2 = scf.if %live -> (vector<8xf32>, vector<8xf32>) {
      %pv = vector.load %p[%i] {alignment = 16} : memref<@RS@xbf16>, vector<8xbf16>
      %dpv = vector.load %dp[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
      %pf = arith.extf %pv : vector<8xbf16> to vector<8xf32>
      %dpf = @SCONV@ %dpv : vector<8x@STYPE@> to vector<8xf32>
      scf.yield %pf, %dpf : vector<8xf32>, vector<8xf32>
    } else {
      scf.yield %zerosv, %zerosv : vector<8xf32>, vector<8xf32>
    }
    %qv = vector.broadcast %q : index to vector<8xindex>
    %startv = vector.broadcast %start : index to vector<8xindex>
    %offv = vector.broadcast %off : index to vector<8xindex>
    %cols = arith.addi %offv, %lanes : vector<8xindex>
    %past = arith.cmpi ule, %cols, %qv : vector<8xindex>
    %inside = arith.cmpi uge, %cols, %startv : vector<8xindex>
    %keep = arith.andi %past, %inside : vector<8xi1>
    // Masked dP may be NaN: selected away before any sum.
    %pk = arith.select %keep, %read#0, %zerosv : vector<8xi1>, vector<8xf32>
    %dpk = arith.select %keep, %read#1, %zerosv : vector<8xi1>, vector<8xf32>
    %prod = arith.mulf %pk, %dpk : vector<8xf32>
    %s0 = vector.reduction <add>, %prod : vector<8xf32> into f32
    %o1, %v1 = gpu.shuffle xor %s0, %i16, %i32 : f32
    %s1 = arith.addf %s0, %o1 : f32
    %o2, %v2 = gpu.shuffle xor %s1, %i8, %i32 : f32
    %s2 = arith.addf %s1, %o2 : f32
    %o3, %v3 = gpu.shuffle xor %s2, %i4, %i32 : f32
    %s3 = arith.addf %s2, %o3 : f32
    %o4, %v4 = gpu.shuffle xor %s3, %i2, %i32 : f32
    %s4 = arith.addf %s3, %o4 : f32
    %o5, %v5 = gpu.shuffle xor %s4, %i1, %i32 : f32
    %total = arith.addf %s4, %o5 : f32
    %dv = vector.broadcast %total : f32 to vector<8xf32>
    %diff = arith.subf %dpk, %dv : vector<8xf32>
    %dsf = arith.mulf %pk, %diff : vector<8xf32>
    // +0 where masked (P (dP - D) there would be -0 for D > 0).
    %dsk = arith.select %keep, %dsf, %zerosv : vector<8xi1>, vector<8xf32>
    %dsb = arith.truncf %dsk : vector<8xf32> to vector<8xbf16>
    scf.if %live {
      vector.store %dsb, %p[%i] {alignment = 16} : memref<@RS@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
