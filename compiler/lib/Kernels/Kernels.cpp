//===- Kernels.cpp - The compiler's GPU kernels ---------------------------===//

#include "llamac/Kernels/Kernels.h"

#include "llamac/Package/Package.h"

#include "KernelTemplates.inc"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

using namespace llamac;

llvm::Expected<std::string> llamac::instantiateKernel(
    llvm::StringRef name,
    llvm::ArrayRef<std::pair<llvm::StringRef, std::string>> values) {
  const char *text = nullptr;
  for (const KernelTemplate &entry : k_kernel_templates)
    if (name == entry.name)
      text = entry.text;
  if (!text)
    return llvm::createStringError("unknown kernel template '" + name + "'");
  std::string source(text);
  for (const auto &[key, value] : values) {
    std::string placeholder = ("@" + key + "@").str();
    for (size_t at = source.find(placeholder); at != std::string::npos;
         at = source.find(placeholder, at + value.size()))
      source.replace(at, placeholder.size(), value);
  }
  // Placeholders are upper-case words between '@'s; MLIR text has none.
  size_t open = source.find('@');
  while (open != std::string::npos) {
    size_t close = source.find('@', open + 1);
    if (close == std::string::npos)
      break;
    llvm::StringRef key = llvm::StringRef(source).slice(open + 1, close);
    if (!key.empty() && llvm::all_of(key, [](char c) {
          return (c >= 'A' && c <= 'Z') || c == '_';
        }))
      return llvm::createStringError("kernel template '" + name +
                                     "': placeholder @" + key + "@ not set");
    open = source.find('@', open + 1);
  }
  return source;
}

namespace {

using Values = std::vector<std::pair<llvm::StringRef, std::string>>;

/// The error of kernel `kernel` for a bad shape.
llvm::Error shapeError(llvm::StringRef kernel, const llvm::Twine &message) {
  return llvm::createStringError(llvm::Twine(kernel) + " kernel: " + message);
}

/// An error unless `value` is positive and a multiple of `multiple`.
llvm::Error checkSize(llvm::StringRef kernel, llvm::StringRef what,
                      int64_t value, int64_t multiple = 1) {
  if (value > 0 && value % multiple == 0)
    return llvm::Error::success();
  std::string want = multiple == 1
                         ? std::string("positive")
                         : "a positive multiple of " + std::to_string(multiple);
  return shapeError(kernel, what + " must be " + want + ", got " +
                                std::to_string(value));
}

unsigned blocksFor(int64_t work, unsigned perBlock) {
  return unsigned((work + perBlock - 1) / perBlock);
}

/// Threads for a block that owns `items` work items: whole warps, at most
/// `limit`.
unsigned threadsFor(int64_t items, unsigned limit) {
  int64_t warps = (items + 31) / 32;
  return unsigned(std::clamp<int64_t>(warps * 32, 32, limit));
}

/// The template `templateName` instantiated as kernel `name` with `values`
/// (plus @KERNEL@), launched with `grid` and `block`.
llvm::Expected<KernelSpec> specialize(llvm::StringRef templateName,
                                      std::string name, Values values,
                                      LaunchDims grid, LaunchDims block) {
  values.emplace_back("KERNEL", name);
  llvm::Expected<std::string> source = instantiateKernel(templateName, values);
  if (!source)
    return source.takeError();
  KernelSpec spec;
  spec.name = std::move(name);
  spec.source = std::move(*source);
  spec.grid = grid;
  spec.block = block;
  return spec;
}

LaunchDims dims(unsigned x, unsigned y = 1) {
  LaunchDims d;
  d.x = x;
  d.y = y;
  return d;
}

std::string str(int64_t value) { return std::to_string(value); }

/// An f32 constant exactly, as MLIR's hexadecimal bit-pattern literal.
std::string f32Bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  char text[16];
  std::snprintf(text, sizeof(text), "0x%08X", bits);
  return text;
}

/// A flat elementwise kernel over `numel` elements, 8 per thread; `extra`
/// sets further placeholders and `suffix` ends the kernel's name.
llvm::Expected<KernelSpec> elementwise(llvm::StringRef templateName,
                                       int64_t numel, Values extra = {},
                                       llvm::StringRef suffix = "") {
  if (llvm::Error error = checkSize(templateName, "element count", numel, 8))
    return std::move(error);
  extra.emplace_back("N", str(numel));
  return specialize(
      templateName, (templateName + "_n" + str(numel) + suffix).str(),
      std::move(extra), dims(blocksFor(numel / 8, 256)), dims(256));
}

const char *boolean(bool value) { return value ? "true" : "false"; }

} // namespace

namespace {

/// `text` with every occurrence of each key replaced by its value.
std::string
substitute(std::string text,
           std::initializer_list<std::pair<const char *, std::string>> values) {
  for (const auto &[key, value] : values)
    for (size_t at = text.find(key); at != std::string::npos;
         at = text.find(key, at + value.size()))
      text.replace(at, std::strlen(key), value);
  return text;
}

/// MLIR lines of AdamW's per-step scalars (adamw.mlir's math), read from
/// %hyper ([lr, beta1, beta2, eps, weight_decay, step, max_norm]) and
/// %normsq (the gradients' sum of squares): the clip factor, the bias
/// corrections and the decay, broadcast to the vector<8xf32>s that
/// adamwUpdate reads. Names start with %aw_.
constexpr const char *kAdamWPrelude = R"mlir(
      %aw_c0 = arith.constant 0 : index
      %aw_c1 = arith.constant 1 : index
      %aw_c2 = arith.constant 2 : index
      %aw_c3 = arith.constant 3 : index
      %aw_c4 = arith.constant 4 : index
      %aw_c5 = arith.constant 5 : index
      %aw_c6 = arith.constant 6 : index
      %aw_one = arith.constant 1.0 : f32
      %aw_lr = memref.load %hyper[%aw_c0] : memref<8xf32>
      %aw_beta1 = memref.load %hyper[%aw_c1] : memref<8xf32>
      %aw_beta2 = memref.load %hyper[%aw_c2] : memref<8xf32>
      %aw_eps = memref.load %hyper[%aw_c3] : memref<8xf32>
      %aw_wd = memref.load %hyper[%aw_c4] : memref<8xf32>
      %aw_step = memref.load %hyper[%aw_c5] : memref<8xf32>
      %aw_maxNorm = memref.load %hyper[%aw_c6] : memref<8xf32>
      %aw_sumsq = memref.load %normsq[%aw_c0] : memref<1xf32>
      %aw_zero = arith.constant 0.0 : f32
      %aw_tiny = arith.constant 1.0e-6 : f32
      %aw_norm = math.sqrt %aw_sumsq : f32
      %aw_normEps = arith.addf %aw_norm, %aw_tiny : f32
      %aw_coef = arith.divf %aw_maxNorm, %aw_normEps : f32
      %aw_clipped = arith.minimumf %aw_coef, %aw_one : f32
      %aw_clipOn = arith.cmpf ogt, %aw_maxNorm, %aw_zero : f32
      %aw_gscale = arith.select %aw_clipOn, %aw_clipped, %aw_one : f32
      %aw_b1t = math.powf %aw_beta1, %aw_step : f32
      %aw_b2t = math.powf %aw_beta2, %aw_step : f32
      %aw_bc1 = arith.subf %aw_one, %aw_b1t : f32
      %aw_bc2 = arith.subf %aw_one, %aw_b2t : f32
      %aw_stepSize = arith.divf %aw_lr, %aw_bc1 : f32
      %aw_bc2sqrt = math.sqrt %aw_bc2 : f32
      %aw_rbc2sqrt = arith.divf %aw_one, %aw_bc2sqrt : f32
      %aw_lrwd = arith.mulf %aw_lr, %aw_wd : f32
      %aw_decay = arith.subf %aw_one, %aw_lrwd : f32
      %aw_omb1 = arith.subf %aw_one, %aw_beta1 : f32
      %aw_omb2 = arith.subf %aw_one, %aw_beta2 : f32
      %aw_vgscale = vector.broadcast %aw_gscale : f32 to vector<8xf32>
      %aw_vb1 = vector.broadcast %aw_beta1 : f32 to vector<8xf32>
      %aw_vb2 = vector.broadcast %aw_beta2 : f32 to vector<8xf32>
      %aw_vomb1 = vector.broadcast %aw_omb1 : f32 to vector<8xf32>
      %aw_vomb2 = vector.broadcast %aw_omb2 : f32 to vector<8xf32>
      %aw_vrbc2 = vector.broadcast %aw_rbc2sqrt : f32 to vector<8xf32>
      %aw_veps = vector.broadcast %aw_eps : f32 to vector<8xf32>
      %aw_vss = vector.broadcast %aw_stepSize : f32 to vector<8xf32>
      %aw_vdecay = vector.broadcast %aw_decay : f32 to vector<8xf32>
)mlir";

