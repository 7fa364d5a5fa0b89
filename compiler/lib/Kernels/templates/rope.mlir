// Rotary position embedding, in place on the query and key heads of a
// row-major bf16 buffer of @T@ rows with row stride @LD@ elements (the fused
// QKV GEMM output, or its gradient): @NQ@ query heads of @D@ columns start at
// column @QOFF@, @NK@ key heads at column @KOFF@. Half-split layout: with
// h = @D@ / 2, position p = t mod @SEQ@, angle a_i = float(p) * freqs[i] (one
// f32 product, as transformers' f32 matmul of inv_freq by the positions),
// c_i = bf16(cos a_i) and s_i = bf16(@SIGN@ sin a_i) (sign -1: the inverse
// rotation, for the backward), each head's x becomes
//   x[i]     = bf16(bf16(x[i] c_i) - bf16(x[i + h] s_i))
//   x[i + h] = bf16(bf16(x[i + h] c_i) + bf16(x[i] s_i))
// (q * cos + rotate_half(q) * sin in bf16, every product rounded).
// Reads freqs (f32 [h], computed on the host, llama3 scaling included) and
// the heads; writes the heads in place; other columns are untouched.
// One block per row: its threads first put c and s in shared memory, then
// each takes (head, 8-frequency chunk) items k, k + @BLOCK@, ... of the
// (@NQ@ + @NK@) * h / 8, with 16-byte accesses. @D@ / 2, @LD@, @QOFF@ and
// @KOFF@ must be multiples of 8.
// Launch: grid [@T@], block [@BLOCK@].
  gpu.func @@KERNEL@(%qkv: memref<@TLD@xbf16>, %freqs: memref<@HALF@xf32>)
      workgroup(%table : memref<@HALF2@xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c8 = arith.constant 8 : index
    %block = arith.constant @BLOCK@ : index
    %items = arith.constant @ITEMS@ : index
    %chunksPerHead = arith.constant @HCHUNKS@ : index
    %seq = arith.constant @SEQ@ : index
    %ld = arith.constant @LD@ : index
    %d = arith.constant @D@ : index
    %half = arith.constant @HALF@ : index
    %nq = arith.constant @NQ@ : index
    %qoff = arith.constant @QOFF@ : index
    %kshift = arith.constant @KSHIFT@ : index
    %sign = arith.constant @SIGN@ : f32
    %t = gpu.block_id x
    %tid = gpu.thread_id x
    %p = arith.remui %t, %seq : index
    %pi = arith.index_cast %p : index to i32
    %pf = arith.uitofp %pi : i32 to f32
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
    gpu.barrier
    %row = arith.muli %t, %ld : index
    scf.for %item = %tid to %items step %block {
      %h = arith.divui %item, %chunksPerHead : index
      %k = arith.remui %item, %chunksPerHead : index
      %fi = arith.muli %k, %c8 : index
      %sfi = arith.addi %fi, %half : index
      %cf = vector.load %table[%fi] {alignment = 16} : memref<@HALF2@xf32, #gpu.address_space<workgroup>>, vector<8xf32>
      %sf = vector.load %table[%sfi] {alignment = 16} : memref<@HALF2@xf32, #gpu.address_space<workgroup>>, vector<8xf32>
      %isq = arith.cmpi ult, %h, %nq : index
      %shift = arith.select %isq, %qoff, %kshift : index
      %hd = arith.muli %h, %d : index
      %col = arith.addi %hd, %shift : index
      %rowCol = arith.addi %row, %col : index
      %i1 = arith.addi %rowCol, %fi : index
      %i2 = arith.addi %i1, %half : index
      %x1b = vector.load %qkv[%i1] {alignment = 16} : memref<@TLD@xbf16>, vector<8xbf16>
      %x2b = vector.load %qkv[%i2] {alignment = 16} : memref<@TLD@xbf16>, vector<8xbf16>
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
      vector.store %o1b, %qkv[%i1] {alignment = 16} : memref<@TLD@xbf16>, vector<8xbf16>
      vector.store %o2b, %qkv[%i2] {alignment = 16} : memref<@TLD@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
