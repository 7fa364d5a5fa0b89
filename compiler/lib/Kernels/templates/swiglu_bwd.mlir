// SwiGLU backward over @T@ rows: with gate = gu[t, 0:@F@],
// up = gu[t, @F@:2*@F@], dy = dout[t, :] and s = sigmoid(gate) (f32),
//   dgu[t, j]      = bf16(dy up s (1 + gate (1 - s)))      (d gate)
//   dgu[t, @F@ + j] = bf16(dy bf16(silu(gate)))             (d up)
// d up uses silu's bf16-rounded output (computed exactly as swiglu_fwd does)
// as transformers' autograd does; d gate is rounded once (the interpreter's
// swiglu_grad). The math (SWIGLU_GRAD) is Kernels.cpp's swigluGradMath,
// which the FP8 backward's swiglu_grad_*_fp8_cast_transpose shares.
// Reads dout (bf16 [@T@, @F@]) and gu (bf16 [@T@, 2*@F@]); writes dgu (bf16
// [@T@, 2*@F@]), which may alias gu (each thread reads its elements before
// it writes them). 16 bytes per access; each thread owns 8 consecutive
// columns of one row (@F@ must be a multiple of 8).
// Launch: grid [ceil(@T@ * @F@ / 8 / 256)], block [256].
  gpu.func @@KERNEL@(%dout: memref<@TF@xbf16>, %gu: memref<@TF2@xbf16>, %dgu: memref<@TF2@xbf16>) kernel
      attributes {known_block_size = array<i32: 256, 1, 1>} {
    %c8 = arith.constant 8 : index
    %chunksPerRow = arith.constant @CHUNKS@ : index
    %total = arith.constant @TOTAL@ : index
    %f = arith.constant @F@ : index
    %f2 = arith.constant @F2@ : index
    %sgr_one = arith.constant dense<1.0> : vector<8xf32>
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
      %di = arith.addi %rowOut, %col : index
      %dv = vector.load %dout[%di] {alignment = 16} : memref<@TF@xbf16>, vector<8xbf16>
      %gv = vector.load %gu[%gi] {alignment = 16} : memref<@TF2@xbf16>, vector<8xbf16>
      %uv = vector.load %gu[%ui] {alignment = 16} : memref<@TF2@xbf16>, vector<8xbf16>
@SWIGLU_GRAD@
      vector.store %sgr_dgb, %dgu[%gi] {alignment = 16} : memref<@TF2@xbf16>, vector<8xbf16>
      vector.store %sgr_dub, %dgu[%ui] {alignment = 16} : memref<@TF2@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
