//===- BuildPackage.cpp - The train step as a GPU package -----------------===//
//
// One pass over the ops of @forward_backward, then @optimizer_step, emitting
// for each op the launches and GEMMs that compute it. Every SSA tensor gets a
// location: a buffer, a byte offset into it and a row stride, so that slices
// of a fused GEMM's output (q, k, v of the QKV projection) are read in place
// and the gradients of those slices are written side by side into the one
// buffer the fused backward GEMM reads. Parameters, gradients and moments
// live in flat regions in one order, so clipping is a single launch over
// all parameters, and so is AdamW but for the FP8 weights, whose AdamW is
// fused with their FP8 casts. Activations get arena offsets from their
// live ranges (MemoryPlan.h).
//
// A package that accumulates gradients (PackageOptions::accumulateGradients)
// adds every gradient into its slot: GEMMs with beta 1, accumulating norm
// and embedding kernels, and a gradient summed from several uses (tied
// embeddings) summed in the slot by its addends' producers. The loss divides
// by the token count of the whole optimizer step, which the host writes into
// the hyperparameters buffer, so the micro-batches' gradients add up to the
// gradient of the step's mean loss. The gradients are zeroed after AdamW
// (and by zero_grads before the first step).
//
// Attention runs as flash attention (compiler/lib/Kernels/Attention.cpp)
// where flashAttentionSupports the shape on the target: rope_heads rotates
// q and k in place in the QKV GEMM's token rows, the forward reads q, k, v
// there and writes O into the attention's rows and one lse per query row;
// the backward makes delta = rowsum(O dO), then dK, dV and bf16 dSᵀ, then
// dQ, writing the gradients into the rows the QKV GEMM's backward reads and
// rotating dK and dQ back with a rope_table made once per step. Nothing of
// size seq² is kept between forward and backward.
//
// Other shapes run as batched cuBLASLt GEMMs around softmax kernels. One
// kernel moves q, k, v from the QKV GEMM's token rows to a head-major
// layout, applying RoPE; there the query heads of one KV group are one
// block of rows, so each product is one GEMM batched over (sequence, KV
// head): S = scale Q Kᵀ (f32), causal_softmax_fwd makes P (bf16), O = P V,
// and O goes back to token rows for o_proj. P is an activation kept for the
// backward: batch · heads · seq² bf16 per layer (1 GiB over Llama 2 7B's 32
// layers at batch 8, seq 256), which the memory report counts with the
// activations. The backward computes dP = dO Vᵀ (f32) and dV = Pᵀ dO from
// the saved P, then attention_softmax_bwd turns that P into dS in place,
// which dQ and dK read: no scores GEMM and no f32 S in the backward. The
// sums over a group's query heads in dK and dV are part of their GEMMs.
// With packed sequences the RoPE and softmax kernels also read the
// position_ids input: the GEMMs still compute whole [seq, seq] blocks and
// the softmax masks the keys of other data rows.
//
//===----------------------------------------------------------------------===//

#include "llamac/Plan/BuildPackage.h"

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Dialect/Llama/LlamaOps.h"
#include "llamac/Kernels/Kernels.h"
#include "llamac/Plan/MemoryPlan.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

#include <optional>

#include <optional>

using namespace mlir;
using namespace mlir::llama;
using llamac::package::ElementType;

