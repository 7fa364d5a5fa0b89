// Embedding gradient: dtable[v, :] += dout[t, :] for every row t with
// ids[t] == v, over @T@ rows of @H@ elements and a table of @V@ rows,
// accumulated in f32 with atomic adds (the plan zeroes dtable first and
// rounds it to bf16 afterwards with f32_to_bf16). Rows whose id lies outside
// [0, @V@) add nothing.
// Reads ids (i32 [@T@]) and dout (bf16 [@T@, @H@], 16 bytes per thread);
// atomically adds into dtable (f32 [@V@, @H@]). One block per row; thread k
// handles the 8-element chunks k, k + @BLOCK@, ... @H@ must be a multiple of
// 8. Launch: grid [@T@], block [@BLOCK@].
  gpu.func @@KERNEL@(%ids: memref<@T@xi32>, %dout: memref<@TH@xbf16>, %dtable: memref<@VH@xf32>) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c8 = arith.constant 8 : index
    %block = arith.constant @BLOCK@ : index
    %chunks = arith.constant @CHUNKS@ : index
    %h = arith.constant @H@ : index
    %zero = arith.constant 0 : i32
    %vocab = arith.constant @V@ : i32
    %t = gpu.block_id x
    %tid = gpu.thread_id x
    %id = memref.load %ids[%t] : memref<@T@xi32>
    %nonneg = arith.cmpi sge, %id, %zero : i32
    %below = arith.cmpi slt, %id, %vocab : i32
    %valid = arith.andi %nonneg, %below : i1
    scf.if %valid {
      %row = arith.index_cast %id : i32 to index
      %dst = arith.muli %row, %h : index
      %src = arith.muli %t, %h : index
      scf.for %c = %tid to %chunks step %block {
        %off = arith.muli %c, %c8 : index
        %i = arith.addi %src, %off : index
        %o = arith.addi %dst, %off : index
        %g = vector.load %dout[%i] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
        %gf = arith.extf %g : vector<8xbf16> to vector<8xf32>
        %e0 = vector.extract %gf[0] : f32 from vector<8xf32>
        %e1 = vector.extract %gf[1] : f32 from vector<8xf32>
        %e2 = vector.extract %gf[2] : f32 from vector<8xf32>
        %e3 = vector.extract %gf[3] : f32 from vector<8xf32>
        %e4 = vector.extract %gf[4] : f32 from vector<8xf32>
        %e5 = vector.extract %gf[5] : f32 from vector<8xf32>
        %e6 = vector.extract %gf[6] : f32 from vector<8xf32>
        %e7 = vector.extract %gf[7] : f32 from vector<8xf32>
        %o1 = arith.addi %o, %c1 : index
        %o2 = arith.addi %o1, %c1 : index
        %o3 = arith.addi %o2, %c1 : index
        %o4 = arith.addi %o3, %c1 : index
        %o5 = arith.addi %o4, %c1 : index
        %o6 = arith.addi %o5, %c1 : index
        %o7 = arith.addi %o6, %c1 : index
        %r0 = memref.atomic_rmw addf %e0, %dtable[%o] : (f32, memref<@VH@xf32>) -> f32
        %r1 = memref.atomic_rmw addf %e1, %dtable[%o1] : (f32, memref<@VH@xf32>) -> f32
        %r2 = memref.atomic_rmw addf %e2, %dtable[%o2] : (f32, memref<@VH@xf32>) -> f32
        %r3 = memref.atomic_rmw addf %e3, %dtable[%o3] : (f32, memref<@VH@xf32>) -> f32
        %r4 = memref.atomic_rmw addf %e4, %dtable[%o4] : (f32, memref<@VH@xf32>) -> f32
        %r5 = memref.atomic_rmw addf %e5, %dtable[%o5] : (f32, memref<@VH@xf32>) -> f32
        %r6 = memref.atomic_rmw addf %e6, %dtable[%o6] : (f32, memref<@VH@xf32>) -> f32
        %r7 = memref.atomic_rmw addf %e7, %dtable[%o7] : (f32, memref<@VH@xf32>) -> f32
      }
    }
    gpu.return
  }
