// Embedding gradient, deterministic and straight into bf16: for every id v
// in [0, @V@) that occurs among the @T@ ids,
//   dtable[v, :] = bf16(sum over the rows t with ids[t] == v of dout[t, :])
// with the sum taken in f32 from 0.0 in increasing t (the same bits on every
// run) and rounded to nearest even. With @ACCUMULATE@ set, dtable holds a
// gradient summed over earlier micro-batches:
//   dtable[v, :] = bf16(f32(dtable[v, :]) + that f32 sum).
// Rows of dtable whose id does not occur are not touched (the plan zeroes
// dtable first unless it accumulates); ids outside [0, @V@) add nothing.
// Reads ids (i32 [@T@]), dout (bf16 [@T@, @H@]) and, accumulating, dtable;
// writes dtable (bf16 [@V@, @H@]); 16 bytes per row access.
// Block t marks the rows whose id is ids[t] in a shared bit mask of @W@
// words (bit b of word w: row 32 w + b; warp j ballots words j, j +
// @WARPS@, ...) and counts them: n rows, r of them before t. The first
// min(n, @PARTS@) blocks of an id (r < that) each own one of as many equal
// column ranges of its row (@PARTS@ = the chunks a thread has when one block
// owns the whole row), so that a frequent id's rows are read by several
// blocks. Thread k of an owner takes the 8-element chunks k, k + @BLOCK@,
// ... of its range, adds the marked rows in increasing order (4 or 8 loads
// in flight) and stores the rounded sum. @H@ must be a multiple of 8.
// Launch: grid [@T@], block [@BLOCK@].
  gpu.func @@KERNEL@(%ids: memref<@T@xi32>, %dout: memref<@TH@xbf16>, %dtable: memref<@VH@xbf16>)
      workgroup(%mask : memref<@W@xi32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64},
                %warpBefore : memref<@WARPS@xi32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64},
                %warpCount : memref<@WARPS@xi32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64},
                %warpFirst : memref<@WARPS@xi32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}) kernel
      attributes {known_block_size = array<i32: @BLOCK@, 1, 1>} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c8 = arith.constant 8 : index
    %c32 = arith.constant 32 : index
    %block = arith.constant @BLOCK@ : index
    %warps = arith.constant @WARPS@ : index
    %words = arith.constant @W@ : index
    %rows = arith.constant @T@ : index
    %lastRow = arith.constant @TLAST@ : index
    %chunks = arith.constant @CHUNKS@ : index
    %h = arith.constant @H@ : index
    %zero = arith.constant 0 : i32
    %one = arith.constant 1 : i32
    %all = arith.constant -1 : i32
    %wordCount = arith.constant @W@ : i32
    %parts = arith.constant @PARTS@ : i32
    %vocab = arith.constant @V@ : i32
    %zeros = arith.constant dense<0.0> : vector<8xf32>
    %zerosb = arith.constant dense<0.0> : vector<8xbf16>
    %t = gpu.block_id x
    %tid = gpu.thread_id x
    %lane = arith.remui %tid, %c32 : index
    %warp = arith.divui %tid, %c32 : index
    %leader = arith.cmpi eq, %lane, %c0 : index
    %id = memref.load %ids[%t] : memref<@T@xi32>
    // The rows before t: words before t's word, and in it the bits below t's.
    %tWord = arith.divui %t, %c32 : index
    %tPos = arith.remui %t, %c32 : index
    %tShift = arith.index_cast %tPos : index to i32
    %tBit = arith.shli %one, %tShift : i32
    %tBelow = arith.subi %tBit, %one : i32
    %before, %count, %firstWord = scf.for %w = %warp to %words step %warps
        iter_args(%accBefore = %zero, %accCount = %zero, %accFirst = %wordCount) -> (i32, i32, i32) {
      %first = arith.muli %w, %c32 : index
      %row = arith.addi %first, %lane : index
      %inside = arith.cmpi ult, %row, %rows : index
      %safe = arith.minui %row, %lastRow : index
      %other = memref.load %ids[%safe] : memref<@T@xi32>
      %same = arith.cmpi eq, %other, %id : i32
      %marked = arith.andi %inside, %same : i1
      %word = nvvm.vote.sync ballot %all, %marked -> i32
      scf.if %leader {
        memref.store %word, %mask[%w] : memref<@W@xi32, #gpu.address_space<workgroup>>
      }
      %isBefore = arith.cmpi ult, %w, %tWord : index
      %isAt = arith.cmpi eq, %w, %tWord : index
      %atBits = arith.select %isAt, %tBelow, %zero : i32
      %earlyBits = arith.select %isBefore, %all, %atBits : i32
      %early = arith.andi %word, %earlyBits : i32
      %earlyCount = math.ctpop %early : i32
      %wordMarks = math.ctpop %word : i32
      %nextBefore = arith.addi %accBefore, %earlyCount : i32
      %nextCount = arith.addi %accCount, %wordMarks : i32
      %any = arith.cmpi ne, %word, %zero : i32
      %wIndex = arith.index_cast %w : index to i32
      %candidate = arith.select %any, %wIndex, %wordCount : i32
      %nextFirst = arith.minui %accFirst, %candidate : i32
      scf.yield %nextBefore, %nextCount, %nextFirst : i32, i32, i32
    }
    scf.if %leader {
      memref.store %before, %warpBefore[%warp] : memref<@WARPS@xi32, #gpu.address_space<workgroup>>
      memref.store %count, %warpCount[%warp] : memref<@WARPS@xi32, #gpu.address_space<workgroup>>
      memref.store %firstWord, %warpFirst[%warp] : memref<@WARPS@xi32, #gpu.address_space<workgroup>>
    }
    gpu.barrier
    // Uniform over the block: every thread reads the same shared words.
    %rank, %n, %start = scf.for %k = %c0 to %warps step %c1
        iter_args(%accBefore = %zero, %accCount = %zero, %accFirst = %wordCount) -> (i32, i32, i32) {
      %b = memref.load %warpBefore[%k] : memref<@WARPS@xi32, #gpu.address_space<workgroup>>
      %m = memref.load %warpCount[%k] : memref<@WARPS@xi32, #gpu.address_space<workgroup>>
      %f = memref.load %warpFirst[%k] : memref<@WARPS@xi32, #gpu.address_space<workgroup>>
      %nextBefore = arith.addi %accBefore, %b : i32
      %nextCount = arith.addi %accCount, %m : i32
      %nextFirst = arith.minui %accFirst, %f : i32
      scf.yield %nextBefore, %nextCount, %nextFirst : i32, i32, i32
    }
    %owners = arith.minui %n, %parts : i32
    %owns = arith.cmpi ult, %rank, %owners : i32
    %nonneg = arith.cmpi sge, %id, %zero : i32
    %inVocab = arith.cmpi slt, %id, %vocab : i32
    %valid = arith.andi %nonneg, %inVocab : i1
    %owner = arith.andi %valid, %owns : i1
    scf.if %owner {
      // Columns: chunks [rank * C / owners, (rank + 1) * C / owners).
      %ownersIndex = arith.index_cast %owners : i32 to index
      %rankIndex = arith.index_cast %rank : i32 to index
      %rankNext = arith.addi %rankIndex, %c1 : index
      %lowScaled = arith.muli %rankIndex, %chunks : index
      %highScaled = arith.muli %rankNext, %chunks : index
      %low = arith.divui %lowScaled, %ownersIndex : index
      %high = arith.divui %highScaled, %ownersIndex : index
      %from = arith.addi %low, %tid : index
      %startWord = arith.index_cast %start : i32 to index
      %row = arith.index_cast %id : i32 to index
      %dst = arith.muli %row, %h : index
      %wordRows = arith.muli %h, %c32 : index
      scf.for %c = %from to %high step %block {
        %off = arith.muli %c, %c8 : index
        %sum = scf.for %w = %startWord to %words step %c1 iter_args(%acc = %zeros) -> (vector<8xf32>) {
          %bits = memref.load %mask[%w] : memref<@W@xi32, #gpu.address_space<workgroup>>
          %wordBase = arith.muli %w, %wordRows : index
          %base = arith.addi %wordBase, %off : index
          // Up to 8 marked rows of the word at a time, lowest first: the
          // loads first (all in flight together), then the additions in row
          // order. Rows 0-3 load without a branch (a missing row reloads row
          // 0, in cache); rows 4-7 under one branch, taken when there are
          // more than 4.
          %left, %total = scf.while (%b = %bits, %s = %acc) : (i32, vector<8xf32>) -> (i32, vector<8xf32>) {
            %more = arith.cmpi ne, %b, %zero : i32
            scf.condition(%more) %b, %s : i32, vector<8xf32>
          } do {
          ^bb0(%b: i32, %s: vector<8xf32>):
            %b0m = arith.subi %b, %one : i32
            %b1 = arith.andi %b, %b0m : i32
            %b1m = arith.subi %b1, %one : i32
            %b2 = arith.andi %b1, %b1m : i32
            %b2m = arith.subi %b2, %one : i32
            %b3 = arith.andi %b2, %b2m : i32
            %b3m = arith.subi %b3, %one : i32
            %b4 = arith.andi %b3, %b3m : i32
            %b4m = arith.subi %b4, %one : i32
            %b5 = arith.andi %b4, %b4m : i32
            %b5m = arith.subi %b5, %one : i32
            %b6 = arith.andi %b5, %b5m : i32
            %b6m = arith.subi %b6, %one : i32
            %b7 = arith.andi %b6, %b6m : i32
            %b7m = arith.subi %b7, %one : i32
            %b8 = arith.andi %b7, %b7m : i32
            %has1 = arith.cmpi ne, %b1, %zero : i32
            %has2 = arith.cmpi ne, %b2, %zero : i32
            %has3 = arith.cmpi ne, %b3, %zero : i32
            %has4 = arith.cmpi ne, %b4, %zero : i32
            %has5 = arith.cmpi ne, %b5, %zero : i32
            %has6 = arith.cmpi ne, %b6, %zero : i32
            %has7 = arith.cmpi ne, %b7, %zero : i32
            %r0 = math.cttz %b : i32
            %n1 = math.cttz %b1 : i32
            %n2 = math.cttz %b2 : i32
            %n3 = math.cttz %b3 : i32
            %r1 = arith.select %has1, %n1, %r0 : i32
            %r2 = arith.select %has2, %n2, %r0 : i32
            %r3 = arith.select %has3, %n3, %r0 : i32
            %p0 = arith.index_cast %r0 : i32 to index
            %p1 = arith.index_cast %r1 : i32 to index
            %p2 = arith.index_cast %r2 : i32 to index
            %p3 = arith.index_cast %r3 : i32 to index
            %q0 = arith.muli %p0, %h : index
            %q1 = arith.muli %p1, %h : index
            %q2 = arith.muli %p2, %h : index
            %q3 = arith.muli %p3, %h : index
            %x0 = arith.addi %base, %q0 : index
            %x1 = arith.addi %base, %q1 : index
            %x2 = arith.addi %base, %q2 : index
            %x3 = arith.addi %base, %q3 : index
            %g0 = vector.load %dout[%x0] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
            %g1 = vector.load %dout[%x1] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
            %g2 = vector.load %dout[%x2] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
            %g3 = vector.load %dout[%x3] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
            %g4, %g5, %g6, %g7 = scf.if %has4 -> (vector<8xbf16>, vector<8xbf16>, vector<8xbf16>, vector<8xbf16>) {
              %r4 = math.cttz %b4 : i32
              %n5 = math.cttz %b5 : i32
              %n6 = math.cttz %b6 : i32
              %n7 = math.cttz %b7 : i32
              %r5 = arith.select %has5, %n5, %r4 : i32
              %r6 = arith.select %has6, %n6, %r4 : i32
              %r7 = arith.select %has7, %n7, %r4 : i32
              %p4 = arith.index_cast %r4 : i32 to index
              %p5 = arith.index_cast %r5 : i32 to index
              %p6 = arith.index_cast %r6 : i32 to index
              %p7 = arith.index_cast %r7 : i32 to index
              %q4 = arith.muli %p4, %h : index
              %q5 = arith.muli %p5, %h : index
              %q6 = arith.muli %p6, %h : index
              %q7 = arith.muli %p7, %h : index
              %x4 = arith.addi %base, %q4 : index
              %x5 = arith.addi %base, %q5 : index
              %x6 = arith.addi %base, %q6 : index
              %x7 = arith.addi %base, %q7 : index
              %l4 = vector.load %dout[%x4] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
              %l5 = vector.load %dout[%x5] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
              %l6 = vector.load %dout[%x6] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
              %l7 = vector.load %dout[%x7] {alignment = 16} : memref<@TH@xbf16>, vector<8xbf16>
              scf.yield %l4, %l5, %l6, %l7 : vector<8xbf16>, vector<8xbf16>, vector<8xbf16>, vector<8xbf16>
            } else {
              // Constants: the copies of the branch wait for no load.
              scf.yield %zerosb, %zerosb, %zerosb, %zerosb : vector<8xbf16>, vector<8xbf16>, vector<8xbf16>, vector<8xbf16>
            }
            %f0 = arith.extf %g0 : vector<8xbf16> to vector<8xf32>
            %f1 = arith.extf %g1 : vector<8xbf16> to vector<8xf32>
            %f2 = arith.extf %g2 : vector<8xbf16> to vector<8xf32>
            %f3 = arith.extf %g3 : vector<8xbf16> to vector<8xf32>
            %f4 = arith.extf %g4 : vector<8xbf16> to vector<8xf32>
            %f5 = arith.extf %g5 : vector<8xbf16> to vector<8xf32>
            %f6 = arith.extf %g6 : vector<8xbf16> to vector<8xf32>
            %f7 = arith.extf %g7 : vector<8xbf16> to vector<8xf32>
            %a0 = arith.addf %s, %f0 : vector<8xf32>
            %a1x = arith.addf %a0, %f1 : vector<8xf32>
            %a1 = arith.select %has1, %a1x, %a0 : vector<8xf32>
            %a2x = arith.addf %a1, %f2 : vector<8xf32>
            %a2 = arith.select %has2, %a2x, %a1 : vector<8xf32>
            %a3x = arith.addf %a2, %f3 : vector<8xf32>
            %a3 = arith.select %has3, %a3x, %a2 : vector<8xf32>
            %a4x = arith.addf %a3, %f4 : vector<8xf32>
            %a4 = arith.select %has4, %a4x, %a3 : vector<8xf32>
            %a5x = arith.addf %a4, %f5 : vector<8xf32>
            %a5 = arith.select %has5, %a5x, %a4 : vector<8xf32>
            %a6x = arith.addf %a5, %f6 : vector<8xf32>
            %a6 = arith.select %has6, %a6x, %a5 : vector<8xf32>
            %a7x = arith.addf %a6, %f7 : vector<8xf32>
            %a7 = arith.select %has7, %a7x, %a6 : vector<8xf32>
            scf.yield %b8, %a7 : i32, vector<8xf32>
          }
          scf.yield %total : vector<8xf32>
        }
        %o = arith.addi %dst, %off : index
        %accumulate = arith.constant @ACCUMULATE@
        %result = scf.if %accumulate -> (vector<8xf32>) {
          %old = vector.load %dtable[%o] {alignment = 16} : memref<@VH@xbf16>, vector<8xbf16>
          %oldf = arith.extf %old : vector<8xbf16> to vector<8xf32>
          %added = arith.addf %oldf, %sum : vector<8xf32>
          scf.yield %added : vector<8xf32>
        } else {
          scf.yield %sum : vector<8xf32>
        }
        %rounded = arith.truncf %result : vector<8xf32> to vector<8xbf16>
        vector.store %rounded, %dtable[%o] {alignment = 16} : memref<@VH@xbf16>, vector<8xbf16>
      }
    }
    gpu.return
  }
