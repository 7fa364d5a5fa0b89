// Elementwise sum of two flat bf16 buffers of @N@ elements (a residual
// gradient that no GEMM epilogue could fold in): out = bf16(a + b), the sum
// taken in f32 as torch does. out may alias a or b (each thread reads its
// elements before it writes them).
// Reads a, b; writes out; 16 bytes per thread and tensor. Each thread owns 8
// consecutive elements; @N@ must be a multiple of 8.
// Launch: grid [ceil(@N@ / 8 / 256)], block [256].
  gpu.func @@KERNEL@(%a: memref<@N@xbf16>, %b: memref<@N@xbf16>, %out: memref<@N@xbf16>) kernel
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
      %av = vector.load %a[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      %bv = vector.load %b[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
      %af = arith.extf %av : vector<8xbf16> to vector<8xf32>
      %bf = arith.extf %bv : vector<8xbf16> to vector<8xf32>
      %sum = arith.addf %af, %bf : vector<8xf32>
      %o = arith.truncf %sum : vector<8xf32> to vector<8xbf16>
      vector.store %o, %out[%i] {alignment = 16} : memref<@N@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