namespace llamac {
namespace {

constexpr uint64_t kAlign = 16;
uint64_t align(uint64_t bytes) {
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

/// Where a tensor lives: buffer, byte offset, row stride in elements (0 =
/// packed rows).
struct Location {
  int buffer = -1;
  uint64_t offset = 0;
  int64_t ld = 0;
};

int64_t numel(Type type) {
  return cast<RankedTensorType>(type).getNumElements();
}

ElementType elementTypeOf(Type type) {
  Type element = cast<RankedTensorType>(type).getElementType();
  if (element.isBF16())
    return ElementType::BF16;
  if (element.isF32())
    return ElementType::F32;
  return ElementType::I32;
}

/// The attention geometry of a rope_attention op or its gradient.
struct AttentionShape {
  int64_t heads, kvHeads, dim, seq, batch, group;
  /// Bytes from the head-major buffer's start to its key and value regions
  /// (the GEMM path).
  uint64_t keyRegion, valueRegion;
};

AttentionShape attentionShape(Operation *op, int64_t tokens) {
  auto attr = [&](StringRef name) {
    return cast<IntegerAttr>(op->getAttr(name)).getInt();
  };
  AttentionShape a;
  a.heads = attr("num_heads"), a.kvHeads = attr("num_kv_heads");
  a.dim = attr("head_dim"), a.seq = attr("seq_len");
  a.batch = tokens / a.seq, a.group = a.heads / a.kvHeads;
  a.keyRegion = uint64_t(tokens * a.heads * a.dim) * 2;
  a.valueRegion = a.keyRegion + uint64_t(tokens * a.kvHeads * a.dim) * 2;
  return a;
}

/// The flash kernels' view of `a`, with the op's softmax scale.
FlashShape flashShape(const AttentionShape &a, float scale, bool packed) {
  FlashShape f;
  f.batch = a.batch, f.heads = a.heads, f.kvHeads = a.kvHeads;
  f.seq = a.seq, f.dim = a.dim;
  f.scale = scale, f.packed = packed;
  return f;
}

/// A GEMM batched over the (sequence, KV head) pairs of the head-major
/// layout: per pair, A has `strideA` elements, B `strideB`, D `strideD`.
package::Gemm groupGemm(const AttentionShape &a, int64_t m, int64_t n,
                        int64_t k, int64_t strideA, int64_t strideB,
                        int64_t strideD) {
  package::Gemm g;
  g.m = m, g.n = n, g.k = k;
  g.batch = a.batch * a.kvHeads;
  g.strideA = strideA, g.strideB = strideB, g.strideD = strideD;
  return g;
}

/// The heads of `a` in token rows of stride `ld` (0: packed query heads),
/// for rope_heads: all query heads, `keyHeads` and `valueHeads`; RoPE
/// positions from the position_ids buffer when `positions`.
HeadsLayout headsLayout(const AttentionShape &a, int64_t ld, int64_t keyHeads,
                        int64_t valueHeads, bool positions = false) {
  HeadsLayout l;
  l.rows = a.batch * a.seq, l.seqLen = a.seq, l.headDim = a.dim;
  l.rowStride = ld ? ld : a.heads * a.dim;
  l.numQueryHeads = a.heads, l.numKeyHeads = keyHeads,
  l.numValueHeads = valueHeads;
  l.positions = positions;
  return l;
}

/// Appends the positions (packed sequences), when there are any, to a
/// kernel's arguments.
std::vector<Location> withPositions(std::vector<Location> args,
                                    const std::optional<Location> &at) {
  if (at)
    args.push_back(*at);
  return args;
}

class PackageBuilder {
public:
  explicit PackageBuilder(const PackageOptions &options) : options(options) {}

  llvm::Error build(ModuleOp module);
  llvm::Expected<package::Package> finish();

private:
  /// A buffer before memory planning; a child lives inside its parent.
  struct Logical {
    package::Buffer info;
    bool persistent = false;
    /// Written after @forward_backward for the next step's to read: alive
    /// until its last use in @forward_backward and again from
    /// @optimizer_step on (the memory plan's carried range).
    bool carried = false;
    int parent = -1;
    uint64_t innerOffset = 0;
    int64_t first = INT64_MAX, last = -1;
    int64_t lastInForwardBackward = -1;
  };

  //--- Buffers and locations -------------------------------------------===//

  int newBuffer(const std::string &name, const std::string &role,
                ElementType type, std::vector<int64_t> shape, bool persistent) {
    Logical logical;
    logical.info.name = name;
    logical.info.role = role;
    logical.info.type = type;
    logical.info.shape = shape;
    uint64_t count = 1;
    for (int64_t d : shape)
      count *= uint64_t(d);
    logical.info.bytes = count * package::elementBytes(type);
    logical.persistent = persistent;
    buffers.push_back(std::move(logical));
    return int(buffers.size() - 1);
  }

  int scratch(const std::string &name, ElementType type,
              std::vector<int64_t> shape) {
    return newBuffer(name + "#" + std::to_string(buffers.size()), "scratch",
                     type, std::move(shape), false);
  }

  int rootOf(int buffer) const {
    while (buffers[buffer].parent >= 0)
      buffer = buffers[buffer].parent;
    return buffer;
  }

  void touch(int buffer) {
    Logical &root = buffers[rootOf(buffer)];
    root.first = std::min(root.first, opIndex);
    root.last = std::max(root.last, opIndex);
    if (optimizerStart < 0)
      root.lastInForwardBackward = opIndex;
  }

  Location whole(int buffer) {
    touch(buffer);
    return {buffer, 0, 0};
  }

  /// The location of an existing value.
  llvm::Expected<Location> use(Value value) {
    auto found = locations.find(value);
    if (found == locations.end())
      return fail(value.getDefiningOp(), "reads a value with no location");
    touch(found->second.buffer);
    return found->second;
  }

  /// The location a new value is written to: preassigned, or a fresh
  /// activation buffer.
  Location define(Value value, const std::string &name) {
    auto found = locations.find(value);
    if (found != locations.end()) {
      touch(found->second.buffer);
      return found->second;
    }
    auto type = cast<RankedTensorType>(value.getType());
    int buffer =
        newBuffer(name + "#" + std::to_string(buffers.size()), "activation",
                  elementTypeOf(type),
                  {type.getShape().begin(), type.getShape().end()}, false);
    Location location{buffer, 0, 0};
    locations[value] = location;
    touch(buffer);
    return location;
  }

  package::Operand operand(const Location &l) const {
    return {l.buffer, l.offset, l.ld};
  }

  /// True when `l` is a parameter's gradient slot that this package adds
  /// into rather than overwrites.
  bool accumulatesInto(const Location &l) const {
    return options.accumulateGradients && l.buffer >= 0 &&
           buffers[l.buffer].info.role == "grad";
  }

  //--- Steps ------------------------------------------------------------===//

  llvm::Error launch(llvm::Expected<KernelSpec> kernel,
                     std::vector<Location> args, const std::string &label) {
    if (!kernel)
      return kernel.takeError();
    package::Step step;
    step.kind = package::Step::Kind::Launch;
    step.label = label;
    step.launch.kernel = kernel->name;
    step.launch.grid[0] = kernel->grid.x;
    step.launch.grid[1] = kernel->grid.y;
    step.launch.grid[2] = kernel->grid.z;
    step.launch.block[0] = kernel->block.x;
    step.launch.block[1] = kernel->block.y;
    step.launch.block[2] = kernel->block.z;
    step.launch.sharedBytes = kernel->sharedBytes;
    for (const Location &arg : args)
      step.launch.args.push_back(operand(arg));
    current->steps.push_back(std::move(step));
    if (kernelNames.insert(kernel->name).second)
      kernels.push_back(std::move(*kernel));
    return llvm::Error::success();
  }

  void gemm(package::Gemm g, const std::string &label) {
    package::Step step;
    step.kind = package::Step::Kind::Gemm;
    step.label = label;
    step.gemm = g;
    current->steps.push_back(std::move(step));
  }

  void memset(Location dst, uint64_t bytes, const std::string &label) {
    package::Step step;
    step.kind = package::Step::Kind::Memset;
    step.label = label;
    step.memset.dst = operand(dst);
    step.memset.bytes = bytes;
    current->steps.push_back(std::move(step));
  }

  /// A row-major GEMM over locations (bf16 operands, packed unless `ld`),
  /// plus `addend` (D's layout) when given. Into an accumulated gradient
  /// slot it adds (beta 1, C = D).
  void linear(Location a, Location b, Location d, int64_t m, int64_t n,
              int64_t k, bool transposeA, bool transposeB,
              const std::string &label,
              std::optional<Location> addend = std::nullopt) {
    package::Gemm g;
    g.m = m, g.n = n, g.k = k;
    g.transposeA = transposeA, g.transposeB = transposeB;
    g.a = operand(a), g.b = operand(b), g.d = operand(d);
    setAddend(g, d, addend);
    gemm(g, label);
  }

  /// GEMM `g` writing `d` adds `addend` (beta 1, C), or adds into `d` when
  /// it is an accumulated gradient slot (beta 1, C = D).
  void setAddend(package::Gemm &g, const Location &d,
                 std::optional<Location> addend) const {
    if (addend) {
      g.c = operand(*addend);
      g.beta = 1;
    } else if (accumulatesInto(d)) {
      g.beta = 1;
    }
  }

  /// The residual add that is `value`'s only user, and the add's other
  /// operand, when the add can be folded into the op computing `value`.
  std::optional<std::pair<AddOp, Value>> residualAddOf(Value value) {
    if (!value.hasOneUse())
      return std::nullopt;
    auto add = dyn_cast<AddOp>(*value.user_begin());
    if (!add || add.getLhs() == add.getRhs())
      return std::nullopt;
    Value other = add.getLhs() == value ? add.getRhs() : add.getLhs();
    auto found = locations.find(other);
    if (found == locations.end() || found->second.ld)
      return std::nullopt;
    return std::make_pair(add, other);
  }

  /// When the residual add that is `out`'s only user can be folded into the
  /// GEMM computing `out`: the add's other operand (the addend), with `out`
  /// now the add's result and `label` saying so.
  llvm::Expected<std::optional<Location>> foldResidual(Value &out,
                                                       std::string &label) {
    auto residual = residualAddOf(out);
    if (!residual)
      return std::nullopt;
    auto x = use(residual->second);
    if (!x)
      return x.takeError();
    out = residual->first.getResult();
    folded.insert(residual->first);
    label += " + residual";
    return std::optional<Location>(*x);
  }

  llvm::Error fail(Operation *op, const llvm::Twine &message) {
    std::string name = op ? op->getName().getStringRef().str() : "value";
    return llvm::createStringError("GPU backend: " + name + ": " + message);
  }

  /// q, k and v (or their gradients) must be adjacent column slices of one
  /// buffer, as the fused QKV GEMM (or its backward) lays them out.
  llvm::Error checkQKVSlices(Operation *op, const Location &q,
                             const Location &k, const Location &v,
                             const AttentionShape &a) {
    uint64_t qBytes = uint64_t(a.heads * a.dim) * 2,
             kvBytes = uint64_t(a.kvHeads * a.dim) * 2;
    if (q.buffer != k.buffer || q.buffer != v.buffer || !q.ld || q.ld != k.ld ||
        q.ld != v.ld || k.offset != q.offset + qBytes ||
        v.offset != k.offset + kvBytes)
      return fail(op, "q, k and v (and their gradients) must be adjacent "
                      "slices of one fused QKV buffer");
    return llvm::Error::success();
  }

  /// The outputs of a norm_matmul are adjacent column slices of its GEMM's
  /// output `y` ([T, width]).
  llvm::Error sliceOutputs(Operation *op, ValueRange outputs, int y,
                           int64_t width) {
    int64_t column = 0;
    for (Value output : outputs) {
      if (locations.count(output))
        return fail(op, "an output already has a location");
      locations[output] = {y, uint64_t(column) * 2, width};
      column += cast<RankedTensorType>(output.getType()).getDimSize(1);
    }
    return llvm::Error::success();
  }

  //--- Ops --------------------------------------------------------------===//

  llvm::Error prepareForwardBackward(func::FuncOp func);
  llvm::Error lower(Operation &op);
  llvm::Error lowerRmsNorm(Location x, Location weight, Location out,
                           int64_t rows, int64_t hidden, double eps, int rstd,
                           const std::string &label);
  llvm::Error normBackward(Operation *op, Value inputGrad, Value weightGrad,
                           Location dy, Location x, Location weight, int rstd,
                           int64_t hidden, const std::string &label);
  void attentionScores(Operation *op, int headMajor, int scores,
                       const std::string &label);
  llvm::Expected<std::optional<Location>> usePositions(Value positions);
  llvm::Error lowerOptimizer(func::FuncOp func);
  int freqTable(ArrayRef<double> frequencies);
  llvm::Expected<int> ropeTable(const AttentionShape &a, int freqs,
                                const std::optional<Location> &positions);

  //--- FP8 (llama-insert-fp8) -------------------------------------------===//

  /// A quantized tensor's row in its format's delayed-scaling state.
  struct FP8Slot {
    int format = 0; ///< Index into fp8States.
    int64_t index = 0;
  };
  /// The scaling state of one FP8 format. Delayed scaling: per quantized
  /// tensor an amax history row, a scale, its inverse and this step's amax,
  /// in four persistent buffers that one fp8_scale_update launch updates.
  /// Current scaling (`current`): no history; each cast first takes its
  /// tensor's amax and scale (fp8_amax, fp8_current_scale) into its rows.
  struct FP8State {
    std::string name; ///< "e4m3" or "e5m2"
    std::vector<std::string> ids;
    int64_t historyLength = 0, margin = 0;
    std::string algo;
    bool current = false;
    int history = -1, scale = -1, scaleInv = -1, amax = -1;
  };
  /// A bf16 tensor (`rows` x `cols` at `source`) quantized in row blocks,
  /// each with its own scale, and the FP8 copies made of it so far: the
  /// direct one [rows, cols] and the transposed one (block by block, each
  /// [cols, block rows], one after the other). When its GEMMs read both
  /// (`bothCopies`), one pass over the source writes both.
  struct FP8Tensor {
    std::string name;
    Location source;
    int64_t rows = 0, cols = 0;
    std::vector<int64_t> blockRows;
    std::vector<FP8Slot> slots;
    bool bothCopies = false;
    /// Tensors never written in bf16, which their casts compute as they read
    /// their inputs: SwiGLU of the gate/up GEMM output at `source` (the gate
    /// half; rows source.ld apart, the up half `cols` on;
    /// swiglu_fp8_cast_transpose), or the gate or up half of SwiGLU's input
    /// gradient from dy at `source` and the gate/up output at `gateUp`
    /// (swiglu_d{gate,up}_fp8_cast_transpose).
    enum class Computed { No, SwiGLU, SwiGLUGradGate, SwiGLUGradUp };
    Computed computed = Computed::No;
    Location gateUp;
    int direct = -1, transposed = -1;
    /// The transposed copy's shape: [cols, rows], or its blocks' elements.
    std::vector<int64_t> transposedShape() const {
      if (blockRows.size() == 1)
        return {cols, rows};
      return {rows * cols};
    }
  };
  /// A K-major FP8 GEMM operand and its scale inverse.
  struct FP8Operand {
    Location at;
    FP8Slot slot;
  };

  llvm::Error prepareFP8(func::FuncOp func);
  llvm::Error prepareCurrentScaling(Block &body);
  llvm::Expected<SmallVector<FP8Slot>> fp8SlotsOf(Operation *op,
                                                  ValueRange scales,
                                                  ValueRange amaxes,
                                                  ArrayRef<StringRef> formats);
  /// The slots of a fused op's own FP8 tensors (`fp8_formats`), which must
  /// number `count` (`what` names them in the error).
  template <typename FusedOp>
  llvm::Expected<SmallVector<FP8Slot>> fusedFP8Slots(FusedOp op, size_t count,
                                                     const std::string &what) {
    auto formats = op.getFp8Formats();
    auto slots = fp8SlotsOf(
        op, op.getFp8Scales(), op.getFp8Amaxes(),
        formats
            ? llvm::to_vector(formats->template getAsValueRange<StringAttr>())
            : SmallVector<StringRef>());
    if (slots && slots->size() != count)
      return fail(op, "expects " + what);
    return slots;
  }
  /// What each fused FP8 op's lowering starts from: its slots
  /// (fusedFP8Slots), its quantized weight, the location of its input and,
  /// when `normWeight` is given, of that norm weight.
  struct FP8FusedOperands {
    SmallVector<FP8Slot> slots;
    FP8Tensor *weight;
    Location input, normWeight;
  };
  template <typename FusedOp>
  llvm::Expected<FP8FusedOperands> fp8FusedOperands(FusedOp op, size_t count,
                                                    const std::string &what,
                                                    Value normWeight = {}) {
    auto slots = fusedFP8Slots(op, count, what);
    if (!slots)
      return slots.takeError();
    auto w = quantized(op, op.getWeight());
    auto x = use(op.getInput());
    auto nw =
        normWeight ? use(normWeight) : llvm::Expected<Location>(Location());
    if (!w || !x || !nw)
      return llvm::joinErrors(llvm::joinErrors(w.takeError(), x.takeError()),
                              nw.takeError());
    return FP8FusedOperands{std::move(*slots), *w, *x, *nw};
  }
  /// RMSNorm(x) weighted by `normWeight` into a fresh bf16 [tokens, hidden]
  /// buffer (`rstd` receives 1 / rms per row).
  llvm::Expected<Location> normalized(Location x, Location normWeight,
                                      int64_t hidden, double eps, int rstd,
                                      const std::string &label) {
    int xn = scratch("xn", ElementType::BF16, {tokens, hidden});
    if (auto error = lowerRmsNorm(x, normWeight, whole(xn), tokens, hidden, eps,
                                  rstd, label))
      return std::move(error);
    return whole(xn);
  }
  /// A bf16 forward's RMSNorm of `input` by `normWeight`, kept for the
  /// backward (see normForBackward).
  struct SavedNorm {
    int xn = -1, rstd = -1;
  };
  llvm::DenseMap<std::pair<Value, Value>, SavedNorm> savedNorms;
  /// The forward's fused RMSNorm: xn = RMSNorm(input) and its rstd into
  /// scratch buffers, remembered for the op's backward.
  llvm::Expected<Location> normForward(Value input, Value normWeight,
                                       Location x, Location nw, int64_t hidden,
                                       double eps, const std::string &label) {
    int rstd = scratch("rstd", ElementType::F32, {tokens});
    auto xn = normalized(x, nw, hidden, eps, rstd, label + " (norm)");
    if (xn)
      savedNorms[{input, normWeight}] = {xn->buffer, rstd};
    return xn;
  }
  /// The normalized input and rstd that a fused op's backward needs: the
  /// forward's, when normForward kept them (their buffers then live until
  /// here: 4 bytes per token and hidden unit per norm, against a kernel
  /// that rereads x and rewrites xn), else recomputed into `rstd`'s buffer.
  llvm::Expected<Location> normForBackward(Value input, Value normWeight,
                                           Location x, Location nw,
                                           int64_t hidden, double eps,
                                           int &rstd,
                                           const std::string &label) {
    auto saved = savedNorms.find({input, normWeight});
    if (saved != savedNorms.end()) {
      rstd = saved->second.rstd;
      touch(rstd);
      return whole(saved->second.xn);
    }
    rstd = scratch("rstd", ElementType::F32, {tokens});
    return normalized(x, nw, hidden, eps, rstd, label + " (recompute norm)");
  }
  llvm::Expected<FP8Operand> normalizedOperand(Operation *op, Location x,
                                               Location normWeight,
                                               int64_t hidden, double eps,
                                               ArrayRef<FP8Slot> slots,
                                               const std::string &label);
  /// The start of a gated MLP's backward, shared by the bf16 and FP8
  /// lowerings: dGU = SwiGLU'(gate_up) dOut, and the input of its GEMMs (x,
  /// or RMSNorm(x) when the op has a norm (normForBackward), with that
  /// norm's weight and rstd for the norm backward).
  struct GatedMLPGradStart {
    Location dOut, gateUp;
    int dGU = -1; ///< Unless its computation was left to the FP8 casts.
    Location in, normWeight;
    int rstd = -1;
  };
  llvm::Expected<GatedMLPGradStart> startGatedMLPGrad(GatedMLPGradOp op,
                                                      Location x, int64_t width,
                                                      int64_t hidden,
                                                      const std::string &label,
                                                      bool computeDGU = true) {
    auto dOut = use(op.getGrad());
    auto gateUp = use(op.getGateUp());
    if (!dOut || !gateUp)
      return llvm::joinErrors(dOut.takeError(), gateUp.takeError());
    GatedMLPGradStart start;
    start.dOut = *dOut;
    start.gateUp = *gateUp;
    if (computeDGU) {
      start.dGU = scratch("dgate_up", ElementType::BF16, {tokens, 2 * width});
      if (auto error =
              launch(swigluBackwardKernel(tokens, width),
                     {*dOut, *gateUp, whole(start.dGU)}, label + " (swiglu)"))
        return std::move(error);
    }
    start.in = x;
    if (!op.getNormWeight())
      return start;
    auto nw = use(op.getNormWeight());
    if (!nw)
      return nw.takeError();
    start.normWeight = *nw;
    auto xn =
        normForBackward(op.getInput(), op.getNormWeight(), x, *nw, hidden,
                        op.getEps()->convertToDouble(), start.rstd, label);
    if (!xn)
      return xn.takeError();
    start.in = *xn;
    return start;
  }
  /// The start of `slot`'s row of an FP8 state region (a row is 4 bytes, or
  /// the scale inverses' 16: the region's bytes over its rows).
  Location fp8Scalar(int FP8State::*region, FP8Slot slot) const {
    const package::Buffer &info = buffers[fp8States[slot.format].*region].info;
    uint64_t rowBytes = info.bytes / uint64_t(info.shape.front());
    return {fp8States[slot.format].*region, uint64_t(slot.index) * rowBytes, 0};
  }
  static ElementType fp8Type(FP8Slot slot) {
    return slot.format ? ElementType::F8E5M2 : ElementType::F8E4M3;
  }
  bool isFP8(Operation &op) const;
  llvm::Error lowerFP8(Operation &op, const std::string &label);
  FP8Tensor fp8Tensor(Location source, int64_t rows, int64_t cols,
                      ArrayRef<FP8Slot> slots, ArrayRef<int64_t> blockRows,
                      const std::string &name) const;
  llvm::Expected<FP8Tensor *> quantized(Operation *op, Value value);
  llvm::Error fp8Copy(FP8Tensor &t, bool transposed, const std::string &label);
  llvm::Error castBlocks(const FP8Tensor &t, bool direct, bool transposed,
                         const std::string &label,
                         std::optional<uint64_t> adamwAt = std::nullopt);
  bool persistentWeightCopies() const;
  /// The step parameters by byte offset into the flat regions.
  std::vector<std::pair<uint64_t, std::string>> paramsInFlatOrder() const {
    std::vector<std::pair<uint64_t, std::string>> order;
    for (const auto &entry : flatOffset)
      order.emplace_back(entry.getValue(), entry.getKey().str());
    llvm::sort(order);
    return order;
  }
  llvm::Error registerFP8Weight(Operation *op, FP8Tensor &t);
  llvm::Error lowerFP8WeightCopies();
  llvm::Expected<FP8Operand> fp8Rows(Operation *op, FP8Tensor &t, int64_t first,
                                     int64_t count, bool transposed,
                                     const std::string &label);
  llvm::Error fp8ForwardByBlock(Operation *op, const FP8Operand &a,
                                FP8Tensor &w, Location out, int64_t columns,
                                int64_t hidden, const std::string &label);
  llvm::Error fp8BlockBackward(Operation *op, FP8Tensor &dY, FP8Tensor &w,
                               int64_t first, const FP8Operand &inT,
                               Location weightGrad, Location dx, int64_t hidden,
                               bool accumulate, const std::string &label);
  llvm::Error fp8Gemm(Operation *op, const FP8Operand &a, const FP8Operand &b,
                      Location d, int64_t m, int64_t n, int64_t k,
                      bool accumulate, const std::string &label,
                      std::optional<Location> addend = std::nullopt);
  llvm::Error lowerFP8Quantize(FP8QuantizeOp op, const std::string &label);
  llvm::Error lowerFP8Matmul(MatmulOp op, std::string label);
  llvm::Error lowerFP8NormMatmul(NormMatmulOp op, const std::string &label);
  llvm::Error lowerFP8NormMatmulGrad(NormMatmulGradOp op,
                                     const std::string &label);
  llvm::Error lowerFP8GatedMLP(GatedMLPOp op, const std::string &label);
  llvm::Error lowerFP8GatedMLPGrad(GatedMLPGradOp op, const std::string &label);
  llvm::Error updateFP8Scales();

  const PackageOptions &options;
  std::vector<Logical> buffers;
  llvm::DenseMap<Value, Location> locations;
  std::vector<KernelSpec> kernels;
  llvm::StringSet<> kernelNames;
  std::vector<package::Function> functions;
  package::Function *current = nullptr;
  int64_t opIndex = 0;
  /// The op index where @optimizer_step starts (-1 while lowering
  /// @forward_backward).
  int64_t optimizerStart = -1;

  // Flat regions (parents) and the parameter order within them.
  int paramsRegion = -1, gradsRegion = -1, expAvgRegion = -1,
      expAvgSqRegion = -1;
  int64_t flatElements = 0;
  llvm::StringMap<uint64_t> flatOffset; ///< bytes, by step parameter name
  int hyper = -1, lossStats = -1, gradNorm = -1;
  /// What a rope_attention keeps for its gradient: the rotated q, k and v,
  /// and either P (the GEMM path, q, k and v head-major) or lse and the
  /// output (flash attention, q, k and v in the QKV projection's rows).
  struct SavedAttention {
    Location qkv;
    int probabilities = -1, lse = -1;
    Location out;
  };
  /// The saved buffers of each rope_attention, by query value.
  llvm::DenseMap<Value, SavedAttention> savedAttention;
  /// The constant 1 that seeds the backward.
  llvm::DenseSet<Value> seeds;
  /// Residual adds computed by the GEMM or norm backward before them.
  llvm::DenseSet<Operation *> folded;
  std::map<std::vector<double>, int> freqTables;
  /// The rope_table of each (frequency table, positions buffer or -1).
  std::map<std::pair<int, int>, int> ropeTables;
  int64_t tokens = 0;

  /// FP8: the state per format (e4m3, e5m2), the slot of each scale
  /// argument, and the tensors the llama.fp8_quantize ops have quantized,
  /// by result.
  FP8State fp8States[2];
  llvm::DenseMap<Value, FP8Slot> fp8Slots;
  llvm::DenseMap<Value, FP8Tensor> fp8Tensors;
  /// FP8 SwiGLU outputs whose only reader is their cast: the gate/up output
  /// they are computed from (lowerFP8GatedMLP, lowerFP8Quantize).
  llvm::DenseMap<Value, Location> swigluSources;
  /// The slot whose amax each amax result raises.
  llvm::DenseMap<Value, FP8Slot> fp8AmaxSlots;
  /// The weights whose FP8 copies are persistent (persistentWeightCopies),
  /// by step parameter name.
  llvm::StringMap<FP8Tensor> fp8Weights;
};

//===----------------------------------------------------------------------===//
// Set-up: flat regions and preassigned locations
//===----------------------------------------------------------------------===//

llvm::Error PackageBuilder::prepareForwardBackward(func::FuncOp func) {
  tokens = options.batch * options.seq;
  // Flat parameter order = argument order of @forward_backward.
  struct Param {
    std::string name;
    std::vector<std::string> parts;
    std::vector<int64_t> partRows;
    std::vector<int64_t> shape;
    BlockArgument arg;
  };
  std::vector<Param> params;
  for (BlockArgument arg : func.getArguments()) {
    unsigned i = arg.getArgNumber();
    if (auto name = func.getArgAttrOfType<StringAttr>(i, kParamAttr)) {
      auto type = cast<RankedTensorType>(arg.getType());
      if (!type.getElementType().isBF16())
        return fail(nullptr, "the GPU backend runs bf16 steps (--precision "
                             "bf16); parameter " +
                                 name.str() + " is not bf16");
      Param param{name.str(),
                  {},
                  {},
                  {type.getShape().begin(), type.getShape().end()},
                  arg};
      if (auto parts = func.getArgAttrOfType<ArrayAttr>(i, kParamPartsAttr))
        for (Attribute part : parts)
          param.parts.push_back(cast<StringAttr>(part).str());
      else
        param.parts.push_back(param.name);
      for (const std::string &part : param.parts) {
        auto shape = options.hfShapes.find(part);
        if (shape == options.hfShapes.end() || shape->second.empty())
          return fail(nullptr, "no Hugging Face shape for " + part);
        param.partRows.push_back(shape->second[0]);
      }
      params.push_back(param);
    }
  }
  uint64_t bytes = 0;
  for (const Param &param : params) {
    flatOffset[param.name] = bytes;
    bytes += align(uint64_t(numel(param.arg.getType())) * 2);
  }
  flatElements = int64_t(bytes / 2);
  paramsRegion =
      newBuffer("params", "region", ElementType::BF16, {flatElements}, true);
  gradsRegion =
      newBuffer("grads", "region", ElementType::BF16, {flatElements}, true);
  expAvgRegion =
      newBuffer("exp_avg", "region", ElementType::BF16, {flatElements}, true);
  expAvgSqRegion = newBuffer("exp_avg_sq", "region", ElementType::BF16,
                             {flatElements}, true);
  auto child = [&](int region, const std::string &role, const Param &param) {
    int buffer = newBuffer(role + ":" + param.name, role, ElementType::BF16,
                           param.shape, true);
    buffers[buffer].parent = region;
    buffers[buffer].innerOffset = flatOffset[param.name];
    buffers[buffer].info.param = param.name;
    buffers[buffer].info.parts = param.parts;
    buffers[buffer].info.partRows = param.partRows;
    return buffer;
  };
  for (const Param &param : params) {
    locations[param.arg] = {child(paramsRegion, "param", param), 0, 0};
    child(gradsRegion, "grad", param);
    child(expAvgRegion, "exp_avg", param);
    child(expAvgSqRegion, "exp_avg_sq", param);
  }

  for (BlockArgument arg : func.getArguments())
    if (auto input =
            func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), kInputAttr))
      locations[arg] = {
          newBuffer(input.str(), "input", ElementType::I32, {tokens}, true), 0,
          0};
  hyper = newBuffer(kHyperparametersBuffer, "hyperparameters", ElementType::F32,
                    {package::kHyperparameterCount}, true);
  lossStats = newBuffer(kLossStatsBuffer, "loss", ElementType::F32, {4}, true);
  gradNorm =
      newBuffer(kGradNormBuffer, "grad_norm", ElementType::F32, {4}, true);

