// Backward of the causal softmax, row by row, over @R@ rows of @SEQ@ columns
// (layout and mask s <= j <= i as causal_softmax_fwd: row r holds query
// i = r mod @SEQ@; s = 0, or from positions for packed sequences, which
// are then the fourth argument, as there): from the probabilities P
// (@PTYPE@: f32 keeps dS free of P's bf16 rounding) and dP = dO V^T (of
// type @STYPE@),
//   D = sum_{s <= j <= i} P[r, j] dP[r, j]              (f32)
//   dS[r, j] = bf16(P[r, j] (dP[r, j] - D))  for s <= j <= i,  0 exactly for
//   the other j.
// D is summed here from P and dP (the softmax's own rowsum), not from dO and
// O. The scale of the scores is left to the dQ and dK GEMMs' alpha. Masked
// entries of dP do not reach the result (they may hold anything, NaN too).
// Reads P (@PTYPE@ [@R@, @SEQ@]), dP (@STYPE@ [@R@, @SEQ@]) and positions
// when given; writes dS (bf16 [@R@, @SEQ@]), which may alias a bf16 P (each
// thread reads its chunks of P before it writes them). One block of @BLOCK@
// threads per row; thread k sums the 8-column chunks s / 8 + k,
// s / 8 + k + @BLOCK@, ... up to the chunk of i; the block reduces D
// (shuffles, then one f32 per warp in shared memory) and thread k writes
// chunks k, k + @BLOCK@, ... of the whole row (it reads its chunks there
// before writing them).
// @SEQ@ must be a multiple of 8.
// Launch: grid [@R@], block [@BLOCK@].
  gpu.func @@KERNEL@(%p: memref<@RS@x@PTYPE@>, %dp: memref<@RS@x@STYPE@>, %ds: memref<@RS@xbf16>@POSITIONS_ARG@)
      workgroup(%sums : memref<32xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c8 = arith.constant 8 : index
    %c32 = arith.constant 32 : index
    %block = arith.constant @BLOCK@ : index
    %warps = arith.constant @WARPS@ : index
    %chunks = arith.constant @CHUNKS@ : index
    %seq = arith.constant @SEQ@ : index
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
    %r = gpu.block_id x
    %tid = gpu.thread_id x
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
      %pv = vector.load %p[%i] {alignment = 16} : memref<@RS@x@PTYPE@>, vector<8x@PTYPE@>
      %dpv = vector.load %dp[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
      %pf = @PCONV@ %pv : vector<8x@PTYPE@> to vector<8xf32>
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
    scf.if %leader {
      memref.store %s5, %sums[%warp] : memref<32xf32, #gpu.address_space<workgroup>>
    }
    gpu.barrier
    %total = scf.for %k = %c0 to %warps step %c1 iter_args(%acc = %zero) -> (f32) {
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
        %pv = vector.load %p[%i] {alignment = 16} : memref<@RS@x@PTYPE@>, vector<8x@PTYPE@>
        %dpv = vector.load %dp[%i] {alignment = 16} : memref<@RS@x@STYPE@>, vector<8x@STYPE@>
        %pf = @PCONV@ %pv : vector<8x@PTYPE@> to vector<8xf32>
        %dpf = @SCONV@ %dpv : vector<8x@STYPE@> to vector<8xf32>
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