/// MLIR lines of AdamW's update of 8 elements (adamw.mlir's math, in f32
/// after kAdamWPrelude) from the bf16 vectors `p`, `g`, `m`, `v`: the new
/// parameter and moments rounded to bf16, %aw_po<n>, %aw_mo<n>, %aw_vo<n>.
std::string adamwUpdate(const std::string &n, const std::string &p,
                        const std::string &g, const std::string &m,
                        const std::string &v) {
  std::string text = R"mlir(
      %aw_p# = arith.extf {p} : vector<8xbf16> to vector<8xf32>
      %aw_graw# = arith.extf {g} : vector<8xbf16> to vector<8xf32>
      %aw_g# = arith.mulf %aw_graw#, %aw_vgscale : vector<8xf32>
      %aw_m0# = arith.extf {m} : vector<8xbf16> to vector<8xf32>
      %aw_v0# = arith.extf {v} : vector<8xbf16> to vector<8xf32>
      %aw_t1# = arith.mulf %aw_vb1, %aw_m0# : vector<8xf32>
      %aw_t2# = arith.mulf %aw_vomb1, %aw_g# : vector<8xf32>
      %aw_m1# = arith.addf %aw_t1#, %aw_t2# : vector<8xf32>
      %aw_gg# = arith.mulf %aw_g#, %aw_g# : vector<8xf32>
      %aw_t3# = arith.mulf %aw_vb2, %aw_v0# : vector<8xf32>
      %aw_t4# = arith.mulf %aw_vomb2, %aw_gg# : vector<8xf32>
      %aw_v1# = arith.addf %aw_t3#, %aw_t4# : vector<8xf32>
      %aw_sq# = math.sqrt %aw_v1# : vector<8xf32>
      %aw_d0# = arith.mulf %aw_sq#, %aw_vrbc2 : vector<8xf32>
      %aw_denom# = arith.addf %aw_d0#, %aw_veps : vector<8xf32>
      %aw_ratio# = arith.divf %aw_m1#, %aw_denom# fastmath<afn> : vector<8xf32>
      %aw_upd# = arith.mulf %aw_vss, %aw_ratio# : vector<8xf32>
      %aw_pd# = arith.mulf %aw_p#, %aw_vdecay : vector<8xf32>
      %aw_p1# = arith.subf %aw_pd#, %aw_upd# : vector<8xf32>
      %aw_po# = arith.truncf %aw_p1# : vector<8xf32> to vector<8xbf16>
      %aw_mo# = arith.truncf %aw_m1# : vector<8xf32> to vector<8xbf16>
      %aw_vo# = arith.truncf %aw_v1# : vector<8xf32> to vector<8xbf16>
)mlir";
  return substitute(std::move(text),
                    {{"{p}", p}, {"{g}", g}, {"{m}", m}, {"{v}", v}, {"#", n}});
}

/// MLIR lines of SwiGLU on 8 elements from the bf16 vectors `gate` and
/// `up` (swiglu_fwd.mlir's math: h = bf16(bf16(silu(g)) u), silu(g) = g /
/// (1 + exp(-g)) in f32), with %sw_one a vector<8xf32> of ones: the bf16
/// result %sw_h<n>.
std::string swigluMath(const std::string &n, const std::string &gate,
                       const std::string &up) {
  std::string text = R"mlir(
      %sw_g# = arith.extf {g} : vector<8xbf16> to vector<8xf32>
      %sw_u# = arith.extf {u} : vector<8xbf16> to vector<8xf32>
      %sw_ng# = arith.negf %sw_g# : vector<8xf32>
      %sw_e# = math.exp %sw_ng# : vector<8xf32>
      %sw_den# = arith.addf %sw_one, %sw_e# : vector<8xf32>
      %sw_silu# = arith.divf %sw_g#, %sw_den# : vector<8xf32>
      %sw_sb# = arith.truncf %sw_silu# : vector<8xf32> to vector<8xbf16>
      %sw_sf# = arith.extf %sw_sb# : vector<8xbf16> to vector<8xf32>
      %sw_p# = arith.mulf %sw_sf#, %sw_u# : vector<8xf32>
      %sw_h# = arith.truncf %sw_p# : vector<8xf32> to vector<8xbf16>
)mlir";
  return substitute(std::move(text), {{"{g}", gate}, {"{u}", up}, {"#", n}});
}

/// MLIR lines of SwiGLU's backward on 8 elements from the bf16 vectors `dy`,
/// `gate` and `up` (swiglu_bwd.mlir's math, s = sigmoid(gate) in f32:
/// d gate = bf16(dy up s (1 + gate (1 - s))), d up = bf16(dy
/// bf16(silu(gate)))), with %sgr_one a vector<8xf32> of ones: the bf16
/// results %sgr_dgb<n> and %sgr_dub<n>.
std::string swigluGradMath(const std::string &n, const std::string &dy,
                           const std::string &gate, const std::string &up) {
  std::string text = R"mlir(
      %sgr_dy# = arith.extf {dy} : vector<8xbf16> to vector<8xf32>
      %sgr_g# = arith.extf {g} : vector<8xbf16> to vector<8xf32>
      %sgr_u# = arith.extf {u} : vector<8xbf16> to vector<8xf32>
      %sgr_ng# = arith.negf %sgr_g# : vector<8xf32>
      %sgr_e# = math.exp %sgr_ng# : vector<8xf32>
      %sgr_den# = arith.addf %sgr_one, %sgr_e# : vector<8xf32>
      %sgr_s# = arith.divf %sgr_one, %sgr_den# : vector<8xf32>
      %sgr_silu# = arith.divf %sgr_g#, %sgr_den# : vector<8xf32>
      %sgr_sb# = arith.truncf %sgr_silu# : vector<8xf32> to vector<8xbf16>
      %sgr_sf# = arith.extf %sgr_sb# : vector<8xbf16> to vector<8xf32>
      %sgr_dup# = arith.mulf %sgr_dy#, %sgr_sf# : vector<8xf32>
      %sgr_oms# = arith.subf %sgr_one, %sgr_s# : vector<8xf32>
      %sgr_gOms# = arith.mulf %sgr_g#, %sgr_oms# : vector<8xf32>
      %sgr_factor# = arith.addf %sgr_one, %sgr_gOms# : vector<8xf32>
      %sgr_dyu# = arith.mulf %sgr_dy#, %sgr_u# : vector<8xf32>
      %sgr_dyus# = arith.mulf %sgr_dyu#, %sgr_s# : vector<8xf32>
      %sgr_dgate# = arith.mulf %sgr_dyus#, %sgr_factor# : vector<8xf32>
      %sgr_dgb# = arith.truncf %sgr_dgate# : vector<8xf32> to vector<8xbf16>
      %sgr_dub# = arith.truncf %sgr_dup# : vector<8xf32> to vector<8xbf16>
)mlir";
  return substitute(std::move(text),
                    {{"{dy}", dy}, {"{g}", gate}, {"{u}", up}, {"#", n}});
}

} // namespace

llvm::Expected<KernelSpec> llamac::adamwKernel(int64_t numel) {
  if (llvm::Error error = checkSize("adamw", "element count", numel, 8))
    return std::move(error);
  // Four pieces per thread share one computation of the step's scalars
  // (two powers, square roots, divisions), which at one piece per thread
  // cost as many instructions as the 8 elements' update.
  return specialize("adamw", "adamw_n" + str(numel),
                    {{"N", str(numel)},
                     {"PRELUDE", kAdamWPrelude},
                     {"UPDATE", adamwUpdate("", "%pv", "%gv", "%mv", "%vv")}},
                    dims(blocksFor((numel / 8 + 3) / 4, 256)), dims(256));
}

llvm::Expected<KernelSpec> llamac::scaleBF16Kernel(int64_t numel) {
  return elementwise("scale_bf16", numel);
}

llvm::Expected<KernelSpec> llamac::addBF16Kernel(int64_t numel) {
  return elementwise("add_bf16", numel);
}

