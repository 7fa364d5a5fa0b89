// SwiGLU forward over the fused gate-up GEMM output of @T@ rows: with
// gate = gu[t, 0:@F@] and up = gu[t, @F@:2*@F@] (row stride 2*@F@),
//   out[t, j] = bf16(bf16(silu(gate[t, j])) * up[t, j]),
//   silu(g) = g / (1 + exp(-g)) in f32,
// rounding silu's output to bf16 first as transformers' act_fn(gate) * up
// (SWIGLU: Kernels.cpp's swigluMath, which the cast of the FP8 forward's
// swiglu_fp8_cast_transpose shares).
// Reads gu (bf16 [@T@, 2*@F@]); writes out (bf16 [@T@, @F@]); 16 bytes per
// access. Each thread owns 8 consecutive columns of one row (@F@ must be a
// multiple of 8). Launch: grid [ceil(@T@ * @F@ / 8 / 256)], block [256].
  gpu.func @@KERNEL@(%gu: memref<@TF2@xbf16>, %out: memref<@TF@xbf16>) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c8 = arith.constant 8 : index
    %chunksPerRow = arith.constant @CHUNKS@ : index
    %total = arith.constant @TOTAL@ : index
    %f = arith.constant @F@ : index
    %f2 = arith.constant @F2@ : index
    %sw_one = arith.constant dense<1.0> : vector<8xf32>
    %bid = gpu.block_id x
    %bdim = gpu.block_dim x
    %tid = gpu.thread_id x
    %base = arith.muli %bid, %bdim : index
    %thread = arith.addi %base, %tid : index
    %inside = arith.cmpi slt, %thread, %total : index
    scf.if %inside {
      %t = arith.divui %thread, %chunksPerRow : index
      %c = arith.remui %thread, %chunksPerRow : index
      %col = arith.muli %c, %c8 : index
      %rowIn = arith.muli %t, %f2 : index
      %gi = arith.addi %rowIn, %col : index
      %ui = arith.addi %gi, %f : index
      %rowOut = arith.muli %t, %f : index
      %oi = arith.addi %rowOut, %col : index
      %gv = vector.load %gu[%gi] {alignment = 16} : memref<@TF2@xbf16>, vector<8xbf16>
      %uv = vector.load %gu[%ui] {alignment = 16} : memref<@TF2@xbf16>, vector<8xbf16>
@SWIGLU@
      vector.store %sw_h, %out[%oi] {alignment = 16} : memref<@TF@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
