//===- Attention.cpp - Fused causal attention kernels ---------------------===//
//
// Flash attention on tensor cores (mma.sync m16n8k16, bf16 in, f32
// accumulate): S, P, dP and dS live in registers a 64 x 64 tile at a time
// and never reach memory, except dSᵀ once in bf16 for the dQ kernel. The
// kernels are written out by C++ rather than kept as templates: every fragment
// is its own SSA value, so the unrolled tile loops are thousands of lines that
// only differ in their offsets.
//
// Fragment layouts (PTX ISA, "mma.m16n8k16"): lane l of a warp is in row
// group g = l / 4 and column pair t = l % 4. An A fragment (16 x 16, four
// i32 of two bf16 each) holds rows g and g + 8 at columns 2t, 2t + 1 and
// 2t + 8, 2t + 9; a B fragment (16 x 8, two i32) columns g of rows 2t, 2t + 1
// and 2t + 8, 2t + 9; a C fragment (16 x 8 f32) rows g and g + 8 at columns
// 2t and 2t + 1. Two C fragments side by side are therefore one A fragment
// once rounded to bf16: P and dS go from one product into the next without
// moving between lanes. Tiles reach the fragments through ldmatrix from
// shared memory whose rows are padded by 16 bytes, so that the eight rows of
// an 8 x 8 matrix fall into distinct banks; cp.async fills the next tile's
// buffer while the current one is multiplied.
//
//===----------------------------------------------------------------------===//

#include "llamac/Kernels/Kernels.h"

#include "llvm/ADT/StringMap.h"
#include "llvm/Support/Error.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <tuple>
#include <vector>

using namespace llamac;

namespace {

/// Rows of a query or key tile, and rows a warp owns (4 warps a block).
constexpr int64_t kTile = 64;
constexpr int64_t kThreads = 128;

using Frag = std::array<std::string, 4>;

/// A kernel body under construction: fresh SSA names, constants hoisted to
/// the entry block (they dominate every nested region), and helpers for the
/// few instruction shapes the kernels are made of.
class Body {
public:
  std::string fresh(const char *stem) {
    return "%" + std::string(stem) + std::to_string(counter++);
  }
  /// Emits `%name = rhs` and returns the name.
  std::string let(const char *stem, const std::string &rhs) {
    std::string name = fresh(stem);
    line(name + " = " + rhs);
    return name;
  }
  void line(const std::string &text) { text_ += "    " + text + "\n"; }

  std::string index(int64_t value) {
    return constant("c" + key(value), std::to_string(value) + " : index");
  }
  std::string i32(int64_t value) {
    return constant("ci" + key(value), std::to_string(value) + " : i32");
  }
  std::string i64(int64_t value) {
    return constant("cl" + key(value), std::to_string(value) + " : i64");
  }
  std::string f32(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%08X", bits);
    return constant(std::string("cf") + hex, std::string(hex) + " : f32");
  }

  // index and i32 arithmetic.
  std::string add(const std::string &a, const std::string &b,
                  const char *type = "index") {
    return let("a", "arith.addi " + a + ", " + b + " : " + type);
  }
  std::string mul(const std::string &a, const std::string &b,
                  const char *type = "index") {
    return let("m", "arith.muli " + a + ", " + b + " : " + type);
  }
  std::string div(const std::string &a, const std::string &b) {
    return let("d", "arith.divui " + a + ", " + b + " : index");
  }
  std::string rem(const std::string &a, const std::string &b) {
    return let("r", "arith.remui " + a + ", " + b + " : index");
  }
  std::string toI32(const std::string &a) {
    return let("w", "arith.index_cast " + a + " : index to i32");
  }
  std::string toI64(const std::string &a) {
    return let("w", "arith.index_cast " + a + " : index to i64");
  }
  std::string cmp(const char *predicate, const std::string &a,
                  const std::string &b, const char *type = "index") {
    return let("p", std::string("arith.cmpi ") + predicate + ", " + a + ", " +
                        b + " : " + type);
  }
  std::string select(const std::string &c, const std::string &a,
                     const std::string &b, const char *type = "f32") {
    return let("s", "arith.select " + c + ", " + a + ", " + b + " : " + type);
  }

  // f32 arithmetic.
  std::string fadd(const std::string &a, const std::string &b) {
    return let("f", "arith.addf " + a + ", " + b + " : f32");
  }
  std::string fsub(const std::string &a, const std::string &b) {
    return let("f", "arith.subf " + a + ", " + b + " : f32");
  }
  std::string fmul(const std::string &a, const std::string &b) {
    return let("f", "arith.mulf " + a + ", " + b + " : f32");
  }
  std::string fmax(const std::string &a, const std::string &b) {
    return let("f", "arith.maximumf " + a + ", " + b + " : f32");
  }
  /// 2^a, one MUFU.EX2 (denormal results flush to 0).
  std::string exp2(const std::string &a) {
    return let("e", "llvm.call_intrinsic \"llvm.nvvm.ex2.approx.ftz.f\"(" + a +
                        ") : (f32) -> f32");
  }
  /// `value` combined over the four lanes of a row group (lanes 4g .. 4g+3)
  /// with `op` (arith.addf or arith.maximumf).
  std::string quadReduce(const std::string &value, const char *op) {
    std::string v = value;
    for (int offset : {1, 2}) {
      std::string other = fresh("x");
      line(other + ", " + fresh("ok") + " = gpu.shuffle xor " + v + ", " +
           i32(offset) + ", " + i32(32) + " : f32");
      v = let("f", std::string(op) + " " + v + ", " + other + " : f32");
    }
    return v;
  }

  /// `a` rounded to bf16 and back.
  std::string roundBF16(const std::string &a) {
    std::string r = let("h", "arith.truncf " + a + " : f32 to bf16");
    return let("f", "arith.extf " + r + " : bf16 to f32");
  }

  /// Two f32 rounded to bf16 as a vector<2xbf16>, `low` first.
  std::string pair(const std::string &low, const std::string &high) {
    std::string v = let("v", "vector.from_elements " + low + ", " + high +
                                 " : vector<2xf32>");
    return let("v", "arith.truncf " + v + " : vector<2xf32> to vector<2xbf16>");
  }
  /// The same pair packed into an i32, `low` in the low half.
  std::string pack(const std::string &low, const std::string &high) {
    std::string i = let("v", "vector.bitcast " + pair(low, high) +
                                 " : vector<2xbf16> to vector<1xi32>");
    return let("v", "vector.extract " + i + "[0] : i32 from vector<1xi32>");
  }

  /// Stores bf16 pair `value` at element `at` (even) of `memref` of type
  /// `type`, one 4-byte store.
  void storePair(const std::string &value, const std::string &memref,
                 const std::string &at, const std::string &type) {
    line("vector.store " + value + ", " + memref + "[" + at +
         "] {alignment = 4} : " + type + ", vector<2xbf16>");
  }

