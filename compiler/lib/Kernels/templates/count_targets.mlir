// Counts the targets of the shifted causal-LM loss over @T@ rows (sequences
// of @SEQ@ rows, vocabulary @V@) with cross_entropy's rule: row t has a
// target when t is not the last position of its sequence and labels[t + 1]
// lies in [0, @V@). Then it sets up the loss scalars for cross_entropy:
//   stats = [0 (the loss sum, zeroed), count, n > 0 ? 1 / n : 0, 0]
// where n, the number the loss and its gradient are divided by, is count;
// or, with @HOST_COUNT@ set (a package that accumulates gradients), n =
// hyper[@SLOT@]: the tokens counted over all micro-batches of the optimizer
// step, which the host knows before the first one runs, so that each
// micro-batch adds its share of the step's mean loss gradient.
// Reads labels (i32 [@T@]) and, with @HOST_COUNT@, hyper (f32 [@HYPERS@]);
// writes stats (f32 [4]). One block: thread k counts rows k, k + @BLOCK@,
// ...; shuffles and shared memory add the counts.
// Launch: grid [1], block [@BLOCK@].
  gpu.func @@KERNEL@(%labels: memref<@T@xi32>, %stats: memref<4xf32>, %hyper: memref<@HYPERS@xf32>)
      workgroup(%counts : memref<32xi32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c3 = arith.constant 3 : index
    %c32 = arith.constant 32 : index
    %block = arith.constant @BLOCK@ : index
    %warps = arith.constant @WARPS@ : index
    %rows = arith.constant @T@ : index
    %seq = arith.constant @SEQ@ : index
    %seqLast = arith.constant @SEQLAST@ : index
    %lastRow = arith.constant @TLAST@ : index
    %zeroi = arith.constant 0 : i32
    %onei = arith.constant 1 : i32
    %vocab = arith.constant @V@ : i32
    %i1 = arith.constant 1 : i32
    %i2 = arith.constant 2 : i32
    %i4 = arith.constant 4 : i32
    %i8 = arith.constant 8 : i32
    %i16 = arith.constant 16 : i32
    %i32 = arith.constant 32 : i32
    %zero = arith.constant 0.0 : f32
    %one = arith.constant 1.0 : f32
    %tid = gpu.thread_id x
    %mine = scf.for %t = %tid to %rows step %block iter_args(%acc = %zeroi) -> (i32) {
      %pos = arith.remui %t, %seq : index
      %notLast = arith.cmpi ne, %pos, %seqLast : index
      %t1 = arith.addi %t, %c1 : index
      %next = arith.minui %t1, %lastRow : index
      %label = memref.load %labels[%next] : memref<@T@xi32>
      %nonneg = arith.cmpi sge, %label, %zeroi : i32
      %below = arith.cmpi slt, %label, %vocab : i32
      %inVocab = arith.andi %nonneg, %below : i1
      %valid = arith.andi %notLast, %inVocab : i1
      %add = arith.select %valid, %onei, %zeroi : i32
      %sum = arith.addi %acc, %add : i32
      scf.yield %sum : i32
    }
    %o1, %v1 = gpu.shuffle xor %mine, %i16, %i32 : i32
    %s1 = arith.addi %mine, %o1 : i32
    %o2, %v2 = gpu.shuffle xor %s1, %i8, %i32 : i32
    %s2 = arith.addi %s1, %o2 : i32
    %o3, %v3 = gpu.shuffle xor %s2, %i4, %i32 : i32
    %s3 = arith.addi %s2, %o3 : i32
    %o4, %v4 = gpu.shuffle xor %s3, %i2, %i32 : i32
    %s4 = arith.addi %s3, %o4 : i32
    %o5, %v5 = gpu.shuffle xor %s4, %i1, %i32 : i32
    %s5 = arith.addi %s4, %o5 : i32
    %lane = arith.remui %tid, %c32 : index
    %warp = arith.divui %tid, %c32 : index
    %leader = arith.cmpi eq, %lane, %c0 : index
    scf.if %leader {
      memref.store %s5, %counts[%warp] : memref<32xi32, #gpu.address_space<workgroup>>
    }
    gpu.barrier
    %first = arith.cmpi eq, %tid, %c0 : index
    scf.if %first {
      %total = scf.for %k = %c0 to %warps step %c1 iter_args(%acc = %zeroi) -> (i32) {
        %part = memref.load %counts[%k] : memref<32xi32, #gpu.address_space<workgroup>>
        %sum = arith.addi %acc, %part : i32
        scf.yield %sum : i32
      }
      %count = arith.sitofp %total : i32 to f32
      %fromHost = arith.constant @HOST_COUNT@
      %n = scf.if %fromHost -> (f32) {
        %slot = arith.constant @SLOT@ : index
        %hostCount = memref.load %hyper[%slot] : memref<@HYPERS@xf32>
        scf.yield %hostCount : f32
      } else {
        scf.yield %count : f32
      }
      %any = arith.cmpf ogt, %n, %zero : f32
      %inv = arith.divf %one, %n : f32
      %scale = arith.select %any, %inv, %zero : f32
      memref.store %zero, %stats[%c0] : memref<4xf32>
      memref.store %count, %stats[%c1] : memref<4xf32>
      memref.store %scale, %stats[%c2] : memref<4xf32>
      memref.store %zero, %stats[%c3] : memref<4xf32>
    }
    gpu.return
  }
