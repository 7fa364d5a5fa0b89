//===- GpuKernelShapes.h - Shapes the GPU kernel tests use ------*- C++ -*-===//

#ifndef LLAMAC_TEST_GPU_GPUKERNELSHAPES_H
#define LLAMAC_TEST_GPU_GPUKERNELSHAPES_H

#include <cstdint>

namespace llamac::test {

/// Not a multiple of the block size, so the last block is partly idle.
constexpr int64_t kAdamWElements = (1 << 20) + 8 * 37;

// The train-step kernels' tests: Llama-like layouts at small sizes, with the
// edge cases each kernel has (rows wider than a block, partial warps,
// several sequences, GQA, ignored labels).

/// 3 sequences of 37 tokens (a row mask of 4 words, the last partial);
/// hidden 2400 = 300 chunks of 8, more than a block's 256 threads and not a
/// multiple of them (the backward splits a repeated id's row between two
/// blocks); a vocabulary of 50 so that ids repeat. The backward also runs on
/// 1000 rows of 512 (64 chunks: 2 warps, each building 16 of the 32 mask
/// words; one block a row).
constexpr int64_t kEmbeddingRows = 3 * 37, kEmbeddingVocab = 50;
constexpr int64_t kEmbeddingHidden = 2400;
constexpr int64_t kEmbeddingLongRows = 1000, kEmbeddingLongHidden = 512;

/// 600 rows (more than the backward's 512 blocks: some take two rows) of
/// 2400; and 72 rows of 200 (25 chunks: one partial warp).
constexpr int64_t kNormRows = 600, kNormHidden = 2400;
constexpr int64_t kNormSmallRows = 72, kNormSmallHidden = 200;
constexpr double kNormEps = 1e-5;

/// 70 rows, MLP width 1384 = 173 chunks.
constexpr int64_t kSwigluRows = 70, kSwigluWidth = 1384;

/// 2 sequences of 300 tokens; 6 query and 2 kv heads (GQA) of 64 in a fused
/// QKV row of (6 + 2 + 2) * 64 columns; rope_theta 500000. The packed
/// variant reads positions instead (kRopePackedRow: the length of the data
/// rows packed end to end).
constexpr int64_t kRopeSeq = 300, kRopeRows = 2 * kRopeSeq;
constexpr int64_t kRopeHeads = 6, kRopeKvHeads = 2, kRopeHeadDim = 64;
constexpr double kRopeTheta = 500000.0;
constexpr int64_t kRopePackedRow = 77;

/// Batch 2 x 3 heads; f32 scores at sequence 264 (33 chunks: a partial
/// warp, rows of 64 threads, 4 to a block), bf16 scores at 1040 (130
/// chunks: one row of 160 threads a block); f32 scores also at the short
/// sequences 8 and 32 and at the benchmark's 256 (rows of one warp, 8 to a
/// block).
constexpr int64_t kSoftmaxHeads = 3, kSoftmaxBlocks = 2 * kSoftmaxHeads;
constexpr int64_t kSoftmaxSeqF32 = 264, kSoftmaxSeqBF16 = 1040;
constexpr int64_t kSoftmaxSeqTiny = 8, kSoftmaxSeqShort = 32,
                  kSoftmaxSeqStep = 256;

/// Flash attention cases: name, batch, heads, kv heads, sequence, head_dim,
/// packed. MHA at head_dim 128 over 3 query tiles (diagonal, full and
/// skipped tiles); GQA (2 query heads a KV head) at 64 over 4 tiles; packed
/// data rows at 128 whose boundaries fall inside tiles; MQA at 32 in one
/// tile; head_dim 16.
struct FlashCase {
  const char *name;
  int64_t batch, heads, kvHeads, seq, dim;
  bool packed;
};
/// O and dO, and the fused q, k, v rows and their gradient's, are token
/// rows this many elements wider than their heads.
constexpr int64_t kFlashOutPad = 8, kFlashGradPad = 24;
constexpr int64_t kFlashQkvPad = 16, kFlashQkvGradPad = 8;
constexpr FlashCase kFlashCases[] = {{"mha", 2, 3, 3, 192, 128, false},
                                     {"gqa", 2, 4, 2, 256, 64, false},
                                     {"packed", 2, 3, 3, 192, 128, true},
                                     {"mqa", 3, 2, 1, 64, 32, false},
                                     {"d16", 1, 2, 2, 128, 16, true}};

/// 3 sequences of 45 tokens; vocabulary 8800 = 1100 chunks, more than the
/// block's 1024 threads.
constexpr int64_t kLossSeq = 45, kLossRows = 3 * kLossSeq, kLossVocab = 8800;

/// Gradient clipping over 2^20 + 40 elements.
constexpr int64_t kClipElements = (1 << 20) + 40;

/// Residual-gradient add.
constexpr int64_t kAddElements = 8 * 12345;

/// FP8 casts: a 272 x 1008 matrix (for fp8_cast_transpose's 128 x 128
/// tiles a grid of 8 x 3 whose edge tiles hold 112 columns and 16 rows;
/// 34272 chunks of 8 for the flat cast, the last block partly idle), as
/// strided sources its first 400 columns (rows 1008 apart: edge tiles of 16
/// columns) and its first 256 rows of 256 columns (whole tiles only, 2 x 2),
/// scaled by a factor that is not a power of two (so x * scale rounds in
/// f32); the delayed-scaling update over 3 tensors with histories of 40 (two
/// warps, the second partial) for 6 steps. Margin 1 for E5M2, 0 for E4M3.
constexpr int64_t kFP8Rows = 272, kFP8Cols = 1008, kFP8SliceCols = 400;
constexpr int64_t kFP8TileRows = 256, kFP8TileCols = 256;
constexpr float kFP8ScaleE4M3 = 1.2345f, kFP8ScaleE5M2 = 300.7f;
constexpr int64_t kFP8Tensors = 3, kFP8History = 40, kFP8Steps = 6;
constexpr int64_t kFP8MarginE5M2 = 1;

} // namespace llamac::test

#endif // LLAMAC_TEST_GPU_GPUKERNELSHAPES_H