namespace {

/// The MLIR type and largest finite value of `format`.
const char *fp8TypeName(FP8Format format) {
  return format == FP8Format::E4M3 ? "f8E4M3FN" : "f8E5M2";
}
double fp8Largest(FP8Format format) {
  return format == FP8Format::E4M3 ? 448.0 : 57344.0;
}
const char *fp8Suffix(FP8Format format) {
  return format == FP8Format::E4M3 ? "_e4m3" : "_e5m2";
}

/// An f64 constant exactly, as MLIR's hexadecimal bit-pattern literal.
std::string f64Bits(double value) {
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  char text[24];
  std::snprintf(text, sizeof(text), "0x%016llX", (unsigned long long)bits);
  return text;
}

/// MLIR lines converting the f32 SSA values `values` (an even count n) to
/// FP8 `format` with PTX cvt.rn.satfinite (two per instruction) and packing
/// them in order into `result`, a vector<n x i8>.
std::string fp8Pack(const std::vector<std::string> &values, FP8Format format,
                    const std::string &result) {
  std::string text, pairs;
  size_t n = values.size();
  for (size_t p = 0; p < n / 2; ++p) {
    // The first operand lands in the upper byte: the later element.
    std::string pair = result + "_p" + std::to_string(p);
    text += "      " + pair + " = nvvm.convert.f32x2.to.f8x2 " +
            values[2 * p + 1] + ", " + values[2 * p] +
            " {rnd = #nvvm.fp_rnd_mode<rn>, sat = "
            "#nvvm.sat_mode<satfinite>} : i16 (" +
            fp8TypeName(format) + ")\n";
    pairs += (p ? ", " : "") + pair;
  }
  std::string halves = std::to_string(n / 2), bytes = std::to_string(n);
  text += "      " + result + "_w = vector.from_elements " + pairs +
          " : vector<" + halves + "xi16>\n";
  text += "      " + result + " = vector.bitcast " + result + "_w : vector<" +
          halves + "xi16> to vector<" + bytes + "xi8>\n";
  return text;
}

/// MLIR lines extracting the `count` f32 elements of vector `vector`, named
/// `vector`_e<k>.
std::vector<std::string> extractAll(const std::string &vector, int count,
                                    std::string &text) {
  std::vector<std::string> names;
  for (int k = 0; k < count; ++k) {
    names.push_back(vector + "_e" + std::to_string(k));
    text += "      " + names.back() + " = vector.extract " + vector + "[" +
            std::to_string(k) + "] : f32 from vector<" + std::to_string(count) +
            "xf32>\n";
  }
  return names;
}

/// MLIR lines (after the threads' loop) that reduce each thread's i32 %m, the
/// bits of an |x| maximum, over a block of 256 threads (8 warps) through the
/// workgroup buffer %maxes and raise %amax[0] with an atomic max once per
/// block. The bits of non-negative floats (and of NaN above them) order as
/// signed integers.
constexpr const char *kBlockAmax = R"mlir(
    %bm_c0 = arith.constant 0 : index
    %bm_c1 = arith.constant 1 : index
    %bm_c32 = arith.constant 32 : index
    %bm_warps = arith.constant 8 : index
    %bm_i1 = arith.constant 1 : i32
    %bm_i2 = arith.constant 2 : i32
    %bm_i4 = arith.constant 4 : i32
    %bm_i8 = arith.constant 8 : i32
    %bm_i16 = arith.constant 16 : i32
    %bm_i32 = arith.constant 32 : i32
    %bm_zero = arith.constant 0 : i32
    %bm_o1, %bm_v1 = gpu.shuffle xor %m, %bm_i16, %bm_i32 : i32
    %bm_s1 = arith.maxui %m, %bm_o1 : i32
    %bm_o2, %bm_v2 = gpu.shuffle xor %bm_s1, %bm_i8, %bm_i32 : i32
    %bm_s2 = arith.maxui %bm_s1, %bm_o2 : i32
    %bm_o3, %bm_v3 = gpu.shuffle xor %bm_s2, %bm_i4, %bm_i32 : i32
    %bm_s3 = arith.maxui %bm_s2, %bm_o3 : i32
    %bm_o4, %bm_v4 = gpu.shuffle xor %bm_s3, %bm_i2, %bm_i32 : i32
    %bm_s4 = arith.maxui %bm_s3, %bm_o4 : i32
    %bm_o5, %bm_v5 = gpu.shuffle xor %bm_s4, %bm_i1, %bm_i32 : i32
    %bm_s5 = arith.maxui %bm_s4, %bm_o5 : i32
    %bm_tid = gpu.thread_id x
    %bm_lane = arith.remui %bm_tid, %bm_c32 : index
    %bm_warp = arith.divui %bm_tid, %bm_c32 : index
    %bm_leader = arith.cmpi eq, %bm_lane, %bm_c0 : index
    scf.if %bm_leader {
      memref.store %bm_s5, %maxes[%bm_warp] : memref<32xi32, #gpu.address_space<workgroup>>
    }
    gpu.barrier
    %bm_first = arith.cmpi eq, %bm_tid, %bm_c0 : index
    scf.if %bm_first {
      %bm_all = scf.for %k = %bm_c0 to %bm_warps step %bm_c1 iter_args(%acc = %bm_zero) -> (i32) {
        %part = memref.load %maxes[%k] : memref<32xi32, #gpu.address_space<workgroup>>
        %next = arith.maxui %acc, %part : i32
        scf.yield %next : i32
      }
      %bm_old = memref.atomic_rmw maxs %bm_all, %amax[%bm_c0] : (i32, memref<1xi32>) -> i32
    }
)mlir";

} // namespace

/// The kernels that read `numel` bf16 elements of a flat buffer or of a
/// column slice (`cols` of rows `ld` apart) in fp8_cast's grid-stride loop:
/// fp8_cast and fp8_amax (template `kernel`, its name ending in `suffix`);
/// `extra` are the template's other values.
static llvm::Expected<KernelSpec> elementReader(const char *kernel,
                                                const char *suffix,
                                                int64_t numel, int64_t cols,
                                                int64_t ld, Values extra) {
  if (llvm::Error error = checkSize(kernel, "element count", numel, 8))
    return std::move(error);
  bool strided = cols && ld != cols;
  if (strided) {
    if (llvm::Error error = checkSize(kernel, "column count", cols, 8))
      return std::move(error);
    if (numel % cols || ld < cols || ld % 8)
      return shapeError(kernel, "a row stride of " + str(ld) + " over " +
                                    str(cols) + " columns does not fit " +
                                    str(numel) + " elements");
  }
  unsigned grid = std::min(blocksFor(numel / 8, 256), 1024u);
  // Element %i of the copy to the source element %src.
  std::string source = "      %src = arith.addi %i, %c0 : index\n";
  if (strided)
    source = "      %srcCols = arith.constant " + str(cols) +
             " : index\n      %srcLd = arith.constant " + str(ld) +
             " : index\n      %srcRow = arith.divui %i, %srcCols : index\n"
             "      %srcCol = arith.remui %i, %srcCols : index\n"
             "      %srcStart = arith.muli %srcRow, %srcLd : index\n"
             "      %src = arith.addi %srcStart, %srcCol : index\n";
  int64_t rows = strided ? numel / cols : 1;
  Values values = {{"N", str(numel)},
                   {"NX", str(strided ? (rows - 1) * ld + cols : numel)},
                   {"COLS", str(strided ? cols : numel)},
                   {"LD", str(strided ? ld : numel)},
                   {"SOURCE", source},
                   {"CHUNKS", str(numel / 8)},
                   {"STRIDE", str(int64_t(grid) * 256)},
                   {"G", str(grid)},
                   {"BLOCK_MAX", kBlockAmax}};
  values.insert(values.end(), extra.begin(), extra.end());
  return specialize(kernel,
                    kernel + ("_n" + str(numel)) +
                        (strided ? "_c" + str(cols) + "_ld" + str(ld) : "") +
                        suffix,
                    std::move(values), dims(grid), dims(256));
}

llvm::Expected<KernelSpec> llamac::fp8CastKernel(int64_t numel,
                                                 FP8Format format, int64_t cols,
                                                 int64_t ld) {
  std::string convert;
  std::vector<std::string> values = extractAll("%y", 8, convert);
  convert += fp8Pack(values, format, "%q");
  return elementReader("fp8_cast", fp8Suffix(format), numel, cols, ld,
                       {{"FORMAT", fp8TypeName(format)}, {"CONVERT", convert}});
}

llvm::Expected<KernelSpec> llamac::fp8AmaxKernel(int64_t numel, int64_t cols,
                                                 int64_t ld) {
  return elementReader("fp8_amax", "", numel, cols, ld, {});
}

namespace {
/// What an fp8_cast_transpose instance casts: x, the weight AdamW has just
/// updated, SwiGLU of a gate/up pair, or the gate or up half of SwiGLU's
/// gradient (fp8_cast_transpose.mlir).
enum class CastSource { Tensor, AdamW, SwiGLU, SwiGLUGradGate, SwiGLUGradUp };
} // namespace

