// Rounds a flat f32 buffer of @N@ elements to bf16 (round to nearest even):
// out = bf16(in). Used to turn f32 gradient accumulators (the embedding
// table's) into the bf16 gradient the optimizer reads. With @ACCUMULATE@
// set, out holds a sum on entry: out = bf16(f32(out) + in) (gradient
// accumulation over micro-batches).
// Reads in (32 bytes per thread) and, accumulating, out; writes out (16
// bytes per thread). Each
// thread owns 8 consecutive elements; @N@ must be a multiple of 8.
// Launch: grid [ceil(@N@ / 8 / 256)], block [256].
  gpu.func @@KERNEL@(%in: memref<@N@xf32>, %out: memref<@N@xbf16>) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c8 = arith.constant 8 : index
    %n = arith.constant @N@ : index
    %accumulate = arith.constant @ACCUMULATE@
    %bid = gpu.block_id x
    %bdim = gpu.block_dim x
    %tid = gpu.thread_id x
    %base = arith.muli %bid, %bdim : index
    %thread = arith.addi %base, %tid : index
    %i = arith.muli %thread, %c8 : index
    %inside = arith.cmpi slt, %i, %n : index
    scf.if %inside {
      %v = vector.load %in[%i] {alignment = 16} : memref<@N@xf32>, vector<8xf32>
      %sum = scf.if %accumulate -> (vector<8xf32>) {
        %old = vector.load %out[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
        %oldf = arith.extf %old : vector<8xbf16> to vector<8xf32>
        %added = arith.addf %oldf, %v : vector<8xf32>
        scf.yield %added : vector<8xf32>
      } else {
        scf.yield %v : vector<8xf32>
      }
      %o = arith.truncf %sum : vector<8xf32> to vector<8xbf16>
      vector.store %o, %out[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