  // Gradients are written straight into their slots of the grads region.
  auto ret = cast<func::ReturnOp>(func.getBody().front().getTerminator());
  for (auto [index, value] : llvm::enumerate(ret.getOperands())) {
    if (auto name = func.getResultAttrOfType<StringAttr>(index, kGradAttr)) {
      int slot = -1;
      for (size_t b = 0; b < buffers.size(); ++b)
        if (buffers[b].info.role == "grad" &&
            buffers[b].info.param == name.getValue())
          slot = int(b);
      if (slot < 0 || locations.count(value))
        return fail(value.getDefiningOp(),
                    "gradient " + name.str() + " has no slot of its own");
      locations[value] = {slot, 0, 0};
    } else if (func.getResultAttrDict(index) &&
               func.getResultAttrDict(index).get(kLossAttr)) {
      locations[value] = {lossStats, 0, 0};
    }
  }

  // Accumulating, a gradient summed from several uses (the tied embedding
  // table's) is summed in its slot: each addend's producer adds into it, and
  // the adds themselves emit nothing.
  if (options.accumulateGradients) {
    llvm::SmallVector<Value> sums;
    for (auto [index, value] : llvm::enumerate(ret.getOperands()))
      if (func.getResultAttrOfType<StringAttr>(index, kGradAttr))
        sums.push_back(value);
    while (!sums.empty()) {
      Value sum = sums.pop_back_val();
      auto add = sum.getDefiningOp<AddOp>();
      if (!add)
        continue;
      for (Value addend : {add.getLhs(), add.getRhs()}) {
        if (!addend.hasOneUse() || locations.count(addend))
          return fail(add, "an addend of a gradient has other users");
        locations[addend] = locations[sum];
        sums.push_back(addend);
      }
    }
  }

