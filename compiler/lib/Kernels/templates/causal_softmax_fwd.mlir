// Causal softmax of attention scores, row by row, over @R@ rows of @SEQ@
// columns: the [@SEQ@, @SEQ@] blocks of each (batch, head) stacked, so row
// r holds query i = r mod @SEQ@ and its keys j. S is already scaled (the
// GEMM's alpha) and of type @STYPE@; with the mask s <= j <= i,
//   m = max_{s <= j <= i} S[r, j],  l = sum_{s <= j <= i} exp(S[r, j] - m)
//   P[r, j] = bf16(exp(S[r, j] - m) / l)   (f32 math),  P[r, j] = 0 exactly
//   for the other j.
// The backward reads these P (attention_softmax_bwd).
// The window start s is 0 (the causal mask), or, for packed sequences,
// s = i - min(max(pos, 0), i) with pos = positions[(r / (@SEQ@ heads)) @SEQ@
// + i] (positions: i32, the step's position_ids; a data row starts where
// its position is 0), which the kernel then takes as a third argument:
// the POSITIONS_ARG placeholder declares it (or nothing), and the
// WINDOW_START placeholder computes %start (Kernels.cpp writes both).
// Masked scores do not reach the result (they may hold anything, NaN too).
// Reads S (@STYPE@ [@R@, @SEQ@]) and positions when given; writes P (bf16
// [@R@, @SEQ@], for the P V and dV GEMMs and the softmax backward).
// Each block of @ROWS@ x @BLOCK@ threads holds @ROWS@ rows: thread t works
// on row block_id @ROWS@ + t / @BLOCK@ as its thread k = t mod @BLOCK@ (a
// row's threads are whole warps). Thread k owns the 8-column chunks
// s / 8 + k, s / 8 + k + @BLOCK@, ... up to the chunk of i. It keeps a
// running (max, sum of exp) over its unmasked columns, the row's threads
// merge the pairs (shuffles, then one pair per warp in shared memory at
// (row in block) @WARPS@ + (warp in row), so rows never mix), and each
// thread reads its chunks again to write P (thread k writes chunks k,
// k + @BLOCK@, ... of the whole row, zeros outside the window).
// @SEQ@ must be a multiple of 8 and @R@ a multiple of @ROWS@.
// Launch: grid [@R@ / @ROWS@], block [@ROWS@ x @BLOCK@].
  gpu.func @@KERNEL@(%s: memref<@RS@x@STYPE@>, %p: memref<@RS@xbf16>@POSITIONS_ARG@)
      workgroup(%maxes : memref<32xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64},
                %sums : memref<32xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
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
    %one = arith.constant 1.0 : f32
    // The most negative finite f32: the max of no columns. exp of a
    // difference with it is 0 or 1, never NaN (inf - inf).
    %lowest = arith.constant 0xFF7FFFFF : f32
    %lowestv = arith.constant dense<0xFF7FFFFF> : vector<8xf32>
    %zerosv = arith.constant dense<0.0> : vector<8xf32>
    %zerosp = arith.constant dense<0.0> : vector<8xbf16>
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
    // Chunks start / 8 .. q / 8 hold unmasked columns.
    %first = arith.divui %start, %c8 : index
    %q8 = arith.divui %q, %c8 : index
    %live = arith.addi %q8, %c1 : index
    %qv = vector.broadcast %q : index to vector<8xindex>
    %startv = vector.broadcast %start : index to vector<8xindex>
    %mine = arith.addi %first, %tid : index
    %stats:2 = scf.for %c = %mine to %live step %block iter_args(%m = %lowest, %l = %zero) -> (f32, f32) {
      %off = arith.muli %c, %c8 : index
      %i = arith.addi %rowBase, %off : index
      %sv = vector.load %s[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
      %sf = @SCONV@ %sv : vector<8x@STYPE@> to vector<8xf32>
      %offv = vector.broadcast %off : index to vector<8xindex>
      %cols = arith.addi %offv, %lanes : vector<8xindex>
      %past = arith.cmpi ule, %cols, %qv : vector<8xindex>
      %inside = arith.cmpi uge, %cols, %startv : vector<8xindex>
      %keep = arith.andi %past, %inside : vector<8xi1>
      %vals = arith.select %keep, %sf, %lowestv : vector<8xi1>, vector<8xf32>
      %cm = vector.reduction <maximumf>, %vals : vector<8xf32> into f32
      %m1 = arith.maximumf %m, %cm : f32
      %dm = arith.subf %m, %m1 : f32
      %rescale = math.exp %dm : f32
      %l1 = arith.mulf %l, %rescale : f32
      %m1v = vector.broadcast %m1 : f32 to vector<8xf32>
      %d = arith.subf %vals, %m1v : vector<8xf32>
      %e = math.exp %d : vector<8xf32>
      %ek = arith.select %keep, %e, %zerosv : vector<8xi1>, vector<8xf32>
      %es = vector.reduction <add>, %ek : vector<8xf32> into f32
      %l2 = arith.addf %l1, %es : f32
      scf.yield %m1, %l2 : f32, f32
    }
    // Merge the (max, sum) pairs across the warp, then across the row's
    // warps; every thread of a row merges its per-warp pairs in the same
    // order, so all hold the same m and l.
    %mo0, %mv0 = gpu.shuffle xor %stats#0, %i16, %i32 : f32
    %lo0, %lv0 = gpu.shuffle xor %stats#1, %i16, %i32 : f32
    %mm0 = arith.maximumf %stats#0, %mo0 : f32
    %da0 = arith.subf %stats#0, %mm0 : f32
    %db0 = arith.subf %mo0, %mm0 : f32
    %ea0 = math.exp %da0 : f32
    %eb0 = math.exp %db0 : f32
    %la0 = arith.mulf %stats#1, %ea0 : f32
    %lb0 = arith.mulf %lo0, %eb0 : f32
    %ll0 = arith.addf %la0, %lb0 : f32
    %mo1, %mv1 = gpu.shuffle xor %mm0, %i8, %i32 : f32
    %lo1, %lv1 = gpu.shuffle xor %ll0, %i8, %i32 : f32
    %mm1 = arith.maximumf %mm0, %mo1 : f32
    %da1 = arith.subf %mm0, %mm1 : f32
    %db1 = arith.subf %mo1, %mm1 : f32
    %ea1 = math.exp %da1 : f32
    %eb1 = math.exp %db1 : f32
    %la1 = arith.mulf %ll0, %ea1 : f32
    %lb1 = arith.mulf %lo1, %eb1 : f32
    %ll1 = arith.addf %la1, %lb1 : f32
    %mo2, %mv2 = gpu.shuffle xor %mm1, %i4, %i32 : f32
    %lo2, %lv2 = gpu.shuffle xor %ll1, %i4, %i32 : f32
    %mm2 = arith.maximumf %mm1, %mo2 : f32
    %da2 = arith.subf %mm1, %mm2 : f32
    %db2 = arith.subf %mo2, %mm2 : f32
    %ea2 = math.exp %da2 : f32
    %eb2 = math.exp %db2 : f32
    %la2 = arith.mulf %ll1, %ea2 : f32
    %lb2 = arith.mulf %lo2, %eb2 : f32
    %ll2 = arith.addf %la2, %lb2 : f32
    %mo3, %mv3 = gpu.shuffle xor %mm2, %i2, %i32 : f32
    %lo3, %lv3 = gpu.shuffle xor %ll2, %i2, %i32 : f32
    %mm3 = arith.maximumf %mm2, %mo3 : f32
    %da3 = arith.subf %mm2, %mm3 : f32
    %db3 = arith.subf %mo3, %mm3 : f32
    %ea3 = math.exp %da3 : f32
    %eb3 = math.exp %db3 : f32
    %la3 = arith.mulf %ll2, %ea3 : f32
    %lb3 = arith.mulf %lo3, %eb3 : f32
    %ll3 = arith.addf %la3, %lb3 : f32
    %mo4, %mv4 = gpu.shuffle xor %mm3, %i1, %i32 : f32
    %lo4, %lv4 = gpu.shuffle xor %ll3, %i1, %i32 : f32
    %mm4 = arith.maximumf %mm3, %mo4 : f32
    %da4 = arith.subf %mm3, %mm4 : f32
    %db4 = arith.subf %mo4, %mm4 : f32
    %ea4 = math.exp %da4 : f32
    %eb4 = math.exp %db4 : f32
    %la4 = arith.mulf %ll3, %ea4 : f32
    %lb4 = arith.mulf %lo4, %eb4 : f32
    %ll4 = arith.addf %la4, %lb4 : f32
    %lane = arith.remui %tid, %c32 : index
    %warp = arith.divui %tid, %c32 : index
    %leader = arith.cmpi eq, %lane, %c0 : index
    %slotBase = arith.muli %slot, %warps : index
    %warpSlot = arith.addi %slotBase, %warp : index
    scf.if %leader {
      memref.store %mm4, %maxes[%warpSlot] : memref<32xf32, #gpu.address_space<workgroup>>
      memref.store %ll4, %sums[%warpSlot] : memref<32xf32, #gpu.address_space<workgroup>>
    }
    gpu.barrier
    %slotEnd = arith.addi %slotBase, %warps : index
    %row:2 = scf.for %k = %slotBase to %slotEnd step %c1 iter_args(%m = %lowest, %l = %zero) -> (f32, f32) {
      %mk = memref.load %maxes[%k] : memref<32xf32, #gpu.address_space<workgroup>>
      %lk = memref.load %sums[%k] : memref<32xf32, #gpu.address_space<workgroup>>
      %mn = arith.maximumf %m, %mk : f32
      %da = arith.subf %m, %mn : f32
      %db = arith.subf %mk, %mn : f32
      %ea = math.exp %da : f32
      %eb = math.exp %db : f32
      %la = arith.mulf %l, %ea : f32
      %lb = arith.mulf %lk, %eb : f32
      %ln = arith.addf %la, %lb : f32
      scf.yield %mn, %ln : f32, f32
    }
    %inv = arith.divf %one, %row#1 : f32
    %mv = vector.broadcast %row#0 : f32 to vector<8xf32>
    %invv = vector.broadcast %inv : f32 to vector<8xf32>
    scf.for %c = %tid to %chunks step %block {
      %off = arith.muli %c, %c8 : index
      %i = arith.addi %rowBase, %off : index
      %before = arith.cmpi ult, %c, %live : index
      %after = arith.cmpi uge, %c, %first : index
      %touches = arith.andi %before, %after : i1
      %out = scf.if %touches -> (vector<8xbf16>) {
        %sv = vector.load %s[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
        %sf = @SCONV@ %sv : vector<8x@STYPE@> to vector<8xf32>
        %offv = vector.broadcast %off : index to vector<8xindex>
        %cols = arith.addi %offv, %lanes : vector<8xindex>
        %past = arith.cmpi ule, %cols, %qv : vector<8xindex>
        %inside = arith.cmpi uge, %cols, %startv : vector<8xindex>
        %keep = arith.andi %past, %inside : vector<8xi1>
        %d = arith.subf %sf, %mv : vector<8xf32>
        %e = math.exp %d : vector<8xf32>
        %pf = arith.mulf %e, %invv : vector<8xf32>
        %pk = arith.select %keep, %pf, %zerosv : vector<8xi1>, vector<8xf32>
        %pb = arith.truncf %pk : vector<8xf32> to vector<8xbf16>
        scf.yield %pb : vector<8xbf16>
      } else {
        scf.yield %zerosp : vector<8xbf16>
      }
      vector.store %out, %p[%i] {alignment = 16} : memref<@RS@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
