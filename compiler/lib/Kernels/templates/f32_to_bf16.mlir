// Rounds a flat f32 buffer of @N@ elements to bf16 (round to nearest even):
// out = bf16(in). Used to turn f32 gradient accumulators (the embedding
// table's) into the bf16 gradient the optimizer reads.
// Reads in (32 bytes per thread); writes out (16 bytes per thread). Each
// thread owns 8 consecutive elements; @N@ must be a multiple of 8.
// Launch: grid [ceil(@N@ / 8 / 256)], block [256].
  gpu.func @@KERNEL@(%in: memref<@N@xf32>, %out: memref<@N@xbf16>) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c8 = arith.constant 8 : index
    %n = arith.constant @N@ : index
    %bid = gpu.block_id x
    %bdim = gpu.block_dim x
    %tid = gpu.thread_id x
    %base = arith.muli %bid, %bdim : index
    %thread = arith.addi %base, %tid : index
    %i = arith.muli %thread, %c8 : index
    %inside = arith.cmpi slt, %i, %n : index
    scf.if %inside {
      %v = vector.load %in[%i] {alignment = 16} : memref<@N@xf32>, vector<8xf32>
      %o = arith.truncf %v : vector<8xf32> to vector<8xbf16>
      vector.store %o, %out[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
