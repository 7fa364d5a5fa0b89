// causal_softmax_fwd for rows of at most 256 columns (@SEQ@): the same
// result (P; causal_softmax_fwd.mlir says what it is) from one
// warp per row that holds the whole row in registers, lane k its 8-column
// chunk k, so that S is read once and with no shared memory or barrier:
//   m = max over the row's unmasked columns   (a warp max: 5 shuffles)
//   e = exp(S - m) on them, 0 elsewhere        (f32, in registers)
//   l = sum of e                               (a warp sum: 5 shuffles)
//   P = bf16(e / l)
// The general kernel merges (max, sum of exp) pairs with an exp per merge,
// in shared memory across warps, and reads S again to write P; at 256
// columns a row is one warp's worth of chunks and that work is wasted.
// Chunks wholly outside the window s <= j <= i are not read (the window
// start s as in causal_softmax_fwd: WINDOW_START, POSITIONS_ARG); lanes k
// >= @CHUNKS@ have no chunk.
// Reads S (@STYPE@ [@R@, @SEQ@]) and positions when given; writes P (bf16
// [@R@, @SEQ@]).
// @SEQ@ must be a multiple of 8 and at most 256, @R@ a multiple of 8.
// Launch: grid [@R@ / 8], block [256] (8 rows a block).
  gpu.func @@KERNEL@(%s: memref<@RS@x@STYPE@>, %p: memref<@RS@xbf16>@POSITIONS_ARG@) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c8 = arith.constant 8 : index
    %c32 = arith.constant 32 : index
    %chunks = arith.constant @CHUNKS@ : index
    %seq = arith.constant @SEQ@ : index
    %i1 = arith.constant 1 : i32
    %i2 = arith.constant 2 : i32
    %i4 = arith.constant 4 : i32
    %i8 = arith.constant 8 : i32
    %i16 = arith.constant 16 : i32
    %i32 = arith.constant 32 : i32
    %one = arith.constant 1.0 : f32
    // The most negative finite f32: the max of no columns; exp of a
    // difference with it is 0, never NaN (inf - inf).
    %lowestv = arith.constant dense<0xFF7FFFFF> : vector<8xf32>
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
    // Lane k's chunk: columns 8 k .. 8 k + 7; read only when it holds a
    // column of the window (chunks start / 8 .. q / 8).
    %off = arith.muli %lane, %c8 : index
    %i = arith.addi %rowBase, %off : index
    %mine = arith.cmpi ult, %lane, %chunks : index
    %first = arith.divui %start, %c8 : index
    %q8 = arith.divui %q, %c8 : index
    %afterStart = arith.cmpi uge, %lane, %first : index
    %upToQuery = arith.cmpi ule, %lane, %q8 : index
    %live = arith.andi %afterStart, %upToQuery : i1
    %sf = scf.if %live -> (vector<8xf32>) {
      %sv = vector.load %s[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
      %conv = @SCONV@ %sv : vector<8x@STYPE@> to vector<8xf32>
      scf.yield %conv : vector<8xf32>
    } else {
      scf.yield %lowestv : vector<8xf32>
    }
    %qv = vector.broadcast %q : index to vector<8xindex>
    %startv = vector.broadcast %start : index to vector<8xindex>
    %offv = vector.broadcast %off : index to vector<8xindex>
    %cols = arith.addi %offv, %lanes : vector<8xindex>
    %past = arith.cmpi ule, %cols, %qv : vector<8xindex>
    %inside = arith.cmpi uge, %cols, %startv : vector<8xindex>
    %keep = arith.andi %past, %inside : vector<8xi1>
    %vals = arith.select %keep, %sf, %lowestv : vector<8xi1>, vector<8xf32>
    %m0 = vector.reduction <maximumf>, %vals : vector<8xf32> into f32
    %mo0, %mv0 = gpu.shuffle xor %m0, %i16, %i32 : f32
    %m1 = arith.maximumf %m0, %mo0 : f32
    %mo1, %mv1 = gpu.shuffle xor %m1, %i8, %i32 : f32
    %m2 = arith.maximumf %m1, %mo1 : f32
    %mo2, %mv2 = gpu.shuffle xor %m2, %i4, %i32 : f32
    %m3 = arith.maximumf %m2, %mo2 : f32
    %mo3, %mv3 = gpu.shuffle xor %m3, %i2, %i32 : f32
    %m4 = arith.maximumf %m3, %mo3 : f32
    %mo4, %mv4 = gpu.shuffle xor %m4, %i1, %i32 : f32
    %m = arith.maximumf %m4, %mo4 : f32
    %mvec = vector.broadcast %m : f32 to vector<8xf32>
    %d = arith.subf %vals, %mvec : vector<8xf32>
    %e = math.exp %d : vector<8xf32>
    %ek = arith.select %keep, %e, %zerosv : vector<8xi1>, vector<8xf32>
    %l0 = vector.reduction <add>, %ek : vector<8xf32> into f32
    %lo0, %lv0 = gpu.shuffle xor %l0, %i16, %i32 : f32
    %l1 = arith.addf %l0, %lo0 : f32
    %lo1, %lv1 = gpu.shuffle xor %l1, %i8, %i32 : f32
    %l2 = arith.addf %l1, %lo1 : f32
    %lo2, %lv2 = gpu.shuffle xor %l2, %i4, %i32 : f32
    %l3 = arith.addf %l2, %lo2 : f32
    %lo3, %lv3 = gpu.shuffle xor %l3, %i2, %i32 : f32
    %l4 = arith.addf %l3, %lo3 : f32
    %lo4, %lv4 = gpu.shuffle xor %l4, %i1, %i32 : f32
    %l = arith.addf %l4, %lo4 : f32
    %inv = arith.divf %one, %l : f32
    %invv = vector.broadcast %inv : f32 to vector<8xf32>
    %pf = arith.mulf %ek, %invv : vector<8xf32>
    %pb = arith.truncf %pf : vector<8xf32> to vector<8xbf16>
    scf.if %mine {
      vector.store %pb, %p[%i] {alignment = 16} : memref<@RS@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