/// fp8_cast_transpose of `source` (AdamW: with direct, packed), named
/// `kernel` in errors.
static llvm::Expected<KernelSpec>
castTransposeKernel(const char *kernel, int64_t rows, int64_t cols,
                    FP8Format format, int64_t ld, bool direct,
                    CastSource source) {
  const bool adamw = source == CastSource::AdamW;
  const bool swiglu = source == CastSource::SwiGLU;
  const bool swigluGrad = source == CastSource::SwiGLUGradGate ||
                          source == CastSource::SwiGLUGradUp;
  if (llvm::Error error = checkSize(kernel, "row count", rows, 16))
    return std::move(error);
  if (llvm::Error error = checkSize(kernel, "column count", cols, 16))
    return std::move(error);
  if (!ld)
    ld = cols;
  if (ld < cols || ld % 8)
    return shapeError(kernel, "row stride " + str(ld) + " for " + str(cols) +
                                  " columns: must be at least that and a "
                                  "multiple of 8");
  // Tiles of 128 x 128 (fp8_cast_transpose.mlir); the edge tiles' checks
  // only where the matrix ends inside a tile.
  constexpr int64_t kTile = 128;
  int64_t rowTiles = (rows + kTile - 1) / kTile;
  if (rowTiles > 65535)
    return shapeError(kernel, "row count must be at most " +
                                  str(65535 * kTile) + ", got " + str(rows));
  bool rowEdge = rows % kTile != 0, colEdge = cols % kTile != 0;
  std::string load, directCopy, transpose;
  auto emit = [](std::string &text, const std::string &line) {
    text += "    " + line + "\n";
  };
  // The i1 `name`: whether `row` (if rowEdge) and `col` (if colEdge) lie
  // inside the matrix; empty where both always do.
  auto inside = [&](std::string &text, const std::string &name,
                    const std::string &row, const std::string &col) {
    std::vector<std::string> checks;
    if (rowEdge) {
      emit(text, name + "_r = arith.cmpi ult, " + row + ", %rows : index");
      checks.push_back(name + "_r");
    }
    if (colEdge) {
      emit(text, name + "_c = arith.cmpi ult, " + col + ", %cols : index");
      checks.push_back(name + "_c");
    }
    if (checks.size() < 2)
      return checks.empty() ? std::string() : checks[0];
    emit(text,
         name + " = arith.andi " + checks[0] + ", " + checks[1] + " : i1");
    return name;
  };
  auto constant = [&](std::string &text, const std::string &name,
                      int64_t value) {
    emit(text, name + " = arith.constant " + str(value) + " : index");
  };

  // 1. Load the 8 pieces (zeros outside the matrix), and convert each into
  // its 8 bytes of the tile buffer (bytes outside the matrix are never read
  // back). The AdamW instance loads the weight, its gradient and moments,
  // updates them and stores them back (inside the matrix), and converts the
  // new weight.
  // Each source: its memref, the prefix of its loaded pieces, and whether
  // it is a half of a gate/up output whose rows lie 2 cols apart (SwiGLU's
  // gradient, whose x, dy, is packed: those take indices of their own).
  struct Source {
    std::string memref, prefix;
    bool gateUpHalf = false;
  };
  std::vector<Source> sources{{"%x", "%l"}};
  if (adamw)
    sources = {{"%x", "%ap"},
               {"%grad", "%ag"},
               {"%expAvg", "%am"},
               {"%expAvgSq", "%av"}};
  if (swiglu) // x is the gate half, up the up half, rows ld apart
    sources = {{"%x", "%sg"}, {"%up", "%su"}};
  // SwiGLU's gradient: x is dy (packed), gate and up the halves of the
  // gate/up output (rows 2 cols apart); the up half needs no up.
  const int64_t gateNX = (rows - 1) * 2 * cols + cols;
  if (swigluGrad) {
    sources = {{"%x", "%gy"}, {"%gate", "%gg", true}};
    if (source == CastSource::SwiGLUGradGate)
      sources.push_back({"%up", "%gu", true});
    constant(load, "%lld2", 2 * cols);
    emit(load, "%lRowStart2 = arith.muli %lRow, %lld2 : index");
    emit(load, "%lBase2 = arith.addi %lRowStart2, %lCol : index");
  }
  std::vector<std::string> oks(8);
  auto loadPiece = [&](int i) {
    std::string n = std::to_string(i);
    constant(load, "%lo" + n, i * 16 * ld);
    emit(load, "%li" + n + " = arith.addi %lBase, %lo" + n + " : index");
    constant(load, "%lro" + n, i * 16);
    emit(load, "%lr" + n + " = arith.addi %lRow, %lro" + n + " : index");
    std::string ok = inside(load, "%lok" + n, "%lr" + n, "%lCol");
    oks[i] = ok;
    // Outside: a load of the first elements (no branch, so that all loads
    // are in flight at once), replaced by zeros.
    if (!ok.empty())
      emit(load,
           "%ls" + n + " = arith.select " + ok + ", %li" + n + ", %c0 : index");
    // This piece's index in the gate/up halves.
    if (swigluGrad) {
      constant(load, "%lo2_" + n, i * 16 * 2 * cols);
      emit(load, "%li2_" + n + " = arith.addi %lBase2, %lo2_" + n + " : index");
      if (!ok.empty())
        emit(load, "%ls2_" + n + " = arith.select " + ok + ", %li2_" + n +
                       ", %c0 : index");
    }
    for (const Source &from : sources) {
      std::string index = (ok.empty() ? "%li" : "%ls") + n, size = "@NX@";
      if (from.gateUpHalf) {
        index = (ok.empty() ? "%li2_" : "%ls2_") + n;
        size = str(gateNX);
      }
      std::string loaded = ok.empty() ? from.prefix + n : from.prefix + "v" + n;
      emit(load, loaded + " = vector.load " + from.memref + "[" + index +
                     "] {alignment = 16} : memref<" + size +
                     "xbf16>, vector<8xbf16>");
      if (!ok.empty())
        emit(load, from.prefix + n + " = arith.select " + ok + ", " + loaded +
                       ", %zeroX : vector<8xbf16>");
    }
  };
  std::string tileMax;
  auto convertPiece = [&](int i) {
    std::string n = std::to_string(i);
    std::string value = "%l" + n;
    if (adamw) {
      std::string piece = "_" + n;
      load += adamwUpdate(piece, "%ap" + n, "%ag" + n, "%am" + n, "%av" + n);
      std::string indent = oks[i].empty() ? "" : "  ";
      if (!oks[i].empty())
        emit(load, "scf.if " + oks[i] + " {");
      for (auto [memref, result] : {std::pair{"%x", "%aw_po"},
                                    {"%expAvg", "%aw_mo"},
                                    {"%expAvgSq", "%aw_vo"}})
        emit(load, indent + "vector.store " + result + piece + ", " + memref +
                       "[%li" + n +
                       "] {alignment = 16} : memref<@NX@xbf16>, "
                       "vector<8xbf16>");
      if (!oks[i].empty())
        emit(load, "}");
      value = "%aw_po" + piece;
    }
    if (swiglu) {
      load += swigluMath("_" + n, "%sg" + n, "%su" + n);
      value = "%sw_h_" + n;
    }
    if (swigluGrad) {
      bool gateHalf = source == CastSource::SwiGLUGradGate;
      // The up half's math reads no up (its d gate is left unused).
      load += swigluGradMath("_" + n, "%gy" + n, "%gg" + n,
                             gateHalf ? "%gu" + n : "%zeroX");
      value = (gateHalf ? "%sgr_dgb_" : "%sgr_dub_") + n;
    }
    emit(load, "%f" + n + " = arith.extf " + value +
                   " : vector<8xbf16> to vector<8xf32>");
    emit(load, "%fb" + n + " = arith.bitcast %f" + n +
                   " : vector<8xf32> to vector<8xi32>");
    emit(load,
         "%ab" + n + " = arith.andi %fb" + n + ", %absMask : vector<8xi32>");
    std::string folded = i ? "%mx" + n : "%ab0";
    if (i)
      emit(load, folded + " = arith.maxui " + tileMax + ", %ab" + n +
                     " : vector<8xi32>");
    tileMax = folded;
    emit(load, "%y" + n + " = arith.mulf %f" + n + ", %vs : vector<8xf32>");
    std::vector<std::string> values = extractAll("%y" + n, 8, load);
    load += fp8Pack(values, format, "%q" + n);
    // Tile row lr + 16 i: its chunks swizzled by i.
    constant(load, "%lsw" + n, i);
    emit(load, "%lx" + n + " = arith.xori %lChunk, %lsw" + n + " : index");
    emit(load, "%lxa" + n + " = arith.muli %lx" + n + ", %c16 : index");
    constant(load, "%lto" + n, i * 16 * kTile);
    emit(load, "%lt0" + n + " = arith.addi %lTileBase, %lto" + n + " : index");
    emit(load,
         "%lt" + n + " = arith.addi %lt0" + n + ", %lxa" + n + " : index");
    emit(load, "vector.store %q" + n + ", %tile[%lt" + n +
                   "] {alignment = 8} : memref<16384xi8, "
                   "#gpu.address_space<workgroup>>, vector<8xi8>");
  };
  // The cast alone loads all 8 pieces before converting them, so that its 8
  // loads are in flight at once. AdamW's 32 loads held at once took 202
  // registers (one block per SM: 37.1 ms for Llama 2 7B's weights on an
  // H200); a piece at a time takes 71 (three blocks: 31.6 ms; two pieces at a
  // time 33.3 ms, four 31.7 ms). SwiGLU and its gradient (2 and 3 sources,
  // and their math) two pieces at a time: 58 and 89 registers (101 and 147
  // with all 8), two blocks or more per SM.
  int group = adamw ? 1 : (swiglu || swigluGrad) ? 2 : 8;
  for (int first = 0; first < 8; first += group) {
    for (int i = first; i < first + group; ++i)
      loadPiece(i);
    for (int i = first; i < first + group; ++i)
      convertPiece(i);
  }
  emit(load, "%m = vector.reduction <maxui>, " + tileMax +
                 " : vector<8xi32> into i32");

  // 2. Thread tid copies the 16-byte chunk tid mod 8 of tile rows tid / 8 +
  // 32 i (swizzled by tid / 128 + 2 i), i = 0..3, into direct.
  if (direct) {
    emit(directCopy, "%dr = arith.divui %tid, %c8 : index");
    emit(directCopy, "%dj = arith.remui %tid, %c8 : index");
    emit(directCopy, "%dHalf = arith.divui %tid, %c128 : index");
    emit(directCopy, "%dc = arith.muli %dj, %c16 : index");
    emit(directCopy, "%dCol = arith.addi %col0, %dc : index");
    emit(directCopy, "%dRow = arith.addi %row0, %dr : index");
    emit(directCopy, "%dRowStart = arith.muli %dRow, %cols : index");
    emit(directCopy, "%dBase = arith.addi %dRowStart, %dCol : index");
    emit(directCopy, "%dTileRow = arith.muli %dr, %c128 : index");
    for (int i = 0; i < 4; ++i) {
      std::string n = std::to_string(i);
      constant(directCopy, "%dsw" + n, 2 * i);
      emit(directCopy,
           "%dsx" + n + " = arith.addi %dHalf, %dsw" + n + " : index");
      emit(directCopy, "%dx" + n + " = arith.xori %dj, %dsx" + n + " : index");
      emit(directCopy, "%dxa" + n + " = arith.muli %dx" + n + ", %c16 : index");
      constant(directCopy, "%dto" + n, i * 32 * kTile);
      emit(directCopy,
           "%dt0" + n + " = arith.addi %dTileRow, %dto" + n + " : index");
      emit(directCopy,
           "%dt" + n + " = arith.addi %dt0" + n + ", %dxa" + n + " : index");
      constant(directCopy, "%dro" + n, i * 32);
      emit(directCopy,
           "%dr" + n + " = arith.addi %dRow, %dro" + n + " : index");
      constant(directCopy, "%doo" + n, i * 32 * cols);
      emit(directCopy,
           "%do" + n + " = arith.addi %dBase, %doo" + n + " : index");
      std::string ok = inside(directCopy, "%dok" + n, "%dr" + n, "%dCol");
      std::string indent = ok.empty() ? "" : "  ";
      if (!ok.empty())
        emit(directCopy, "scf.if " + ok + " {");
      emit(directCopy, indent + "%dv" + n + " = vector.load %tile[%dt" + n +
                           "] {alignment = 16} : memref<16384xi8, "
                           "#gpu.address_space<workgroup>>, vector<16xi8>");
      emit(directCopy, indent + "vector.store %dv" + n + ", %direct[%do" + n +
                           "] {alignment = 16} : memref<@RC@xi8>, "
                           "vector<16xi8>");
      if (!ok.empty())
        emit(directCopy, "}");
    }
  }

  // 3. One 4-byte word per tile row, 4 x 4 byte transposes (two byte
  // permutes per output word), 4 stores of 16 bytes.
  emit(transpose, "%tRowIn = arith.addi %row0, %tRow : index");
  std::string ok = inside(transpose, "%tok", "%tRowIn", "%tCol0");
  std::string indent = ok.empty() ? "" : "  ";
  if (!ok.empty())
    emit(transpose, "scf.if " + ok + " {");
  auto line = [&](const std::string &text) { emit(transpose, indent + text); };
  auto shuffle = [&](const std::string &result, const std::string &a,
                     const std::string &b, const char *mask, int width) {
    std::string w = std::to_string(width);
    line(result + " = vector.shuffle " + a + ", " + b + " " + mask +
         " : vector<" + w + "xi8>, vector<" + w + "xi8>");
  };
  for (int k = 0; k < 16; ++k) {
    std::string n = std::to_string(k);
    line("%to" + n + " = arith.constant " + str(k * kTile) + " : index");
    line("%ti" + n + " = arith.addi %tIn, %to" + n + " : index");
    line("%tw" + n + " = vector.load %tile[%ti" + n +
         "] {alignment = 4} : memref<16384xi8, "
         "#gpu.address_space<workgroup>>, vector<4xi8>");
  }
  // Word g of column j: bytes j of tile rows 4 g..4 g + 3.
  for (int g = 0; g < 4; ++g) {
    auto word = [&](int k) { return "%tw" + std::to_string(4 * g + k); };
    std::string p = "%tp" + std::to_string(g);
    shuffle(p + "lo01", word(0), word(1), "[0, 4, 1, 5]", 4);
    shuffle(p + "hi01", word(0), word(1), "[2, 6, 3, 7]", 4);
    shuffle(p + "lo23", word(2), word(3), "[0, 4, 1, 5]", 4);
    shuffle(p + "hi23", word(2), word(3), "[2, 6, 3, 7]", 4);
    for (int j = 0; j < 4; ++j) {
      std::string half = j < 2 ? "lo" : "hi";
      shuffle("%tg" + std::to_string(g) + "_" + std::to_string(j),
              p + half + "01", p + half + "23",
              j % 2 ? "[2, 3, 6, 7]" : "[0, 1, 4, 5]", 4);
    }
  }
  for (int j = 0; j < 4; ++j) {
    std::string n = std::to_string(j);
    auto word = [&](int g) {
      return "%tg" + std::to_string(g) + "_" + std::to_string(j);
    };
    shuffle("%th" + n + "a", word(0), word(1), "[0, 1, 2, 3, 4, 5, 6, 7]", 4);
    shuffle("%th" + n + "b", word(2), word(3), "[0, 1, 2, 3, 4, 5, 6, 7]", 4);
    shuffle("%tv" + n, "%th" + n + "a", "%th" + n + "b",
            "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]", 8);
    line("%too" + n + " = arith.constant " + str(j * rows) + " : index");
    line("%toi" + n + " = arith.addi %tOut, %too" + n + " : index");
    line("vector.store %tv" + n + ", %out[%toi" + n +
         "] {alignment = 16} : memref<@RC@xi8>, vector<16xi8>");
  }
  if (!ok.empty())
    emit(transpose, "}");
  const char *prefix = adamw                                  ? "adamw_"
                       : swiglu                               ? "swiglu_"
                       : source == CastSource::SwiGLUGradGate ? "swiglu_dgate_"
                       : source == CastSource::SwiGLUGradUp   ? "swiglu_dup_"
                                                              : "";
  std::string extraArgs, prelude;
  if (adamw) {
    extraArgs = "%grad: memref<@NX@xbf16>, %expAvg: memref<@NX@xbf16>, "
                "%expAvgSq: memref<@NX@xbf16>, %hyper: memref<8xf32>, "
                "%normsq: memref<1xf32>, ";
    prelude = kAdamWPrelude;
  } else if (swiglu) {
    extraArgs = "%up: memref<@NX@xbf16>, ";
    prelude = "    %sw_one = arith.constant dense<1.0> : vector<8xf32>";
  } else if (swigluGrad) {
    std::string gateType = "memref<" + str(gateNX) + "xbf16>, ";
    extraArgs = "%gate: " + gateType;
    if (source == CastSource::SwiGLUGradGate)
      extraArgs += "%up: " + gateType;
    prelude = "    %sgr_one = arith.constant dense<1.0> : vector<8xf32>";
  }
  return specialize("fp8_cast_transpose",
                    prefix + std::string("fp8_cast_transpose_r") + str(rows) +
                        "_c" + str(cols) + (ld != cols ? "_ld" + str(ld) : "") +
                        (direct && !adamw ? "_both" : "") + fp8Suffix(format),
                    {{"LOAD", load},
                     {"DIRECT", directCopy},
                     {"TRANSPOSE", transpose},
                     {"DIRECT_ARG", direct ? "%direct: memref<@RC@xi8>, " : ""},
                     {"EXTRA_ARGS", extraArgs},
                     {"PRELUDE", prelude},
                     {"R", str(rows)},
                     {"C", str(cols)},
                     {"LD", str(ld)},
                     {"NX", str((rows - 1) * ld + cols)},
                     {"RC", str(rows * cols)},
                     {"FORMAT", fp8TypeName(format)},
                     {"BLOCK_MAX", kBlockAmax}},
                    dims(blocksFor(cols, kTile), unsigned(rowTiles)),
                    dims(256));
}

