// RoPE's cos and sin for every token row of @T@ and frequency, computed as
// rope_heads computes them, once per step for every attention layer whose
// flash backward rotates dK and dQ back: with position p of row t, angle
// a_i = float(p) * freqs[i] (one f32 product),
//   table[t, i] = (bf16(cos a_i), bf16(sin a_i))    (i < @HALF@)
// The position p is t mod @SEQ@, or, for packed sequences, positions[t]
// (POSITIONS_ARG and POSITION as in rope_heads).
// Reads freqs (f32 [@HALF@]) and positions when given; writes the table
// (bf16 [@T@, @HALF@, 2]).
// One block per token row, a thread per frequency.
// Launch: grid [@T@], block [@BLOCK@].
  gpu.func @@KERNEL@(%freqs: memref<@HALF@xf32>, %table: memref<@TABLE@xbf16>@POSITIONS_ARG@) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c2 = arith.constant 2 : index
    %half = arith.constant @HALF@ : index
    %seq = arith.constant @SEQ@ : index
    %t = gpu.block_id x
    %i = gpu.thread_id x
    %p = arith.remui %t, %seq : index
    @POSITION@
    %inside = arith.cmpi ult, %i, %half : index
    scf.if %inside {
      %f = memref.load %freqs[%i] : memref<@HALF@xf32>
      %angle = arith.mulf %pf, %f : f32
      %cos = math.cos %angle : f32
      %sin = math.sin %angle : f32
      %pair = vector.from_elements %cos, %sin : vector<2xf32>
      %pairb = arith.truncf %pair : vector<2xf32> to vector<2xbf16>
      %row = arith.muli %t, %half : index
      %ti = arith.addi %row, %i : index
      %at = arith.muli %ti, %c2 : index
      vector.store %pairb, %table[%at] {alignment = 4} : memref<@TABLE@xbf16>, vector<2xbf16>
    }
    gpu.return
  }
