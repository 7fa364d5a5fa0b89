// Cross entropy of the shifted causal-LM loss over @T@ rows of @V@ bf16
// logits (sequences of @SEQ@ rows), fused with its gradient, which
// overwrites the logits (no f32 copy of them exists). Row t's target is
// labels[t + 1] when t is not the last position of its sequence and that
// label lies in [0, @V@) (-100, the ignore index, or any other value outside
// gives no target; count_targets applies the same rule). For a row with
// target y, in f32, with m = max_j x_j and l = sum_j exp(x_j - m):
//   stats[0] += m + log(l) - x_y                     (atomic)
//   logits[t, j] = bf16((exp(x_j - m) / l - [j == y]) * stats[2])
// where stats[2] = 1 / (number of targets) was written by count_targets
// (which also zeroed stats[0]); the mean loss is stats[0] / stats[1] after
// the launch. Rows without a target get a zero gradient row.
// Reads and writes logits (bf16 [@T@, @V@], 16-byte accesses); reads labels
// (i32 [@T@]) and stats[2]; atomically adds into stats[0] (f32 [4]).
// One block of @BLOCK@ threads per row; thread k owns the 8-column chunks
// k, k + @BLOCK@, ...: a running (max, sum of exp) per thread, merged across
// the block (shuffles, then one pair per warp in shared memory), then a
// second read of the row to write the gradient. @V@ must be a multiple of 8.
// Launch: grid [@T@], block [@BLOCK@].
  gpu.func @@KERNEL@(%logits: memref<@TV@xbf16>, %labels: memref<@T@xi32>, %stats: memref<4xf32>)
      workgroup(%maxes : memref<32xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64},
                %sums : memref<32xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c8 = arith.constant 8 : index
    %c32 = arith.constant 32 : index
    %block = arith.constant @BLOCK@ : index
    %warps = arith.constant @WARPS@ : index
    %chunks = arith.constant @CHUNKS@ : index
    %seq = arith.constant @SEQ@ : index
    %seqLast = arith.constant @SEQLAST@ : index
    %lastRow = arith.constant @TLAST@ : index
    %v = arith.constant @V@ : index
    %zeroi = arith.constant 0 : i32
    %vocab = arith.constant @V@ : i32
    %i1 = arith.constant 1 : i32
    %i2 = arith.constant 2 : i32
    %i4 = arith.constant 4 : i32
    %i8 = arith.constant 8 : i32
    %i16 = arith.constant 16 : i32
    %i32 = arith.constant 32 : i32
    %zero = arith.constant 0.0 : f32
    // The most negative finite f32: the max of no columns (see
    // causal_softmax_fwd).
    %lowest = arith.constant 0xFF7FFFFF : f32
    %zerosv = arith.constant dense<0.0> : vector<8xf32>
    %zerosb = arith.constant dense<0.0> : vector<8xbf16>
    %lanes = arith.constant dense<[0, 1, 2, 3, 4, 5, 6, 7]> : vector<8xindex>
    %t = gpu.block_id x
    %tid = gpu.thread_id x
    %pos = arith.remui %t, %seq : index
    %notLast = arith.cmpi ne, %pos, %seqLast : index
    %t1 = arith.addi %t, %c1 : index
    %next = arith.minui %t1, %lastRow : index
    %label = memref.load %labels[%next] : memref<@T@xi32>
    %nonneg = arith.cmpi sge, %label, %zeroi : i32
    %below = arith.cmpi slt, %label, %vocab : i32
    %inVocab = arith.andi %nonneg, %below : i1
    %valid = arith.andi %notLast, %inVocab : i1
    %rowBase = arith.muli %t, %v : index
    scf.if %valid {
      %y = arith.index_cast %label : i32 to index
      %yi = arith.addi %rowBase, %y : index
      // Read before the barrier below, so before any thread overwrites it.
      %xyb = memref.load %logits[%yi] : memref<@TV@xbf16>
      %xy = arith.extf %xyb : bf16 to f32
      %run:2 = scf.for %c = %tid to %chunks step %block iter_args(%m = %lowest, %l = %zero) -> (f32, f32) {
        %off = arith.muli %c, %c8 : index
        %i = arith.addi %rowBase, %off : index
        %xv = vector.load %logits[%i] {alignment = 16} : memref<@TV@xbf16>, vector<8xbf16>
        %xf = arith.extf %xv : vector<8xbf16> to vector<8xf32>
        %cm = vector.reduction <maximumf>, %xf : vector<8xf32> into f32
        %m1 = arith.maximumf %m, %cm : f32
        %dm = arith.subf %m, %m1 : f32
        %rescale = math.exp %dm : f32
        %l1 = arith.mulf %l, %rescale : f32
        %m1v = vector.broadcast %m1 : f32 to vector<8xf32>
        %d = arith.subf %xf, %m1v : vector<8xf32>
        %e = math.exp %d : vector<8xf32>
        %es = vector.reduction <add>, %e : vector<8xf32> into f32
        %l2 = arith.addf %l1, %es : f32
        scf.yield %m1, %l2 : f32, f32
      }
      %mo0, %mv0 = gpu.shuffle xor %run#0, %i16, %i32 : f32
      %lo0, %lv0 = gpu.shuffle xor %run#1, %i16, %i32 : f32
      %mm0 = arith.maximumf %run#0, %mo0 : f32
      %da0 = arith.subf %run#0, %mm0 : f32
      %db0 = arith.subf %mo0, %mm0 : f32
      %ea0 = math.exp %da0 : f32
      %eb0 = math.exp %db0 : f32
      %la0 = arith.mulf %run#1, %ea0 : f32
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
      scf.if %leader {
        memref.store %mm4, %maxes[%warp] : memref<32xf32, #gpu.address_space<workgroup>>
        memref.store %ll4, %sums[%warp] : memref<32xf32, #gpu.address_space<workgroup>>
      }
      gpu.barrier
      %row:2 = scf.for %k = %c0 to %warps step %c1 iter_args(%m = %lowest, %l = %zero) -> (f32, f32) {
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
      %first = arith.cmpi eq, %tid, %c0 : index
      scf.if %first {
        %logl = math.log %row#1 : f32
        %lse = arith.addf %row#0, %logl : f32
        %loss = arith.subf %lse, %xy : f32
        %old = memref.atomic_rmw addf %loss, %stats[%c0] : (f32, memref<4xf32>) -> f32
      }
      %scale = memref.load %stats[%c2] : memref<4xf32>
      %pscale = arith.divf %scale, %row#1 : f32
      %mv = vector.broadcast %row#0 : f32 to vector<8xf32>
      %pscalev = vector.broadcast %pscale : f32 to vector<8xf32>
      %scalev = vector.broadcast %scale : f32 to vector<8xf32>
      %yv = vector.broadcast %y : index to vector<8xindex>
      scf.for %c = %tid to %chunks step %block {
        %off = arith.muli %c, %c8 : index
        %i = arith.addi %rowBase, %off : index
        %xv = vector.load %logits[%i] {alignment = 16} : memref<@TV@xbf16>, vector<8xbf16>
        %xf = arith.extf %xv : vector<8xbf16> to vector<8xf32>
        %d = arith.subf %xf, %mv : vector<8xf32>
        %e = math.exp %d : vector<8xf32>
        %g = arith.mulf %e, %pscalev : vector<8xf32>
        %offv = vector.broadcast %off : index to vector<8xindex>
        %cols = arith.addi %offv, %lanes : vector<8xindex>
        %isy = arith.cmpi eq, %cols, %yv : vector<8xindex>
        %gy = arith.subf %g, %scalev : vector<8xf32>
        %gs = arith.select %isy, %gy, %g : vector<8xi1>, vector<8xf32>
        %gb = arith.truncf %gs : vector<8xf32> to vector<8xbf16>
        vector.store %gb, %logits[%i] {alignment = 16} : memref<@TV@xbf16>, vector<8xbf16>
      }
    } else {
      scf.for %c = %tid to %chunks step %block {
        %off = arith.muli %c, %c8 : index
        %i = arith.addi %rowBase, %off : index
        vector.store %zerosb, %logits[%i] {alignment = 16} : memref<@TV@xbf16>, vector<8xbf16>
      }
    }
    gpu.return
  }