llvm::Expected<KernelSpec>
llamac::fp8CastTransposeKernel(int64_t rows, int64_t cols, FP8Format format,
                               int64_t ld, bool direct) {
  return castTransposeKernel("fp8_cast_transpose", rows, cols, format, ld,
                             direct, CastSource::Tensor);
}

llvm::Expected<KernelSpec>
llamac::swigluGradFP8CastTransposeKernel(int64_t rows, int64_t width,
                                         FP8Format format, bool gateHalf) {
  return castTransposeKernel(gateHalf ? "swiglu_dgate_fp8_cast_transpose"
                                      : "swiglu_dup_fp8_cast_transpose",
                             rows, width, format, width, /*direct=*/true,
                             gateHalf ? CastSource::SwiGLUGradGate
                                      : CastSource::SwiGLUGradUp);
}

llvm::Expected<KernelSpec>
llamac::swigluFP8CastTransposeKernel(int64_t rows, int64_t width,
                                     FP8Format format) {
  return castTransposeKernel("swiglu_fp8_cast_transpose", rows, width, format,
                             2 * width, /*direct=*/true, CastSource::SwiGLU);
}

llvm::Expected<KernelSpec>
llamac::adamwFP8CastTransposeKernel(int64_t rows, int64_t cols,
                                    FP8Format format) {
  return castTransposeKernel("adamw_fp8_cast_transpose", rows, cols, format,
                             cols, /*direct=*/true, CastSource::AdamW);
}

llvm::Expected<KernelSpec> llamac::fp8CurrentScaleKernel(FP8Format format,
                                                         int64_t margin) {
  if (margin < 0 || margin > 64)
    return shapeError("fp8_current_scale",
                      "margin must be in [0, 64], got " + str(margin));
  return specialize("fp8_current_scale",
                    std::string("fp8_current_scale") + fp8Suffix(format) +
                        "_m" + str(margin),
                    {{"FORMAT", fp8TypeName(format)},
                     {"FMAX", f64Bits(fp8Largest(format))},
                     {"MARGIN_SCALE", f64Bits(std::ldexp(1.0, -int(margin)))}},
                    dims(1), dims(32));
}

