// Backward of the causal softmax, row by row, over @R@ rows of @SEQ@ columns
// (layout and mask s <= j <= i as causal_softmax_fwd: row r holds query
// i = r mod @SEQ@; s = 0, or from positions for packed sequences, which
// are then the fifth argument, as there). It recomputes the probabilities
// in f32 from the scores S (of type @STYPE@, recomputed by the scores GEMM)
// and the forward's lse, and takes dP = dO V^T (of type @STYPE@):
//   P[r, j] = exp(S[r, j] - lse[r])                     (f32)
//   D = sum_{s <= j <= i} P[r, j] dP[r, j]              (f32)
//   dS[r, j] = bf16(P[r, j] (dP[r, j] - D))  for s <= j <= i,  0 exactly for
//   the other j.
// P in f32 keeps dS free of the rounding of the forward's bf16 P. D is
// summed here from P and dP (the softmax's own rowsum), not from dO and O.
// The scale of the scores is left to the dQ and dK GEMMs' alpha. Masked
// entries of S and dP do not reach the result (they may hold anything, NaN
// too).
// Reads S (@STYPE@ [@R@, @SEQ@]), lse (f32 [@R@]), dP (@STYPE@ [@R@,
// @SEQ@]) and positions when given; writes dS (bf16 [@R@, @SEQ@]; it must
// not alias S or dP: the plan writes it over the forward's bf16 P, which the
// dV GEMM has read).
// Each block of @ROWS@ x @BLOCK@ threads holds @ROWS@ rows: thread t works
// on row block_id @ROWS@ + t / @BLOCK@ as its thread k = t mod @BLOCK@ (a
// row's threads are whole warps). Thread k sums the 8-column chunks
// s / 8 + k, s / 8 + k + @BLOCK@, ... up to the chunk of i; the row's
// threads reduce D (shuffles, then one f32 per warp in shared memory at
// (row in block) @WARPS@ + (warp in row), so rows never mix), and thread k
// writes chunks k, k + @BLOCK@, ... of the whole row (reading S and dP
// there again).
// @SEQ@ must be a multiple of 8 and @R@ a multiple of @ROWS@.
// Launch: grid [@R@ / @ROWS@], block [@ROWS@ x @BLOCK@].
  gpu.func @@KERNEL@(%s: memref<@RS@x@STYPE@>, %lse: memref<@R@xf32>, %dp: memref<@RS@x@STYPE@>, %ds: memref<@RS@xbf16>@POSITIONS_ARG@)
      workgroup(%sums : memref<32xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @THREADS@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c8 = arith.constant 8 : index
    %c32 = arith.constant 32 : index
    %block = arith.constant @BLOCK@ : index
    %warps = arith.constant @WARPS@ : index
    %chunks = arith.constant @CHUNKS@ : index
    %seq = arith.constant @SEQ@ : index
    %rows = arith.constant @ROWS@ : index
    %i1 = arith.constant 1 : i32
    %i2 = arith.constant 2 : i32
    %i4 = arith.constant 4 : i32
    %i8 = arith.constant 8 : i32
    %i16 = arith.constant 16 : i32
    %i32 = arith.constant 32 : i32
    %zero = arith.constant 0.0 : f32
    %zerosv = arith.constant dense<0.0> : vector<8xf32>
    %zerosb = arith.constant dense<0.0> : vector<8xbf16>
    %lanes = arith.constant dense<[0, 1, 2, 3, 4, 5, 6, 7]> : vector<8xindex>
    %bid = gpu.block_id x
    %t = gpu.thread_id x
    %slot = arith.divui %t, %block : index
    %tid = arith.remui %t, %block : index
    %firstRow = arith.muli %bid, %rows : index
    %r = arith.addi %firstRow, %slot : index
    %q = arith.remui %r, %seq : index
    %rowBase = arith.muli %r, %seq : index
    @WINDOW_START@
    %first = arith.divui %start, %c8 : index
    %q8 = arith.divui %q, %c8 : index
    %live = arith.addi %q8, %c1 : index
    %qv = vector.broadcast %q : index to vector<8xindex>
    %startv = vector.broadcast %start : index to vector<8xindex>
    %lseRow = memref.load %lse[%r] : memref<@R@xf32>
    %lsev = vector.broadcast %lseRow : f32 to vector<8xf32>
    %mine = arith.addi %first, %tid : index
    %dots = scf.for %c = %mine to %live step %block iter_args(%acc = %zerosv) -> (vector<8xf32>) {
      %off = arith.muli %c, %c8 : index
      %i = arith.addi %rowBase, %off : index
      %sv = vector.load %s[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
      %dpv = vector.load %dp[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
      %sf = @SCONV@ %sv : vector<8x@STYPE@> to vector<8xf32>
      %dpf = @SCONV@ %dpv : vector<8x@STYPE@> to vector<8xf32>
      %d = arith.subf %sf, %lsev : vector<8xf32>
      %pf = math.exp %d : vector<8xf32>
      %offv = vector.broadcast %off : index to vector<8xindex>
      %cols = arith.addi %offv, %lanes : vector<8xindex>
      %past = arith.cmpi ule, %cols, %qv : vector<8xindex>
      %inside = arith.cmpi uge, %cols, %startv : vector<8xindex>
      %keep = arith.andi %past, %inside : vector<8xi1>
      %prod = arith.mulf %pf, %dpf : vector<8xf32>
      %pk = arith.select %keep, %prod, %zerosv : vector<8xi1>, vector<8xf32>
      %next = arith.addf %acc, %pk : vector<8xf32>
      scf.yield %next : vector<8xf32>
    }
    %s0 = vector.reduction <add>, %dots : vector<8xf32> into f32
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
    %slotBase = arith.muli %slot, %warps : index
    %warpSlot = arith.addi %slotBase, %warp : index
    scf.if %leader {
      memref.store %s5, %sums[%warpSlot] : memref<32xf32, #gpu.address_space<workgroup>>
    }
    gpu.barrier
    %slotEnd = arith.addi %slotBase, %warps : index
    %total = scf.for %k = %slotBase to %slotEnd step %c1 iter_args(%acc = %zero) -> (f32) {
      %part = memref.load %sums[%k] : memref<32xf32, #gpu.address_space<workgroup>>
      %next = arith.addf %acc, %part : f32
      scf.yield %next : f32
    }
    %dv = vector.broadcast %total : f32 to vector<8xf32>
    scf.for %c = %tid to %chunks step %block {
      %off = arith.muli %c, %c8 : index
      %i = arith.addi %rowBase, %off : index
      %before = arith.cmpi ult, %c, %live : index
      %after = arith.cmpi uge, %c, %first : index
      %touches = arith.andi %before, %after : i1
      %out = scf.if %touches -> (vector<8xbf16>) {
        %sv = vector.load %s[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
        %dpv = vector.load %dp[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
        %sf = @SCONV@ %sv : vector<8x@STYPE@> to vector<8xf32>
        %dpf = @SCONV@ %dpv : vector<8x@STYPE@> to vector<8xf32>
        %d = arith.subf %sf, %lsev : vector<8xf32>
        %pf = math.exp %d : vector<8xf32>
        %offv = vector.broadcast %off : index to vector<8xindex>
        %cols = arith.addi %offv, %lanes : vector<8xindex>
        %past = arith.cmpi ule, %cols, %qv : vector<8xindex>
        %inside = arith.cmpi uge, %cols, %startv : vector<8xindex>
        %keep = arith.andi %past, %inside : vector<8xi1>
        %diff = arith.subf %dpf, %dv : vector<8xf32>
        %dsf = arith.mulf %pf, %diff : vector<8xf32>
        %dsk = arith.select %keep, %dsf, %zerosv : vector<8xi1>, vector<8xf32>
        %dsb = arith.truncf %dsk : vector<8xf32> to vector<8xbf16>
        scf.yield %dsb : vector<8xbf16>
      } else {
        scf.yield %zerosb : vector<8xbf16>
      }
      vector.store %out, %ds[%i] {alignment = 16} : memref<@RS@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