  // The cotangents a norm_matmul_grad reads sit side by side in one [T, N]
  // buffer, so that its backward GEMMs read them as one matrix.
  llvm::Error error = llvm::Error::success();
  func.walk([&](NormMatmulGradOp op) {
    if (error)
      return;
    int64_t width = 0;
    for (Value grad : op.getGrads())
      width += cast<RankedTensorType>(grad.getType()).getDimSize(1);
    // Under FP8 the op reads the cotangents quantized: their bf16 sources
    // sit side by side.
    auto source = [](Value grad) {
      auto quantize = grad.getDefiningOp<FP8QuantizeOp>();
      return quantize ? quantize.getInput() : grad;
    };
    // The loss turns the logits into their gradient in place: that buffer is
    // already the [T, N] matrix the backward GEMMs read.
    if (op.getGrads().size() == 1 &&
        source(op.getGrads()[0]).getDefiningOp<CrossEntropyGradOp>())
      return;
    int dY = newBuffer("norm_matmul_grad.dY#" + std::to_string(buffers.size()),
                       "activation", ElementType::BF16, {tokens, width}, false);
    int64_t column = 0;
    for (Value grad : op.getGrads()) {
      grad = source(grad);
      if (!grad.hasOneUse() || locations.count(grad)) {
        error = fail(op, "a cotangent it reads has other users");
        return;
      }
      locations[grad] = {dY, uint64_t(column) * 2, width};
      column += cast<RankedTensorType>(grad.getType()).getDimSize(1);
    }
  });
  return error;
}

int PackageBuilder::freqTable(ArrayRef<double> frequencies) {
  std::vector<double> key(frequencies.begin(), frequencies.end());
  auto found = freqTables.find(key);
  if (found != freqTables.end())
    return found->second;
  int buffer = newBuffer("rope_frequencies#" + std::to_string(buffers.size()),
                         "constant", ElementType::F32,
                         {int64_t(frequencies.size())}, true);
  // HF computes the frequencies in f32.
  for (double f : frequencies)
    buffers[buffer].info.initF32.push_back(float(f));
  freqTables[key] = buffer;
  return buffer;
}

/// RoPE's cos and sin per token and frequency for `freqs` at `positions`,
/// made by the first attention gradient that needs them and read by all.
llvm::Expected<int>
PackageBuilder::ropeTable(const AttentionShape &a, int freqs,
                          const std::optional<Location> &positions) {
  std::pair<int, int> key{freqs, positions ? positions->buffer : -1};
  auto found = ropeTables.find(key);
  if (found != ropeTables.end()) {
    touch(found->second);
    return found->second;
  }
  int table =
      newBuffer("rope_table#" + std::to_string(buffers.size()), "activation",
                ElementType::BF16, {tokens, a.dim}, false);
  HeadsLayout layout = headsLayout(a, 0, 0, 0, positions.has_value());
  if (auto error =
          launch(ropeTableKernel(layout),
                 withPositions({whole(freqs), whole(table)}, positions),
                 "llama.rope_table"))
    return std::move(error);
  ropeTables[key] = table;
  return table;
}

//===----------------------------------------------------------------------===//
// Per-op lowering of @forward_backward
//===----------------------------------------------------------------------===//

llvm::Error PackageBuilder::lowerRmsNorm(Location x, Location weight,
                                         Location out, int64_t rows,
                                         int64_t hidden, double eps, int rstd,
                                         const std::string &label) {
  return launch(rmsNormForwardKernel(rows, hidden, eps),
                {x, weight, out, whole(rstd)}, label);
}

/// dx = rms_norm backward of dy, and the norm weight's gradient summed over
/// rows in two steps (per-block partial sums, then a column sum).
llvm::Error PackageBuilder::normBackward(Operation *op, Value inputGrad,
                                         Value weightGrad, Location dy,
                                         Location x, Location weight, int rstd,
                                         int64_t hidden,
                                         const std::string &label) {
  // dx + the residual gradient r, when that add is dx's only use and r has
  // no use after it: the kernel adds into r's buffer, which the sum takes.
  std::optional<Location> residual;
  if (auto add = residualAddOf(inputGrad)) {
    Value r = add->second;
    bool lastUse = llvm::all_of(r.getUsers(), [&](Operation *user) {
      return user == add->first.getOperation() || user->isBeforeInBlock(op);
    });
    const Location &at = locations.find(r)->second;
    if (lastUse && !at.offset && at.buffer != dy.buffer &&
        !locations.contains(add->first.getResult())) {
      residual = *use(r);
      locations[add->first.getResult()] = *residual;
      folded.insert(add->first);
    }
  }
  llvm::Expected<KernelSpec> kernel =
      rmsNormBackwardKernel(tokens, hidden, /*accumulate=*/bool(residual));
  if (!kernel)
    return kernel.takeError();
  int64_t blocks = kernel->grid.x;
  int partial = scratch("norm_partial", ElementType::F32, {blocks, hidden});
  Location dx = residual ? *residual : define(inputGrad, "input_grad");
  if (auto error = launch(std::move(kernel),
                          {dy, x, weight, whole(rstd), dx, whole(partial)},
                          label + (residual ? " (norm backward + residual)"
                                            : " (norm backward)")))
    return error;
  Location dw = define(weightGrad, "norm_weight_grad");
  return launch(columnSumKernel(blocks, hidden, accumulatesInto(dw)),
                {whole(partial), dw}, label + " (norm weight gradient)");
}

/// The location of an attention op's positions (packed sequences), or none.
llvm::Expected<std::optional<Location>>
PackageBuilder::usePositions(Value positions) {
  if (!positions)
    return std::nullopt;
  llvm::Expected<Location> at = use(positions);
  if (!at)
    return at.takeError();
  return std::optional<Location>(*at);
}

void PackageBuilder::attentionScores(Operation *op, int headMajor, int scores,
                                     const std::string &label) {
  AttentionShape a = attentionShape(op, tokens);
  int64_t rows = a.group * a.seq; // the query heads of one KV group, stacked
  // S[b, g] = scale Q[b, group g] K[b, g]ᵀ: [group seq, seq] per (b, g).
  package::Gemm g = groupGemm(a, rows, a.seq, a.dim, rows * a.dim,
                              a.seq * a.dim, rows * a.seq);
  g.transposeB = true;
  g.alpha = float(cast<FloatAttr>(op->getAttr("scale")).getValueAsDouble());
  g.outType = ElementType::F32;
  g.a = operand({headMajor, 0, a.dim});
  g.b = operand({headMajor, a.keyRegion, a.dim});
  g.d = operand({scores, 0, a.seq});
  touch(headMajor);
  touch(scores);
  gemm(g, label + " (scores)");
}

llvm::Error PackageBuilder::lower(Operation &op) {
  std::string label = op.getName().getStringRef().str();
  int64_t hidden = 0;

  // llama-insert-fp8's quantization and the GEMMs reading it.
  if (isFP8(op))
    return lowerFP8(op, label);
  // The ops below that write a gradient slot add into it when the package
  // accumulates; any other writer would overwrite the sum.
  if (options.accumulateGradients &&
      !isa<MatmulOp, NormMatmulGradOp, GatedMLPGradOp, RMSNormGradOp,
           EmbeddingGradOp, arith::ConstantOp, AddOp>(op))
    for (Value result : op.getResults()) {
      auto found = locations.find(result);
      if (found != locations.end() && accumulatesInto(found->second))
        return fail(&op, "cannot add its result to an accumulated gradient");
    }

  if (auto constant = dyn_cast<arith::ConstantOp>(op)) {
    auto value = dyn_cast<DenseElementsAttr>(constant.getValue());
    if (!value || !value.isSplat())
      return fail(&op, "only splat constants are supported");
    double splat = value.getSplatValue<APFloat>().convertToDouble();
    if (splat == 1.0 && numel(constant.getType()) == 1) {
      seeds.insert(constant.getResult());
      return llvm::Error::success();
    }
    if (splat != 0.0)
      return fail(&op, "only the backward's seed and zeros are supported");
    Location out = define(constant.getResult(), "zeros");
    // Adding zero to an accumulated gradient changes nothing.
    if (!accumulatesInto(out))
      memset(out, uint64_t(numel(constant.getType())) * 2, label);
    return llvm::Error::success();
  }

  if (auto embedding = dyn_cast<EmbeddingOp>(op)) {
    auto table = cast<RankedTensorType>(embedding.getTable().getType());
    hidden = table.getDimSize(1);
    auto ids = use(embedding.getIds());
    auto tableAt = use(embedding.getTable());
    if (!ids || !tableAt)
      return llvm::joinErrors(ids.takeError(), tableAt.takeError());
    Location out = define(embedding.getResult(), "embedding");
    return launch(embeddingForwardKernel(tokens, table.getDimSize(0), hidden),
                  {*ids, *tableAt, out}, label);
  }

  if (auto norm = dyn_cast<RMSNormOp>(op)) {
    hidden = cast<RankedTensorType>(norm.getInput().getType()).getDimSize(1);
    auto x = use(norm.getInput());
    auto w = use(norm.getWeight());
    if (!x || !w)
      return llvm::joinErrors(x.takeError(), w.takeError());
    Location out = define(norm.getResult(), "rms_norm");
    return lowerRmsNorm(*x, *w, out, tokens, hidden,
                        norm.getEps().convertToDouble(),
                        scratch("rstd", ElementType::F32, {tokens}), label);
  }

  if (auto matmul = dyn_cast<MatmulOp>(op)) {
    auto lhs = cast<RankedTensorType>(matmul.getLhs().getType());
    auto result = cast<RankedTensorType>(matmul.getType());
    int64_t k =
        matmul.getTransposeLhs() ? lhs.getDimSize(0) : lhs.getDimSize(1);
    auto a = use(matmul.getLhs());
    auto b = use(matmul.getRhs());
    if (!a || !b)
      return llvm::joinErrors(a.takeError(), b.takeError());
    // x + matmul (o_proj and down_proj onto the residual stream): the GEMM
    // adds x through beta C and writes the sum.
    Value out = matmul.getResult();
    auto addend = foldResidual(out, label);
    if (!addend)
      return addend.takeError();
    Location d = define(out, "matmul");
    linear(*a, *b, d, result.getDimSize(0), result.getDimSize(1), k,
           matmul.getTransposeLhs(), matmul.getTransposeRhs(), label, *addend);
    return llvm::Error::success();
  }

  if (folded.contains(&op))
    return llvm::Error::success();
  if (auto add = dyn_cast<AddOp>(op)) {
    auto a = use(add.getLhs());
    auto b = use(add.getRhs());
    if (!a || !b)
      return llvm::joinErrors(a.takeError(), b.takeError());
    if (a->ld || b->ld)
      return fail(&op, "adds strided views");
    Location out = define(add.getResult(), "add");
    // A gradient's sum: its addends have already added into the slot.
    if (accumulatesInto(out)) {
      if (a->buffer != out.buffer || b->buffer != out.buffer)
        return fail(&op, "sums a gradient whose addends live elsewhere");
      return llvm::Error::success();
    }
    return launch(addBF16Kernel(numel(add.getType())), {*a, *b, out}, label);
  }

  if (auto fused = dyn_cast<NormMatmulOp>(op)) {
    auto weightType = cast<RankedTensorType>(fused.getWeight().getType());
    int64_t width = weightType.getDimSize(0);
    hidden = weightType.getDimSize(1);
    auto x = use(fused.getInput());
    auto nw = use(fused.getNormWeight());
    auto w = use(fused.getWeight());
    if (!x || !nw || !w)
      return llvm::joinErrors(llvm::joinErrors(x.takeError(), nw.takeError()),
                              w.takeError());
    auto xn = normForward(fused.getInput(), fused.getNormWeight(), *x, *nw,
                          hidden, fused.getEps().convertToDouble(), label);
    if (!xn)
      return xn.takeError();
    int y = newBuffer("norm_matmul.y#" + std::to_string(buffers.size()),
                      "activation", ElementType::BF16, {tokens, width}, false);
    linear(*xn, *w, whole(y), tokens, width, hidden, false, true,
           label + " (GEMM)");
    return sliceOutputs(&op, fused.getOutputs(), y, width);
  }

  if (auto mlp = dyn_cast<GatedMLPOp>(op)) {
    auto weightType = cast<RankedTensorType>(mlp.getWeight().getType());
    int64_t width = weightType.getDimSize(0) / 2;
    hidden = weightType.getDimSize(1);
    auto x = use(mlp.getInput());
    auto w = use(mlp.getWeight());
    if (!x || !w)
      return llvm::joinErrors(x.takeError(), w.takeError());
    Location in = *x;
    if (mlp.getNormWeight()) {
      auto nw = use(mlp.getNormWeight());
      if (!nw)
        return nw.takeError();
      auto xn = normForward(mlp.getInput(), mlp.getNormWeight(), *x, *nw,
                            hidden, mlp.getEps()->convertToDouble(), label);
      if (!xn)
        return xn.takeError();
      in = *xn;
    }
    Location gateUp = define(mlp.getGateUp(), "gate_up");
    linear(in, *w, gateUp, tokens, 2 * width, hidden, false, true,
           label + " (GEMM)");
    Location out = define(mlp.getResult(), "swiglu");
    return launch(swigluForwardKernel(tokens, width), {gateUp, out},
                  label + " (swiglu)");
  }

  if (auto attention = dyn_cast<RopeAttentionOp>(op)) {
    auto q = use(attention.getQuery());
    auto k = use(attention.getKey());
    auto v = use(attention.getValue());
    auto positions = usePositions(attention.getPositions());
    if (!q || !k || !v || !positions)
      return llvm::joinErrors(
          llvm::joinErrors(q.takeError(), k.takeError()),
          llvm::joinErrors(v.takeError(), positions.takeError()));
    AttentionShape a = attentionShape(&op, tokens);
    if (auto error = checkQKVSlices(&op, *q, *k, *v, a))
      return error;
    int64_t blocks = a.batch * a.heads;
    int freqs = freqTable(attention.getFrequencies());
    if (flashAttentionSupports(a.dim, a.seq, options.ptx.chip)) {
      // Flash attention reads q, k and v in the QKV projection's rows, q and
      // k rotated there, and so does its gradient; it writes O, in token
      // rows, and lse. No S or P in memory.
      for (Value value :
           {attention.getQuery(), attention.getKey(), attention.getValue()})
        for (Operation *user : value.getUsers())
          if (!isa<RopeAttentionOp, RopeAttentionGradOp>(user))
            return fail(&op, "rotates q and k in place, so they must have no "
                             "reader but the attention and its gradient");
      if (auto error = launch(
              ropeHeadsKernel(
                  headsLayout(a, q->ld, a.kvHeads, 0, positions->has_value()),
                  HeadsDirection::InPlace, Rotation::Forward),
              withPositions({*q, whole(freqs)}, *positions), label + " (rope)"))
        return error;
      int lse =
          newBuffer("attention_lse#" + std::to_string(buffers.size()),
                    "activation", ElementType::F32, {blocks, a.seq}, false);
      Location out = define(attention.getResult(), "attention");
      FlashShape shape =
          flashShape(a, float(attention.getScale().convertToDouble()),
                     positions->has_value());
      shape.qkvStride = q->ld;
      shape.outStride = out.ld ? out.ld : a.heads * a.dim;
      savedAttention[attention.getQuery()] = {*q, -1, lse, out};
      return launch(flashAttentionForwardKernel(shape),
                    withPositions({*q, out, whole(lse)}, *positions),
                    label + " (flash attention)");
    }
    // q, k, v move to the head-major layout (q and k rotated): every
    // attention GEMM is then one call batched over (sequence, KV head).
    int headMajor = newBuffer(
        "qkv_heads#" + std::to_string(buffers.size()), "activation",
        ElementType::BF16, {tokens * (a.heads + 2 * a.kvHeads) * a.dim}, false);
    if (auto error = launch(
            ropeHeadsKernel(headsLayout(a, q->ld, a.kvHeads, a.kvHeads,
                                        positions->has_value()),
                            HeadsDirection::ToHeads, Rotation::Forward),
            withPositions({*q, whole(headMajor), whole(freqs)}, *positions),
            label + " (rope)"))
      return error;
    int probabilities = newBuffer(
        "probabilities#" + std::to_string(buffers.size()), "activation",
        ElementType::BF16, {blocks, a.seq, a.seq}, false);
    savedAttention[attention.getQuery()] = {whole(headMajor), probabilities};
    int scores = scratch("scores", ElementType::F32, {blocks, a.seq, a.seq});
    attentionScores(&op, headMajor, scores, label);
    if (auto error = launch(
            causalSoftmaxForwardKernel(blocks, a.seq, ScoreType::F32,
                                       positions->has_value() ? a.heads : 0),
            withPositions({whole(scores), whole(probabilities)}, *positions),
            label + " (softmax)"))
      return error;
    // O[b, group g] = P V[b, g], head-major, then back to token rows.
    int64_t rows = a.group * a.seq;
    int outHeads = scratch("attention_heads", ElementType::BF16,
                           {tokens * a.heads * a.dim});
    package::Gemm g = groupGemm(a, rows, a.dim, a.seq, rows * a.seq,
                                a.seq * a.dim, rows * a.dim);
    g.a = operand(whole(probabilities));
    g.b = operand({headMajor, a.valueRegion, a.dim});
    g.d = operand(whole(outHeads));
    gemm(g, label + " (P V)");
    Location out = define(attention.getResult(), "attention");
    return launch(ropeHeadsKernel(headsLayout(a, out.ld, 0, 0),
                                  HeadsDirection::ToTokens, Rotation::None),
                  {out, whole(outHeads), whole(freqs)}, label + " (to tokens)");
  }

  if (auto loss = dyn_cast<CrossEntropyOp>(op)) {
    auto logitsType = cast<RankedTensorType>(loss.getLogits().getType());
    int64_t vocab = logitsType.getDimSize(1);
    auto logits = use(loss.getLogits());
    auto labels = use(loss.getLabels());
    if (!logits || !labels)
      return llvm::joinErrors(logits.takeError(), labels.takeError());
    for (Operation *user : loss.getLogits().getUsers())
      if (user != &op && !isa<CrossEntropyGradOp>(user))
        return fail(&op, "the logits have another user; the fused loss "
                         "overwrites them with their gradient");
    Location stats = define(loss.getResult(), "loss");
    memset(stats, 16, label + " (zero)");
    if (auto error = launch(countTargetsKernel(tokens, loss.getSeqLen(), vocab,
                                               options.accumulateGradients),
                            {*labels, stats, whole(hyper)}, label + " (count)"))
      return error;
    return launch(crossEntropyKernel(tokens, loss.getSeqLen(), vocab),
                  {*logits, *labels, stats}, label);
  }

  if (auto grad = dyn_cast<CrossEntropyGradOp>(op)) {
    if (!seeds.contains(grad.getGrad()))
      return fail(&op, "the loss's cotangent must be the seed 1");
    auto logits = use(grad.getLogits());
    if (!logits)
      return logits.takeError();
    // The loss kernel already turned the logits into their gradient.
    if (locations.count(grad.getResult()))
      return fail(&op, "the logit gradient cannot move");
    locations[grad.getResult()] = *logits;
    return llvm::Error::success();
  }

  if (auto grad = dyn_cast<EmbeddingGradOp>(op)) {
    auto table = cast<RankedTensorType>(grad.getType());
    int64_t vocab = table.getDimSize(0);
    hidden = table.getDimSize(1);
    auto ids = use(grad.getIds());
    auto dOut = use(grad.getGrad());
    if (!ids || !dOut)
      return llvm::joinErrors(ids.takeError(), dOut.takeError());
    // The kernel writes only the rows of ids that occur.
    Location out = define(grad.getResult(), "embedding_grad");
    bool accumulate = accumulatesInto(out);
    if (!accumulate)
      memset(out, uint64_t(vocab * hidden) * 2, label + " (zero)");
    return launch(embeddingBackwardKernel(tokens, vocab, hidden, accumulate),
                  {*ids, *dOut, out}, label);
  }

  if (auto grad = dyn_cast<NormMatmulGradOp>(op)) {
    auto weightType = cast<RankedTensorType>(grad.getWeight().getType());
    int64_t width = weightType.getDimSize(0);
    hidden = weightType.getDimSize(1);
    auto first = use(*grad.getGrads().begin());
    auto x = use(grad.getInput());
    auto nw = use(grad.getNormWeight());
    auto w = use(grad.getWeight());
    if (!first || !x || !nw || !w)
      return llvm::joinErrors(
          llvm::joinErrors(first.takeError(), x.takeError()),
          llvm::joinErrors(nw.takeError(), w.takeError()));
    // The cotangents must sit side by side in one [T, N] matrix.
    int64_t column = 0;
    for (Value g : grad.getGrads()) {
      llvm::Expected<Location> at = use(g);
      if (!at)
        return at.takeError();
      int64_t ld = at->ld ? at->ld : width;
      if (at->buffer != first->buffer || ld != width ||
          at->offset != first->offset + uint64_t(column) * 2)
        return fail(&op, "its cotangents are not one [T, N] matrix");
      column += cast<RankedTensorType>(g.getType()).getDimSize(1);
    }
    Location dY{first->buffer, first->offset, width};
    int rstd = -1;
    auto xn =
        normForBackward(grad.getInput(), grad.getNormWeight(), *x, *nw, hidden,
                        grad.getEps().convertToDouble(), rstd, label);
    if (!xn)
      return xn.takeError();
    Location weightGrad = define(grad.getWeightGrad(), "weight_grad");
    linear(dY, *xn, weightGrad, width, hidden, tokens, true, false,
           label + " (wgrad)");
    int dxn = scratch("dxn", ElementType::BF16, {tokens, hidden});
    linear(dY, *w, whole(dxn), tokens, hidden, width, false, false,
           label + " (dgrad)");
    return normBackward(&op, grad.getInputGrad(), grad.getNormWeightGrad(),
                        whole(dxn), *x, *nw, rstd, hidden, label);
  }

  if (auto grad = dyn_cast<GatedMLPGradOp>(op)) {
    auto weightType = cast<RankedTensorType>(grad.getWeight().getType());
    int64_t width = weightType.getDimSize(0) / 2;
    hidden = weightType.getDimSize(1);
    auto x = use(grad.getInput());
    auto w = use(grad.getWeight());
    if (!x || !w)
      return llvm::joinErrors(x.takeError(), w.takeError());
    auto start = startGatedMLPGrad(grad, *x, width, hidden, label);
    if (!start)
      return start.takeError();
    int dGU = start->dGU;
    Location weightGrad = define(grad.getWeightGrad(), "weight_grad");
    linear(whole(dGU), start->in, weightGrad, 2 * width, hidden, tokens, true,
           false, label + " (wgrad)");
    if (!grad.getNormWeight()) {
      Location dx = define(grad.getInputGrad(), "input_grad");
      linear(whole(dGU), *w, dx, tokens, hidden, 2 * width, false, false,
             label + " (dgrad)");
      return llvm::Error::success();
    }
    int dxn = scratch("dxn", ElementType::BF16, {tokens, hidden});
    linear(whole(dGU), *w, whole(dxn), tokens, hidden, 2 * width, false, false,
           label + " (dgrad)");
    return normBackward(&op, grad.getInputGrad(), grad.getNormWeightGrad(),
                        whole(dxn), *x, start->normWeight, start->rstd, hidden,
                        label);
  }

  if (auto grad = dyn_cast<RopeAttentionGradOp>(op)) {
    auto dOut = use(grad.getGrad());
    auto positions = usePositions(grad.getPositions());
    if (!dOut || !positions)
      return llvm::joinErrors(dOut.takeError(), positions.takeError());
    auto found = savedAttention.find(grad.getQuery());
    if (found == savedAttention.end())
      return fail(&op, "expects the rotated q, k and v, and the "
                       "probabilities or lse, saved by its rope_attention");
    const SavedAttention saved = found->second;
    touch(saved.qkv.buffer);
    AttentionShape a = attentionShape(&op, tokens);
    float scale = float(grad.getScale().convertToDouble());
    Location dq = define(grad.getQueryGrad(), "query_grad");
    Location dk = define(grad.getKeyGrad(), "key_grad");
    Location dv = define(grad.getValueGrad(), "value_grad");
    if (auto error = checkQKVSlices(&op, dq, dk, dv, a))
      return error;
    int64_t blocks = a.batch * a.heads, rows = a.group * a.seq;
    int freqs = freqTable(grad.getFrequencies());
    if (saved.lse >= 0) {
      // Flash attention, from O and dO in token rows: delta = rowsum(O dO),
      // then dK, dV and dSᵀ from one kernel, and dQ = scale dS K from dSᵀ's
      // tiles on or below the diagonal; both write the gradients of q, k
      // and v into their rows, dQ and dK rotated back.
      FlashShape shape = flashShape(a, scale, positions->has_value());
      Location out = saved.out;
      touch(out.buffer);
      int64_t width = a.heads * a.dim;
      shape.qkvStride = saved.qkv.ld;
      shape.qkvGradStride = dq.ld;
      shape.outStride = out.ld ? out.ld : width;
      shape.gradStride = dOut->ld ? dOut->ld : width;
      int delta = scratch("attention_delta", ElementType::F32, {blocks, a.seq});
      if (auto error = launch(attentionRowDotKernel(shape),
                              {out, *dOut, whole(delta)}, label + " (delta)"))
        return error;
      int scoresGrad =
          scratch("scores_grad", ElementType::BF16, {blocks, a.seq, a.seq});
      llvm::Expected<int> rope = ropeTable(a, freqs, *positions);
      if (!rope)
        return rope.takeError();
      if (auto error = launch(
              flashAttentionBackwardKernel(shape),
              withPositions({saved.qkv, *dOut, whole(saved.lse), whole(delta),
                             dq, whole(scoresGrad), whole(*rope)},
                            *positions),
              label + " (flash attention backward)"))
        return error;
      return launch(flashAttentionDqKernel(shape),
                    {saved.qkv, whole(scoresGrad), dq, whole(*rope)},
                    label + " (dQ)");
    }
    int headMajor = saved.qkv.buffer;
    // The gradients of the rotated q, k and v, head-major like them.
    int gradHeads = scratch("qkv_heads_grad", ElementType::BF16,
                            {tokens * (a.heads + 2 * a.kvHeads) * a.dim});
    int dOutHeads = scratch("attention_heads_grad", ElementType::BF16,
                            {tokens * a.heads * a.dim});
    if (auto error =
            launch(ropeHeadsKernel(headsLayout(a, dOut->ld, 0, 0),
                                   HeadsDirection::ToHeads, Rotation::None),
                   {*dOut, whole(dOutHeads), whole(freqs)},
                   label + " (gradient to heads)"))
      return error;
    // dP = dO V[b, g]ᵀ (f32).
    int dProbabilities =
        scratch("probabilities_grad", ElementType::F32, {blocks, a.seq, a.seq});
    package::Gemm dP = groupGemm(a, rows, a.seq, a.dim, rows * a.dim,
                                 a.seq * a.dim, rows * a.seq);
    dP.transposeB = true;
    dP.outType = ElementType::F32;
    dP.a = operand(whole(dOutHeads));
    dP.b = operand({headMajor, a.valueRegion, a.dim});
    dP.d = operand(whole(dProbabilities));
    gemm(dP, label + " (dP)");
    // dV[b, g] = P[b, group g]ᵀ dO[b, group g] from the forward's P: the
    // sum over the group's query heads is part of the product.
    package::Gemm dV = groupGemm(a, a.seq, a.dim, rows, rows * a.seq,
                                 rows * a.dim, a.seq * a.dim);
    dV.transposeA = true;
    dV.a = operand(whole(saved.probabilities));
    dV.b = operand(whole(dOutHeads));
    dV.d = operand({gradHeads, a.valueRegion, a.dim});
    gemm(dV, label + " (dV)");
    // dS = P (dP - rowsum(P dP)) from the saved bf16 P, written over it
    // once the dV GEMM has read it.
    if (auto error = launch(
            attentionSoftmaxBackwardKernel(blocks, a.seq, ScoreType::F32,
                                           positions->has_value() ? a.heads
                                                                  : 0),
            withPositions({whole(saved.probabilities), whole(dProbabilities)},
                          *positions),
            label + " (softmax backward)"))
      return error;
    // dQ[b, group g] = scale dS K[b, g].
    package::Gemm dQ = groupGemm(a, rows, a.dim, a.seq, rows * a.seq,
                                 a.seq * a.dim, rows * a.dim);
    dQ.alpha = scale;
    dQ.a = operand(whole(saved.probabilities));
    dQ.b = operand({headMajor, a.keyRegion, a.dim});
    dQ.d = operand(whole(gradHeads));
    gemm(dQ, label + " (dQ)");
    // dK[b, g] = scale dS[b, group g]ᵀ Q[b, group g].
    package::Gemm dK = groupGemm(a, a.seq, a.dim, rows, rows * a.seq,
                                 rows * a.dim, a.seq * a.dim);
    dK.transposeA = true;
    dK.alpha = scale;
    dK.a = operand(whole(saved.probabilities));
    dK.b = operand({headMajor, 0, a.dim});
    dK.d = operand({gradHeads, a.keyRegion, a.dim});
    gemm(dK, label + " (dK)");
    // Back to token rows, rotating the q and k gradients back.
    return launch(
        ropeHeadsKernel(
            headsLayout(a, dq.ld, a.kvHeads, a.kvHeads, positions->has_value()),
            HeadsDirection::ToTokens, Rotation::Inverse),
        withPositions({dq, whole(gradHeads), whole(freqs)}, *positions),
        label + " (inverse rope)");
  }

  if (auto grad = dyn_cast<RMSNormGradOp>(op)) {
    hidden = cast<RankedTensorType>(grad.getInput().getType()).getDimSize(1);
    auto dy = use(grad.getGrad());
    auto x = use(grad.getInput());
    auto w = use(grad.getWeight());
    if (!dy || !x || !w)
      return llvm::joinErrors(llvm::joinErrors(dy.takeError(), x.takeError()),
                              w.takeError());
    int rstd = scratch("rstd", ElementType::F32, {tokens});
    auto normed = normalized(*x, *w, hidden, grad.getEps().convertToDouble(),
                             rstd, label + " (recompute)");
    if (!normed)
      return normed.takeError();
    return normBackward(&op, grad.getInputGrad(), grad.getWeightGrad(), *dy, *x,
                        *w, rstd, hidden, label);
  }

  return fail(&op, "not supported by the GPU backend yet");
}

//===----------------------------------------------------------------------===//
// FP8 (llama-insert-fp8): casts, FP8 GEMMs and the delayed-scaling state
//
// Each FP8 format's state is four persistent f32 buffers with one row per
// quantized tensor (in the order of the fp8_scale_update ops): the amax
// history [T, L], the scale and its inverse [T] (both start at 1) and this
// step's amax [T] (starts at 0). A cast raises its tensor's amax; one
// fp8_scale_update launch per format at the end of @forward_backward rolls
// the histories, computes the next scales and zeroes the amaxes.
//
// A quantized tensor is cast into FP8 copies, each block of rows with its
// own scale: the direct copy where a GEMM reads it K-major as it is (x of
// x Wᵀ, W of x Wᵀ, dY of dY W), the transposed one where it reads its
// transpose (W of dY W, dY and x of the wgrad dYᵀ x). A tensor that needs
// both gets them from one pass over its source (fp8_cast_transpose with a
// direct output). A weight's two copies are persistent buffers (two bytes
// per parameter) that the forward and the dgrad read without casting:
// @optimizer_step writes them as it updates the weight (AdamW fused with
// the casts of the new bf16 weight, adamw_fp8_cast_transpose, block by
// block) and fp8_weight_copies before the first step; why that is the same
// as casting at the next forward: persistentWeightCopies. A package that
// accumulates gradients instead casts a weight where a GEMM first needs it
// (the forward), its transposed copy kept for the backward's dgrad (planned
// like the activations). Any other tensor is cast at its
// llama.fp8_quantize, while its source still holds it. The GEMMs multiply the
// copies with the scale inverses as cuBLASLt's scale pointers and write bf16; a
// GEMM over a weight of several blocks is one GEMM per block: its rows of the
// output (forward) or of the weight gradient (wgrad), or its share of the K sum
// (dgrad, adding into the output with beta 1, so partial sums are rounded to
// bf16).
//===----------------------------------------------------------------------===//

llvm::Error PackageBuilder::prepareFP8(func::FuncOp func) {
  fp8States[0].name = "e4m3";
  fp8States[1].name = "e5m2";
  Block &body = func.getBody().front();
  for (Operation &op : body.without_terminator()) {
    auto update = dyn_cast<FP8ScaleUpdateOp>(op);
    if (!update)
      continue;
    auto history = dyn_cast<BlockArgument>(update.getAmaxHistory());
    auto scale = dyn_cast<BlockArgument>(update.getScale());
    auto idOf = [&](BlockArgument arg, StringRef attr) {
      return arg && arg.getOwner() == &body
                 ? func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), attr)
                 : nullptr;
    };
    StringAttr id = idOf(history, kFP8AmaxHistoryAttr);
    if (!id || id != idOf(scale, kFP8ScaleAttr))
      return fail(&op, "expects the amax history and scale arguments of one "
                       "quantized tensor");
    int format = update.getFormat() == "e4m3"   ? 0
                 : update.getFormat() == "e5m2" ? 1
                                                : -1;
    if (format < 0)
      return fail(&op, "unknown FP8 format '" + update.getFormat() + "'");
    FP8State &state = fp8States[format];
    int64_t length = cast<RankedTensorType>(history.getType()).getDimSize(0);
    if (state.ids.empty()) {
      state.historyLength = length;
      state.margin = update.getMargin();
      state.algo = update.getAmaxComputeAlgo().str();
    } else if (state.historyLength != length ||
               state.margin != int64_t(update.getMargin()) ||
               state.algo != update.getAmaxComputeAlgo()) {
      return fail(&op, "the scale updates of one format must share the "
                       "history length, margin and amax algorithm");
    }
    if (fp8Slots.count(scale))
      return fail(&op, "updates the state of " + id.str() + " twice");
    fp8Slots[scale] = {format, int64_t(state.ids.size())};
    state.ids.push_back(id.str());
  }
  if (fp8States[0].ids.empty() && fp8States[1].ids.empty())
    if (auto error = prepareCurrentScaling(body))
      return error;
  for (FP8State &state : fp8States) {
    if (state.ids.empty())
      continue;
    int64_t count = int64_t(state.ids.size());
    // Current scaling's rows are rewritten before every use and are no
    // checkpointed state: roles the runtime does not save.
    std::string prefix = state.current ? "fp8_current_" : "fp8_";
    auto region = [&](const std::string &role, std::vector<int64_t> shape,
                      float init) {
      int buffer = newBuffer(prefix + role + "." + state.name, prefix + role,
                             ElementType::F32, std::move(shape), true);
      package::Buffer &info = buffers[buffer].info;
      info.parts = state.ids;
      info.partRows.assign(state.ids.size(), 1);
      if (init != 0)
        info.initF32.assign(info.bytes / 4, init);
      return buffer;
    };
    if (!state.current)
      state.history = region("history", {count, state.historyLength}, 0);
    state.scale = region("scale", {count}, 1);
    // One 16-byte row per tensor: cuBLASLt's scale pointers must be
    // 16-byte aligned (only column 0 is used).
    state.scaleInv = region("scale_inv", {count, 4}, 1);
    state.amax = region("amax", {count}, 0);
  }
  return llvm::Error::success();
}

