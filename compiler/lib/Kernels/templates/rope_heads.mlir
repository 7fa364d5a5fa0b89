// Moves the attention heads of @T@ token rows between the token-major
// layout the projections use and the head-major layout the batched
// attention GEMMs use, applying rotary position embedding on the way.
// Token-major: bf16 rows of stride @LD@ elements; head h (of @NH@ =
// @NQ@ query + @NK@ key + @NV@ value heads) is columns [h @D@, (h + 1) @D@).
// Head-major: three regions, queries [B, @NQ@, @SEQ@, @D@], then keys
// [B, @NK@, @SEQ@, @D@], then values [B, @NV@, @SEQ@, @D@] (B = @T@ /
// @SEQ@), so that the GEMMs of KV group g of sequence b read one contiguous
// block of its query heads.
// Direction: @SRC@ is read and @DST@ written (%tokens to %heads, or back,
// or %tokens in place: then there is no %heads, the items are only the
// rotated heads, and the head-major index below goes unused).
// The first @NROT@ heads (queries and keys, or none) are rotated, half-split
// with h = @D@ / 2, position p of row t, angle a_i = float(p) * freqs[i]
// (one f32 product, as transformers' f32 matmul of inv_freq by the
// positions), c_i = bf16(cos a_i), s_i = bf16(@SIGN@ sin a_i) (-1: the
// inverse rotation, for gradients):
//   y[i]     = bf16(bf16(x[i] c_i) - bf16(x[i + h] s_i))
//   y[i + h] = bf16(bf16(x[i + h] c_i) + bf16(x[i] s_i))
// (q * cos + rotate_half(q) * sin in bf16, every product rounded); other
// heads are copied bit for bit.
// The position p is t mod @SEQ@ (the row's place in its sequence, which
// also places it head-major), or, for packed sequences, positions[t] (i32
// [@T@], the step's position_ids: each token's position in its data row),
// which the kernel then takes as a fourth argument: the POSITIONS_ARG
// placeholder declares it (or nothing), and the POSITION placeholder
// computes %pf = float(p) (Kernels.cpp writes both).
// Reads freqs (f32 [h], host-computed, llama3 scaling included; unread when
// @NROT@ = 0), positions when given, and the source; writes every head of
// the destination (in place: the rotated ones).
// One block per token row: its threads put c and s in shared memory, then
// each takes (head, 8-frequency chunk) items k, k + @BLOCK@, ... of the
// @ITEMS@, with 16-byte accesses. @D@ / 2 and @LD@ are multiples of 8.
// Launch: grid [@T@], block [@BLOCK@].
  gpu.func @@KERNEL@(%tokens: memref<@TLD@xbf16>@HEADS_ARG@, %freqs: memref<@HALF@xf32>@POSITIONS_ARG@)
      workgroup(%table : memref<@HALF2@xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c8 = arith.constant 8 : index
    %block = arith.constant @BLOCK@ : index
    %items = arith.constant @ITEMS@ : index
    %chunksPerHead = arith.constant @HCHUNKS@ : index
    %seq = arith.constant @SEQ@ : index
    %ld = arith.constant @LD@ : index
    %d = arith.constant @D@ : index
    %half = arith.constant @HALF@ : index
    %nq = arith.constant @NQ@ : index
    %nk = arith.constant @NK@ : index
    %nv = arith.constant @NV@ : index
    %qk = arith.constant @NQK@ : index
    %nrot = arith.constant @NROT@ : index
    %region = arith.constant @REGION@ : index
    %sign = arith.constant @SIGN@ : f32
    %t = gpu.block_id x
    %tid = gpu.thread_id x
    %b = arith.divui %t, %seq : index
    %p = arith.remui %t, %seq : index
    @POSITION@
    %rotates = arith.cmpi ult, %c0, %nrot : index
    scf.if %rotates {
      scf.for %i = %tid to %half step %block {
        %f = memref.load %freqs[%i] : memref<@HALF@xf32>
        %angle = arith.mulf %pf, %f : f32
        %cos = math.cos %angle : f32
        %sin = math.sin %angle : f32
        %ssin = arith.mulf %sin, %sign : f32
        %cb = arith.truncf %cos : f32 to bf16
        %sb = arith.truncf %ssin : f32 to bf16
        %cf = arith.extf %cb : bf16 to f32
        %sf = arith.extf %sb : bf16 to f32
        %si = arith.addi %i, %half : index
        memref.store %cf, %table[%i] : memref<@HALF2@xf32, #gpu.address_space<workgroup>>
        memref.store %sf, %table[%si] : memref<@HALF2@xf32, #gpu.address_space<workgroup>>
      }
    }
    gpu.barrier
    %row = arith.muli %t, %ld : index
    scf.for %item = %tid to %items step %block {
      %h = arith.divui %item, %chunksPerHead : index
      %k = arith.remui %item, %chunksPerHead : index
      %fi = arith.muli %k, %c8 : index
      // Token-major element of (t, h, fi).
      %hd = arith.muli %h, %d : index
      %rowCol = arith.addi %row, %hd : index
      %ti1 = arith.addi %rowCol, %fi : index
      %ti2 = arith.addi %ti1, %half : index
      // Head-major element: region (first head, head count, base) of h.
      %isq = arith.cmpi ult, %h, %nq : index
      %isqk = arith.cmpi ult, %h, %qk : index
      %kvFirst = arith.select %isqk, %nq, %qk : index
      %kvCount = arith.select %isqk, %nk, %nv : index
      %first = arith.select %isq, %c0, %kvFirst : index
      %count = arith.select %isq, %nq, %kvCount : index
      %base = arith.muli %first, %region : index
      %hh = arith.subi %h, %first : index
      %bc = arith.muli %b, %count : index
      %bh = arith.addi %bc, %hh : index
      %bhs = arith.muli %bh, %seq : index
      %bhsp = arith.addi %bhs, %p : index
      %headRow = arith.muli %bhsp, %d : index
      %at = arith.addi %base, %headRow : index
      %hi1 = arith.addi %at, %fi : index
      %hi2 = arith.addi %hi1, %half : index
      %x1b = vector.load @SRC@[@SRCI@1] {alignment = 16} : memref<@SRCN@xbf16>, vector<8xbf16>
      %x2b = vector.load @SRC@[@SRCI@2] {alignment = 16} : memref<@SRCN@xbf16>, vector<8xbf16>
      %rotate = arith.cmpi ult, %h, %nrot : index
      %y1b, %y2b = scf.if %rotate -> (vector<8xbf16>, vector<8xbf16>) {
        %sfi = arith.addi %fi, %half : index
        %cf = vector.load %table[%fi] {alignment = 16} : memref<@HALF2@xf32, #gpu.address_space<workgroup>>, vector<8xf32>
        %sf = vector.load %table[%sfi] {alignment = 16} : memref<@HALF2@xf32, #gpu.address_space<workgroup>>, vector<8xf32>
        %x1 = arith.extf %x1b : vector<8xbf16> to vector<8xf32>
        %x2 = arith.extf %x2b : vector<8xbf16> to vector<8xf32>
        %x1c = arith.mulf %x1, %cf : vector<8xf32>
        %x2s = arith.mulf %x2, %sf : vector<8xf32>
        %x2c = arith.mulf %x2, %cf : vector<8xf32>
        %x1s = arith.mulf %x1, %sf : vector<8xf32>
        %x1cb = arith.truncf %x1c : vector<8xf32> to vector<8xbf16>
        %x2sb = arith.truncf %x2s : vector<8xf32> to vector<8xbf16>
        %x2cb = arith.truncf %x2c : vector<8xf32> to vector<8xbf16>
        %x1sb = arith.truncf %x1s : vector<8xf32> to vector<8xbf16>
        %x1cf = arith.extf %x1cb : vector<8xbf16> to vector<8xf32>
        %x2sf = arith.extf %x2sb : vector<8xbf16> to vector<8xf32>
        %x2cf = arith.extf %x2cb : vector<8xbf16> to vector<8xf32>
        %x1sf = arith.extf %x1sb : vector<8xbf16> to vector<8xf32>
        %o1 = arith.subf %x1cf, %x2sf : vector<8xf32>
        %o2 = arith.addf %x2cf, %x1sf : vector<8xf32>
        %o1b = arith.truncf %o1 : vector<8xf32> to vector<8xbf16>
        %o2b = arith.truncf %o2 : vector<8xf32> to vector<8xbf16>
        scf.yield %o1b, %o2b : vector<8xbf16>, vector<8xbf16>
      } else {
        scf.yield %x1b, %x2b : vector<8xbf16>, vector<8xbf16>
      }
      vector.store %y1b, @DST@[@DSTI@1] {alignment = 16} : memref<@DSTN@xbf16>, vector<8xbf16>
      vector.store %y2b, @DST@[@DSTI@2] {alignment = 16} : memref<@DSTN@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
