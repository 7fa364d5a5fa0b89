// Column sums of an f32 matrix, rounded to bf16:
//   out[j] = bf16(sum_g in[g, j])  over @G@ rows and @N@ columns,
// accumulated in f32 in a fixed order (deterministic). It finishes
// reductions done in two passes, such as rms_norm_bwd's weight gradient.
// With @ACCUMULATE@ set, out holds a sum on entry and the column sum is added
// to it: out[j] = bf16(f32(out[j]) + sum_g in[g, j]) (gradient accumulation
// over micro-batches, one rounding per micro-batch).
// Reads in (f32 [@G@, @N@]) and, accumulating, out; writes out (bf16 [@N@]).
// Block b owns columns
// 32 b .. 32 b + 31: lane l of warp k adds rows k, k + @WARPS@, ... of column
// 32 b + l (128-byte coalesced loads per warp, four rows in flight per
// iteration), then warp 0 adds the @WARPS@ partial sums from shared memory.
// Launch: grid [ceil(@N@ / 32)], block [32 * @WARPS@].
  gpu.func @@KERNEL@(%in: memref<@GN@xf32>, %out: memref<@N@xbf16>)
      workgroup(%sums : memref<@BLOCK@xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c3 = arith.constant 3 : index
    %c4 = arith.constant 4 : index
    %c32 = arith.constant 32 : index
    %warps = arith.constant @WARPS@ : index
    %rows = arith.constant @G@ : index
    %rowsLast = arith.constant @GLAST@ : index
    %n = arith.constant @N@ : index
    %last = arith.constant @LAST@ : index
    %zero = arith.constant 0.0 : f32
    %accumulate = arith.constant @ACCUMULATE@
    %b = gpu.block_id x
    %tid = gpu.thread_id x
    %lane = arith.remui %tid, %c32 : index
    %warp = arith.divui %tid, %c32 : index
    %first = arith.muli %b, %c32 : index
    %col = arith.addi %first, %lane : index
    %inside = arith.cmpi ult, %col, %n : index
    %safe = arith.minui %col, %last : index
    %step = arith.muli %warps, %c4 : index
    %sum = scf.for %g0 = %warp to %rows step %step iter_args(%acc = %zero) -> (f32) {
      %vals = scf.for %u = %c0 to %c4 step %c1 iter_args(%part = %zero) -> (f32) {
        %du = arith.muli %u, %warps : index
        %g = arith.addi %g0, %du : index
        %valid = arith.cmpi ult, %g, %rows : index
        %gs = arith.minui %g, %rowsLast : index
        %row = arith.muli %gs, %n : index
        %i = arith.addi %row, %safe : index
        %v = memref.load %in[%i] : memref<@GN@xf32>
        %vs = arith.select %valid, %v, %zero : f32
        %next = arith.addf %part, %vs : f32
        scf.yield %next : f32
      }
      %next = arith.addf %acc, %vals : f32
      scf.yield %next : f32
    }
    memref.store %sum, %sums[%tid] : memref<@BLOCK@xf32, #gpu.address_space<workgroup>>
    gpu.barrier
    %warp0 = arith.cmpi eq, %warp, %c0 : index
    %write = arith.andi %warp0, %inside : i1
    scf.if %write {
      %total = scf.for %k = %c0 to %warps step %c1 iter_args(%acc = %zero) -> (f32) {
        %slotBase = arith.muli %k, %c32 : index
        %slot = arith.addi %slotBase, %lane : index
        %part = memref.load %sums[%slot] : memref<@BLOCK@xf32, #gpu.address_space<workgroup>>
        %next = arith.addf %acc, %part : f32
        scf.yield %next : f32
      }
      %result = scf.if %accumulate -> (f32) {
        %old = memref.load %out[%col] : memref<@N@xbf16>
        %oldf = arith.extf %old : bf16 to f32
        %withOld = arith.addf %oldf, %total : f32
        scf.yield %withOld : f32
      } else {
        scf.yield %total : f32
      }
      %o = arith.truncf %result : f32 to bf16
      memref.store %o, %out[%col] : memref<@N@xbf16>
    }
    gpu.return
  }