llvm::Expected<KernelSpec> llamac::fp8ScaleUpdateKernel(int64_t tensors,
                                                        int64_t historyLength,
                                                        FP8Format format,
                                                        int64_t margin,
                                                        bool mostRecent) {
  const char *kernel = "fp8_scale_update";
  if (llvm::Error error = checkSize(kernel, "tensor count", tensors))
    return std::move(error);
  if (llvm::Error error = checkSize(kernel, "history length", historyLength))
    return std::move(error);
  if (historyLength > 1024)
    return shapeError(kernel, "history length must be at most 1024, got " +
                                  str(historyLength));
  if (margin < 0 || margin > 64)
    return shapeError(kernel, "margin must be in [0, 64], got " + str(margin));
  unsigned block = threadsFor(historyLength, 1024);
  return specialize(kernel,
                    "fp8_scale_update_t" + str(tensors) + "_l" +
                        str(historyLength) + fp8Suffix(format) + "_m" +
                        str(margin) + (mostRecent ? "_recent" : ""),
                    {{"T", str(tensors)},
                     {"T4", str(4 * tensors)},
                     {"L", str(historyLength)},
                     {"TL", str(tensors * historyLength)},
                     {"FMAX", f64Bits(fp8Largest(format))},
                     {"MARGIN_SCALE", f64Bits(std::ldexp(1.0, -int(margin)))},
                     {"MOST_RECENT", boolean(mostRecent)},
                     {"BLOCK", str(block)},
                     {"WARPS", str(block / 32)}},
                    dims(unsigned(tensors)), dims(block));
}

llvm::Expected<KernelSpec> llamac::globalNormSqKernel(int64_t numel) {
  const char *kernel = "global_norm_sq";
  if (llvm::Error error = checkSize(kernel, "element count", numel, 8))
    return std::move(error);
  unsigned grid = std::min(blocksFor(numel / 8, 256), 1024u);
  return specialize(kernel, "global_norm_sq_n" + str(numel),
                    {{"N", str(numel)},
                     {"CHUNKS", str(numel / 8)},
                     {"STRIDE", str(int64_t(grid) * 256)},
                     {"G", str(grid)}},
                    dims(grid), dims(256));
}

/// The block of embedding_fwd and embedding_bwd: a thread per chunk of 8
/// elements of a row, at most 256.
static unsigned embeddingBlock(int64_t hidden) {
  return threadsFor(hidden / 8, 256);
}

/// Shared by embedding_fwd and embedding_bwd: `extra` sets further
/// placeholders and `suffix` ends the kernel's name.
static llvm::Expected<KernelSpec> embeddingKernel(llvm::StringRef kernel,
                                                  int64_t rows, int64_t vocab,
                                                  int64_t hidden,
                                                  Values extra = {},
                                                  llvm::StringRef suffix = "") {
  if (llvm::Error error = checkSize(kernel, "row count", rows))
    return std::move(error);
  if (llvm::Error error = checkSize(kernel, "hidden size", hidden, 8))
    return std::move(error);
  if (vocab <= 0 || vocab > INT32_MAX)
    return shapeError(kernel, "vocabulary size must be in [1, 2^31), got " +
                                  str(vocab));
  unsigned block = embeddingBlock(hidden);
  extra.insert(extra.end(), {{"T", str(rows)},
                             {"V", str(vocab)},
                             {"H", str(hidden)},
                             {"VH", str(vocab * hidden)},
                             {"TH", str(rows * hidden)},
                             {"BLOCK", str(block)},
                             {"CHUNKS", str(hidden / 8)}});
  return specialize(kernel,
                    (kernel + "_t" + str(rows) + "_v" + str(vocab) + "_h" +
                     str(hidden) + suffix)
                        .str(),
                    std::move(extra), dims(unsigned(rows)), dims(block));
}

llvm::Expected<KernelSpec>
llamac::embeddingForwardKernel(int64_t rows, int64_t vocab, int64_t hidden) {
  return embeddingKernel("embedding_fwd", rows, vocab, hidden);
}

llvm::Expected<KernelSpec> llamac::embeddingBackwardKernel(int64_t rows,
                                                           int64_t vocab,
                                                           int64_t hidden,
                                                           bool accumulate) {
  const char *kernel = "embedding_bwd";
  // The row mask (a bit a row) and three words per warp live in static
  // shared memory: at most 48 KiB, 12288 words, of which up to 24 are the
  // warps'.
  constexpr int64_t kMaxRows = (12288 - 3 * 8) * 32;
  if (rows > kMaxRows)
    return shapeError(kernel, "row count must be at most " + str(kMaxRows) +
                                  ", got " + str(rows));
  // Up to as many blocks share a frequent id's row as a thread of one
  // block would have chunks of it.
  unsigned block = embeddingBlock(hidden);
  return embeddingKernel(kernel, rows, vocab, hidden,
                         {{"W", str((rows + 31) / 32)},
                          {"TLAST", str(rows - 1)},
                          {"WARPS", str(block / 32)},
                          {"PARTS", str((hidden / 8 + block - 1) / block)},
                          {"ACCUMULATE", boolean(accumulate)}},
                         accumulate ? "_acc" : "");
}

/// rms_norm_fwd, writing y in bf16, or with `format` its FP8 copy (and
/// amax) instead.
static llvm::Expected<KernelSpec>
rmsNormForward(int64_t rows, int64_t hidden, double eps,
               std::optional<FP8Format> format) {
  const char *kernel = "rms_norm_fwd";
  if (llvm::Error error = checkSize(kernel, "row count", rows))
    return std::move(error);
  if (llvm::Error error = checkSize(kernel, "hidden size", hidden, 8))
    return std::move(error);
  if (!(eps >= 0) || !std::isfinite(eps))
    return shapeError(kernel, "eps must be finite and non-negative");
  std::string epsBits = f32Bits(float(eps));
  // The FP8 instances reduce the amax over 8 warps (kBlockAmax).
  unsigned block = format ? 256 : threadsFor(hidden / 8, 256);
  // The output's values first: they hold @TH@, which the shape's fill in.
  Values values;
  if (!format) {
    values.insert(values.end(),
                  {{"OUTPUT_ARGS", "%y: memref<@TH@xbf16>"},
                   {"AMAX_WORKGROUP", ""},
                   {"OUTPUT_PRELUDE", ""},
                   {"STORE", "      vector.store %yb, %y[%i] {alignment = 16} "
                             ": memref<@TH@xbf16>, vector<8xbf16>\n"
                             "      %next = arith.addi %acc, %zeroBits : "
                             "vector<8xi32>"},
                   {"BLOCK_MAX", ""}});
  } else {
    // fp8_cast's conversion of y and its amax bits (fp8_cast.mlir).
    std::string store =
        "      %yc = arith.extf %yb : vector<8xbf16> to "
        "vector<8xf32>\n"
        "      %ybits = arith.bitcast %yc : vector<8xf32> to "
        "vector<8xi32>\n"
        "      %yabs = arith.andi %ybits, %absMask : "
        "vector<8xi32>\n"
        "      %next = arith.maxui %acc, %yabs : vector<8xi32>\n"
        "      %y = arith.mulf %yc, %vs : vector<8xf32>\n";
    std::vector<std::string> lanes = extractAll("%y", 8, store);
    store += fp8Pack(lanes, *format, "%q");
    store += "      vector.store %q, %out[%i] {alignment = 8} : "
             "memref<@TH@xi8>, vector<8xi8>";
    values.insert(
        values.end(),
        {{"OUTPUT_ARGS", "%scale: memref<1xf32>, %out: memref<@TH@xi8>, "
                         "%amax: memref<1xi32>"},
         {"AMAX_WORKGROUP", ", %maxes : memref<32xi32, "
                            "#gpu.address_space<workgroup>> {llvm.align = 16 "
                            ": i64}"},
         {"OUTPUT_PRELUDE",
          "    %absMask = arith.constant dense<2147483647> : vector<8xi32>\n"
          "    %s = memref.load %scale[%c0] : memref<1xf32>\n"
          "    %vs = vector.broadcast %s : f32 to vector<8xf32>"},
         {"STORE", store},
         {"BLOCK_MAX", "    %m = vector.reduction <maxui>, %yMax : "
                       "vector<8xi32> into i32\n" +
                           std::string(kBlockAmax)}});
  }
  values.insert(values.end(), {{"T", str(rows)},
                               {"H", str(hidden)},
                               {"TH", str(rows * hidden)},
                               {"EPS", epsBits},
                               {"BLOCK", str(block)},
                               {"WARPS", str(block / 32)},
                               {"CHUNKS", str(hidden / 8)}});
  return specialize(kernel,
                    "rms_norm_fwd_t" + str(rows) + "_h" + str(hidden) + "_e" +
                        epsBits.substr(2) + (format ? fp8Suffix(*format) : ""),
                    std::move(values), dims(unsigned(rows)), dims(block));
}

llvm::Expected<KernelSpec>
llamac::rmsNormForwardKernel(int64_t rows, int64_t hidden, double eps) {
  return rmsNormForward(rows, hidden, eps, std::nullopt);
}

llvm::Expected<KernelSpec> llamac::rmsNormFP8ForwardKernel(int64_t rows,
                                                           int64_t hidden,
                                                           double eps,
                                                           FP8Format format) {
  return rmsNormForward(rows, hidden, eps, format);
}

