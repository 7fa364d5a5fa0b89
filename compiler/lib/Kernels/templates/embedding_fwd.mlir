// Embedding lookup: out[t, :] = table[ids[t], :] for @T@ rows of @H@ bf16
// elements, from a table of @V@ rows. An id outside [0, @V@) gives a row of
// zeros (never a read outside the table).
// Reads ids (i32 [@T@]) and table ([@V@, @H@]); writes out ([@T@, @H@]),
// 16 bytes per access. One block per row; thread k copies the 8-element
// chunks k, k + @BLOCK@, ... of it. @H@ must be a multiple of 8.
// Launch: grid [@T@], block [@BLOCK@].
  gpu.func @@KERNEL@(%ids: memref<@T@xi32>, %table: memref<@VH@xbf16>, %out: memref<@TH@xbf16>) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c8 = arith.constant 8 : index
    %block = arith.constant @BLOCK@ : index
    %chunks = arith.constant @CHUNKS@ : index
    %h = arith.constant @H@ : index
    %zero = arith.constant 0 : i32
    %vocab = arith.constant @V@ : i32
    %zeros = arith.constant dense<0.0> : vector<8xbf16>
    %t = gpu.block_id x
    %tid = gpu.thread_id x
    %id = memref.load %ids[%t] : memref<@T@xi32>
    %nonneg = arith.cmpi sge, %id, %zero : i32
    %below = arith.cmpi slt, %id, %vocab : i32
    %valid = arith.andi %nonneg, %below : i1
    %safe = arith.select %valid, %id, %zero : i32
    %row = arith.index_cast %safe : i32 to index
    %src = arith.muli %row, %h : index
    %dst = arith.muli %t, %h : index
    scf.for %c = %tid to %chunks step %block {
      %off = arith.muli %c, %c8 : index
      %i = arith.addi %src, %off : index
      %o = arith.addi %dst, %off : index
      %v = scf.if %valid -> (vector<8xbf16>) {
        %loaded = vector.load %table[%i] {alignment = 16} : memref<@VH@xbf16>, vector<8xbf16>
        scf.yield %loaded : vector<8xbf16>
      } else {
        scf.yield %zeros : vector<8xbf16>
      }
      vector.store %v, %out[%o] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
    }
    gpu.return
  }
