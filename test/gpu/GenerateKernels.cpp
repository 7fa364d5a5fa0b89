//===- GenerateKernels.cpp - PTX of the kernels the GPU tests run ---------===//
//
// Built and run on the build machine (which has LLVM/MLIR): writes the PTX of
// the kernels the GPU tests run into the directory given as the only
// argument, so that the GPU test binary, which links no LLVM, can run on a
// GPU machine with only the driver. Each group of kernels becomes NAME.ptx
// and NAME.launch; the latter has one line per kernel,
//   KEY ENTRY GRID_X GRID_Y GRID_Z BLOCK_X BLOCK_Y BLOCK_Z SHARED_BYTES
// from the compiler's KernelSpec, so the tests launch exactly as a plan would.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"

#include "llamac/Kernels/Kernels.h"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

using namespace llamac;
using namespace llamac::test;

namespace {

using Group = std::vector<std::pair<std::string, llvm::Expected<KernelSpec>>>;

bool writeFile(llvm::StringRef dir, llvm::StringRef name,
               const std::string &text) {
  llvm::SmallString<256> path(dir);
  llvm::sys::path::append(path, name);
  std::error_code error;
  llvm::raw_fd_ostream out(path, error);
  if (error) {
    llvm::errs() << path << ": " << error.message() << "\n";
    return false;
  }
  out << text;
  return true;
}

/// Writes STEM.ptx with every kernel of `group` and STEM.launch.
bool writeGroup(llvm::StringRef dir, llvm::StringRef stem, Group group) {
  std::vector<KernelSpec> specs;
  std::string launches;
  bool failed = false;
  for (auto &[key, spec] : group) {
    if (!spec) {
      llvm::errs() << stem << "/" << key << ": "
                   << llvm::toString(spec.takeError()) << "\n";
      failed = true;
      continue;
    }
    launches +=
        key + " " + spec->name + " " + std::to_string(spec->grid.x) + " " +
        std::to_string(spec->grid.y) + " " + std::to_string(spec->grid.z) +
        " " + std::to_string(spec->block.x) + " " +
        std::to_string(spec->block.y) + " " + std::to_string(spec->block.z) +
        " " + std::to_string(spec->sharedBytes) + "\n";
    specs.push_back(std::move(*spec));
  }
  if (failed)
    return false;
  llvm::Expected<std::string> ptx = compileKernels(specs);
  if (!ptx) {
    llvm::errs() << stem << ": " << llvm::toString(ptx.takeError()) << "\n";
    return false;
  }
  return writeFile(dir, (stem + ".ptx").str(), *ptx) &&
         writeFile(dir, (stem + ".launch").str(), launches);
}

Group group() { return {}; }

template <typename... Rest>
Group group(std::string key, llvm::Expected<KernelSpec> spec, Rest &&...rest) {
  Group g = group(std::forward<Rest>(rest)...);
  g.emplace(g.begin(), std::move(key), std::move(spec));
  return g;
}

/// SoftmaxKernelTest's kernels: per case (sequence length, score type,
/// packed sequences or not), the forward (`fwd_`) and the backward (`bwd_`).
Group softmaxGroup() {
  struct Case {
    const char *name;
    int64_t seq;
    ScoreType type;
    int64_t packedHeads;
  };
  const Case cases[] = {
      {"f32", kSoftmaxSeqF32, ScoreType::F32, 0},
      {"bf16", kSoftmaxSeqBF16, ScoreType::BF16, 0},
      {"f32_s8", kSoftmaxSeqTiny, ScoreType::F32, 0},
      {"f32_s32", kSoftmaxSeqShort, ScoreType::F32, 0},
      {"f32_s256", kSoftmaxSeqStep, ScoreType::F32, 0},
      {"f32_packed", kSoftmaxSeqF32, ScoreType::F32, kSoftmaxHeads},
      {"bf16_packed", kSoftmaxSeqBF16, ScoreType::BF16, kSoftmaxHeads},
      {"f32_s32_packed", kSoftmaxSeqShort, ScoreType::F32, kSoftmaxHeads},
      {"bf16_s256", kSoftmaxSeqStep, ScoreType::BF16, 0},
      {"bf16_s256_packed", kSoftmaxSeqStep, ScoreType::BF16, kSoftmaxHeads}};
  Group g;
  for (const Case &c : cases) {
    g.emplace_back(std::string("fwd_") + c.name,
                   causalSoftmaxForwardKernel(kSoftmaxBlocks, c.seq, c.type,
                                              c.packedHeads));
    g.emplace_back(std::string("bwd_") + c.name,
                   attentionSoftmaxBackwardKernel(kSoftmaxBlocks, c.seq, c.type,
                                                  c.packedHeads));
  }
  return g;
}

/// The shape of flash case `c` (FlashAttentionKernelTest): softmax scale 1
/// / sqrt(dim); q, k and v, their gradient, O and dO in token rows of
/// kFlashQkvPad, kFlashQkvGradPad, kFlashOutPad and kFlashGradPad elements
/// past their heads.
FlashShape flashShape(const FlashCase &c) {
  FlashShape s;
  s.batch = c.batch, s.heads = c.heads, s.kvHeads = c.kvHeads, s.seq = c.seq;
  s.dim = c.dim, s.packed = c.packed;
  int64_t qkvWidth = (c.heads + 2 * c.kvHeads) * c.dim;
  s.qkvStride = qkvWidth + kFlashQkvPad;
  s.qkvGradStride = qkvWidth + kFlashQkvGradPad;
  s.outStride = c.heads * c.dim + kFlashOutPad;
  s.gradStride = c.heads * c.dim + kFlashGradPad;
  s.scale = float(1.0 / std::sqrt(double(c.dim)));
  return s;
}

/// FlashAttentionKernelTest's kernels: per case the forward (`fwd_`), the
/// backward (`bwd_`), delta (`dot_`) and dQ (`dq_`).
Group flashGroup() {
  Group g;
  for (const FlashCase &c : kFlashCases) {
    FlashShape s = flashShape(c);
    g.emplace_back(std::string("fwd_") + c.name,
                   flashAttentionForwardKernel(s));
    g.emplace_back(std::string("bwd_") + c.name,
                   flashAttentionBackwardKernel(s));
    g.emplace_back(std::string("dot_") + c.name, attentionRowDotKernel(s));
    g.emplace_back(std::string("dq_") + c.name, flashAttentionDqKernel(s));
  }
  return g;
}

/// FP8KernelTest's kernels: per region of the source matrix (the whole
/// matrix, a column slice, a block of whole tiles) and format, the cast
/// (`cast_`), the transposed cast (`transpose_`) and both from one read
/// (`both_`); then the two scale updates.
Group fp8Group() {
  struct Region {
    const char *suffix;
    int64_t rows, cols, ld;
  };
  const Region regions[] = {{"", kFP8Rows, kFP8Cols, 0},
                            {"_slice", kFP8Rows, kFP8SliceCols, kFP8Cols},
                            {"_tiles", kFP8TileRows, kFP8TileCols, kFP8Cols}};
  Group g;
  for (const Region &r : regions)
    for (const char *kind : {"cast", "transpose", "both"})
      for (auto [name, format] : {std::pair{"e4m3", FP8Format::E4M3},
                                  std::pair{"e5m2", FP8Format::E5M2}}) {
        std::string key = std::string(kind) + r.suffix + "_" + name;
        if (std::string(kind) == "cast")
          g.emplace_back(key, fp8CastKernel(r.rows * r.cols, format,
                                            r.ld ? r.cols : 0, r.ld));
        else
          g.emplace_back(key, fp8CastTransposeKernel(
                                  r.rows, r.cols, format, r.ld,
                                  /*direct=*/std::string(kind) == "both"));
      }
  // @optimizer_step's fused AdamW and casts of a weight, and the cast of a
  // packed weight of whole tiles it is checked against.
  g.emplace_back("adamw_e4m3", adamwFP8CastTransposeKernel(kFP8Rows, kFP8Cols,
                                                           FP8Format::E4M3));
  g.emplace_back(
      "adamw_tiles_e5m2",
      adamwFP8CastTransposeKernel(kFP8TileRows, kFP8TileCols, FP8Format::E5M2));
  g.emplace_back("both_packed_tiles_e5m2",
                 fp8CastTransposeKernel(kFP8TileRows, kFP8TileCols,
                                        FP8Format::E5M2, 0, /*direct=*/true));
  // The FP8 forward's cast of SwiGLU as it computes it, and what it must
  // equal: swiglu_fwd, then the cast of its output (edge tiles both ways).
  g.emplace_back("swiglu_e4m3", swigluFP8CastTransposeKernel(kFP8Rows, kFP8Cols,
                                                             FP8Format::E4M3));
  g.emplace_back("swiglu_fwd", swigluForwardKernel(kFP8Rows, kFP8Cols));
  g.emplace_back("both_packed_e4m3",
                 fp8CastTransposeKernel(kFP8Rows, kFP8Cols, FP8Format::E4M3, 0,
                                        /*direct=*/true));
  // The FP8 backward's casts of SwiGLU's gradient halves as they compute
  // them, and what they must equal: swiglu_bwd, then the cast of each half.
  g.emplace_back("swiglu_dgate_e5m2",
                 swigluGradFP8CastTransposeKernel(kFP8Rows, kFP8Cols,
                                                  FP8Format::E5M2, true));
  g.emplace_back("swiglu_dup_e5m2",
                 swigluGradFP8CastTransposeKernel(kFP8Rows, kFP8Cols,
                                                  FP8Format::E5M2, false));
  g.emplace_back("swiglu_bwd", swigluBackwardKernel(kFP8Rows, kFP8Cols));
  g.emplace_back("both_half_e5m2",
                 fp8CastTransposeKernel(kFP8Rows, kFP8Cols, FP8Format::E5M2,
                                        2 * kFP8Cols, /*direct=*/true));
  // Current scaling: the amax pass over the packed matrix and its column
  // slice, and the scale from an amax.
  g.emplace_back("amax", fp8AmaxKernel(kFP8Rows * kFP8Cols));
  g.emplace_back("amax_slice", fp8AmaxKernel(kFP8Rows * kFP8SliceCols,
                                             kFP8SliceCols, kFP8Cols));
  g.emplace_back("current_scale_e4m3",
                 fp8CurrentScaleKernel(FP8Format::E4M3, 0));
  g.emplace_back("current_scale_e5m2",
                 fp8CurrentScaleKernel(FP8Format::E5M2, kFP8MarginE5M2));
  g.emplace_back("update_e4m3", fp8ScaleUpdateKernel(kFP8Tensors, kFP8History,
                                                     FP8Format::E4M3, 0));
  g.emplace_back("update_e5m2",
                 fp8ScaleUpdateKernel(kFP8Tensors, kFP8History, FP8Format::E5M2,
                                      kFP8MarginE5M2,
                                      /*mostRecent=*/true));
  return g;
}

/// The fused QKV rows of RopeHeadsKernelTest, and its padded rows of
/// query heads only (rowStride 0: packed); with `positions`, RoPE positions
/// come from position_ids.
HeadsLayout headsLayout(bool queriesOnly, bool positions = false) {
  HeadsLayout layout;
  layout.positions = positions;
  layout.rows = kRopeRows;
  layout.seqLen = kRopeSeq;
  layout.headDim = kRopeHeadDim;
  layout.numQueryHeads = kRopeHeads;
  layout.numKeyHeads = layout.numValueHeads = queriesOnly ? 0 : kRopeKvHeads;
  layout.rowStride = queriesOnly
                         ? kRopeHeads * kRopeHeadDim + 16
                         : (kRopeHeads + 2 * kRopeKvHeads) * kRopeHeadDim;
  return layout;
}

} // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    llvm::errs() << "usage: GenerateKernels OUTPUT_DIR\n";
    return 2;
  }
  llvm::StringRef dir = argv[1];

  llvm::Expected<KernelSpec> adamw = adamwKernel(kAdamWElements);
  llvm::Expected<std::string> ptx =
      adamw ? compileKernels({*adamw})
            : llvm::Expected<std::string>(adamw.takeError());
  if (!ptx) {
    llvm::errs() << llvm::toString(ptx.takeError()) << "\n";
    return 1;
  }
  if (!writeFile(dir, "adamw.ptx", *ptx))
    return 1;

  llvm::Expected<KernelSpec> normBackward =
      rmsNormBackwardKernel(kNormRows, kNormHidden, false);
  llvm::Expected<KernelSpec> normBackwardSmall =
      rmsNormBackwardKernel(kNormSmallRows, kNormSmallHidden, false);
  unsigned normBlocks = normBackward ? normBackward->grid.x : 1;
  unsigned normBlocksSmall = normBackwardSmall ? normBackwardSmall->grid.x : 1;
  bool ok =
      writeGroup(
          dir, "embedding",
          group("fwd",
                embeddingForwardKernel(kEmbeddingRows, kEmbeddingVocab,
                                       kEmbeddingHidden),
                "bwd",
                embeddingBackwardKernel(kEmbeddingRows, kEmbeddingVocab,
                                        kEmbeddingHidden),
                "bwd_acc",
                embeddingBackwardKernel(kEmbeddingRows, kEmbeddingVocab,
                                        kEmbeddingHidden,
                                        /*accumulate=*/true),
                "bwd_long",
                embeddingBackwardKernel(kEmbeddingLongRows, kEmbeddingVocab,
                                        kEmbeddingLongHidden),
                "bwd_long_acc",
                embeddingBackwardKernel(kEmbeddingLongRows, kEmbeddingVocab,
                                        kEmbeddingLongHidden,
                                        /*accumulate=*/true))) &&
      writeGroup(
          dir, "rms_norm",
          group(
              "fwd", rmsNormForwardKernel(kNormRows, kNormHidden, kNormEps),
              "bwd", std::move(normBackward), "bwd_acc",
              rmsNormBackwardKernel(kNormRows, kNormHidden, true), "dw",
              columnSumKernel(normBlocks, kNormHidden), "dw_acc",
              columnSumKernel(normBlocks, kNormHidden, /*accumulate=*/true),
              "fwd_small",
              rmsNormForwardKernel(kNormSmallRows, kNormSmallHidden, kNormEps),
              "bwd_small", std::move(normBackwardSmall), "bwd_acc_small",
              rmsNormBackwardKernel(kNormSmallRows, kNormSmallHidden, true),
              "dw_small", columnSumKernel(normBlocksSmall, kNormSmallHidden),
              "dw_acc_small",
              columnSumKernel(normBlocksSmall, kNormSmallHidden,
                              /*accumulate=*/true),
              // The FP8 forward's norm into its FP8 copy, and the cast of
              // the bf16 norm it must equal.
              "fwd_e4m3",
              rmsNormFP8ForwardKernel(kNormRows, kNormHidden, kNormEps,
                                      FP8Format::E4M3),
              "cast_e4m3",
              fp8CastKernel(kNormRows * kNormHidden, FP8Format::E4M3),
              "fwd_small_e5m2",
              rmsNormFP8ForwardKernel(kNormSmallRows, kNormSmallHidden,
                                      kNormEps, FP8Format::E5M2),
              "cast_small_e5m2",
              fp8CastKernel(kNormSmallRows * kNormSmallHidden,
                            FP8Format::E5M2))) &&
      writeGroup(dir, "swiglu",
                 group("fwd", swigluForwardKernel(kSwigluRows, kSwigluWidth),
                       "bwd",
                       swigluBackwardKernel(kSwigluRows, kSwigluWidth))) &&
      writeGroup(
          dir, "rope_heads",
          group("to_heads",
                ropeHeadsKernel(headsLayout(false), HeadsDirection::ToHeads,
                                Rotation::Forward),
                "to_tokens_inverse",
                ropeHeadsKernel(headsLayout(false), HeadsDirection::ToTokens,
                                Rotation::Inverse),
                "plain_to_heads",
                ropeHeadsKernel(headsLayout(true), HeadsDirection::ToHeads,
                                Rotation::None),
                "plain_to_tokens",
                ropeHeadsKernel(headsLayout(true), HeadsDirection::ToTokens,
                                Rotation::None),
                "to_heads_pos",
                ropeHeadsKernel(headsLayout(false, true),
                                HeadsDirection::ToHeads, Rotation::Forward),
                "to_tokens_inverse_pos",
                ropeHeadsKernel(headsLayout(false, true),
                                HeadsDirection::ToTokens, Rotation::Inverse),
                "in_place",
                ropeHeadsKernel(headsLayout(false), HeadsDirection::InPlace,
                                Rotation::Forward),
                "in_place_pos",
                ropeHeadsKernel(headsLayout(false, true),
                                HeadsDirection::InPlace, Rotation::Forward),
                "table", ropeTableKernel(headsLayout(false)), "table_pos",
                ropeTableKernel(headsLayout(false, true)))) &&
      writeGroup(dir, "softmax", softmaxGroup()) &&
      writeGroup(dir, "flash", flashGroup()) &&
      writeGroup(
          dir, "cross_entropy",
          group("count", countTargetsKernel(kLossRows, kLossSeq, kLossVocab),
                "count_host",
                countTargetsKernel(kLossRows, kLossSeq, kLossVocab,
                                   /*hostCount=*/true),
                "loss", crossEntropyKernel(kLossRows, kLossSeq, kLossVocab))) &&
      writeGroup(dir, "clip",
                 group("norm_sq", globalNormSqKernel(kClipElements), "scale",
                       scaleBF16Kernel(kClipElements))) &&
      writeGroup(dir, "add", group("add", addBF16Kernel(kAddElements))) &&
      writeGroup(dir, "fp8", fp8Group());
  return ok ? 0 : 1;
}