llvm::Expected<KernelSpec>
llamac::rmsNormBackwardKernel(int64_t rows, int64_t hidden, bool accumulate) {
  const char *kernel = "rms_norm_bwd";
  if (llvm::Error error = checkSize(kernel, "row count", rows))
    return std::move(error);
  if (llvm::Error error = checkSize(kernel, "hidden size", hidden, 8))
    return std::move(error);
  // The block keeps its dw columns in static shared memory (48 KiB at most).
  if (hidden > 8192)
    return shapeError(kernel,
                      "hidden size must be at most 8192, got " + str(hidden));
  unsigned block = threadsFor(hidden / 8, 256);
  int64_t grid = std::min<int64_t>(rows, 512);
  return specialize(kernel,
                    "rms_norm_bwd_t" + str(rows) + "_h" + str(hidden) +
                        (accumulate ? "_acc" : ""),
                    {{"T", str(rows)},
                     {"H", str(hidden)},
                     {"TH", str(rows * hidden)},
                     {"G", str(grid)},
                     {"GH", str(grid * hidden)},
                     {"ACCUMULATE", boolean(accumulate)},
                     {"BLOCK", str(block)},
                     {"WARPS", str(block / 32)},
                     {"CHUNKS", str(hidden / 8)}},
                    dims(unsigned(grid)), dims(block));
}

llvm::Expected<KernelSpec> llamac::columnSumKernel(int64_t rows, int64_t cols,
                                                   bool accumulate) {
  const char *kernel = "column_sum";
  if (llvm::Error error = checkSize(kernel, "row count", rows))
    return std::move(error);
  if (llvm::Error error = checkSize(kernel, "column count", cols))
    return std::move(error);
  int64_t warps = std::clamp<int64_t>((rows + 3) / 4, 1, 32);
  return specialize(kernel,
                    "column_sum_g" + str(rows) + "_n" + str(cols) +
                        (accumulate ? "_acc" : ""),
                    {{"G", str(rows)},
                     {"ACCUMULATE", boolean(accumulate)},
                     {"GLAST", str(rows - 1)},
                     {"N", str(cols)},
                     {"LAST", str(cols - 1)},
                     {"GN", str(rows * cols)},
                     {"WARPS", str(warps)},
                     {"BLOCK", str(warps * 32)}},
                    dims(blocksFor(cols, 32)), dims(unsigned(warps * 32)));
}

/// Shared by swiglu_fwd and swiglu_bwd.
static llvm::Expected<KernelSpec> swigluKernel(llvm::StringRef kernel,
                                               int64_t rows, int64_t width,
                                               Values extra = {}) {
  if (llvm::Error error = checkSize(kernel, "row count", rows))
    return std::move(error);
  if (llvm::Error error = checkSize(kernel, "width", width, 8))
    return std::move(error);
  int64_t total = rows * (width / 8);
  Values values = {{"F", str(width)},
                   {"F2", str(2 * width)},
                   {"T", str(rows)},
                   {"TF", str(rows * width)},
                   {"TF2", str(2 * rows * width)},
                   {"CHUNKS", str(width / 8)},
                   {"TOTAL", str(total)}};
  values.insert(values.end(), extra.begin(), extra.end());
  return specialize(kernel,
                    (kernel + "_t" + str(rows) + "_f" + str(width)).str(),
                    std::move(values), dims(blocksFor(total, 256)), dims(256));
}

llvm::Expected<KernelSpec> llamac::swigluForwardKernel(int64_t rows,
                                                       int64_t width) {
  return swigluKernel("swiglu_fwd", rows, width,
                      {{"SWIGLU", swigluMath("", "%gv", "%uv")}});
}

llvm::Expected<KernelSpec> llamac::swigluBackwardKernel(int64_t rows,
                                                        int64_t width) {
  return swigluKernel(
      "swiglu_bwd", rows, width,
      {{"SWIGLU_GRAD", swigluGradMath("", "%dv", "%gv", "%uv")}});
}

/// The POSITIONS_ARG of a kernel that reads the position_ids of `tokens`
/// tokens (packed sequences), or nothing.
static std::string positionsArgument(bool packed, int64_t tokens) {
  return packed ? ", %positions: memref<" + std::to_string(tokens) + "xi32>"
                : "";
}

/// The MLIR lines of rope_heads' and rope_table's POSITION placeholder:
/// %pf = float(the RoPE position of row %t): positions[t] (signed), or %p =
/// t mod SEQ.
static std::string ropePosition(bool packed, int64_t tokens) {
  return packed ? "%pi = memref.load %positions[%t] : memref<" + str(tokens) +
                      "xi32>\n    %pf = arith.sitofp %pi : i32 to f32"
                : "%pi = arith.index_cast %p : index to i32\n"
                  "    %pf = arith.uitofp %pi : i32 to f32";
}

/// The row, sequence and head-dim checks rope_heads and rope_table share.
static llvm::Error checkRopeRows(llvm::StringRef kernel, const HeadsLayout &l) {
  if (llvm::Error error = checkSize(kernel, "row count", l.rows))
    return error;
  if (llvm::Error error = checkSize(kernel, "sequence length", l.seqLen))
    return error;
  if (llvm::Error error = checkSize(kernel, "head dim", l.headDim, 16))
    return error;
  if (l.rows % l.seqLen)
    return shapeError(kernel, "row count " + str(l.rows) +
                                  " is not a multiple of the sequence length");
  return llvm::Error::success();
}

llvm::Expected<KernelSpec> llamac::ropeTableKernel(const HeadsLayout &layout) {
  const char *kernel = "rope_table";
  const HeadsLayout &l = layout;
  if (llvm::Error error = checkRopeRows(kernel, l))
    return std::move(error);
  int64_t half = l.headDim / 2;
  unsigned block = threadsFor(half, 1024);
  return specialize(kernel,
                    "rope_table_t" + str(l.rows) + "_s" + str(l.seqLen) + "_d" +
                        str(l.headDim) + (l.positions ? "_pos" : ""),
                    {{"POSITIONS_ARG", positionsArgument(l.positions, l.rows)},
                     {"POSITION", ropePosition(l.positions, l.rows)},
                     {"T", str(l.rows)},
                     {"SEQ", str(l.seqLen)},
                     {"HALF", str(half)},
                     {"TABLE", str(l.rows * l.headDim)},
                     {"BLOCK", str(block)}},
                    dims(unsigned(l.rows)), dims(block));
}

llvm::Expected<KernelSpec> llamac::ropeHeadsKernel(const HeadsLayout &layout,
                                                   HeadsDirection direction,
                                                   Rotation rotation) {
  const char *kernel = "rope_heads";
  const HeadsLayout &l = layout;
  if (llvm::Error error = checkRopeRows(kernel, l))
    return std::move(error);
  if (llvm::Error error = checkSize(kernel, "row stride", l.rowStride, 8))
    return std::move(error);
  int64_t heads = l.numQueryHeads + l.numKeyHeads + l.numValueHeads;
  if (l.numQueryHeads <= 0 || l.numKeyHeads < 0 || l.numValueHeads < 0)
    return shapeError(kernel, "needs query heads and no negative head count");
  if (heads * l.headDim > l.rowStride)
    return shapeError(kernel,
                      "heads extend beyond the row stride " + str(l.rowStride));
  if (l.positions && rotation == Rotation::None)
    return shapeError(kernel, "positions without a rotation");
  bool inPlace = direction == HeadsDirection::InPlace;
  if (inPlace && rotation == Rotation::None)
    return shapeError(kernel, "in place without a rotation");
  int64_t half = l.headDim / 2;
  int64_t rotated =
      rotation == Rotation::None ? 0 : l.numQueryHeads + l.numKeyHeads;
  // In place, only the rotated heads are items.
  int64_t items = (inPlace ? rotated : heads) * (half / 8);
  unsigned block = threadsFor(items, 256);
  bool toHeads = direction == HeadsDirection::ToHeads;
  const char *rotationName = rotation == Rotation::None      ? ""
                             : rotation == Rotation::Forward ? "_rope"
                                                             : "_ropeinv";
  const char *directionName = inPlace   ? "in_place"
                              : toHeads ? "to_heads"
                                        : "to_tokens";
  // The source is head-major only going to tokens (its elements %hi1 and
  // %hi2; token rows' %ti1 and %ti2).
  bool fromHeads = direction == HeadsDirection::ToTokens;
  std::string tokensSize = str(l.rows * l.rowStride),
              headsSize = str(l.rows * heads * l.headDim);
  return specialize(
      kernel,
      directionName + std::string("_t") + str(l.rows) + "_s" + str(l.seqLen) +
          "_ld" + str(l.rowStride) + "_d" + str(l.headDim) + "_q" +
          str(l.numQueryHeads) + "k" + str(l.numKeyHeads) + "v" +
          str(l.numValueHeads) + rotationName + (l.positions ? "_pos" : ""),
      {{"HEADS_ARG", inPlace ? "" : ", %heads: memref<" + headsSize + "xbf16>"},
       {"POSITIONS_ARG", positionsArgument(l.positions, l.rows)},
       {"POSITION", ropePosition(l.positions, l.rows)},
       {"T", str(l.rows)},
       {"LD", str(l.rowStride)},
       {"TLD", tokensSize},
       {"REGION", str(l.rows * l.headDim)},
       {"D", str(l.headDim)},
       {"HALF", str(half)},
       {"HALF2", str(2 * half)},
       {"HCHUNKS", str(half / 8)},
       {"ITEMS", str(items)},
       {"SEQ", str(l.seqLen)},
       {"NH", str(heads)},
       {"NQ", str(l.numQueryHeads)},
       {"NK", str(l.numKeyHeads)},
       {"NV", str(l.numValueHeads)},
       {"NQK", str(l.numQueryHeads + l.numKeyHeads)},
       {"NROT", str(rotated)},
       {"SIGN", rotation == Rotation::Inverse ? "-1.0" : "1.0"},
       {"SRC", fromHeads ? "%heads" : "%tokens"},
       {"SRCI", fromHeads ? "%hi" : "%ti"},
       {"SRCN", fromHeads ? headsSize : tokensSize},
       {"DST", toHeads ? "%heads" : "%tokens"},
       {"DSTI", toHeads ? "%hi" : "%ti"},
       {"DSTN", toHeads ? headsSize : tokensSize},
       {"BLOCK", str(block)}},
      dims(unsigned(l.rows)), dims(block));
}