/// Current scaling (the casts carry no scale, and no llama.fp8_scale_update
/// exists): a row per quantized tensor of each format, by the amax its cast
/// returns, named after the op and the tensor's index there.
llvm::Error PackageBuilder::prepareCurrentScaling(Block &body) {
  int64_t ordinal = 0;
  for (Operation &op : body.without_terminator()) {
    ValueRange scales, amaxes;
    SmallVector<StringRef> formats;
    int64_t margin = 0;
    if (auto quantize = dyn_cast<FP8QuantizeOp>(op)) {
      scales = quantize.getScales(), amaxes = quantize.getAmaxes();
      formats.assign(amaxes.size(), quantize.getFormat());
      margin = int64_t(quantize.getMargin());
    } else {
      auto formatsAttr = op.getAttrOfType<ArrayAttr>("fp8_formats");
      if (!formatsAttr)
        continue;
      llvm::TypeSwitch<Operation *>(&op)
          .Case<NormMatmulOp, NormMatmulGradOp, GatedMLPOp, GatedMLPGradOp>(
              [&](auto fused) {
                scales = fused.getFp8Scales(), amaxes = fused.getFp8Amaxes();
                margin = int64_t(fused.getFp8Margin());
              });
      for (StringAttr format : formatsAttr.getAsRange<StringAttr>())
        formats.push_back(format.getValue());
    }
    if (!scales.empty())
      return fail(&op, "has an FP8 scale without the delayed-scaling update "
                       "that computes it");
    if (amaxes.size() != formats.size())
      return fail(&op, "expects one amax per FP8 tensor");
    for (auto [index, entry] : llvm::enumerate(llvm::zip(amaxes, formats))) {
      auto [amax, formatName] = entry;
      int format = formatName == "e4m3" ? 0 : formatName == "e5m2" ? 1 : -1;
      if (format < 0)
        return fail(&op, "unknown FP8 format '" + formatName + "'");
      FP8State &state = fp8States[format];
      if (!state.ids.empty() && state.margin != margin)
        return fail(&op, "the casts of one format must share the margin");
      state.current = true;
      state.margin = margin;
      fp8AmaxSlots[amax] = {format, int64_t(state.ids.size())};
      state.ids.push_back(op.getName().stripDialect().str() + "#" +
                          std::to_string(ordinal) + "." +
                          std::to_string(index));
    }
    ++ordinal;
  }
  return llvm::Error::success();
}

