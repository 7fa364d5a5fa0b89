// Backward of the causal softmax, row by row, over @R@ rows of @SEQ@ columns
// (layout and mask s <= j <= i as causal_softmax_fwd: row r holds query
// i = r mod @SEQ@; s = 0, or from positions for packed sequences, which
// are then the third argument, as there). From the forward's bf16 P and
// dP = dO V^T (of type @STYPE@):
//   D = sum_{s <= j <= i} P[r, j] dP[r, j]              (f32)
//   dS[r, j] = bf16(P[r, j] (dP[r, j] - D))  for s <= j <= i,
// written over P in place; for the other j, P is exactly 0 (the forward
// wrote it), and so is dS: those chunks are neither read nor written.
// Reading the saved P spares the backward a scores GEMM and an f32 S;
// P's bf16 rounding adds one bf16 unit of relative error to each dS, as
// dS's own rounding does, and dP stays f32 (dP - D cancels). D is summed
// here from P and dP (the softmax's own rowsum), not from dO and O. The
// scale of the scores is left to the dQ and dK GEMMs' alpha. Masked
// entries of dP do not reach the result (they may hold anything, NaN too).
// Reads P (bf16 [@R@, @SEQ@]), dP (@STYPE@ [@R@, @SEQ@]) and positions
// when given; writes dS over P (which the dV GEMM has read).
// Each block of @ROWS@ x @BLOCK@ threads holds @ROWS@ rows: thread t works
// on row block_id @ROWS@ + t / @BLOCK@ as its thread k = t mod @BLOCK@ (a
// row's threads are whole warps). Thread k sums the 8-column chunks
// s / 8 + k, s / 8 + k + @BLOCK@, ... up to the chunk of i; the row's
// threads reduce D (shuffles, then one f32 per warp in shared memory at
// (row in block) @WARPS@ + (warp in row), so rows never mix), and after
// the barrier thread k reads the same chunks again to write their dS.
// @SEQ@ must be a multiple of 8 and @R@ a multiple of @ROWS@.
// Launch: grid [@R@ / @ROWS@], block [@ROWS@ x @BLOCK@].
  gpu.func @@KERNEL@(%p: memref<@RS@xbf16>, %dp: memref<@RS@x@STYPE@>@POSITIONS_ARG@)
      workgroup(%sums : memref<32xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @THREADS@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c8 = arith.constant 8 : index
    %c32 = arith.constant 32 : index
    %block = arith.constant @BLOCK@ : index
    %warps = arith.constant @WARPS@ : index
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
    %mine = arith.addi %first, %tid : index
    %dots = scf.for %c = %mine to %live step %block iter_args(%acc = %zerosv) -> (vector<8xf32>) {
      %off = arith.muli %c, %c8 : index
      %i = arith.addi %rowBase, %off : index
      %pv = vector.load %p[%i] {alignment = 16} : memref<@RS@xbf16>, vector<8xbf16>
      %dpv = vector.load %dp[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
      %pf = arith.extf %pv : vector<8xbf16> to vector<8xf32>
      %dpf = @SCONV@ %dpv : vector<8x@STYPE@> to vector<8xf32>
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
    scf.for %c = %mine to %live step %block {
      %off = arith.muli %c, %c8 : index
      %i = arith.addi %rowBase, %off : index
      %pv = vector.load %p[%i] {alignment = 16} : memref<@RS@xbf16>, vector<8xbf16>
      %dpv = vector.load %dp[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
      %pf = arith.extf %pv : vector<8xbf16> to vector<8xf32>
      %dpf = @SCONV@ %dpv : vector<8x@STYPE@> to vector<8xf32>
      %offv = vector.broadcast %off : index to vector<8xindex>
      %cols = arith.addi %offv, %lanes : vector<8xindex>
      %past = arith.cmpi ule, %cols, %qv : vector<8xindex>
      %inside = arith.cmpi uge, %cols, %startv : vector<8xindex>
      %keep = arith.andi %past, %inside : vector<8xi1>
      %diff = arith.subf %dpf, %dv : vector<8xf32>
      %dsf = arith.mulf %pf, %diff : vector<8xf32>
      // +0 where masked (P (dP - D) there would be -0 for D > 0).
      %dsk = arith.select %keep, %dsf, %zerosv : vector<8xi1>, vector<8xf32>
      %dsb = arith.truncf %dsk : vector<8xf32> to vector<8xbf16>
      vector.store %dsb, %p[%i] {alignment = 16} : memref<@RS@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