/// Shared by causal_softmax_fwd and attention_softmax_bwd.
static llvm::Expected<KernelSpec> softmaxKernel(llvm::StringRef kernel,
                                                int64_t blocks, int64_t seqLen,
                                                ScoreType scoreType,
                                                int64_t packedHeads) {
  if (llvm::Error error = checkSize(kernel, "batch * heads", blocks))
    return std::move(error);
  if (llvm::Error error = checkSize(kernel, "sequence length", seqLen, 8))
    return std::move(error);
  if (packedHeads < 0 || (packedHeads > 0 && blocks % packedHeads != 0))
    return shapeError(kernel, "batch * heads " + str(blocks) +
                                  " is not a multiple of the heads " +
                                  str(packedHeads));
  int64_t rows = blocks * seqLen;
  // A row's threads (whole warps), and as many rows per block as fit in
  // 256 threads.
  unsigned block = threadsFor(seqLen / 8, 256);
  unsigned rowsPerBlock = 256 / block;
  if (rows % rowsPerBlock != 0)
    return shapeError(kernel, "rows " + str(rows) +
                                  " are not a multiple of the rows per "
                                  "block " +
                                  str(rowsPerBlock));
  if (rows / rowsPerBlock > INT32_MAX)
    return shapeError(kernel, "too many rows for the grid: " + str(rows));
  // %start: 0, or query q's window start from the position of its token
  // (sequence r / (heads seq), column q).
  bool packed = packedHeads > 0;
  int64_t tokens = packed ? blocks / packedHeads * seqLen : 0;
  std::string windowStart =
      packed
          ? "%rowsPerSequence = arith.constant " + str(packedHeads * seqLen) +
                " : index\n"
                "    %sequence = arith.divui %r, %rowsPerSequence : index\n"
                "    %firstToken = arith.muli %sequence, %seq : index\n"
                "    %token = arith.addi %firstToken, %q : index\n"
                "    %pos = memref.load %positions[%token] : memref<" +
                str(tokens) +
                "xi32>\n"
                "    %posIndex = arith.index_cast %pos : i32 to index\n"
                "    %above = arith.maxsi %posIndex, %c0 : index\n"
                "    %back = arith.minsi %above, %q : index\n"
                "    %start = arith.subi %q, %back : index"
          : "%start = arith.constant 0 : index";
  bool f32 = scoreType == ScoreType::F32;
  // Rows of at most 256 columns are one warp's chunks: the kernel holds
  // them in registers (the _warp templates; same launch).
  std::string templateName = (kernel + (seqLen <= 256 ? "_warp" : "")).str();
  // f32 -> f32 "conversions" are bitcasts, so one template serves both types.
  return specialize(templateName,
                    (kernel + "_b" + str(blocks) + "_s" + str(seqLen) +
                     (f32 ? "_f32" : "_bf16") +
                     (packed ? "_packed_h" + str(packedHeads) : ""))
                        .str(),
                    {{"POSITIONS_ARG", positionsArgument(packed, tokens)},
                     {"WINDOW_START", windowStart},
                     {"R", str(rows)},
                     {"SEQ", str(seqLen)},
                     {"RS", str(rows * seqLen)},
                     {"STYPE", f32 ? "f32" : "bf16"},
                     {"SCONV", f32 ? "arith.bitcast" : "arith.extf"},
                     {"BLOCK", str(block)},
                     {"WARPS", str(block / 32)},
                     {"ROWS", str(rowsPerBlock)},
                     {"THREADS", str(rowsPerBlock * block)},
                     {"CHUNKS", str(seqLen / 8)}},
                    dims(unsigned(rows / rowsPerBlock)),
                    dims(rowsPerBlock * block));
}

llvm::Expected<KernelSpec>
llamac::causalSoftmaxForwardKernel(int64_t blocks, int64_t seqLen,
                                   ScoreType scoreType, int64_t packedHeads) {
  return softmaxKernel("causal_softmax_fwd", blocks, seqLen, scoreType,
                       packedHeads);
}

llvm::Expected<KernelSpec> llamac::attentionSoftmaxBackwardKernel(
    int64_t blocks, int64_t seqLen, ScoreType scoreType, int64_t packedHeads) {
  return softmaxKernel("attention_softmax_bwd", blocks, seqLen, scoreType,
                       packedHeads);
}

/// Shared by count_targets and cross_entropy: the loss's shapes.
static llvm::Error checkLossShape(llvm::StringRef kernel, int64_t rows,
                                  int64_t seqLen, int64_t vocab) {
  if (llvm::Error error = checkSize(kernel, "sequence length", seqLen))
    return error;
  if (llvm::Error error = checkSize(kernel, "row count", rows, seqLen))
    return error;
  if (rows > INT32_MAX)
    return shapeError(kernel, "too many rows: " + str(rows));
  if (vocab <= 0 || vocab > INT32_MAX)
    return shapeError(kernel, "vocabulary size must be in [1, 2^31), got " +
                                  str(vocab));
  return llvm::Error::success();
}

llvm::Expected<KernelSpec> llamac::countTargetsKernel(int64_t rows,
                                                      int64_t seqLen,
                                                      int64_t vocab,
                                                      bool hostCount) {
  const char *kernel = "count_targets";
  if (llvm::Error error = checkLossShape(kernel, rows, seqLen, vocab))
    return std::move(error);
  unsigned block = threadsFor(rows, 1024);
  return specialize(kernel,
                    "count_targets_t" + str(rows) + "_s" + str(seqLen) + "_v" +
                        str(vocab) + (hostCount ? "_host" : ""),
                    {{"T", str(rows)},
                     {"HOST_COUNT", boolean(hostCount)},
                     {"SLOT", str(package::kLossTokensSlot)},
                     {"HYPERS", str(package::kHyperparameterCount)},
                     {"TLAST", str(rows - 1)},
                     {"SEQ", str(seqLen)},
                     {"SEQLAST", str(seqLen - 1)},
                     {"V", str(vocab)},
                     {"BLOCK", str(block)},
                     {"WARPS", str(block / 32)}},
                    dims(1), dims(block));
}

llvm::Expected<KernelSpec>
llamac::crossEntropyKernel(int64_t rows, int64_t seqLen, int64_t vocab) {
  const char *kernel = "cross_entropy";
  if (llvm::Error error = checkLossShape(kernel, rows, seqLen, vocab))
    return std::move(error);
  if (llvm::Error error = checkSize(kernel, "vocabulary size", vocab, 8))
    return std::move(error);
  unsigned block = threadsFor(vocab / 8, 1024);
  return specialize(kernel,
                    "cross_entropy_t" + str(rows) + "_s" + str(seqLen) + "_v" +
                        str(vocab),
                    {{"T", str(rows)},
                     {"TLAST", str(rows - 1)},
                     {"SEQ", str(seqLen)},
                     {"SEQLAST", str(seqLen - 1)},
                     {"V", str(vocab)},
                     {"TV", str(rows * vocab)},
                     {"BLOCK", str(block)},
                     {"WARPS", str(block / 32)},
                     {"CHUNKS", str(vocab / 8)}},
                    dims(unsigned(rows)), dims(block));
}

llvm::Expected<std::string>
llamac::compileKernels(llvm::ArrayRef<KernelSpec> kernels,
                       const PTXOptions &options) {
  mlir::DialectRegistry registry;
  registerPTXDialects(registry);
  mlir::MLIRContext context(registry);
  std::string text = "module {\ngpu.module @llamac_kernels {\n";
  llvm::StringSet<> emitted;
  for (const KernelSpec &kernel : kernels)
    if (emitted.insert(kernel.name).second)
      text += kernel.source + "\n";
  text += "}\n}\n";
  std::string diagnostics;
  mlir::OwningOpRef<mlir::ModuleOp> module;
  {
    mlir::ScopedDiagnosticHandler handler(
        &context, [&](mlir::Diagnostic &diagnostic) {
          llvm::raw_string_ostream(diagnostics) << diagnostic << "; ";
          return mlir::success();
        });
    module = mlir::parseSourceString<mlir::ModuleOp>(text, &context);
  }
  if (!module)
    return llvm::createStringError("kernel source does not parse: " +
                                   diagnostics);
  return emitPTX(*module, options);
}