bool PackageBuilder::isFP8(Operation &op) const {
  if (isa<FP8QuantizeOp, FP8ScaleUpdateOp>(op) || op.getAttr("fp8_formats"))
    return true;
  return llvm::any_of(op.getOperands(),
                      [&](Value v) { return fp8Tensors.count(v); });
}

/// The slots of `scales` (formats `formats`), recording the slot each of
/// `amaxes` raises.
llvm::Expected<SmallVector<PackageBuilder::FP8Slot>>
PackageBuilder::fp8SlotsOf(Operation *op, ValueRange scales, ValueRange amaxes,
                           ArrayRef<StringRef> formats) {
  SmallVector<FP8Slot> slots;
  if (scales.empty() && !formats.empty()) {
    // Current scaling: the rows prepareCurrentScaling gave the amaxes.
    for (Value amax : amaxes) {
      auto found = fp8AmaxSlots.find(amax);
      if (found == fp8AmaxSlots.end() ||
          !fp8States[found->second.format].current)
        return fail(op, "has an FP8 tensor without a scale");
      slots.push_back(found->second);
    }
    if (slots.size() != formats.size())
      return fail(op, "expects one amax per FP8 tensor");
    return slots;
  }
  if (scales.size() != formats.size() || amaxes.size() != formats.size())
    return fail(op, "expects one scale and one amax per FP8 tensor");
  for (auto [scale, amax, format] : llvm::zip(scales, amaxes, formats)) {
    auto found = fp8Slots.find(scale);
    if (found == fp8Slots.end())
      return fail(op, "its FP8 scale is no tensor's delayed-scaling state");
    if (fp8States[found->second.format].name != format)
      return fail(op, "quantizes to " + format + " with the scale of a " +
                          fp8States[found->second.format].name + " tensor");
    fp8AmaxSlots[amax] = found->second;
    slots.push_back(found->second);
  }
  return slots;
}

PackageBuilder::FP8Tensor
PackageBuilder::fp8Tensor(Location source, int64_t rows, int64_t cols,
                          ArrayRef<FP8Slot> slots, ArrayRef<int64_t> blockRows,
                          const std::string &name) const {
  FP8Tensor t;
  t.name = name;
  t.source = source;
  t.rows = rows, t.cols = cols;
  t.slots.assign(slots.begin(), slots.end());
  if (blockRows.empty())
    t.blockRows = {rows};
  else
    t.blockRows.assign(blockRows.begin(), blockRows.end());
  return t;
}

llvm::Expected<PackageBuilder::FP8Tensor *>
PackageBuilder::quantized(Operation *op, Value value) {
  auto found = fp8Tensors.find(value);
  if (found == fp8Tensors.end())
    return fail(op, "reads an operand in bf16 where its FP8 GEMM needs it "
                    "quantized (llama.fp8_quantize)");
  return &found->second;
}

/// Casts `t` into its direct or transposed FP8 copy, block by block, unless
/// that copy exists; a tensor whose GEMMs read both copies gets both from
/// one fp8_cast_transpose per block, which reads the source once.
llvm::Error PackageBuilder::fp8Copy(FP8Tensor &t, bool transposed,
                                    const std::string &label) {
  int &buffer = transposed ? t.transposed : t.direct;
  if (buffer >= 0) {
    touch(buffer);
    return llvm::Error::success();
  }
  bool direct = !transposed || t.bothCopies;
  transposed = transposed || t.bothCopies;
  ElementType type = fp8Type(t.slots.front());
  if (direct) {
    t.direct = newBuffer(t.name + ".fp8#" + std::to_string(buffers.size()),
                         "fp8_copy", type, {t.rows, t.cols}, false);
    touch(t.direct);
  }
  if (transposed) {
    t.transposed =
        newBuffer(t.name + ".fp8_t#" + std::to_string(buffers.size()),
                  "fp8_copy", type, t.transposedShape(), false);
    touch(t.transposed);
  }
  return castBlocks(t, direct, transposed, label);
}

/// Casts `t` block by block into its existing direct and/or transposed
/// copies with the blocks' scales, raising their amaxes. With `adamwAt` (t
/// a weight whose parameter starts `adamwAt` bytes into the flat regions),
/// each block's launch is adamw_fp8_cast_transpose: AdamW over the block's
/// elements first, then the casts of the updated weight.
llvm::Error PackageBuilder::castBlocks(const FP8Tensor &t, bool direct,
                                       bool transposed,
                                       const std::string &label,
                                       std::optional<uint64_t> adamwAt) {
  touch(t.source.buffer);
  int64_t ld = t.source.ld ? t.source.ld : t.cols, first = 0;
  for (auto [rows, slot] : llvm::zip_equal(t.blockRows, t.slots)) {
    FP8Format format = slot.format ? FP8Format::E5M2 : FP8Format::E4M3;
    Location from = t.source;
    from.offset += uint64_t(first * ld) * 2;
    // The copies of this block (the transposed one's blocks lie one after
    // the other, so both start at the block's first element).
    uint64_t at = uint64_t(first * t.cols);
    std::vector<Location> args{from};
    // The computed tensors' other inputs: the up half after the gate half
    // (SwiGLU), the gate/up output's halves (SwiGLU's gradient; the up
    // half's needs no up).
    using Computed = FP8Tensor::Computed;
    Location up = t.computed == Computed::SwiGLU ? from : t.gateUp;
    up.offset += uint64_t(t.cols) * 2;
    if (t.computed == Computed::SwiGLUGradGate ||
        t.computed == Computed::SwiGLUGradUp)
      args.push_back(t.gateUp);
    if (t.computed == Computed::SwiGLU ||
        t.computed == Computed::SwiGLUGradGate)
      args.push_back(up);
    if (adamwAt) {
      uint64_t block = *adamwAt + uint64_t(first * t.cols) * 2;
      args = {whole(paramsRegion),   whole(gradsRegion), whole(expAvgRegion),
              whole(expAvgSqRegion), whole(hyper),       whole(gradNorm)};
      for (int region = 0; region < 4; ++region)
        args[region].offset = block;
    }
    const FP8State &state = fp8States[slot.format];
    std::string tensor = " (" + state.name + " " + state.ids[slot.index] + ")";
    if (state.current) {
      // This block's scale from its own amax: zeroed, raised from the
      // block's elements, then turned into the scale the cast reads.
      Location amax = fp8Scalar(&FP8State::amax, slot);
      memset(amax, 4, label + " (zero amax" + tensor + ")");
      if (auto error = launch(fp8AmaxKernel(rows * t.cols, t.cols, ld),
                              {from, amax}, label + " (amax" + tensor + ")"))
        return error;
      if (auto error = launch(fp8CurrentScaleKernel(format, state.margin),
                              {amax, fp8Scalar(&FP8State::scale, slot),
                               fp8Scalar(&FP8State::scaleInv, slot)},
                              label + " (scale" + tensor + ")"))
        return error;
    }
    args.push_back(fp8Scalar(&FP8State::scale, slot));
    if (direct)
      args.push_back({t.direct, at, 0});
    if (transposed)
      args.push_back({t.transposed, at, 0});
    args.push_back(fp8Scalar(&FP8State::amax, slot));
    llvm::Expected<KernelSpec> kernel =
        adamwAt ? adamwFP8CastTransposeKernel(rows, t.cols, format)
        : t.computed == Computed::SwiGLU
            ? swigluFP8CastTransposeKernel(rows, t.cols, format)
        : t.computed != Computed::No
            ? swigluGradFP8CastTransposeKernel(
                  rows, t.cols, format, t.computed == Computed::SwiGLUGradGate)
        : transposed ? fp8CastTransposeKernel(rows, t.cols, format, ld, direct)
                     : fp8CastKernel(rows * t.cols, format, t.cols, ld);
    std::string what = " (" + fp8States[slot.format].name +
                       (direct && transposed ? " copy and transposed copy of "
                        : transposed         ? " transposed copy of "
                                             : " copy of ") +
                       fp8States[slot.format].ids[slot.index] + ")";
    if (auto error = launch(std::move(kernel), std::move(args), label + what))
      return error;
    first += rows;
  }
  return llvm::Error::success();
}

/// Rows [first, first + count) of `t` (inside one block) as a K-major GEMM
/// operand: [count, cols] from the direct copy, or [cols, count] (the rows
/// along K) from the transposed one.
llvm::Expected<PackageBuilder::FP8Operand>
PackageBuilder::fp8Rows(Operation *op, FP8Tensor &t, int64_t first,
                        int64_t count, bool transposed,
                        const std::string &label) {
  int64_t start = 0;
  size_t block = 0;
  for (; block < t.blockRows.size(); start += t.blockRows[block++])
    if (first >= start && first + count <= start + t.blockRows[block])
      break;
  if (block == t.blockRows.size())
    return fail(op, "its GEMM reads rows " + llvm::Twine(first) + ".." +
                        llvm::Twine(first + count) + " of " + t.name +
                        ", across FP8 blocks of different scales");
  if (auto error = fp8Copy(t, transposed, label))
    return std::move(error);
  if (!transposed)
    return FP8Operand{{t.direct, uint64_t(first * t.cols), 0}, t.slots[block]};
  int64_t rows = t.blockRows[block];
  return FP8Operand{{t.transposed, uint64_t(start * t.cols + first - start),
                     count == rows ? 0 : rows},
                    t.slots[block]};
}

/// D [m, n] = (A [m, k] sa)(B [n, k] sb)ᵀ in bf16 from K-major FP8 operands;
/// with `accumulate` added to D (beta 1), else as setAddend says.
llvm::Error PackageBuilder::fp8Gemm(Operation *op, const FP8Operand &a,
                                    const FP8Operand &b, Location d, int64_t m,
                                    int64_t n, int64_t k, bool accumulate,
                                    const std::string &label,
                                    std::optional<Location> addend) {
  // cuBLASLt's FP8 kernels read K-major rows of 16-byte multiples from
  // 16-byte aligned addresses.
  for (const FP8Operand *x : {&a, &b})
    if (k % 16 || x->at.offset % 16 || x->at.ld % 16)
      return fail(op, "FP8 GEMM " + label + " (" + llvm::Twine(m) + " x " +
                          llvm::Twine(n) + " x " + llvm::Twine(k) +
                          "): needs K and row strides that are multiples of "
                          "16 and 16-byte aligned operands");
  package::Gemm g;
  g.m = m, g.n = n, g.k = k;
  g.transposeB = true;
  g.type = fp8Type(a.slot);
  if (fp8Type(b.slot) != g.type)
    g.typeB = fp8Type(b.slot);
  g.a = operand(a.at), g.b = operand(b.at), g.d = operand(d);
  g.scaleInvA = operand(fp8Scalar(&FP8State::scaleInv, a.slot));
  g.scaleInvB = operand(fp8Scalar(&FP8State::scaleInv, b.slot));
  setAddend(g, d, addend);
  if (accumulate)
    g.beta = 1;
  touch(a.at.buffer);
  touch(b.at.buffer);
  touch(d.buffer);
  gemm(g, label);
  return llvm::Error::success();
}

