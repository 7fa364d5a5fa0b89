//===- Kernels.h - The compiler's GPU kernels -------------------*- C++ -*-===//
//
// Non-GEMM kernels are MLIR templates (compiler/lib/Kernels/templates/*.mlir,
// one gpu.func each, with a comment saying what it computes, reads and writes
// and how it is launched), specialized to the shapes of a train step by
// substituting @NAME@ placeholders (@KERNEL@ is the instance's name), then
// lowered together to one PTX module through NVVM and LLVM.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_KERNELS_KERNELS_H
#define LLAMAC_KERNELS_KERNELS_H

#include "llamac/Target/PTX.h"

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"

#include <cstdint>
#include <string>
#include <utility>

namespace llamac {

/// The MLIR text of template `name` with every `@KEY@` replaced by its value;
/// an error for an unknown template or a placeholder left unset.
llvm::Expected<std::string> instantiateKernel(
    llvm::StringRef name,
    llvm::ArrayRef<std::pair<llvm::StringRef, std::string>> values);

struct LaunchDims {
  unsigned x = 1, y = 1, z = 1;
};

/// One specialized kernel: its gpu.func as MLIR text, its entry name (unique
/// per shape), and how to launch it.
struct KernelSpec {
  std::string name;
  std::string source;
  LaunchDims grid, block;
  unsigned sharedBytes = 0;
};

/// AdamW over flat bf16 buffers of `numel` elements (a multiple of 8).
llvm::Expected<KernelSpec> adamwKernel(int64_t numel);

// The kernels of the train step around its GEMMs. Each template's comment
// (compiler/lib/Kernels/templates/<name>.mlir) gives the exact math; below:
// the arguments in launch order (bare pointers; "[R, C]" is row-major),
// what is read and written, and the launch. Activations are bf16; statistics,
// reductions and accumulators f32. Every size that the code depends on is
// part of the kernel's name. Errors name the kernel and the bad size.

/// embedding_fwd: out[t, :] = table[ids[t], :]; an id outside [0, vocab)
/// gives zeros. Args: ids (i32 [rows]), table (bf16 [vocab, hidden]), out
/// (bf16 [rows, hidden]). Grid [rows], block [min(256, chunks rounded up to
/// a warp)] with hidden / 8 chunks per row. hidden % 8 == 0.
llvm::Expected<KernelSpec> embeddingForwardKernel(int64_t rows, int64_t vocab,
                                                  int64_t hidden);

/// embedding_bwd: for each id v in [0, vocab) among ids, dtable[v, :] =
/// bf16(the f32 sum, from 0.0 in increasing t, of dout[t, :] over the rows t
/// with ids[t] == v), or with `accumulate` bf16(f32(dtable[v, :]) + that
/// sum); deterministic. Rows of dtable whose id does not occur are not
/// touched (the plan zeroes dtable first unless it accumulates). Args: ids (i32
/// [rows]), dout (bf16 [rows, hidden]), dtable (bf16 [vocab, hidden]). Launch
/// as embeddingForwardKernel; rows <= 392448 (a bit per row in shared memory).
llvm::Expected<KernelSpec> embeddingBackwardKernel(int64_t rows, int64_t vocab,
                                                   int64_t hidden,
                                                   bool accumulate = false);

/// rms_norm_fwd: rstd = rsqrt(mean(x^2) + eps) (f32), y = bf16(w bf16(x
/// rstd)). Args: x (bf16 [rows, hidden]), w (bf16 [hidden]), y (bf16 [rows,
/// hidden]), rstd (f32 [rows]). Grid [rows], block [min(256, hidden / 8
/// rounded up to a warp)]. hidden % 8 == 0.
llvm::Expected<KernelSpec> rmsNormForwardKernel(int64_t rows, int64_t hidden,
                                                double eps);

/// rms_norm_bwd: g = dy w, dx = rstd (g - x rstd^2 mean(g x)) (bf16; with
/// `accumulate`, dx holds the residual gradient on entry and becomes
/// bf16(bf16(dx) + dx_in)); block b writes its share of dw = sum_t dy
/// bf16(x rstd) into row b of `partial`. Args: dy, x (bf16 [rows, hidden]),
/// w (bf16 [hidden]), rstd (f32 [rows]), dx (bf16 [rows, hidden]), partial
/// (f32 [grid.x, hidden]). Finish dw with columnSumKernel(grid.x, hidden).
/// Grid [min(rows, 512)], block [min(256, hidden / 8 rounded up to a
/// warp)], static shared memory 4 hidden + 256 bytes (hidden <= 8192).
llvm::Expected<KernelSpec> rmsNormBackwardKernel(int64_t rows, int64_t hidden,
                                                 bool accumulate);

/// column_sum: out[j] = bf16(sum_g in[g, j]) in a fixed order; with
/// `accumulate`, out[j] = bf16(f32(out[j]) + sum_g in[g, j]). Args: in (f32
/// [rows, cols]), out (bf16 [cols]). Grid [ceil(cols / 32)], block [32 *
/// warps] with warps = min(32, ceil(rows / 4)).
llvm::Expected<KernelSpec> columnSumKernel(int64_t rows, int64_t cols,
                                           bool accumulate = false);

/// swiglu_fwd: out[t, j] = bf16(bf16(silu(gate)) up) with gate = gu[t, j],
/// up = gu[t, width + j]. Args: gu (bf16 [rows, 2 width]), out (bf16 [rows,
/// width]). Grid [ceil(rows width / 2048)], block [256]. width % 8 == 0.
llvm::Expected<KernelSpec> swigluForwardKernel(int64_t rows, int64_t width);

/// swiglu_bwd: with s = sigmoid(gate), dgu[t, j] = bf16(dy up s (1 + gate
/// (1 - s))), dgu[t, width + j] = bf16(dy bf16(silu(gate))). Args: dout
/// (bf16 [rows, width]), gu (bf16 [rows, 2 width]), dgu (bf16 [rows, 2
/// width]; may alias gu). Launch as swigluForwardKernel.
llvm::Expected<KernelSpec> swigluBackwardKernel(int64_t rows, int64_t width);

/// The heads of one attention layer: `rows` token rows (sequences of
/// `seqLen` rows) of `rowStride` bf16 elements holding numQueryHeads, then
/// numKeyHeads, then numValueHeads heads of headDim columns from column 0
/// (the fused QKV GEMM's output or its gradient; a single group of query
/// heads for the attention output). Head-major, the same heads are three
/// regions [batch, heads, seqLen, headDim]: queries, keys, values. RoPE
/// positions are row mod seqLen, or with `positions` (packed sequences)
/// read from an i32 [rows] buffer, the step's position_ids.
struct HeadsLayout {
  int64_t rows = 0, seqLen = 0, rowStride = 0, headDim = 0;
  int64_t numQueryHeads = 0, numKeyHeads = 0, numValueHeads = 0;
  bool positions = false;
};

/// ToHeads and ToTokens copy every head; InPlace rotates the query and key
/// heads of the token rows where they are and leaves the rest alone.
enum class HeadsDirection { ToHeads, ToTokens, InPlace };
/// RoPE on the query and key heads as they move: none, the rotation of the
/// forward, or its inverse (which is its transpose: the gradient's rule).
enum class Rotation { None, Forward, Inverse };

/// rope_heads: copies every head between the token-major and head-major
/// layouts in `direction` (or InPlace: rotates the token rows' query and
/// key heads where they are), rotating query and key heads per `rotation`,
/// half-split: y[i] = bf16(bf16(x[i] c) - bf16(x[i + d/2] s)), y[i + d/2] =
/// bf16(bf16(x[i + d/2] c) + bf16(x[i] s)) with c = bf16(cos a), s =
/// bf16(±sin a), a = float(pos) * freqs[i] in f32, pos = row mod seqLen,
/// or positions[row] with layout.positions (rotations only).
/// Args: tokens (bf16 [rows, rowStride]), heads (bf16 [rows * heads *
/// headDim]; not with InPlace), freqs (f32 [headDim / 2], host-computed, llama3
/// scaling included; unread without rotation), with layout.positions also
/// positions (i32 [rows]). Grid [rows], block [min(256, heads headDim / 16
/// rounded up to a warp)]. headDim / 2 and rowStride are multiples of 8.
llvm::Expected<KernelSpec> ropeHeadsKernel(const HeadsLayout &layout,
                                           HeadsDirection direction,
                                           Rotation rotation);

/// rope_table: RoPE's cos and sin for each of layout.rows token rows, as
/// rope_heads computes them: table[t, i] = (bf16(cos a), bf16(sin a)), a =
/// float(pos) * freqs[i] in f32, pos = t mod seqLen or positions[t] with
/// layout.positions; flash attention's backward rotates dK and dQ back with
/// it. Args: freqs (f32 [headDim / 2]), table (bf16 [rows, headDim / 2,
/// 2]), with layout.positions positions (i32 [rows]). Grid [rows], block
/// [headDim / 2 rounded up to a warp]. Reads no strides or head counts.
llvm::Expected<KernelSpec> ropeTableKernel(const HeadsLayout &layout);

/// Element type of the attention score buffers S and dP (their GEMMs'
/// output type).
enum class ScoreType { F32, BF16 };

/// causal_softmax_fwd: for each of the blocks * seqLen rows (query i = row
/// mod seqLen), P[r, j] = bf16(softmax_{s <= j' <= i}(S[r, :])[j]) for
/// s <= j <= i and exactly 0 for the other j (f32 math); S is already
/// scaled, masked S may hold anything. s = 0 (causal) unless `packedHeads`
/// > 0: then rows are packed sequences of packedHeads heads each and s = i -
/// min(max(pos, 0), i) with pos = positions[(row / (packedHeads seqLen))
/// seqLen + i] (the query's position in its data row). Args: S (scoreType
/// [blocks seqLen, seqLen]), P (bf16, same shape), when packed positions
/// (i32 [blocks / packedHeads seqLen]). A row has `threads` = min(256,
/// seqLen / 8 rounded up to a warp) threads and a block 256 / threads rows:
/// grid [rows / (256 / threads)], block [(256 / threads) threads].
/// seqLen % 8 == 0 (and so the rows divide into blocks). `blocks` is
/// batch * num_heads.
llvm::Expected<KernelSpec> causalSoftmaxForwardKernel(int64_t blocks,
                                                      int64_t seqLen,
                                                      ScoreType scoreType,
                                                      int64_t packedHeads = 0);

/// attention_softmax_bwd, in place over the forward's P: D = sum_{s <= j <=
/// i} P[r, j] dP[r, j] (f32), dS[r, j] = bf16(P (dP - D)) for s <= j <= i,
/// with the window start s of causalSoftmaxForwardKernel; the other j are
/// neither read nor written (P is exactly 0 there, as dS must be). Args: P
/// (bf16 [blocks seqLen, seqLen], the forward's; becomes dS), dP (scoreType,
/// P's shape), when packed positions. Launch as causalSoftmaxForwardKernel.
llvm::Expected<KernelSpec>
attentionSoftmaxBackwardKernel(int64_t blocks, int64_t seqLen,
                               ScoreType scoreType, int64_t packedHeads = 0);

/// The geometry of fused (flash) causal attention over the fused QKV
/// projection's token rows ([batch seq, qkvStride] bf16): per token, the
/// query heads from column 0, then the key heads, then the value heads,
/// `dim` columns each; q and k already rotated (rope_heads in place). The
/// gradient of those rows has the same columns, in rows of qkvGradStride.
/// Query head h reads KV head h / (heads / kvHeads). `scale` multiplies Q
/// Kᵀ; `packed`: windows from position ids, as in
/// causalSoftmaxForwardKernel. The attention's output O and its gradient dO
/// are token rows (head h at columns h dim ..) of `outStride` and
/// `gradStride` elements. Every stride is a multiple of 8 and at least as
/// wide as its heads.
struct FlashShape {
  int64_t batch = 0, heads = 0, kvHeads = 0, seq = 0, dim = 0;
  int64_t qkvStride = 0, qkvGradStride = 0;
  int64_t outStride = 0, gradStride = 0;
  float scale = 1.0f;
  bool packed = false;
};

/// Whether the flash attention kernels take head_dim `dim` and sequence
/// length `seq`: dim 16, 32, 64 or 128, seq a multiple of 64.
bool flashAttentionShapeSupported(int64_t dim, int64_t seq);

/// Whether a train step for target `chip` (sm_90a, sm_90, sm_89, sm_86,
/// sm_80) can use them: the shape is supported and the backward's shared
/// memory fits one of its blocks (at head_dim 128 not on sm_86 or sm_89).
bool flashAttentionSupports(int64_t dim, int64_t seq, llvm::StringRef chip);

/// flash_attention_fwd (compiler/lib/Kernels/Attention.cpp says how): for
/// query row i of head h, O[i] = sum_j softmax_j(scale q_i · k_j) v_j over
/// the window s <= j <= i, and lse[i] = log2(sum_j 2^(x_j)) with x_j = scale
/// log2(e) q_i · k_j (its max taken out before the sum): the backward's P is
/// 2^(x - lse). Args: qkv (bf16 token rows, see FlashShape), O (bf16, see
/// outStride), lse (f32 [batch, heads, seq]), when packed positions
/// (i32 [batch seq]). Grid [batch heads, seq / 64], block [128], dynamic
/// shared memory `sharedBytes` (two 64-row key and value tiles, the query
/// tile passing through the second).
llvm::Expected<KernelSpec> flashAttentionForwardKernel(const FlashShape &shape);

/// attention_row_dot: delta[b, h, i] = sum_d O[t, h dim + d] dO[t, h dim +
/// d] (f32) for token t = b seq + i, the D of the softmax backward. Args: O,
/// dO (bf16 token rows, see FlashShape), delta (f32 [batch, heads, seq]).
/// dim / 8 lanes a row: grid [batch seq heads / (128 / (dim / 8))], block
/// [128].
llvm::Expected<KernelSpec> attentionRowDotKernel(const FlashShape &shape);

/// flash_attention_bwd: per KV head and 64-key block, recomputes P = 2^(x -
/// lse) tile by tile over the later query tiles of every query head of its
/// group, and with dP = dO Vᵀ and dS = P (dP - delta): dV = sum Pᵀ dO and
/// dK = scale sum dSᵀ Q into the key and value columns of the gradient's
/// token rows (the query columns are not touched), dK rotated back as
/// rope_heads' Rotation::Inverse does after rounding to bf16, and dSᵀ in
/// bf16 to dS ([batch, kvHeads, seq keys, heads / kvHeads, seq queries];
/// the tiles of a query block before the key block are not written, the
/// others hold zeros outside the windows) for flash_attention_dq. Args: qkv,
/// dO (bf16, see gradStride), lse, delta, the gradient (bf16 token rows of
/// qkvGradStride), dS, the rope_table of the tokens, when packed positions.
/// Grid [batch kvHeads, seq / 64], block [128], dynamic shared memory
/// `sharedBytes`.
llvm::Expected<KernelSpec>
flashAttentionBackwardKernel(const FlashShape &shape);

/// flash_attention_dq: dQ[i] = scale sum_j dS[i, j] k_j for query row i of
/// every head, over the key blocks up to its own (the dSᵀ tiles that
/// flash_attention_bwd wrote), rotated back as flash_attention_bwd's dK,
/// into the query columns of the gradient's token rows (the other columns
/// are not touched). Args: qkv, dS, the gradient, the rope_table. Grid
/// [batch heads, seq / 64], block [128], dynamic shared memory `sharedBytes`
/// (two dSᵀ and K tiles).
llvm::Expected<KernelSpec> flashAttentionDqKernel(const FlashShape &shape);

/// count_targets: the number of rows with a target under the shifted loss
/// (row t: not last in its sequence and labels[t + 1] in [0, vocab)), and
/// stats = [0, count, n ? 1 / n : 0, 0] with n = count, or with `hostCount`
/// n = hyper[package::kLossTokensSlot] (the tokens counted over all
/// micro-batches of an optimizer step). Args: labels (i32 [rows]), stats
/// (f32 [4]), hyper (f32 [package::kHyperparameterCount], read only with
/// `hostCount`). Grid [1], block [min(1024, rows rounded up to a warp)].
/// rows % seqLen == 0.
llvm::Expected<KernelSpec> countTargetsKernel(int64_t rows, int64_t seqLen,
                                              int64_t vocab,
                                              bool hostCount = false);

/// cross_entropy: per row with target y, stats[0] += logsumexp(x) - x_y
/// (f32 atomic) and the row of logits becomes bf16((softmax(x) - onehot(y))
/// stats[2]); rows without a target become 0. Run count_targets first.
/// Args: logits (bf16 [rows, vocab], in place), labels (i32 [rows]), stats
/// (f32 [4]). Grid [rows], block [min(1024, vocab / 8 rounded up to a
/// warp)]. vocab % 8 == 0, rows % seqLen == 0.
llvm::Expected<KernelSpec> crossEntropyKernel(int64_t rows, int64_t seqLen,
                                              int64_t vocab);

/// global_norm_sq: sum[0] += sum_i x_i^2 (f32; one atomic per block; the plan
/// zeroes sum) when clipping (hyper[6], max_grad_norm, > 0); otherwise
/// nothing. Args: x (bf16 [numel]), sum (f32 [1]), hyper (f32 [8]). Grid
/// [min(1024, ceil(numel / 2048))], block [256]. numel % 8 == 0.
llvm::Expected<KernelSpec> globalNormSqKernel(int64_t numel);

/// scale_bf16: x = bf16(x f), f = max_norm > 0 ? min(1, max_norm /
/// (sqrt(sum_sq) + 1e-6)) : 1 (NaN propagates; nothing is written when f ==
/// 1). Args: x (bf16 [numel], in place), sum_sq (f32 [1]), max_norm (f32
/// [1]). Grid [ceil(numel / 2048)], block [256]. numel % 8 == 0.
llvm::Expected<KernelSpec> scaleBF16Kernel(int64_t numel);

/// add_bf16: out = bf16(a + b). Args: a, b, out (bf16 [numel]; out may
/// alias a or b). Grid [ceil(numel / 2048)], block [256]. numel % 8 == 0.
llvm::Expected<KernelSpec> addBF16Kernel(int64_t numel);

/// The FP8 formats of the kernels below: E4M3 (OCP E4M3FN, largest finite
/// 448) and E5M2 (largest finite 57344).
enum class FP8Format { E4M3, E5M2 };

/// rms_norm_fwd_..._<format>: RMSNorm whose y goes straight into its FP8
/// copy with a per-tensor scale, bit for bit what rms_norm_fwd and then
/// fp8_cast would write, raising y's amax as fp8_cast does. Args: x, w,
/// scale (f32 [1]), out (i8 [rows * hidden]), amax (f32 [1] as i32 bits),
/// rstd (f32 [rows]). Grid [rows], block [256].
llvm::Expected<KernelSpec> rmsNormFP8ForwardKernel(int64_t rows, int64_t hidden,
                                                   double eps,
                                                   FP8Format format);

/// fp8_cast: out[i] = fp8(f32(x[i]) scale[0]) with PTX cvt.rn.satfinite
/// (round to nearest even, saturating to the largest finite value, NaN kept:
/// the reference interpreter's roundToFP8), and amax[0] = max(amax[0],
/// max |x|) (unscaled; raised with an integer atomic max on the f32 bits;
/// NaN wins). Args: x (bf16 [numel]), scale (f32 [1]), out (fp8 [numel]),
/// amax (f32 [1], zeroed before the step's first cast into it). Grid
/// [min(1024, ceil(numel / 2048))], block [256]. numel % 8 == 0. With `cols`
/// and a row stride `ld` != cols, x is a matrix of numel / cols rows of
/// `cols` elements lying `ld` apart (a column slice of a wider matrix) and
/// out its packed copy; cols and ld % 8 == 0.
llvm::Expected<KernelSpec> fp8CastKernel(int64_t numel, FP8Format format,
                                         int64_t cols = 0, int64_t ld = 0);

/// fp8_cast_transpose: fp8_cast of x [rows, cols] written transposed, out[j,
/// i] = fp8(f32(x[i, j]) scale[0]) (the K-major copy for dgrad and wgrad),
/// with the same amax; with `direct`, also fp8_cast's direct copy from the
/// same read of x (Transformer Engine's cast_transpose). Args: x (bf16
/// [rows, cols], rows `ld` elements apart; 0: packed), scale (f32 [1]),
/// with `direct` direct (fp8 [rows, cols], packed), out (fp8 [cols, rows],
/// packed), amax (f32 [1]). One 128 x 128 tile per block, staged through
/// 16 KiB of workgroup memory so that every global access of a warp is a
/// run of at least 128 bytes: grid [ceil(cols / 128), ceil(rows / 128)],
/// block [256]. rows and cols % 16 == 0 (edge tiles in whole 16s), ld % 8
/// == 0, rows <= 65535 * 128.
llvm::Expected<KernelSpec> fp8CastTransposeKernel(int64_t rows, int64_t cols,
                                                  FP8Format format,
                                                  int64_t ld = 0,
                                                  bool direct = false);

/// adamw_fp8_cast_transpose (fp8_cast_transpose.mlir's AdamW instance): one
/// FP8 weight block's AdamW step fused with its casts, as @optimizer_step
/// runs it. Updates x (the weight block, bf16 [rows, cols] packed), exp_avg
/// and exp_avg_sq in place with adamwKernel's math from grad (all four laid
/// out alike), hyper and norm_sq, then writes fp8CastTransposeKernel's
/// direct and transposed copies of the new bf16 weight (the value stored)
/// with scale[0] and raises amax with its max |x|. Args: x, grad, exp_avg,
/// exp_avg_sq (bf16 [rows, cols]), hyper (f32 [8]), norm_sq (f32 [1]),
/// scale (f32 [1]), direct (fp8 [rows, cols]), out (fp8 [cols, rows]), amax
/// (f32 [1]). Launch and size limits as fp8CastTransposeKernel's.
/// swiglu_fp8_cast_transpose: fp8_cast_transpose (both copies) of
/// SwiGLU's output h [rows, width] computed from the gate/up GEMM's output
/// as it is read (swiglu_fwd's math), so h is never written in bf16: the
/// same bytes and amax as swiglu_fwd then fp8_cast_transpose. Args: gate
/// (the gate/up output), up (the same buffer, width elements on), scale,
/// direct, out, amax. rows and width multiples of 16.
llvm::Expected<KernelSpec>
swigluFP8CastTransposeKernel(int64_t rows, int64_t width, FP8Format format);

/// swiglu_d{gate,up}_fp8_cast_transpose: fp8_cast_transpose (both copies)
/// of the gate (`gateHalf`) or up half of SwiGLU's input gradient [rows,
/// width], computed from dy and the gate/up output as they are read
/// (swiglu_bwd's math), so that gradient is never written in bf16: the same
/// bytes and amax as swiglu_bwd then fp8_cast_transpose of that half. Args:
/// dy ([rows, width]), gate (the gate/up output), [up (the same buffer,
/// width elements on): gate half only,] scale, direct, out, amax. rows and
/// width multiples of 16.
llvm::Expected<KernelSpec> swigluGradFP8CastTransposeKernel(int64_t rows,
                                                            int64_t width,
                                                            FP8Format format,
                                                            bool gateHalf);

llvm::Expected<KernelSpec>
adamwFP8CastTransposeKernel(int64_t rows, int64_t cols, FP8Format format);

/// fp8_amax: current scaling's amax pass, amax = max(amax, max |x|) over
/// `numel` bf16 elements, as fp8_cast raises it (a column slice of `cols`
/// of rows `ld` apart when cols != ld). Args: x, amax (f32 [1] as i32 bits).
/// numel, cols and ld multiples of 8.
llvm::Expected<KernelSpec> fp8AmaxKernel(int64_t numel, int64_t cols = 0,
                                         int64_t ld = 0);

/// fp8_current_scale: current scaling's scale from one tensor's amax,
/// scale = f32(fp8_max / amax / 2^margin) when 0 < amax < inf, else 1 (the
/// reference's llama.fp8_quantize without a scale); scale_inv = 1 / scale.
/// Args: amax, scale, scale_inv (f32 [1] each). Grid [1], block [32].
llvm::Expected<KernelSpec> fp8CurrentScaleKernel(FP8Format format,
                                                 int64_t margin);

/// fp8_scale_update: Transformer Engine's delayed scaling for `tensors`
/// tensors of `format` (llama.fp8_scale_update): each history row (length
/// `historyLength`, newest first) rolls in amax[t]; a = max of the row (NaN
/// propagates), or amax[t] with `mostRecent`; scale[t] = f32(fp8_max / a /
/// 2^margin) when 0 < a < inf, else unchanged; scale_inv[t] = 1 / scale[t];
/// amax[t] = 0 for the next step. Args: history (f32 [tensors,
/// historyLength]), amax, scale, scale_inv (f32 [tensors]). Grid [tensors],
/// block [historyLength rounded up to a warp]. historyLength <= 1024, margin
/// in [0, 64].
llvm::Expected<KernelSpec>
fp8ScaleUpdateKernel(int64_t tensors, int64_t historyLength, FP8Format format,
                     int64_t margin, bool mostRecent = false);

/// Lowers `kernels` (each name once; repeats are skipped) to one PTX module;
/// errors carry the MLIR diagnostics.
llvm::Expected<std::string> compileKernels(llvm::ArrayRef<KernelSpec> kernels,
                                           const PTXOptions &options = {});

} // namespace llamac

#endif // LLAMAC_KERNELS_KERNELS_H