  /// A shared-memory pointer `offset` (i32 bytes) past `base`.
  std::string shared(const std::string &base, const std::string &offset) {
    return let("sp", "llvm.getelementptr " + base + "[" + offset +
                         "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
  }
  /// ldmatrix .x4 at `base` + `offset` bytes: four 8 x 8 bf16 matrices, the
  /// rows of matrix i from lanes 8i .. 8i + 7; transposed when `trans`.
  Frag ldmatrix(const std::string &base, const std::string &offset,
                bool trans) {
    std::string p = shared(base, offset);
    std::string r =
        let("ld", "nvvm.ldmatrix " + p +
                      " {num = 4 : i32, layout = #nvvm.mma_layout<" +
                      (trans ? "col" : "row") +
                      ">, shape = #nvvm.ld_st_matrix_shape<m = 8, n = 8>, "
                      "eltType = #nvvm.ld_st_matrix_elt_type<b16>} : "
                      "(!llvm.ptr<3>) -> !llvm.struct<(i32, i32, i32, i32)>");
    return unpack("b", r, "i32");
  }
  /// D = A B + C for one m16n8k16 tile.
  Frag mma(const Frag &a, const std::string &b0, const std::string &b1,
           const Frag &c) {
    std::string r = let(
        "mma", "nvvm.mma.sync A[" + a[0] + ", " + a[1] + ", " + a[2] + ", " +
                   a[3] + "] B[" + b0 + ", " + b1 + "] C[" + c[0] + ", " +
                   c[1] + ", " + c[2] + ", " + c[3] +
                   "] {layoutA = #nvvm.mma_layout<row>, layoutB = "
                   "#nvvm.mma_layout<col>, shape = #nvvm.shape<m = 16, n = 8, "
                   "k = 16>, multiplicandAPtxType = #nvvm.mma_type<bf16>, "
                   "multiplicandBPtxType = #nvvm.mma_type<bf16>} : (i32, i32, "
                   "f32) -> !llvm.struct<(f32, f32, f32, f32)>");
    return unpack("c", r, "f32");
  }
  /// cp.async of 16 bytes from global `src` + `srcOffset` (i64 bytes) to
  /// shared `dst` + `dstOffset` (i32 bytes).
  void copy16(const std::string &dst, const std::string &dstOffset,
              const std::string &src, const std::string &srcOffset) {
    std::string d = shared(dst, dstOffset);
    std::string s =
        let("gp", "llvm.getelementptr " + src + "[" + srcOffset +
                      "] : (!llvm.ptr<1>, i64) -> !llvm.ptr<1>, i8");
    line("nvvm.cp.async.shared.global " + d + ", " + s +
         ", 16, cache = cg : !llvm.ptr<3>, !llvm.ptr<1>");
  }
  /// The global address of memref argument `memref` of type `type`.
  std::string globalPointer(const std::string &memref,
                            const std::string &type) {
    std::string at = let("g", "memref.extract_aligned_pointer_as_index " +
                                  memref + " : " + type + " -> index");
    std::string generic =
        let("g", "llvm.inttoptr " + toI64(at) + " : i64 to !llvm.ptr");
    return let("g", "llvm.addrspacecast " + generic +
                        " : !llvm.ptr to !llvm.ptr<1>");
  }
  /// The dynamic shared memory as a pointer.
  std::string sharedBase() {
    std::string dyn = let("smem", "gpu.dynamic_shared_memory : memref<?xi8, "
                                  "#gpu.address_space<workgroup>>");
    std::string at =
        let("smem", "memref.extract_aligned_pointer_as_index " + dyn +
                        " : memref<?xi8, "
                        "#gpu.address_space<workgroup>> -> index");
    return let("smem", "llvm.inttoptr " + toI64(at) + " : i64 to !llvm.ptr<3>");
  }
  std::string loadShared(const std::string &base, const std::string &offset,
                         const char *type) {
    return let("v", "llvm.load " + shared(base, offset) +
                        " : !llvm.ptr<3> -> " + type);
  }

  /// The constants, then the body.
  std::string text() const { return constants_ + text_; }

private:
  /// The four members of `r`, an !llvm.struct of four `type`.
  Frag unpack(const char *stem, const std::string &r, const char *type) {
    std::string structType = std::string("!llvm.struct<(") + type + ", " +
                             type + ", " + type + ", " + type + ")>";
    Frag f;
    for (int i = 0; i < 4; ++i)
      f[i] = let(stem, "llvm.extractvalue " + r + "[" + std::to_string(i) +
                           "] : " + structType);
    return f;
  }
  static std::string key(int64_t value) {
    return value < 0 ? "m" + std::to_string(-value) : std::to_string(value);
  }
  std::string constant(const std::string &name, const std::string &rhs) {
    // "%k." cannot clash with fresh() names, which have no dot.
    auto [it, inserted] = names.try_emplace(name);
    if (inserted)
      constants_ += "    %k." + name + " = arith.constant " + rhs + "\n";
    return "%k." + name;
  }

  llvm::StringMap<char> names;
  std::string constants_, text_;
  int counter = 0;
};

std::string str(int64_t value) { return std::to_string(value); }

std::string memrefType(int64_t elements, const char *type) {
  return "memref<" + str(elements) + "x" + type + ">";
}

llvm::Error attentionError(llvm::StringRef kernel, const llvm::Twine &message) {
  return llvm::createStringError(llvm::Twine(kernel) + " kernel: " + message);
}

/// Which token rows a kernel reads or writes: O, dO, the fused q, k, v and
/// their gradient.
struct Rows {
  bool out, grad, qkv, qkvGrad;
};

/// The shapes a fused attention kernel supports: `dim` 16, 32, 64 or 128
/// (a power of two so that a row's chunks split evenly among lanes; at most
/// 128 so that a warp's accumulators fit its registers), `seq` a multiple
/// of the 64-row tile, and row strides of the token rows it uses that hold
/// the heads in whole 16-byte chunks.
llvm::Error checkShape(llvm::StringRef kernel, const FlashShape &s, Rows rows) {
  if (!flashAttentionShapeSupported(s.dim, s.seq))
    return attentionError(kernel, "head_dim " + str(s.dim) + " and seq_len " +
                                      str(s.seq) +
                                      " need head_dim 16, 32, 64 or 128 and "
                                      "seq_len a multiple of 64");
  if (s.batch <= 0 || s.kvHeads <= 0 || s.heads % s.kvHeads != 0)
    return attentionError(kernel, "batch " + str(s.batch) + ", heads " +
                                      str(s.heads) + " over kv heads " +
                                      str(s.kvHeads) + " are not valid");
  int64_t width = s.heads * s.dim, qkvWidth = (s.heads + 2 * s.kvHeads) * s.dim;
  for (auto [used, stride, wide, what] :
       {std::tuple(rows.out, s.outStride, width, "O"),
        std::tuple(rows.grad, s.gradStride, width, "dO"),
        std::tuple(rows.qkv, s.qkvStride, qkvWidth, "qkv"),
        std::tuple(rows.qkvGrad, s.qkvGradStride, qkvWidth, "qkv gradient")})
    if (used && (stride < wide || stride % 8))
      return attentionError(kernel, llvm::Twine(what) + " row stride " +
                                        str(stride) +
                                        " must be a multiple of 8 of at "
                                        "least " +
                                        str(wide));
  // The grid's x dimension counts (sequence, head) pairs, its y dimension
  // 64-row blocks.
  if (s.batch * s.heads > INT32_MAX || s.seq / kTile > 65535)
    return attentionError(kernel, "batch * heads " + str(s.batch * s.heads) +
                                      " or seq_len / 64 " + str(s.seq / kTile) +
                                      " exceeds the grid's 2^31 - 1 or 65535");
  return llvm::Error::success();
}

/// The suffix of a kernel's name that says everything its code depends on.
std::string shapeName(const FlashShape &s, Rows rows) {
  float scale = s.scale;
  uint32_t bits;
  std::memcpy(&bits, &scale, sizeof(bits));
  char hex[16];
  std::snprintf(hex, sizeof(hex), "%08X", bits);
  return "_b" + str(s.batch) + "_h" + str(s.heads) + "_kv" + str(s.kvHeads) +
         "_s" + str(s.seq) + "_d" + str(s.dim) + "_x" + hex +
         (s.packed ? "_packed" : "") +
         (rows.out ? "_o" + str(s.outStride) : "") +
         (rows.grad ? "_g" + str(s.gradStride) : "") +
         (rows.qkv ? "_r" + str(s.qkvStride) : "") +
         (rows.qkvGrad ? "_dr" + str(s.qkvGradStride) : "");
}

/// Tile geometry shared by both kernels.
struct Geometry {
  int64_t rowBytes;  // a tile row in shared memory, padded by 16 bytes
  int64_t tileBytes; // a 64-row tile
  int64_t chunks;    // 16-byte chunks of a row
  int64_t steps;     // 16-wide k steps over the head dimension
  explicit Geometry(int64_t dim)
      : rowBytes(dim * 2 + 16), tileBytes(kTile * (dim * 2 + 16)),
        chunks(dim / 8), steps(dim / 16) {}
};

/// Per-lane values the fragment addressing needs.
struct Lanes {
  std::string tid, warp, lane, group, pair;
  /// Byte offsets in a tile of what lane l hands ldmatrix: `rowsA` for an A
  /// fragment of rows 0..15 (and for a transposed B of 16 rows by 16
  /// columns), `rowsB` for two B fragments of rows 0..15 untransposed.
  std::string rowsA, rowsB;
  /// This thread's first 16-byte chunk of a tile's cp.async: its row and
  /// chunk in the row (index), and its offset in shared memory (i32).
  std::string copyRow, copyChunk, copyShared;
};

Lanes lanes(Body &b, const Geometry &geo) {
  Lanes l;
  l.tid = b.let("tid", "gpu.thread_id x");
  l.warp = b.div(l.tid, b.index(32));
  l.lane = b.rem(l.tid, b.index(32));
  l.group = b.div(l.lane, b.index(4));
  l.pair = b.rem(l.lane, b.index(4));
  std::string row = b.rem(l.lane, b.index(16));
  std::string half = b.div(l.lane, b.index(16));
  l.rowsA = b.toI32(
      b.add(b.mul(row, b.index(geo.rowBytes)), b.mul(half, b.index(16))));
  // Row (l / 16) * 8 + l % 8, column half (l / 8) % 2.
  std::string rowB = b.add(b.mul(half, b.index(8)), b.rem(l.lane, b.index(8)));
  std::string colB = b.rem(b.div(l.lane, b.index(8)), b.index(2));
  l.rowsB = b.toI32(
      b.add(b.mul(rowB, b.index(geo.rowBytes)), b.mul(colB, b.index(16))));
  l.copyRow = b.div(l.tid, b.index(geo.chunks));
  l.copyChunk = b.rem(l.tid, b.index(geo.chunks));
  l.copyShared = b.toI32(b.add(b.mul(l.copyRow, b.index(geo.rowBytes)),
                               b.mul(l.copyChunk, b.index(16))));
  return l;
}

/// cp.async of a 64 x dim bf16 tile whose first row is `src` + `srcBytes`
/// (i64; rows `stride` elements apart) into shared `dst` + `dstBytes` (i32).
void copyTile(Body &b, const Geometry &geo, const Lanes &l, int64_t stride,
              const std::string &dst, const std::string &dstBytes,
              const std::string &src, const std::string &srcBytes) {
  std::string d0 = b.add(dstBytes, l.copyShared, "i32");
  std::string s0 = b.add(srcBytes,
                         b.toI64(b.add(b.mul(l.copyRow, b.index(stride * 2)),
                                       b.mul(l.copyChunk, b.index(16)))),
                         "i64");
  int64_t rowsPerPass = kThreads / geo.chunks;
  for (int64_t pass = 0; pass < kTile / rowsPerPass; ++pass) {
    std::string d = b.add(d0, b.i32(pass * rowsPerPass * geo.rowBytes), "i32");
    std::string s = b.add(s0, b.i64(pass * rowsPerPass * stride * 2), "i64");
    b.copy16(dst, d, src, s);
  }
}

/// The memref type of token rows of `stride` elements, the last one only
/// `width` long: O and dO (`width` heads dim) or the fused q, k, v and their
/// gradient.
std::string rowsType(const FlashShape &s, int64_t stride, int64_t width) {
  return memrefType((s.batch * s.seq - 1) * stride + width, "bf16");
}
std::string rowsType(const FlashShape &s, int64_t stride) {
  return rowsType(s, stride, s.heads * s.dim);
}
std::string qkvRowsType(const FlashShape &s, int64_t stride) {
  return rowsType(s, stride, (s.heads + 2 * s.kvHeads) * s.dim);
}

/// The element offset in token rows of `stride` of position `position` of
/// sequence `sequence`, at column `column` (all index).
std::string rowElement(Body &b, const FlashShape &s, int64_t stride,
                       const std::string &sequence, const std::string &position,
                       const std::string &column) {
  return b.add(
      b.mul(b.add(b.mul(sequence, b.index(s.seq)), position), b.index(stride)),
      column);
}
/// The same as a byte offset (i64).
std::string rowByte(Body &b, const FlashShape &s, int64_t stride,
                    const std::string &sequence, const std::string &position,
                    const std::string &column) {
  return b.toI64(
      b.mul(rowElement(b, s, stride, sequence, position, column), b.index(2)));
}

/// The first column (index) of query head `head`, key head `kvHead` and
/// value head `kvHead` in the fused q, k, v rows.
std::string queryColumn(Body &b, const FlashShape &s, const std::string &head) {
  return b.mul(head, b.index(s.dim));
}
std::string keyColumn(Body &b, const FlashShape &s, const std::string &kvHead) {
  return b.add(b.index(s.heads * s.dim), b.mul(kvHead, b.index(s.dim)));
}
std::string valueColumn(Body &b, const FlashShape &s,
                        const std::string &kvHead) {
  return b.add(b.index((s.heads + s.kvHeads) * s.dim),
               b.mul(kvHead, b.index(s.dim)));
}

/// One thread's part of a gradient row rotated back by RoPE, as rope_heads'
/// Rotation::Inverse does: values[2 nt + e] (f32, bf16 values) is column 8
/// nt + 2 pair + e of the row of token `token` (index), so columns i and i +
/// dim / 2 (C fragments nt and nt + dim / 16) are in the same thread. With
/// (c, s) = rope[token, i] (rope_table's bf16 cos and sin):
///   y[i]           = bf16(bf16(x[i] c) + bf16(x[i + dim/2] s))
///   y[i + dim / 2] = bf16(bf16(x[i + dim/2] c) - bf16(x[i] s)).
void rotateBack(Body &b, const FlashShape &s, const Lanes &l,
                const std::string &ropeType, const std::string &token,
                std::vector<std::string> &values) {
  int64_t half = s.dim / 16;
  std::string row = b.mul(token, b.index(s.dim / 2));
  for (int64_t nt = 0; nt < half; ++nt) {
    // (c, s) of columns i and i + 1: 8 bytes.
    std::string i = b.add(b.mul(l.pair, b.index(2)), b.index(8 * nt));
    std::string pairs =
        b.let("v", "vector.load %rope[" + b.mul(b.add(row, i), b.index(2)) +
                       "] {alignment = 8} : " + ropeType + ", vector<4xbf16>");
    std::string wide = b.let("v", "arith.extf " + pairs +
                                      " : vector<4xbf16> to vector<4xf32>");
    for (int e = 0; e < 2; ++e) {
      auto at = [&](int k) {
        return b.let("f", "vector.extract " + wide + "[" + str(2 * e + k) +
                              "] : f32 from vector<4xf32>");
      };
      std::string c = at(0), sn = at(1);
      std::string &x1 = values[size_t(2 * nt + e)];
      std::string &x2 = values[size_t(2 * (nt + half) + e)];
      std::string y1 =
          b.fadd(b.roundBF16(b.fmul(x1, c)), b.roundBF16(b.fmul(x2, sn)));
      std::string y2 =
          b.fsub(b.roundBF16(b.fmul(x2, c)), b.roundBF16(b.fmul(x1, sn)));
      x1 = y1, x2 = y2;
    }
  }
}

/// This thread's half `half` (row g or g + 8) of the dim / 8 C fragments
/// r[4 first ..] (a loop's flattened results): column 8 nt + 2 pair + e is
/// element 2 nt + e.
std::vector<std::string> rowOf(const FlashShape &s,
                               const std::vector<std::string> &r, int64_t first,
                               int half) {
  std::vector<std::string> row;
  for (int64_t nt = 0; nt < s.dim / 8; ++nt) {
    int64_t k = (first + nt) * 4 + 2 * half;
    row.push_back(r[k]);
    row.push_back(r[k + 1]);
  }
  return row;
}

/// `row` times `scale`, rounded to bf16 and rotated back for token `token`
/// (index).
std::vector<std::string> rotatedRow(Body &b, const FlashShape &s,
                                    const Lanes &l, const std::string &ropeType,
                                    std::vector<std::string> row,
                                    const std::string &scale,
                                    const std::string &token) {
  for (std::string &value : row)
    value = b.roundBF16(b.fmul(value, scale));
  rotateBack(b, s, l, ropeType, token, row);
  return row;
}

/// Stores `row` (rowOf's order) in bf16 pairs at element `at` of %grad
/// (`gradType`).
void storeRow(Body &b, const std::vector<std::string> &row,
              const std::string &at, const std::string &gradType) {
  for (size_t nt = 0; nt < row.size() / 2; ++nt)
    b.storePair(b.pair(row[2 * nt], row[2 * nt + 1]), "%grad",
                b.add(at, b.index(int64_t(8 * nt))), gradType);
}

/// acc[first + i] += W X on tensor cores, for W 16 rows by 64 columns whose
/// A fragment for columns 16 kk .. 16 kk + 15 is `wAt(kk)`, and X the 64 x
/// dim tile at shared `tileAt` (transposed ldmatrix: X's rows are the k
/// dimension).
void accumulateProduct(Body &b, const Geometry &geo, const Lanes &l,
                       const std::string &smem, int64_t dim,
                       std::vector<Frag> &acc, int64_t first,
                       const std::function<Frag(int64_t)> &wAt,
                       const std::string &tileAt) {
  for (int64_t kk = 0; kk < 4; ++kk) {
    Frag a = wAt(kk);
    for (int64_t pt = 0; pt < dim / 16; ++pt) {
      Frag x = b.ldmatrix(smem,
                          b.add(b.add(tileAt, l.rowsA, "i32"),
                                b.i32(16 * kk * geo.rowBytes + 32 * pt), "i32"),
                          true);
      acc[first + 2 * pt] = b.mma(a, x[0], x[1], acc[first + 2 * pt]);
      acc[first + 2 * pt + 1] = b.mma(a, x[2], x[3], acc[first + 2 * pt + 1]);
    }
  }
}

/// The same for W held as C fragments (w[half][2 nt + e] at row g + 8 half,
/// column 8 nt + 2 pair + e), rounded to bf16 A fragments: columns 16 kk ..
/// 16 kk + 15 are C fragments 2 kk and 2 kk + 1.
void accumulateProduct(Body &b, const Geometry &geo, const Lanes &l,
                       const std::string &smem, int64_t dim,
                       std::vector<Frag> &acc, int64_t first,
                       const std::array<std::vector<std::string>, 2> &w,
                       const std::string &tileAt) {
  auto v = [&](int half, int64_t nt, int e) {
    return w[half][size_t(2 * nt + e)];
  };
  accumulateProduct(
      b, geo, l, smem, dim, acc, first,
      [&](int64_t kk) {
        return Frag{b.pack(v(0, 2 * kk, 0), v(0, 2 * kk, 1)),
                    b.pack(v(1, 2 * kk, 0), v(1, 2 * kk, 1)),
                    b.pack(v(0, 2 * kk + 1, 0), v(0, 2 * kk + 1, 1)),
                    b.pack(v(1, 2 * kk + 1, 0), v(1, 2 * kk + 1, 1))};
      },
      tileAt);
}

/// `prefix`, an scf.for over [0, count) carrying `carried` (f32 values,
/// named by the returned names inside the loop), and its results.
struct Loop {
  std::string induction;
  std::vector<std::string> inside, results;
};

Loop openLoop(Body &b, const std::string &count,
              const std::vector<std::string> &carried) {
  Loop loop;
  loop.induction = b.fresh("iv");
  std::string results = b.fresh("loop");
  std::string args, types;
  for (size_t i = 0; i < carried.size(); ++i) {
    loop.inside.push_back(b.fresh("carry"));
    loop.results.push_back(results + "#" + str(int64_t(i)));
    args += (i ? ", " : "") + loop.inside.back() + " = " + carried[i];
    types += i ? ", f32" : "f32";
  }
  b.line(results + ":" + str(int64_t(carried.size())) + " = scf.for " +
         loop.induction + " = " + b.index(0) + " to " + count + " step " +
         b.index(1) + " iter_args(" + args + ") -> (" + types + ") {");
  return loop;
}

/// openLoop for a tile loop: each iteration waits for its tiles (all
/// cp.async groups) and for every warp to be done with the previous ones,
/// then starts `load` of the next iteration's tiles into the other buffers.
Loop openPipelinedLoop(Body &b, const std::string &count,
                       const std::vector<std::string> &carried,
                       const std::function<void(const std::string &)> &load) {
  Loop loop = openLoop(b, count, carried);
  b.line("nvvm.cp.async.wait.group 0");
  b.line("gpu.barrier");
  std::string next = b.add(loop.induction, b.index(1));
  b.line("scf.if " + b.cmp("ult", next, count) + " {");
  load(next);
  b.line("nvvm.cp.async.commit.group");
  b.line("}");
  return loop;
}

/// The values of `fragments`, in order.
std::vector<std::string> flatten(const std::vector<Frag> &fragments) {
  std::vector<std::string> values;
  for (const Frag &f : fragments)
    values.insert(values.end(), f.begin(), f.end());
  return values;
}

void closeLoop(Body &b, const std::vector<std::string> &yielded) {
  std::string values, types;
  for (size_t i = 0; i < yielded.size(); ++i) {
    values += (i ? ", " : "") + yielded[i];
    types += i ? ", f32" : "f32";
  }
  b.line("scf.yield " + values + " : " + types);
  b.line("}");
}

/// The window start of query position `q` (index): 0, or with packed
/// sequences q - clamp(position, 0, q) for the token's position id.
std::string windowStart(Body &b, const FlashShape &s, const std::string &q,
                        const std::string &position) {
  if (!s.packed)
    return b.index(0);
  std::string pos =
      b.let("w", "arith.index_cast " + position + " : i32 to index");
  std::string above =
      b.let("w", "arith.maxsi " + pos + ", " + b.index(0) + " : index");
  std::string back = b.let("w", "arith.minsi " + above + ", " + q + " : index");
  return b.let("w", "arith.subi " + q + ", " + back + " : index");
}

/// What the flash kernels derive from their shape: counts and the memref
/// types of the q, k, v rows and their gradient's, of per-row statistics,
/// of the rope_table and of the positions.
struct Sizes {
  int64_t tokens, group, queryBlocks;
  std::string qkvType, qkvGradType, rowType, ropeType, posType;
  explicit Sizes(const FlashShape &s)
      : tokens(s.batch * s.seq), group(s.heads / s.kvHeads),
        queryBlocks(s.seq / kTile), qkvType(qkvRowsType(s, s.qkvStride)),
        qkvGradType(qkvRowsType(s, s.qkvGradStride)),
        rowType(memrefType(s.batch * s.heads * s.seq, "f32")),
        ropeType(memrefType(tokens * s.dim, "bf16")),
        posType(memrefType(tokens, "i32")) {}
};

/// The block of a kernel with a block per query tile: query block nq - 1 -
/// y of (sequence, head) x. Blocks start in order, x fastest, so every
/// (sequence, head)'s longest causal rows start before any shorter ones and
/// the grid ends on the shortest: a shorter tail.
struct QueryBlock {
  std::string bh, qb, seqIndex, head, kvHead, firstQuery;
};

QueryBlock queryBlock(Body &b, const FlashShape &s, const Sizes &z) {
  QueryBlock q;
  q.bh = b.let("bid", "gpu.block_id x");
  std::string by = b.let("bid", "gpu.block_id y");
  q.qb = b.let("qb", "arith.subi " + b.index(z.queryBlocks - 1) + ", " + by +
                         " : index");
  q.seqIndex = b.div(q.bh, b.index(s.heads));
  q.head = b.rem(q.bh, b.index(s.heads));
  q.kvHead = b.div(q.head, b.index(z.group));
  q.firstQuery = b.mul(q.qb, b.index(kTile));
  return q;
}

KernelSpec finish(std::string name, const std::string &signature, const Body &b,
                  LaunchDims grid, unsigned sharedBytes) {
  KernelSpec spec;
  spec.source =
      "  gpu.func @" + name + "(" + signature +
      ") kernel attributes {known_block_size = array<i32: " + str(kThreads) +
      ", 1, 1>} {\n" + b.text() + "    gpu.return\n  }\n";
  spec.name = std::move(name);
  spec.grid = grid;
  spec.block.x = unsigned(kThreads);
  spec.sharedBytes = sharedBytes;
  return spec;
}

} // namespace

/// The backward's shared memory (the forward needs less): K and V, and two
/// slots of a query tile, a dO tile and 64 each of lse, delta and positions.
static int64_t backwardSharedBytes(int64_t dim) {
  return 6 * Geometry(dim).tileBytes + 2 * 3 * kTile * 4;
}

bool llamac::flashAttentionShapeSupported(int64_t dim, int64_t seq) {
  return (dim == 16 || dim == 32 || dim == 64 || dim == 128) && seq > 0 &&
         seq % kTile == 0;
}

bool llamac::flashAttentionSupports(int64_t dim, int64_t seq,
                                    llvm::StringRef chip) {
  // A block's shared memory limit (CUDA C Programming Guide, "Technical
  // Specifications per Compute Capability"): 227 KiB on sm_90, 163 KiB on
  // sm_80, 99 KiB on sm_86 and sm_89.
  int64_t limit = 0;
  if (chip.starts_with("sm_90"))
    limit = 227 * 1024;
  else if (chip == "sm_80")
    limit = 163 * 1024;
  else if (chip == "sm_86" || chip == "sm_89")
    limit = 99 * 1024;
  return flashAttentionShapeSupported(dim, seq) &&
         backwardSharedBytes(dim) <= limit;
}

llvm::Expected<KernelSpec>
llamac::flashAttentionForwardKernel(const FlashShape &s) {
  const char *kernel = "flash_attention_fwd";
  if (llvm::Error error = checkShape(kernel, s, {true, false, true, false}))
    return std::move(error);
  Geometry geo(s.dim);
  Sizes z(s);
  int64_t queryBlocks = z.queryBlocks;
  const std::string &qkvType = z.qkvType, &lseType = z.rowType,
                    &posType = z.posType;
  std::string outType = rowsType(s, s.outStride);
  std::string signature = "%qkv: " + qkvType + ", %out: " + outType +
                          ", %lse: " + lseType +
                          (s.packed ? ", %positions: " + posType : "");

  Body b;
  Lanes l = lanes(b, geo);
  std::string smem = b.sharedBase();
  std::string qkv = b.globalPointer("%qkv", qkvType);
  QueryBlock block = queryBlock(b, s, z);
  const std::string &bh = block.bh, &qb = block.qb, &seqIndex = block.seqIndex,
                    &head = block.head, &kvHead = block.kvHead,
                    &firstQuery = block.firstQuery;
  // Byte offsets of the query tile and of key/value block 0.
  int64_t ld = s.qkvStride;
  std::string querySrc =
      rowByte(b, s, ld, seqIndex, firstQuery, queryColumn(b, s, head));
  std::string keySrc =
      rowByte(b, s, ld, seqIndex, b.index(0), keyColumn(b, s, kvHead));
  std::string valueSrc =
      rowByte(b, s, ld, seqIndex, b.index(0), valueColumn(b, s, kvHead));
  int64_t blockBytes = kTile * ld * 2;

  // Shared memory: two (K, V) pairs; block j uses pair j % 2. The query
  // tile first goes where block 1's keys will, and is in registers before
  // block 1 is loaded (after the loop's first barrier): 3 blocks fit an SM.
  int64_t pairBytes = 2 * geo.tileBytes;
  auto keyShared = [&](const std::string &j) {
    std::string slot = b.toI32(b.rem(j, b.index(2)));
    return b.mul(slot, b.i32(pairBytes), "i32");
  };
  auto loadBlock = [&](const std::string &j) {
    std::string at = keyShared(j);
    std::string offset = b.mul(b.toI64(j), b.i64(blockBytes), "i64");
    copyTile(b, geo, l, ld, smem, at, qkv, b.add(keySrc, offset, "i64"));
    copyTile(b, geo, l, ld, smem, b.add(at, b.i32(geo.tileBytes), "i32"), qkv,
             b.add(valueSrc, offset, "i64"));
  };
  copyTile(b, geo, l, ld, smem, b.i32(pairBytes), qkv, querySrc);
  b.line("nvvm.cp.async.commit.group");
  loadBlock(b.index(0));
  b.line("nvvm.cp.async.commit.group");
  b.line("nvvm.cp.async.wait.group 1");
  b.line("gpu.barrier");
  // The warp's 16 query rows as A fragments, one per k step.
  std::string warpRows = b.add(
      l.rowsA, b.mul(b.toI32(l.warp), b.i32(16 * geo.rowBytes), "i32"), "i32");
  std::vector<Frag> query;
  for (int64_t kk = 0; kk < geo.steps; ++kk)
    query.push_back(b.ldmatrix(
        smem, b.add(warpRows, b.i32(pairBytes + 32 * kk), "i32"), false));

  // This thread's two query rows (g and g + 8 of the warp's 16) and their
  // window starts.
  std::array<std::string, 2> q, start, query32, start32;
  for (int half = 0; half < 2; ++half) {
    q[half] = b.add(b.add(firstQuery, b.mul(l.warp, b.index(16))),
                    b.add(l.group, b.index(8 * half)));
    std::string position;
    if (s.packed) {
      std::string token = b.add(b.mul(seqIndex, b.index(s.seq)), q[half]);
      position =
          b.let("pos", "memref.load %positions[" + token + "] : " + posType);
    }
    start[half] = windowStart(b, s, q[half], position);
    query32[half] = b.toI32(q[half]);
    start32[half] = b.toI32(start[half]);
  }

  // Carried: O (dim / 8 C fragments), then the row maxima and partial sums.
  int64_t outTiles = s.dim / 8;
  std::string lowest = b.f32(-3.40282347e38f), zero = b.f32(0.0f);
  std::vector<std::string> carried(outTiles * 4, zero);
  carried.insert(carried.end(), {lowest, lowest, zero, zero});
  std::string blocks = b.add(qb, b.index(1));
  Loop loop = openPipelinedLoop(b, blocks, carried, loadBlock);
  std::string j = loop.induction;
  std::string keyAt = keyShared(j);
  std::string valueAt = b.add(keyAt, b.i32(geo.tileBytes), "i32");

  // S = Q Kᵀ for the block's 64 keys: 8 C fragments.
  std::vector<Frag> scores(8, Frag{zero, zero, zero, zero});
  for (int64_t kk = 0; kk < geo.steps; ++kk)
    for (int64_t p = 0; p < 4; ++p) {
      Frag k = b.ldmatrix(smem,
                          b.add(b.add(keyAt, l.rowsB, "i32"),
                                b.i32(16 * p * geo.rowBytes + 32 * kk), "i32"),
                          false);
      scores[2 * p] = b.mma(query[kk], k[0], k[1], scores[2 * p]);
      scores[2 * p + 1] = b.mma(query[kk], k[2], k[3], scores[2 * p + 1]);
    }

  // Online softmax in the log2 domain, x = S scale log2(e): m' = max(m,
  // rowmax x) over the window; O and l scale by 2^(m - m'); p = 2^(x - m')
  // inside the window, else 0. Column c = 8 nt + e of the block is key
  // firstKey + 2 pair + c: inside iff first <= c <= last, in i32.
  std::string scale2 = b.f32(float(s.scale / std::log(2.0)));
  std::string columnBase =
      b.toI32(b.add(b.mul(j, b.index(kTile)), b.mul(l.pair, b.index(2))));
  std::array<std::vector<std::string>, 2> masked, keep;
  for (int half = 0; half < 2; ++half) {
    std::string last = b.let("w", "arith.subi " + query32[half] + ", " +
                                      columnBase + " : i32");
    std::string first = s.packed ? b.let("w", "arith.subi " + start32[half] +
                                                  ", " + columnBase + " : i32")
                                 : std::string();
    for (int64_t nt = 0; nt < 8; ++nt)
      for (int e = 0; e < 2; ++e) {
        std::string c = b.i32(8 * nt + e);
        std::string in = b.cmp("sle", c, last, "i32");
        if (s.packed)
          in = b.let("p", "arith.andi " + in + ", " +
                              b.cmp("sge", c, first, "i32") + " : i1");
        keep[half].push_back(in);
        masked[half].push_back(b.select(in, scores[nt][2 * half + e], lowest));
      }
  }
  const std::vector<std::string> &in = loop.inside;
  std::array<std::string, 2> maxNew, alpha, sumNew;
  std::array<std::vector<std::string>, 2> probs;
  for (int half = 0; half < 2; ++half) {
    std::string m = masked[half][0];
    for (size_t i = 1; i < masked[half].size(); ++i)
      m = b.fmax(m, masked[half][i]);
    m = b.quadReduce(m, "arith.maximumf");
    std::string mOld = in[outTiles * 4 + half];
    maxNew[half] = b.fmax(mOld, b.fmul(m, scale2));
    alpha[half] = b.exp2(b.fsub(mOld, maxNew[half]));
    std::string sum = b.fmul(in[outTiles * 4 + 2 + half], alpha[half]);
    for (int64_t nt = 0; nt < 8; ++nt)
      for (int e = 0; e < 2; ++e) {
        size_t i = size_t(2 * nt + e);
        std::string x = b.fmul(scores[nt][2 * half + e], scale2);
        std::string p =
            b.select(keep[half][i], b.exp2(b.fsub(x, maxNew[half])), zero);
        probs[half].push_back(p);
        sum = b.fadd(sum, p);
      }
    sumNew[half] = sum;
  }
  // O = O 2^(m - m') + P V.
  std::vector<Frag> out(outTiles);
  for (int64_t nt = 0; nt < outTiles; ++nt)
    for (int i = 0; i < 4; ++i)
      out[nt][i] = b.fmul(in[nt * 4 + i], alpha[i / 2]);
  accumulateProduct(b, geo, l, smem, s.dim, out, 0, probs, valueAt);
  std::vector<std::string> yielded = flatten(out);
  yielded.insert(yielded.end(), {maxNew[0], maxNew[1], sumNew[0], sumNew[1]});
  closeLoop(b, yielded);

  // O / l to bf16, and lse = m + log2(l) (log2 domain) from lane 4g.
  const std::vector<std::string> &r = loop.results;
  std::string one = b.f32(1.0f);
  std::array<std::string, 2> inverse;
  for (int half = 0; half < 2; ++half) {
    std::string sum = b.quadReduce(r[outTiles * 4 + 2 + half], "arith.addf");
    inverse[half] = b.let("f", "arith.divf " + one + ", " + sum + " : f32");
    std::string lse = b.fadd(r[outTiles * 4 + half],
                             b.let("f", "math.log2 " + sum + " : f32"));
    std::string row = b.add(b.mul(bh, b.index(s.seq)), q[half]);
    b.line("scf.if " + b.cmp("eq", l.pair, b.index(0)) + " {");
    b.line("memref.store " + lse + ", %lse[" + row + "] : " + lseType);
    b.line("}");
    std::string first =
        rowElement(b, s, s.outStride, seqIndex, q[half],
                   b.add(queryColumn(b, s, head), b.mul(l.pair, b.index(2))));
    for (int64_t nt = 0; nt < outTiles; ++nt) {
      std::string v = b.pair(b.fmul(r[nt * 4 + 2 * half], inverse[half]),
                             b.fmul(r[nt * 4 + 2 * half + 1], inverse[half]));
      b.storePair(v, "%out", b.add(first, b.index(8 * nt)), outType);
    }
  }
  LaunchDims grid;
  grid.x = unsigned(s.batch * s.heads);
  grid.y = unsigned(queryBlocks);
  return finish(kernel + shapeName(s, {true, false, true, false}), signature, b,
                grid, unsigned(2 * pairBytes));
}

llvm::Expected<KernelSpec>
llamac::flashAttentionBackwardKernel(const FlashShape &s) {
  const char *kernel = "flash_attention_bwd";
  Rows rows{false, true, true, true};
  if (llvm::Error error = checkShape(kernel, s, rows))
    return std::move(error);
  Geometry geo(s.dim);
  Sizes z(s);
  int64_t group = z.group, queryBlocks = z.queryBlocks;
  const std::string &qkvType = z.qkvType, &gradType = z.qkvGradType,
                    &rowType = z.rowType, &posType = z.posType;
  std::string headsType = rowsType(s, s.gradStride);
  std::string dsType = memrefType(s.batch * s.heads * s.seq * s.seq, "bf16");
  std::string signature =
      "%qkv: " + qkvType + ", %dout: " + headsType + ", %lse: " + rowType +
      ", %delta: " + rowType + ", %grad: " + gradType + ", %ds: " + dsType +
      ", %rope: " + z.ropeType + (s.packed ? ", %positions: " + posType : "");

  Body b;
  Lanes l = lanes(b, geo);
  std::string smem = b.sharedBase();
  std::string qkv = b.globalPointer("%qkv", qkvType);
  std::string dout = b.globalPointer("%dout", headsType);
  std::string lsePtr = b.globalPointer("%lse", rowType);
  std::string deltaPtr = b.globalPointer("%delta", rowType);
  std::string posPtr =
      s.packed ? b.globalPointer("%positions", posType) : std::string();
  // Block (x, y): key block y of (sequence, KV head) x, so that the blocks
  // with the most query tiles (key block 0) start first.
  std::string bg = b.let("bid", "gpu.block_id x");
  std::string kb = b.let("bid", "gpu.block_id y");
  std::string seqIndex = b.div(bg, b.index(s.kvHeads));
  std::string kvHead = b.rem(bg, b.index(s.kvHeads));
  std::string firstKey = b.mul(kb, b.index(kTile));
  int64_t ld = s.qkvStride;

  // Shared memory: K and V of the block, then two slots of (Q, dO, lse,
  // delta, positions) for the query tiles; tile t uses slot t % 2.
  int64_t rowStats = 3 * kTile * 4;
  int64_t slotBytes = 2 * geo.tileBytes + rowStats;
  int64_t slotsAt = 2 * geo.tileBytes;
  copyTile(b, geo, l, ld, smem, b.i32(0), qkv,
           rowByte(b, s, ld, seqIndex, firstKey, keyColumn(b, s, kvHead)));
  copyTile(b, geo, l, ld, smem, b.i32(geo.tileBytes), qkv,
           rowByte(b, s, ld, seqIndex, firstKey, valueColumn(b, s, kvHead)));

  // Tile t: query head kvHead group + t / tiles, query block kb + t % tiles.
  std::string tiles =
      b.let("n", "arith.subi " + b.index(queryBlocks) + ", " + kb + " : index");
  std::string count = b.mul(tiles, b.index(group));
  struct Tile {
    std::string member, qb, head, row, slot;
  };
  auto tileAt = [&](const std::string &t) {
    Tile tile;
    tile.member = b.div(t, tiles);
    tile.qb = b.add(kb, b.rem(t, tiles));
    tile.head = b.add(b.mul(kvHead, b.index(group)), tile.member);
    std::string bh = b.add(b.mul(seqIndex, b.index(s.heads)), tile.head);
    tile.row = b.add(b.mul(bh, b.index(s.seq)), b.mul(tile.qb, b.index(kTile)));
    tile.slot = b.add(
        b.i32(slotsAt),
        b.mul(b.toI32(b.rem(t, b.index(2))), b.i32(slotBytes), "i32"), "i32");
    return tile;
  };
  auto loadTile = [&](const std::string &t) {
    Tile tile = tileAt(t);
    std::string firstQuery = b.mul(tile.qb, b.index(kTile));
    std::string column = queryColumn(b, s, tile.head);
    copyTile(b, geo, l, ld, smem, tile.slot, qkv,
             rowByte(b, s, ld, seqIndex, firstQuery, column));
    copyTile(b, geo, l, s.gradStride, smem,
             b.add(tile.slot, b.i32(geo.tileBytes), "i32"), dout,
             rowByte(b, s, s.gradStride, seqIndex, firstQuery, column));
    // Lanes 0..15 copy lse, 16..31 delta, 32..47 positions: 16 bytes each.
    std::string chunk = b.rem(l.tid, b.index(16));
    std::string part = b.div(l.tid, b.index(16));
    std::string statsAt =
        b.add(b.add(tile.slot, b.i32(2 * geo.tileBytes), "i32"),
              b.add(b.mul(b.toI32(part), b.i32(kTile * 4), "i32"),
                    b.mul(b.toI32(chunk), b.i32(16), "i32"), "i32"),
              "i32");
    std::string rowBytes =
        b.toI64(b.mul(b.add(tile.row, b.mul(chunk, b.index(4))), b.index(4)));
    b.line("scf.if " + b.cmp("eq", part, b.index(0)) + " {");
    b.copy16(smem, statsAt, lsePtr, rowBytes);
    b.line("}");
    b.line("scf.if " + b.cmp("eq", part, b.index(1)) + " {");
    b.copy16(smem, statsAt, deltaPtr, rowBytes);
    b.line("}");
    if (s.packed) {
      std::string token = b.add(b.add(b.mul(seqIndex, b.index(s.seq)),
                                      b.mul(tile.qb, b.index(kTile))),
                                b.mul(chunk, b.index(4)));
      b.line("scf.if " + b.cmp("eq", part, b.index(2)) + " {");
      b.copy16(smem, statsAt, posPtr, b.toI64(b.mul(token, b.index(4))));
      b.line("}");
    }
  };
  loadTile(b.index(0));
  b.line("nvvm.cp.async.commit.group");

  // This thread's two keys (rows g and g + 8 of the warp's 16).
  std::array<std::string, 2> key;
  for (int half = 0; half < 2; ++half)
    key[half] = b.add(b.add(firstKey, b.mul(l.warp, b.index(16))),
                      b.add(l.group, b.index(8 * half)));
  std::string warpRows = b.add(
      l.rowsA, b.mul(b.toI32(l.warp), b.i32(16 * geo.rowBytes), "i32"), "i32");
  std::string pairBytes = b.toI32(b.mul(l.pair, b.index(2)));

  // Carried: dV, then dK (dim / 8 C fragments each).
  int64_t outTiles = s.dim / 8;
  std::string zero = b.f32(0.0f);
  Loop loop = openPipelinedLoop(
      b, count, std::vector<std::string>(outTiles * 8, zero), loadTile);
  std::string t = loop.induction;
  Tile tile = tileAt(t);
  std::string queryAt = tile.slot;
  std::string doutAt = b.add(tile.slot, b.i32(geo.tileBytes), "i32");
  std::string statsAt = b.add(tile.slot, b.i32(2 * geo.tileBytes), "i32");
  std::string valueAt = b.i32(geo.tileBytes);

  // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ for the warp's 16 keys and the tile's 64
  // queries: 8 C fragments each.
  auto keysTimesTile = [&](const std::string &keysAt,
                           const std::string &tileAt) {
    std::vector<Frag> acc(8, Frag{zero, zero, zero, zero});
    for (int64_t kk = 0; kk < geo.steps; ++kk) {
      Frag a = b.ldmatrix(
          smem, b.add(b.add(keysAt, warpRows, "i32"), b.i32(32 * kk), "i32"),
          false);
      for (int64_t p = 0; p < 4; ++p) {
        Frag bt =
            b.ldmatrix(smem,
                       b.add(b.add(tileAt, l.rowsB, "i32"),
                             b.i32(16 * p * geo.rowBytes + 32 * kk), "i32"),
                       false);
        acc[2 * p] = b.mma(a, bt[0], bt[1], acc[2 * p]);
        acc[2 * p + 1] = b.mma(a, bt[2], bt[3], acc[2 * p + 1]);
      }
    }
    return acc;
  };
  std::vector<Frag> acc(outTiles * 2);
  for (int64_t i = 0; i < outTiles * 2; ++i)
    for (int c = 0; c < 4; ++c)
      acc[i][c] = loop.inside[i * 4 + c];

  std::string scale2 = b.f32(float(s.scale / std::log(2.0)));
  std::string firstQuery = b.mul(tile.qb, b.index(kTile));
  // Column c = 8 nt + e of the tile is query firstQuery + 2 pair + c.
  std::array<std::string, 2> low;
  for (int half = 0; half < 2; ++half)
    low[half] = b.toI32(b.let(
        "w", "arith.subi " + key[half] + ", " +
                 b.add(firstQuery, b.mul(l.pair, b.index(2))) + " : index"));
  std::array<std::string, 2> dsRow;
  for (int half = 0; half < 2; ++half)
    dsRow[half] = b.add(b.mul(b.add(b.mul(bg, b.index(s.seq)), key[half]),
                              b.index(group * s.seq)),
                        b.add(b.mul(tile.member, b.index(s.seq)),
                              b.add(firstQuery, b.mul(l.pair, b.index(2)))));
  // P = 2^(S scale log2(e) - lse) inside the window, else 0.
  std::vector<Frag> scores = keysTimesTile(b.i32(0), queryAt);
  std::array<std::vector<std::string>, 2> probs, keep;
  std::vector<std::string> deltas;
  for (int64_t nt = 0; nt < 8; ++nt) {
    std::string column =
        b.add(pairBytes, b.i32(8 * nt), "i32"); // the query in the tile
    std::string statBytes = b.mul(column, b.i32(4), "i32");
    std::string lse2 =
        b.loadShared(smem, b.add(statsAt, statBytes, "i32"), "vector<2xf32>");
    std::string delta2 = b.loadShared(
        smem, b.add(statsAt, b.add(statBytes, b.i32(kTile * 4), "i32"), "i32"),
        "vector<2xf32>");
    std::string pos2;
    if (s.packed)
      pos2 = b.loadShared(
          smem,
          b.add(statsAt, b.add(statBytes, b.i32(2 * kTile * 4), "i32"), "i32"),
          "vector<2xi32>");
    for (int e = 0; e < 2; ++e) {
      std::string lse = b.let("v", "vector.extract " + lse2 + "[" + str(e) +
                                       "] : f32 from vector<2xf32>");
      deltas.push_back(b.let("v", "vector.extract " + delta2 + "[" + str(e) +
                                      "] : f32 from vector<2xf32>"));
      std::string position;
      if (s.packed)
        position = b.let("v", "vector.extract " + pos2 + "[" + str(e) +
                                  "] : i32 from vector<2xi32>");
      for (int half = 0; half < 2; ++half) {
        // Query q - key[half] = c - low[half] >= 0, and packed at most the
        // query's position (so that the key is in its data row).
        std::string back = b.let("w", "arith.subi " + b.i32(8 * nt + e) + ", " +
                                          low[half] + " : i32");
        std::string in = b.cmp("sge", back, b.i32(0), "i32");
        if (s.packed)
          in = b.let("p", "arith.andi " + in + ", " +
                              b.cmp("sle", back,
                                    b.let("w", "arith.maxsi " + position +
                                                   ", " + b.i32(0) + " : i32"),
                                    "i32") +
                              " : i1");
        keep[half].push_back(in);
        std::string xv = b.fsub(b.fmul(scores[nt][2 * half + e], scale2), lse);
        probs[half].push_back(b.select(in, b.exp2(xv), zero));
      }
    }
  }
  // dV += Pᵀ dO.
  accumulateProduct(b, geo, l, smem, s.dim, acc, 0, probs, doutAt);
  // dS = P (dP - delta); dK += dSᵀ Q.
  std::vector<Frag> dprobs = keysTimesTile(valueAt, doutAt);
  std::array<std::vector<std::string>, 2> dscores;
  for (int64_t nt = 0; nt < 8; ++nt)
    for (int e = 0; e < 2; ++e)
      for (int half = 0; half < 2; ++half) {
        size_t i = size_t(2 * nt + e);
        // Outside the window P is 0 but P (dP - delta) could be -0.
        dscores[half].push_back(b.select(
            keep[half][i],
            b.fmul(probs[half][i], b.fsub(dprobs[nt][2 * half + e], deltas[i])),
            zero));
      }
  accumulateProduct(b, geo, l, smem, s.dim, acc, outTiles, dscores, queryAt);
  // dSᵀ to memory, bf16, at [key][query head in group][query].
  for (int half = 0; half < 2; ++half)
    for (int64_t nt = 0; nt < 8; ++nt) {
      std::string v = b.pair(dscores[half][size_t(2 * nt)],
                             dscores[half][size_t(2 * nt + 1)]);
      b.storePair(v, "%ds", b.add(dsRow[half], b.index(8 * nt)), dsType);
    }
  closeLoop(b, flatten(acc));

  // dV, and dK times the softmax scale rotated back, to the gradient's key
  // and value columns.
  std::string scale = b.f32(s.scale);
  const std::vector<std::string> &r = loop.results;
  std::string pairColumn = b.mul(l.pair, b.index(2));
  // Both rows' rope table loads come before any store: as far as the
  // compiler knows %grad may alias %rope, so a load after a store would wait
  // for it.
  std::array<std::vector<std::string>, 2> dk;
  for (int half = 0; half < 2; ++half)
    dk[half] =
        rotatedRow(b, s, l, z.ropeType, rowOf(s, r, outTiles, half), scale,
                   b.add(b.mul(seqIndex, b.index(s.seq)), key[half]));
  for (int half = 0; half < 2; ++half) {
    storeRow(b, rowOf(s, r, 0, half),
             rowElement(b, s, s.qkvGradStride, seqIndex, key[half],
                        b.add(valueColumn(b, s, kvHead), pairColumn)),
             gradType);
    storeRow(b, dk[half],
             rowElement(b, s, s.qkvGradStride, seqIndex, key[half],
                        b.add(keyColumn(b, s, kvHead), pairColumn)),
             gradType);
  }
  LaunchDims grid;
  grid.x = unsigned(s.batch * s.kvHeads);
  grid.y = unsigned(queryBlocks);
  return finish(kernel + shapeName(s, rows), signature, b, grid,
                unsigned(backwardSharedBytes(s.dim)));
}

llvm::Expected<KernelSpec> llamac::attentionRowDotKernel(const FlashShape &s) {
  const char *kernel = "attention_row_dot";
  if (llvm::Error error = checkShape(kernel, s, {true, true, false, false}))
    return std::move(error);
  int64_t ldOut = s.outStride, ldGrad = s.gradStride;
  int64_t tokens = s.batch * s.seq, rows = tokens * s.heads;
  int64_t lanesPerRow = s.dim / 8, rowsPerBlock = kThreads / lanesPerRow;
  std::string outType = rowsType(s, ldOut);
  std::string gradType = rowsType(s, ldGrad);
  std::string deltaType = memrefType(rows, "f32");
  std::string signature =
      "%o: " + outType + ", %dout: " + gradType + ", %delta: " + deltaType;

  Body b;
  std::string tid = b.let("tid", "gpu.thread_id x");
  std::string bid = b.let("bid", "gpu.block_id x");
  // Row r = (token, head); lane c of its lanes has columns 8c .. 8c + 7.
  std::string r = b.add(b.mul(bid, b.index(rowsPerBlock)),
                        b.div(tid, b.index(lanesPerRow)));
  std::string c = b.rem(tid, b.index(lanesPerRow));
  std::string token = b.div(r, b.index(s.heads));
  std::string head = b.rem(r, b.index(s.heads));
  std::string column = b.add(b.mul(head, b.index(s.dim)), b.mul(c, b.index(8)));
  std::string inside = b.cmp("ult", r, b.index(rows));
  std::string products = b.let("dot", "scf.if " + inside + " -> (f32) {");
  std::string o = b.let(
      "v", "vector.load %o[" + b.add(b.mul(token, b.index(ldOut)), column) +
               "] {alignment = 16} : " + outType + ", vector<8xbf16>");
  std::string g = b.let(
      "v", "vector.load %dout[" + b.add(b.mul(token, b.index(ldGrad)), column) +
               "] {alignment = 16} : " + gradType + ", vector<8xbf16>");
  std::string of =
      b.let("v", "arith.extf " + o + " : vector<8xbf16> to vector<8xf32>");
  std::string gf =
      b.let("v", "arith.extf " + g + " : vector<8xbf16> to vector<8xf32>");
  std::string prod =
      b.let("v", "arith.mulf " + of + ", " + gf + " : vector<8xf32>");
  std::string sum = b.let("v", "vector.reduction <add>, " + prod +
                                   " : vector<8xf32> into f32");
  b.line("scf.yield " + sum + " : f32");
  b.line("} else {");
  b.line("scf.yield " + b.f32(0.0f) + " : f32");
  b.line("}");
  // Sum over the row's lanes (aligned groups of lanesPerRow).
  std::string total = products;
  for (int64_t offset = lanesPerRow / 2; offset >= 1; offset /= 2) {
    std::string other = b.fresh("x");
    b.line(other + ", " + b.fresh("ok") + " = gpu.shuffle xor " + total + ", " +
           b.i32(offset) + ", " + b.i32(32) + " : f32");
    total = b.fadd(total, other);
  }
  // delta is head-major: (sequence, head, position).
  std::string sequence = b.div(token, b.index(s.seq));
  std::string position = b.rem(token, b.index(s.seq));
  std::string at = b.add(
      b.mul(b.add(b.mul(sequence, b.index(s.heads)), head), b.index(s.seq)),
      position);
  std::string first = b.cmp("eq", c, b.index(0));
  b.line("scf.if " +
         b.let("p", "arith.andi " + inside + ", " + first + " : i1") + " {");
  b.line("memref.store " + total + ", %delta[" + at + "] : " + deltaType);
  b.line("}");
  LaunchDims grid;
  grid.x = unsigned((rows + rowsPerBlock - 1) / rowsPerBlock);
  return finish(kernel + shapeName(s, {true, true, false, false}), signature, b,
                grid, 0);
}

llvm::Expected<KernelSpec> llamac::flashAttentionDqKernel(const FlashShape &s) {
  const char *kernel = "flash_attention_dq";
  Rows rows{false, false, true, true};
  if (llvm::Error error = checkShape(kernel, s, rows))
    return std::move(error);
  Geometry geo(s.dim), scoreGeo(kTile);
  Sizes z(s);
  int64_t group = z.group, queryBlocks = z.queryBlocks;
  const std::string &qkvType = z.qkvType, &gradType = z.qkvGradType;
  std::string dsType = memrefType(s.batch * s.heads * s.seq * s.seq, "bf16");
  std::string signature = "%qkv: " + qkvType + ", %ds: " + dsType +
                          ", %grad: " + gradType + ", %rope: " + z.ropeType;

  Body b;
  // Lanes of the K tiles (head_dim wide) and of the dSᵀ tiles (64 wide).
  Lanes l = lanes(b, geo), sl = lanes(b, scoreGeo);
  std::string smem = b.sharedBase();
  std::string qkv = b.globalPointer("%qkv", qkvType);
  std::string ds = b.globalPointer("%ds", dsType);
  QueryBlock block = queryBlock(b, s, z);
  const std::string &qb = block.qb, &seqIndex = block.seqIndex,
                    &head = block.head, &kvHead = block.kvHead,
                    &firstQuery = block.firstQuery;
  std::string member = b.rem(head, b.index(group));
  std::string bg = b.add(b.mul(seqIndex, b.index(s.kvHeads)), kvHead);
  // Key block j: K rows 64 j .. of the sequence's KV head, and the dSᵀ
  // tile of its keys and this block's queries (rows group seq apart).
  int64_t ld = s.qkvStride;
  std::string keySrc =
      rowByte(b, s, ld, seqIndex, b.index(0), keyColumn(b, s, kvHead));
  std::string scoreSrc = b.toI64(
      b.mul(b.add(b.mul(b.mul(bg, b.index(s.seq)), b.index(group * s.seq)),
                  b.add(b.mul(member, b.index(s.seq)), firstQuery)),
            b.index(2)));

  // Shared memory: two slots of (dSᵀ tile, K tile); block j uses j % 2.
  int64_t slotBytes = scoreGeo.tileBytes + geo.tileBytes;
  auto slotAt = [&](const std::string &j) {
    return b.mul(b.toI32(b.rem(j, b.index(2))), b.i32(slotBytes), "i32");
  };
  auto loadBlock = [&](const std::string &j) {
    std::string at = slotAt(j), j64 = b.toI64(j);
    copyTile(b, scoreGeo, sl, group * s.seq, smem, at, ds,
             b.add(scoreSrc,
                   b.mul(j64, b.i64(kTile * group * s.seq * 2), "i64"), "i64"));
    copyTile(b, geo, l, ld, smem, b.add(at, b.i32(scoreGeo.tileBytes), "i32"),
             qkv,
             b.add(keySrc, b.mul(j64, b.i64(kTile * ld * 2), "i64"), "i64"));
  };
  loadBlock(b.index(0));
  b.line("nvvm.cp.async.commit.group");

  int64_t outTiles = s.dim / 8;
  std::string zero = b.f32(0.0f);
  std::string blocks = b.add(qb, b.index(1));
  Loop loop = openPipelinedLoop(
      b, blocks, std::vector<std::string>(outTiles * 4, zero), loadBlock);
  std::string j = loop.induction;
  std::string scoresAt = slotAt(j);
  std::string keyAt = b.add(scoresAt, b.i32(scoreGeo.tileBytes), "i32");
  // dQ += dS K for the warp's 16 queries: dS's A fragments from the dSᵀ
  // tile (rows are keys) by transposed ldmatrix, at the warp's 16 columns.
  std::vector<Frag> acc(outTiles);
  for (int64_t i = 0; i < outTiles; ++i)
    for (int c = 0; c < 4; ++c)
      acc[i][c] = loop.inside[i * 4 + c];
  std::string warpColumns = b.mul(b.toI32(l.warp), b.i32(32), "i32");
  accumulateProduct(
      b, geo, l, smem, s.dim, acc, 0,
      [&](int64_t kk) {
        return b.ldmatrix(
            smem,
            b.add(b.add(scoresAt, sl.rowsB, "i32"),
                  b.add(warpColumns, b.i32(16 * kk * scoreGeo.rowBytes), "i32"),
                  "i32"),
            true);
      },
      keyAt);
  closeLoop(b, flatten(acc));

  // dQ times the softmax scale, rotated back, to the gradient's query
  // columns.
  std::string scale = b.f32(s.scale);
  const std::vector<std::string> &r = loop.results;
  // Both rows' rope table loads before any store, as the backward's.
  std::array<std::string, 2> q;
  std::array<std::vector<std::string>, 2> dq;
  for (int half = 0; half < 2; ++half) {
    q[half] = b.add(b.add(firstQuery, b.mul(l.warp, b.index(16))),
                    b.add(l.group, b.index(8 * half)));
    dq[half] = rotatedRow(b, s, l, z.ropeType, rowOf(s, r, 0, half), scale,
                          b.add(b.mul(seqIndex, b.index(s.seq)), q[half]));
  }
  for (int half = 0; half < 2; ++half)
    storeRow(
        b, dq[half],
        rowElement(b, s, s.qkvGradStride, seqIndex, q[half],
                   b.add(queryColumn(b, s, head), b.mul(l.pair, b.index(2)))),
        gradType);
  LaunchDims grid;
  grid.x = unsigned(s.batch * s.heads);
  grid.y = unsigned(queryBlocks);
  return finish(kernel + shapeName(s, rows), signature, b, grid,
                unsigned(2 * slotBytes));
}