llvm::Error PackageBuilder::lowerFP8(Operation &op, const std::string &label) {
  if (auto quantize = dyn_cast<FP8QuantizeOp>(op))
    return lowerFP8Quantize(quantize, label);
  if (auto update = dyn_cast<FP8ScaleUpdateOp>(op)) {
    // All updates run as one launch per format at the end of the function
    // (updateFP8Scales); each must read its own tensor's amax.
    auto slot = fp8Slots.find(update.getScale());
    auto amax = fp8AmaxSlots.find(update.getAmax());
    if (slot == fp8Slots.end() || amax == fp8AmaxSlots.end() ||
        slot->second.format != amax->second.format ||
        slot->second.index != amax->second.index)
      return fail(&op, "reads an amax that is not of the tensor it updates");
    return llvm::Error::success();
  }
  if (auto matmul = dyn_cast<MatmulOp>(op))
    return lowerFP8Matmul(matmul, label);
  if (auto fused = dyn_cast<NormMatmulOp>(op))
    return lowerFP8NormMatmul(fused, label);
  if (auto fused = dyn_cast<NormMatmulGradOp>(op))
    return lowerFP8NormMatmulGrad(fused, label);
  if (auto fused = dyn_cast<GatedMLPOp>(op))
    return lowerFP8GatedMLP(fused, label);
  if (auto fused = dyn_cast<GatedMLPGradOp>(op))
    return lowerFP8GatedMLPGrad(fused, label);
  return fail(&op, "reads an FP8-quantized operand, which the GPU backend "
                   "lowers only for matmul, norm_matmul, gated_mlp and their "
                   "gradients");
}

llvm::Error PackageBuilder::lowerFP8Quantize(FP8QuantizeOp op,
                                             const std::string &label) {
  SmallVector<StringRef> formats(op.getAmaxes().size(), op.getFormat());
  auto slots = fp8SlotsOf(op, op.getScales(), op.getAmaxes(), formats);
  if (!slots)
    return slots.takeError();
  auto type = cast<RankedTensorType>(op.getInput().getType());
  if (type.getRank() != 2 || !type.getElementType().isBF16())
    return fail(op, "quantizes a tensor that is not a bf16 matrix");
  auto swiglu = swigluSources.find(op.getInput());
  auto source = swiglu != swigluSources.end()
                    ? llvm::Expected<Location>(swiglu->second)
                    : use(op.getInput());
  if (!source)
    return source.takeError();
  // Which copies the consumers read.
  bool direct = false, transposed = false;
  for (OpOperand &use : op.getResult().getUses()) {
    Operation *user = use.getOwner();
    if (auto matmul = dyn_cast<MatmulOp>(user)) {
      bool t = use.getOperandNumber() == 0 ? matmul.getTransposeLhs()
                                           : !matmul.getTransposeRhs();
      (t ? transposed : direct) = true;
    } else if (isa<NormMatmulOp, GatedMLPOp>(user)) {
      direct = true; // the weight of x Wᵀ
    } else if (auto grad = dyn_cast<NormMatmulGradOp>(user);
               grad && use.get() != grad.getWeight()) {
      direct = transposed = true; // a cotangent: dgrad and wgrad
    } else if (isa<NormMatmulGradOp, GatedMLPGradOp>(user)) {
      transposed = true; // the weight of the dgrad
    } else {
      return fail(user, "reads an FP8-quantized operand that the GPU "
                        "backend does not lower");
    }
  }
  const FP8Slot &first = slots->front();
  FP8Tensor &t = fp8Tensors[op.getResult()] =
      fp8Tensor(*source, type.getDimSize(0), type.getDimSize(1), *slots,
                op.getBlockRows(), fp8States[first.format].ids[first.index]);
  // Both copies from one read where the GEMMs read both; a weight's are
  // persistent (persistentWeightCopies), or it gets them at its first GEMM
  // (the forward's), and its transposed copy then lives until the
  // backward's dgrad reads it.
  t.bothCopies = direct && transposed;
  if (swiglu != swigluSources.end())
    t.computed = FP8Tensor::Computed::SwiGLU;
  if (t.computed != FP8Tensor::Computed::No && !t.bothCopies)
    return fail(op, "casts a SwiGLU output for a GEMM that does not read both "
                    "its copies");
  if (isa<BlockArgument>(op.getInput())) {
    if (persistentWeightCopies() && t.bothCopies &&
        buffers[source->buffer].info.role == "param")
      return registerFP8Weight(op, t);
    return llvm::Error::success();
  }
  for (auto [wanted, isTransposed] :
       {std::pair{direct, false}, std::pair{transposed, true}})
    if (wanted)
      if (auto error = fp8Copy(t, isTransposed, label))
        return error;
  return llvm::Error::success();
}

/// Whether the FP8 copies of the weights are persistent buffers that
/// @optimizer_step writes (adamw_fp8_cast_transpose) and fp8_weight_copies
/// writes before the first step, so that the forward reads them without
/// casting. The casts use the scales the forward would have used: the scale
/// update runs at the end of @forward_backward, before @optimizer_step, and
/// nothing changes the scales or weights between @optimizer_step and the
/// next forward; the amax rows they raise are the ones that update has just
/// zeroed and the next one reads, raised by max |W| of the same weights. So
/// the copies and the state are those of casting at the next forward. Not
/// so with gradient accumulation: every micro-batch's @forward_backward
/// updates the scales, and the next micro-batch must cast the unchanged
/// weights again with the new scales; those packages cast in the forward.
/// Nor with current scaling, where a cast needs its tensor's amax first,
/// which AdamW's blocks cannot know before all of them have run.
bool PackageBuilder::persistentWeightCopies() const {
  return !options.accumulateGradients && !fp8States[0].current &&
         !fp8States[1].current;
}

/// Gives the weight `t` (quantized by `op`; both copies) persistent FP8
/// copies, which @optimizer_step and fp8_weight_copies write.
llvm::Error PackageBuilder::registerFP8Weight(Operation *op, FP8Tensor &t) {
  std::string param = buffers[t.source.buffer].info.param;
  if (fp8Weights.count(param))
    return fail(op, "quantizes the weight " + param + " a second time");
  ElementType type = fp8Type(t.slots.front());
  for (FP8Slot slot : t.slots)
    if (fp8Type(slot) != type)
      return fail(op, "quantizes the blocks of " + param +
                          " to different FP8 formats");
  // Each copy is dead between its last GEMM (the forward's for the direct
  // copy, the dgrad for the transposed one) and @optimizer_step, so the
  // plan lends that memory to activations: the copies cost no more at the
  // step's peak than the forward's casts did.
  t.direct = newBuffer(param + ".fp8", "fp8_weight_copy", type,
                       {t.rows, t.cols}, false);
  t.transposed = newBuffer(param + ".fp8_t", "fp8_weight_copy", type,
                           t.transposedShape(), false);
  buffers[t.direct].carried = buffers[t.transposed].carried = true;
  buffers[t.direct].info.param = buffers[t.transposed].info.param = param;
  fp8Weights[param] = t;
  return llvm::Error::success();
}

/// fp8_weight_copies: every persistent FP8 weight copy cast from the bf16
/// weights, raising the weights' amaxes; run once after the weights and
/// the FP8 state are uploaded, before the first @forward_backward.
llvm::Error PackageBuilder::lowerFP8WeightCopies() {
  if (fp8Weights.empty())
    return llvm::Error::success();
  functions.push_back({package::kFP8WeightCopiesFunction, {}});
  current = &functions.back();
  for (auto &[offset, param] : paramsInFlatOrder()) {
    auto weight = fp8Weights.find(param);
    if (weight != fp8Weights.end())
      if (auto error = castBlocks(weight->second, true, true, "fp8 weights"))
        return error;
  }
  return llvm::Error::success();
}

llvm::Error PackageBuilder::lowerFP8Matmul(MatmulOp op, std::string label) {
  auto lhs = quantized(op, op.getLhs());
  auto rhs = quantized(op, op.getRhs());
  if (!lhs || !rhs)
    return llvm::joinErrors(lhs.takeError(), rhs.takeError());
  auto result = cast<RankedTensorType>(op.getType());
  int64_t k = op.getTransposeLhs() ? (*lhs)->rows : (*lhs)->cols;
  // A = op(lhs) [m, k]; B = op(rhs)ᵀ [n, k].
  auto a = fp8Rows(op, **lhs, 0, (*lhs)->rows, op.getTransposeLhs(), label);
  auto b = fp8Rows(op, **rhs, 0, (*rhs)->rows, !op.getTransposeRhs(), label);
  if (!a || !b)
    return llvm::joinErrors(a.takeError(), b.takeError());
  Value out = op.getResult();
  auto addend = foldResidual(out, label);
  if (!addend)
    return addend.takeError();
  Location d = define(out, "matmul");
  return fp8Gemm(op, *a, *b, d, result.getDimSize(0), result.getDimSize(1), k,
                 false, label, *addend);
}

/// out[:, block] = A W[block]ᵀ for each block of the weight `w` (one FP8
/// GEMM per Hugging Face tensor, each with its own scale), into the block's
/// columns of `out` ([tokens, columns]).
llvm::Error PackageBuilder::fp8ForwardByBlock(Operation *op,
                                              const FP8Operand &a, FP8Tensor &w,
                                              Location out, int64_t columns,
                                              int64_t hidden,
                                              const std::string &label) {
  int64_t first = 0;
  for (int64_t rows : w.blockRows) {
    auto b = fp8Rows(op, w, first, rows, false, label);
    if (!b)
      return b.takeError();
    Location d = out;
    d.offset += uint64_t(first) * 2;
    if (rows != columns)
      d.ld = columns;
    if (auto error = fp8Gemm(op, a, *b, d, tokens, rows, hidden, false,
                             label + " (GEMM)"))
      return error;
    first += rows;
  }
  return llvm::Error::success();
}

/// The GEMMs of one weight block W[first, first + rows) in a backward, with
/// dY [tokens, rows] the block's quantized output gradient:
///   dW[block] = dYᵀ in  (in: the quantized input, transposed as `inT`)
///   dx (+)= dY W[block] (added to dx when `accumulate`).
llvm::Error PackageBuilder::fp8BlockBackward(Operation *op, FP8Tensor &dY,
                                             FP8Tensor &w, int64_t first,
                                             const FP8Operand &inT,
                                             Location weightGrad, Location dx,
                                             int64_t hidden, bool accumulate,
                                             const std::string &label) {
  int64_t rows = dY.cols;
  auto dYT = fp8Rows(op, dY, 0, tokens, true, label);
  auto dYD = fp8Rows(op, dY, 0, tokens, false, label);
  auto wT = fp8Rows(op, w, first, rows, true, label);
  if (!dYT || !dYD || !wT)
    return llvm::joinErrors(llvm::joinErrors(dYT.takeError(), dYD.takeError()),
                            wT.takeError());
  Location dW = weightGrad;
  dW.offset += uint64_t(first * hidden) * 2;
  if (auto error = fp8Gemm(op, *dYT, inT, dW, rows, hidden, tokens, false,
                           label + " (wgrad)"))
    return error;
  return fp8Gemm(op, *dYD, *wT, dx, tokens, hidden, rows, accumulate,
                 label + " (dgrad)");
}

/// RMSNorm(x) as the forward GEMM's FP8 operand [tokens, hidden] (the
/// direct copy of the normalized input, one block with `slots[0]`). With
/// delayed scaling one launch writes it from x (rms_norm_fwd's FP8
/// instance: the bits fp8_cast of the bf16 result would write, the same
/// amax), so the bf16 result is neither written nor read back; current
/// scaling needs that result's amax before the cast, so it normalizes into
/// bf16 and casts as any tensor.
llvm::Expected<PackageBuilder::FP8Operand> PackageBuilder::normalizedOperand(
    Operation *op, Location x, Location normWeight, int64_t hidden, double eps,
    ArrayRef<FP8Slot> slots, const std::string &label) {
  int rstd = scratch("rstd", ElementType::F32, {tokens});
  const FP8Slot &slot = slots.front();
  const FP8State &state = fp8States[slot.format];
  if (slots.size() != 1 || state.current) {
    auto xn = normalized(x, normWeight, hidden, eps, rstd, label + " (norm)");
    if (!xn)
      return xn.takeError();
    FP8Tensor in = fp8Tensor(*xn, tokens, hidden, slots, {}, label + ".xn");
    return fp8Rows(op, in, 0, tokens, false, label);
  }
  int copy = newBuffer("xn.fp8#" + std::to_string(buffers.size()), "fp8_copy",
                       fp8Type(slot), {tokens, hidden}, false);
  touch(copy);
  FP8Format format = slot.format ? FP8Format::E5M2 : FP8Format::E4M3;
  if (auto error = launch(rmsNormFP8ForwardKernel(tokens, hidden, eps, format),
                          {x,
                           normWeight,
                           fp8Scalar(&FP8State::scale, slot),
                           {copy, 0, 0},
                           fp8Scalar(&FP8State::amax, slot),
                           whole(rstd)},
                          label + " (norm into the " + state.name +
                              " copy of " + state.ids[slot.index] + ")"))
    return std::move(error);
  return FP8Operand{{copy, 0, 0}, slot};
}

llvm::Error PackageBuilder::lowerFP8NormMatmul(NormMatmulOp op,
                                               const std::string &label) {
  auto weightType = cast<RankedTensorType>(op.getWeight().getType());
  int64_t width = weightType.getDimSize(0), hidden = weightType.getDimSize(1);
  auto operands = fp8FusedOperands(
      op, 1, "one FP8 format, of its normalized input", op.getNormWeight());
  if (!operands)
    return operands.takeError();
  auto a =
      normalizedOperand(op, operands->input, operands->normWeight, hidden,
                        op.getEps().convertToDouble(), operands->slots, label);
  if (!a)
    return a.takeError();
  int y = newBuffer("norm_matmul.y#" + std::to_string(buffers.size()),
                    "activation", ElementType::BF16, {tokens, width}, false);
  if (auto error = fp8ForwardByBlock(op, *a, *operands->weight, {y, 0, 0},
                                     width, hidden, label))
    return error;
  return sliceOutputs(op, op.getOutputs(), y, width);
}

