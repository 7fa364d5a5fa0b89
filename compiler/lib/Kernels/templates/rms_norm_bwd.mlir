// RMSNorm backward over @T@ rows of @H@ bf16 elements, from the forward's
// per-row rstd (f32): with g = dy w (f32) per row,
//   dx = rstd (g - x rstd^2 sum(g x) / @H@)        (f32, then bf16)
//   dw[i] = sum_t dy[t, i] bf16(x[t, i] rstd[t])   (normed recomputed as the
//                                                   forward rounded it)
// With @ACCUMULATE@ set, dx holds a residual gradient on entry and receives
// bf16(bf16(dx) + dx_in) (the gradient add of the residual connection, each
// step rounded as the unfused graph rounds it); otherwise dx is only
// written.
// Reads dy, x ([@T@, @H@]), w ([@H@]), rstd (f32 [@T@]) and, accumulating,
// dx; writes dx ([@T@, @H@]) and partial (f32 [@G@, @H@]): row b of it is
// block b's share of dw, which column_sum adds up and rounds (deterministic,
// no atomics, no zeroing).
// Block b (of @G@) takes rows b, b + @G@, ...; thread k owns the 8-element
// chunks k, k + @BLOCK@, ... of each row (16-byte accesses) and keeps its dw
// columns in shared memory. Per row: the block reduces sum(g x) (shuffles,
// one f32 per warp in a shared buffer alternating between two halves so one
// barrier per row suffices), then the thread reads its chunks again.
// @H@ must be a multiple of 8.
// Launch: grid [@G@], block [@BLOCK@], static shared memory 4 * @H@ + 256 B.
  gpu.func @@KERNEL@(%dy: memref<@TH@xbf16>, %x: memref<@TH@xbf16>, %w: memref<@H@xbf16>, %rstd: memref<@T@xf32>, %dx: memref<@TH@xbf16>, %partial: memref<@GH@xf32>)
      workgroup(%sums : memref<64xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64},
                %dwAcc : memref<@H@xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c8 = arith.constant 8 : index
    %c32 = arith.constant 32 : index
    %block = arith.constant @BLOCK@ : index
    %warps = arith.constant @WARPS@ : index
    %chunks = arith.constant @CHUNKS@ : index
    %rows = arith.constant @T@ : index
    %grid = arith.constant @G@ : index
    %h = arith.constant @H@ : index
    %i1 = arith.constant 1 : i32
    %i2 = arith.constant 2 : i32
    %i4 = arith.constant 4 : i32
    %i8 = arith.constant 8 : i32
    %i16 = arith.constant 16 : i32
    %i32 = arith.constant 32 : i32
    %zero = arith.constant 0.0 : f32
    %zeros = arith.constant dense<0.0> : vector<8xf32>
    %width = arith.constant @H@.0 : f32
    %accumulate = arith.constant @ACCUMULATE@
    %b = gpu.block_id x
    %tid = gpu.thread_id x
    %lane = arith.remui %tid, %c32 : index
    %warp = arith.divui %tid, %c32 : index
    %leader = arith.cmpi eq, %lane, %c0 : index
    scf.for %c = %tid to %chunks step %block {
      %off = arith.muli %c, %c8 : index
      vector.store %zeros, %dwAcc[%off] {alignment = 16} : memref<@H@xf32, #gpu.address_space<workgroup>>, vector<8xf32>
    }
    %parityEnd = scf.for %t = %b to %rows step %grid iter_args(%parity = %c0) -> (index) {
      %r = memref.load %rstd[%t] : memref<@T@xf32>
      %rowBase = arith.muli %t, %h : index
      %dots = scf.for %c = %tid to %chunks step %block iter_args(%acc = %zeros) -> (vector<8xf32>) {
        %off = arith.muli %c, %c8 : index
        %i = arith.addi %rowBase, %off : index
        %dyv = vector.load %dy[%i] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
        %xv = vector.load %x[%i] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
        %wv = vector.load %w[%off] {alignment = 16} : memref<@H@xbf16>, vector<8xbf16>
        %dyf = arith.extf %dyv : vector<8xbf16> to vector<8xf32>
        %xf = arith.extf %xv : vector<8xbf16> to vector<8xf32>
        %wf = arith.extf %wv : vector<8xbf16> to vector<8xf32>
        %g = arith.mulf %dyf, %wf : vector<8xf32>
        %next = vector.fma %g, %xf, %acc : vector<8xf32>
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
      %half = arith.muli %parity, %c32 : index
      scf.if %leader {
        %slot = arith.addi %half, %warp : index
        memref.store %s5, %sums[%slot] : memref<64xf32, #gpu.address_space<workgroup>>
      }
      gpu.barrier
      %total = scf.for %k = %c0 to %warps step %c1 iter_args(%acc = %zero) -> (f32) {
        %slot = arith.addi %half, %k : index
        %part = memref.load %sums[%slot] : memref<64xf32, #gpu.address_space<workgroup>>
        %next = arith.addf %acc, %part : f32
        scf.yield %next : f32
      }
      %mean = arith.divf %total, %width : f32
      %rr = arith.mulf %r, %r : f32
      %coef = arith.mulf %rr, %mean : f32
      %rv = vector.broadcast %r : f32 to vector<8xf32>
      %coefv = vector.broadcast %coef : f32 to vector<8xf32>
      scf.for %c = %tid to %chunks step %block {
        %off = arith.muli %c, %c8 : index
        %i = arith.addi %rowBase, %off : index
        %dyv = vector.load %dy[%i] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
        %xv = vector.load %x[%i] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
        %wv = vector.load %w[%off] {alignment = 16} : memref<@H@xbf16>, vector<8xbf16>
        %dyf = arith.extf %dyv : vector<8xbf16> to vector<8xf32>
        %xf = arith.extf %xv : vector<8xbf16> to vector<8xf32>
        %wf = arith.extf %wv : vector<8xbf16> to vector<8xf32>
        %g = arith.mulf %dyf, %wf : vector<8xf32>
        %xc = arith.mulf %xf, %coefv : vector<8xf32>
        %diff = arith.subf %g, %xc : vector<8xf32>
        %dxf = arith.mulf %rv, %diff : vector<8xf32>
        %dxb = arith.truncf %dxf : vector<8xf32> to vector<8xbf16>
        %out = scf.if %accumulate -> (vector<8xbf16>) {
          %oldv = vector.load %dx[%i] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
          %oldf = arith.extf %oldv : vector<8xbf16> to vector<8xf32>
          %dxr = arith.extf %dxb : vector<8xbf16> to vector<8xf32>
          %sum = arith.addf %dxr, %oldf : vector<8xf32>
          %sumb = arith.truncf %sum : vector<8xf32> to vector<8xbf16>
          scf.yield %sumb : vector<8xbf16>
        } else {
          scf.yield %dxb : vector<8xbf16>
        }
        vector.store %out, %dx[%i] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
        %n = arith.mulf %xf, %rv : vector<8xf32>
        %nb = arith.truncf %n : vector<8xf32> to vector<8xbf16>
        %nf = arith.extf %nb : vector<8xbf16> to vector<8xf32>
        %dw = vector.load %dwAcc[%off] {alignment = 16} : memref<@H@xf32, #gpu.address_space<workgroup>>, vector<8xf32>
        %dw1 = vector.fma %dyf, %nf, %dw : vector<8xf32>
        vector.store %dw1, %dwAcc[%off] {alignment = 16} : memref<@H@xf32, #gpu.address_space<workgroup>>, vector<8xf32>
      }
      %flip = arith.subi %c1, %parity : index
      scf.yield %flip : index
    }
    %partialBase = arith.muli %b, %h : index
    scf.for %c = %tid to %chunks step %block {
      %off = arith.muli %c, %c8 : index
      %i = arith.addi %partialBase, %off : index
      %dw = vector.load %dwAcc[%off] {alignment = 16} : memref<@H@xf32, #gpu.address_space<workgroup>>, vector<8xf32>
      vector.store %dw, %partial[%i] {alignment = 16} : memref<@GH@xf32>, vector<8xf32>
    }
    gpu.return
  }