llvm::Error PackageBuilder::lowerFP8NormMatmulGrad(NormMatmulGradOp op,
                                                   const std::string &label) {
  auto weightType = cast<RankedTensorType>(op.getWeight().getType());
  int64_t hidden = weightType.getDimSize(1);
  auto operands = fp8FusedOperands(
      op, 1, "one FP8 format, of its normalized input", op.getNormWeight());
  if (!operands)
    return operands.takeError();
  SmallVector<FP8Tensor *> grads;
  for (Value grad : op.getGrads()) {
    auto g = quantized(op, grad);
    if (!g)
      return g.takeError();
    grads.push_back(*g);
  }
  int rstd = -1;
  auto xn = normForBackward(op.getInput(), op.getNormWeight(), operands->input,
                            operands->normWeight, hidden,
                            op.getEps().convertToDouble(), rstd, label);
  if (!xn)
    return xn.takeError();
  FP8Tensor in =
      fp8Tensor(*xn, tokens, hidden, operands->slots, {}, label + ".xn");
  auto inT = fp8Rows(op, in, 0, tokens, true, label);
  if (!inT)
    return inT.takeError();
  Location weightGrad = define(op.getWeightGrad(), "weight_grad");
  int dxn = scratch("dxn", ElementType::BF16, {tokens, hidden});
  // Per cotangent dY_j (the rows r_j of the weight): dW[r_j] = dY_jᵀ xn and
  // dxn += dY_j W[r_j].
  int64_t first = 0;
  for (auto [j, grad] : llvm::enumerate(grads)) {
    if (auto error =
            fp8BlockBackward(op, *grad, *operands->weight, first, *inT,
                             weightGrad, whole(dxn), hidden, j > 0, label))
      return error;
    first += grad->cols;
  }
  return normBackward(op, op.getInputGrad(), op.getNormWeightGrad(), whole(dxn),
                      operands->input, operands->normWeight, rstd, hidden,
                      label);
}

llvm::Error PackageBuilder::lowerFP8GatedMLP(GatedMLPOp op,
                                             const std::string &label) {
  auto weightType = cast<RankedTensorType>(op.getWeight().getType());
  int64_t width = weightType.getDimSize(0) / 2,
          hidden = weightType.getDimSize(1);
  auto operands = fp8FusedOperands(
      op, 1, "one FP8 format, of its (normalized) input", op.getNormWeight());
  if (!operands)
    return operands.takeError();
  FP8Tensor input = fp8Tensor(operands->input, tokens, hidden, operands->slots,
                              {}, label + ".xn");
  auto a = op.getNormWeight()
               ? normalizedOperand(op, operands->input, operands->normWeight,
                                   hidden, op.getEps()->convertToDouble(),
                                   operands->slots, label)
               : fp8Rows(op, input, 0, tokens, false, label);
  if (!a)
    return a.takeError();
  Location gateUp = define(op.getGateUp(), "gate_up");
  if (auto error = fp8ForwardByBlock(op, *a, *operands->weight, gateUp,
                                     2 * width, hidden, label))
    return error;
  // An output that only its (delayed-scaling) cast reads is computed by
  // that cast from gate_up and never written in bf16.
  Value h = op.getResult();
  auto cast = h.hasOneUse() ? dyn_cast<FP8QuantizeOp>(*h.user_begin())
                            : FP8QuantizeOp();
  if (cast && !cast.getScales().empty() && cast.getBlockRows().size() == 1) {
    swigluSources[h] = gateUp;
    return llvm::Error::success();
  }
  Location out = define(h, "swiglu");
  return launch(swigluForwardKernel(tokens, width), {gateUp, out},
                label + " (swiglu)");
}

llvm::Error PackageBuilder::lowerFP8GatedMLPGrad(GatedMLPGradOp op,
                                                 const std::string &label) {
  auto weightType = cast<RankedTensorType>(op.getWeight().getType());
  int64_t width = weightType.getDimSize(0) / 2,
          hidden = weightType.getDimSize(1);
  auto operands = fp8FusedOperands(
      op, 3, "three FP8 formats: its input's and the gate and up gradients'");
  if (!operands)
    return operands.takeError();
  const SmallVector<FP8Slot> &slots = operands->slots;
  // With delayed scaling the gradient's halves are never written in bf16:
  // their casts compute them from dOut and gate_up. Current scaling needs
  // each half's amax before its cast, so it writes them.
  bool computedHalves = !fp8States[slots[1].format].current &&
                        !fp8States[slots[2].format].current;
  auto start = startGatedMLPGrad(op, operands->input, width, hidden, label,
                                 /*computeDGU=*/!computedHalves);
  if (!start)
    return start.takeError();
  int dGU = start->dGU;
  Location in = start->in;
  FP8Tensor input =
      fp8Tensor(in, tokens, hidden, {slots[0]}, {}, label + ".xn");
  auto inT = fp8Rows(op, input, 0, tokens, true, label);
  if (!inT)
    return inT.takeError();
  Location weightGrad = define(op.getWeightGrad(), "weight_grad");
  Location dx = op.getNormWeight()
                    ? whole(scratch("dxn", ElementType::BF16, {tokens, hidden}))
                    : define(op.getInputGrad(), "input_grad");
  // The gate and up halves of dGU, each quantized as a tensor of its own:
  // dW[half] = dHᵀ in and dx += dH W[half].
  for (int half = 0; half < 2; ++half) {
    std::string name = label + (half ? ".dup" : ".dgate");
    Location source =
        computedHalves ? start->dOut
                       : Location{dGU, uint64_t(half * width) * 2, 2 * width};
    FP8Tensor dH =
        fp8Tensor(source, tokens, width, {slots[1 + half]}, {}, name);
    if (computedHalves) {
      dH.computed = half ? FP8Tensor::Computed::SwiGLUGradUp
                         : FP8Tensor::Computed::SwiGLUGradGate;
      dH.gateUp = start->gateUp;
    }
    dH.bothCopies = true;
    if (auto error =
            fp8BlockBackward(op, dH, *operands->weight, half * width, *inT,
                             weightGrad, dx, hidden, half > 0, label))
      return error;
  }
  if (!op.getNormWeight())
    return llvm::Error::success();
  return normBackward(op, op.getInputGrad(), op.getNormWeightGrad(), dx,
                      operands->input, start->normWeight, start->rstd, hidden,
                      label);
}

/// One fp8_scale_update launch per format, in place over its state.
llvm::Error PackageBuilder::updateFP8Scales() {
  for (const FP8State &state : fp8States) {
    if (state.ids.empty() || state.current)
      continue;
    int64_t count = int64_t(state.ids.size());
    if (auto error =
            launch(fp8ScaleUpdateKernel(
                       count, state.historyLength,
                       state.name == "e4m3" ? FP8Format::E4M3 : FP8Format::E5M2,
                       state.margin, state.algo == "most_recent"),
                   {whole(state.history), whole(state.amax), whole(state.scale),
                    whole(state.scaleInv)},
                   "llama.fp8_scale_update (" + std::to_string(count) + " " +
                       state.name + " tensors)"))
      return error;
  }
  return llvm::Error::success();
}

//===----------------------------------------------------------------------===//
// @optimizer_step: clipping and AdamW over the flat regions (the FP8
// weights' AdamW fused with their casts)
//===----------------------------------------------------------------------===//

llvm::Error PackageBuilder::lowerOptimizer(func::FuncOp func) {
  // The flat kernels assume the pass's structure: one global_norm of every
  // gradient, one clip_scale, one adamw per parameter.
  int adamws = 0;
  bool norm = false;
  for (Operation &op : func.getBody().front().without_terminator()) {
    if (isa<AdamWOp>(op))
      ++adamws;
    else if (isa<GlobalNormOp>(op))
      norm = true;
    else if (!isa<ClipScaleOp>(op))
      return fail(&op, "unexpected in @optimizer_step");
  }
  if (!norm || adamws != int(flatOffset.size()))
    return fail(nullptr, "@optimizer_step does not update every parameter");
  Location sumSq = whole(gradNorm);
  memset(sumSq, 16, "llama.global_norm (zero)");
  if (auto error = launch(globalNormSqKernel(flatElements),
                          {whole(gradsRegion), sumSq, whole(hyper)},
                          "llama.global_norm"))
    return error;
  // AdamW: a weight with persistent FP8 copies block by block, fused with
  // its casts (adamw_fp8_cast_transpose); every run of adjacent other
  // parameters (with the padding between them) by one flat launch.
  uint64_t end = uint64_t(flatElements) * 2, runStart = 0;
  auto flatRun = [&](uint64_t runEnd) -> llvm::Error {
    if (runEnd == runStart)
      return llvm::Error::success();
    std::vector<Location> args{whole(paramsRegion), whole(gradsRegion),
                               whole(expAvgRegion), whole(expAvgSqRegion)};
    for (Location &region : args)
      region.offset = runStart;
    args.push_back(whole(hyper));
    args.push_back(sumSq);
    return launch(adamwKernel(int64_t(runEnd - runStart) / 2), std::move(args),
                  runStart == 0 && runEnd == end
                      ? "llama.adamw (all parameters)"
                      : "llama.adamw (parameters at bytes " +
                            std::to_string(runStart) + ".." +
                            std::to_string(runEnd) + ")");
  };
  for (auto &[offset, param] : paramsInFlatOrder()) {
    auto weight = fp8Weights.find(param);
    if (weight == fp8Weights.end())
      continue;
    if (auto error = flatRun(offset))
      return error;
    const FP8Tensor &t = weight->second;
    if (auto error = castBlocks(t, true, true, "llama.adamw", offset))
      return error;
    runStart = offset + align(uint64_t(t.rows * t.cols) * 2);
  }
  return flatRun(end);
}

//===----------------------------------------------------------------------===//
// Driver
//===----------------------------------------------------------------------===//

llvm::Error PackageBuilder::build(ModuleOp module) {
  auto forwardBackward =
      module.lookupSymbol<func::FuncOp>(kForwardBackwardName);
  auto optimizer = module.lookupSymbol<func::FuncOp>(kOptimizerStepName);
  if (!forwardBackward || !optimizer)
    return fail(nullptr, "expects @forward_backward and @optimizer_step");
  if (auto error = prepareForwardBackward(forwardBackward))
    return error;
  if (auto error = prepareFP8(forwardBackward))
    return error;

  functions.push_back({std::string(kForwardBackwardName), {}});
  current = &functions.back();
  // Every gradient is written whole by the op computing it (a gradient no
  // op computes is a constant zero, a memset); the padding between
  // parameters stays as the runtime's zeroed arena left it.
  for (Operation &op : forwardBackward.getBody().front().without_terminator()) {
    ++opIndex;
    if (auto error = lower(op))
      return error;
  }
  if (auto error = updateFP8Scales())
    return error;
  optimizerStart = ++opIndex;
  functions.push_back({std::string(kOptimizerStepName), {}});
  current = &functions.back();
  if (auto error = lowerOptimizer(optimizer))
    return error;
  if (options.accumulateGradients) {
    // The next step's micro-batches add into zeros; zero_grads does the
    // same before the first step.
    uint64_t gradBytes = uint64_t(flatElements) * 2;
    memset(whole(gradsRegion), gradBytes, "zero gradients for the next step");
    functions.push_back({package::kZeroGradsFunction, {}});
    current = &functions.back();
    memset(whole(gradsRegion), gradBytes, "zero gradients");
  }
  if (auto error = lowerFP8WeightCopies())
    return error;
  ++opIndex;
  return llvm::Error::success();
}

llvm::Expected<package::Package> PackageBuilder::finish() {
  // Persistent buffers live through the whole step; the arena is planned
  // over roots only (children sit inside their parents).
  std::vector<LiveRange> ranges;
  std::vector<int> roots;
  for (size_t i = 0; i < buffers.size(); ++i) {
    Logical &logical = buffers[i];
    if (logical.parent >= 0)
      continue;
    LiveRange range{logical.info.bytes, logical.first, logical.last};
    if (logical.carried)
      range = {logical.info.bytes, 0, logical.lastInForwardBackward,
               optimizerStart};
    else if (logical.persistent || logical.last < 0)
      range = {logical.info.bytes, 0, opIndex};
    ranges.push_back(range);
    roots.push_back(int(i));
  }
  MemoryPlan plan = planMemory(ranges);

  package::Package result;
  result.arch = options.ptx.chip;
  result.compiler = options.compiler;
  result.configJson = options.configJson;
  result.batch = options.batch;
  result.seq = options.seq;
  result.precision =
      fp8States[0].ids.empty() && fp8States[1].ids.empty() ? "bf16" : "fp8";
  result.accumulatesGradients = options.accumulateGradients;
  result.arenaBytes = plan.arenaBytes;
  std::vector<uint64_t> offsets(buffers.size(), 0);
  for (size_t r = 0; r < roots.size(); ++r)
    offsets[roots[r]] = plan.offsets[r];
  for (size_t i = 0; i < buffers.size(); ++i) {
    package::Buffer info = buffers[i].info;
    info.offset = buffers[i].parent >= 0
                      ? offsets[rootOf(int(i))] + buffers[i].innerOffset
                      : offsets[i];
    result.buffers.push_back(std::move(info));
  }
  result.functions = std::move(functions);
  llvm::Expected<std::string> ptx = compileKernels(kernels, options.ptx);
  if (!ptx)
    return ptx.takeError();
  result.ptx = std::move(*ptx);
  if (Status status = package::validate(result, "generated package"); !status)
    return llvm::createStringError(status.error().message);
  return result;
}

} // namespace

llvm::Expected<package::Package> buildPackage(ModuleOp module,
                                              const PackageOptions &options) {
  PackageBuilder builder(options);
  if (auto error = builder.build(module))
    return std::move(error);
  return builder.finish();
}

} // namespace llamac
