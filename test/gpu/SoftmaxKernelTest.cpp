//===- SoftmaxKernelTest.cpp - Causal attention softmax and its backward -===//
//
// causal_softmax_fwd (P) and attention_softmax_bwd (dS from that P and dP,
// in place over P) over [batch * heads, seq, seq] score blocks against
// double references: f32 scores at a sequence of 264 (a partial warp, 4
// rows to a block), bf16 scores at 1040 (one row of 160 threads a block),
// f32 scores at 8, 32 and 256 and bf16 scores at 256 (rows of one warp, 8
// to a block; both kernels then hold a row in registers: the _warp
// templates). Masked
// scores (and masked dP) are NaN and P starts as 0xFF bytes, so a kernel
// that lets masked inputs reach a result, or leaves an output unwritten,
// fails; masked outputs must be exact zeros (the backward leaves P's). The
// packed variants read position_ids and keep each query within its data row
// (the window i - pos <= j <= i), with rows whose boundaries fall inside
// 8-column chunks.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

#include <algorithm>
#include <limits>

using namespace llamac;
using namespace llamac::test;

namespace {

/// Scores as the GEMM would write them: f32, or bf16 bit patterns.
struct Scores {
  bool f32;
  std::vector<float> values;  // the values the kernel sees
  std::vector<uint8_t> bytes; // their device bytes
};

/// The keys of each score row: s <= j <= i for query i = r mod seq, where
/// s = 0 (causal) or, packed, the start of the query's data row.
struct Window {
  int64_t seq;
  /// The step's position_ids (empty: causal), of the sequences of
  /// kSoftmaxHeads heads each.
  std::vector<int32_t> positions;

  int64_t query(int64_t r) const { return r % seq; }
  int64_t start(int64_t r) const {
    if (positions.empty())
      return 0;
    int64_t i = query(r), token = r / (kSoftmaxHeads * seq) * seq + i;
    return i - std::clamp<int64_t>(positions[token], 0, i);
  }
  bool keeps(int64_t r, int64_t j) const {
    return start(r) <= j && j <= query(r);
  }
};

/// position_ids of kSoftmaxBlocks / kSoftmaxHeads sequences of `seq`
/// tokens holding data rows of the given lengths, cut at the sequence's end
/// (the last row of each sequence takes what is left).
std::vector<int32_t> packedPositions(int64_t seq) {
  const std::vector<int64_t> lengths[] = {{seq / 3 + 4, 1, seq / 4 - 1},
                                          {7, seq / 2 + 3}};
  std::vector<int32_t> positions;
  for (const std::vector<int64_t> &rows : lengths) {
    int64_t used = 0;
    for (int64_t length : rows)
      for (int64_t p = 0; p < length && used < seq; ++p, ++used)
        positions.push_back(int32_t(p));
    for (int64_t p = 0; used < seq; ++p, ++used)
      positions.push_back(int32_t(p));
  }
  return positions;
}

Scores makeScores(bool f32, const Window &window, int64_t rows, float scale,
                  std::mt19937 &rng) {
  const int64_t seq = window.seq;
  Scores s{f32, randomValues(rows * seq, rng), {}};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  s.bytes.resize(rows * seq * (f32 ? 4 : 2));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < seq; ++j) {
      int64_t k = r * seq + j;
      float v = window.keeps(r, j) ? s.values[k] * scale : nan;
      if (f32) {
        s.values[k] = v;
        std::memcpy(&s.bytes[4 * k], &v, 4);
      } else {
        uint16_t bits = std::isnan(v) ? uint16_t(0x7FC0) : floatToBF16(v);
        s.values[k] = bf16ToFloat(bits);
        std::memcpy(&s.bytes[2 * k], &bits, 2);
      }
    }
  return s;
}

/// Runs the forward `fwdKey` and the backward `bwdKey` at sequence `seq`,
/// whose launches put `rowsPerBlock` rows in a block, and checks them.
void checkSoftmax(bool f32, int64_t seq, int64_t rowsPerBlock,
                  const std::string &fwdKey, const std::string &bwdKey,
                  bool packed = false) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "softmax");
  ASSERT_TRUE(kernels.ok());
  const int64_t rows = kSoftmaxBlocks * seq, n = rows * seq;
  for (const std::string &key : {fwdKey, bwdKey}) {
    ASSERT_EQ(int64_t(kernels.launch(key).grid[0]) * rowsPerBlock, rows) << key;
  }
  // The threads of one row.
  const int64_t block = kernels.launch(fwdKey).block[0] / rowsPerBlock;
  const int64_t chunksPerThread = (seq / 8 + block - 1) / block;
  std::mt19937 rng(std::random_device{}());
  Window window{seq, packed ? packedPositions(seq) : std::vector<int32_t>()};
  Scores scores = makeScores(f32, window, rows, 3.0f, rng);
  Scores dp = makeScores(f32, window, rows, 1.0f, rng);

  DeviceBuffer s(device, scores.bytes.size(), "scores");
  DeviceBuffer p(device, n * 2, "probabilities");
  DeviceBuffer positions(device, window.positions.size() * 4, "positions");
  s.upload(scores.bytes);
  p.fill(0xFF);
  // The packed kernels take the positions last.
  auto withPositions = [&](std::vector<CUdeviceptr> args) {
    if (packed) {
      positions.upload(window.positions);
      args.push_back(positions.address());
    }
    return args;
  };
  kernels.run(fwdKey, withPositions({s.address(), p.address()}));
  std::vector<uint16_t> gotP = p.download<uint16_t>(n);

  // Forward. Per row, with m the max over the window: the kernel's f32
  // terms exp(s - m') carry <= (|s - m'| + 3) u32 relative error, rescales
  // by exp(m' - m) the same; there are at most chunksPerThread + 13
  // rescales of a term (running max, 5 shuffle merges, up to 8 warps) and
  // at most seq additions. So with z = max |s - m| of the row, l's relative
  // error is at most
  //   rel = (4 z + 4 (chunksPerThread + 13) + seq + 4) u32,
  //   |p - p_ref| <= u16 p_ref + 1.01 rel p_ref (+ 1e-37 for f32 underflow).
  Checker forward("P");
  int64_t maskedWrong = 0;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t q = window.query(r), first = window.start(r);
    const float *row = &scores.values[r * seq];
    double m = -INFINITY, sum = 0, z = 0;
    for (int64_t j = first; j <= q; ++j)
      m = std::max(m, double(row[j]));
    for (int64_t j = first; j <= q; ++j) {
      sum += std::exp(row[j] - m);
      z = std::max(z, m - row[j]);
    }
    double rel =
        (4 * z + 4 * double(chunksPerThread + 13) + double(seq) + 4) * kF32Unit;
    for (int64_t j = 0; j < seq; ++j) {
      int64_t k = r * seq + j;
      if (!window.keeps(r, j)) {
        maskedWrong += gotP[k] != 0;
        continue;
      }
      double want = std::exp(row[j] - m) / sum;
      forward.near(bf16(gotP[k]), want,
                   kBF16Unit * want + 1.01 * rel * want + 1e-37, k);
      forward.exact(bf16(gotP[k]), roundBF16(want));
    }
  }
  forward.expectExactFraction(0.99);
  EXPECT_EQ(maskedWrong, 0) << "masked probabilities not exactly +0";

  // Backward from the forward's P (exact zeros where masked) and random dP
  // (masked: NaN), dS written over P.
  DeviceBuffer dpBuffer(device, dp.bytes.size(), "dP");
  dpBuffer.upload(dp.bytes);
  kernels.run(bwdKey, withPositions({p.address(), dpBuffer.address()}));
  std::vector<uint16_t> gotDs = p.download<uint16_t>(n);

  // With the bf16 P given (exact), D = sum P dP in f32 adds per term the
  // product's u32 and at most chunksPerThread + 20 roundings (lane sums,
  // 8-lane reduction, 5 shuffles, up to 8 warps), each <= u32 sum |P dP|;
  // dP - D and the product add 2 u32 of |dP| + |D|, times P; then bf16's
  // u16:
  //   |dS - dS_ref| <= u16 |dS_ref| + 1.01 P ((cpt + 21) u32 sum|P dP|
  //                    + 2 u32 (|dP| + |D|)).
  Checker backward("dS");
  maskedWrong = 0;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t q = window.query(r);
    double d = 0, magnitude = 0;
    for (int64_t j = window.start(r); j <= q; ++j) {
      double pj = bf16(gotP[r * seq + j]);
      d += pj * dp.values[r * seq + j];
      magnitude += std::abs(pj * dp.values[r * seq + j]);
    }
    for (int64_t j = 0; j < seq; ++j) {
      int64_t k = r * seq + j;
      if (!window.keeps(r, j)) {
        maskedWrong += gotDs[k] != 0;
        continue;
      }
      double pj = bf16(gotP[k]);
      double dpj = dp.values[k];
      double want = pj * (dpj - d);
      double bound = kBF16Unit * std::abs(want) +
                     1.01 * pj *
                         (double(chunksPerThread + 21) * kF32Unit * magnitude +
                          2 * kF32Unit * (std::abs(dpj) + std::abs(d)));
      backward.near(bf16(gotDs[k]), want, bound, k);
      backward.exact(bf16(gotDs[k]), roundBF16(want));
    }
  }
  backward.expectExactFraction(0.99);
  EXPECT_EQ(maskedWrong, 0) << "masked dS not exactly +0";
}

TEST(SoftmaxKernel, F32ScoresPartialWarpFourRowsPerBlock) {
  checkSoftmax(true, kSoftmaxSeqF32, 4, "fwd_f32", "bwd_f32");
}

TEST(SoftmaxKernel, BF16ScoresOneRowPerBlock) {
  checkSoftmax(false, kSoftmaxSeqBF16, 1, "fwd_bf16", "bwd_bf16");
}

TEST(SoftmaxKernel, F32ScoresOneChunkRows) {
  checkSoftmax(true, kSoftmaxSeqTiny, 8, "fwd_f32_s8", "bwd_f32_s8");
}

TEST(SoftmaxKernel, F32ScoresShortRows) {
  checkSoftmax(true, kSoftmaxSeqShort, 8, "fwd_f32_s32", "bwd_f32_s32");
}

TEST(SoftmaxKernel, F32ScoresStepSequence) {
  checkSoftmax(true, kSoftmaxSeqStep, 8, "fwd_f32_s256", "bwd_f32_s256");
}

TEST(SoftmaxKernel, BF16ScoresStepSequence) {
  checkSoftmax(false, kSoftmaxSeqStep, 8, "fwd_bf16_s256", "bwd_bf16_s256");
}

TEST(SoftmaxKernel, PackedRowsBF16ScoresStepSequence) {
  checkSoftmax(false, kSoftmaxSeqStep, 8, "fwd_bf16_s256_packed",
               "bwd_bf16_s256_packed", /*packed=*/true);
}

TEST(SoftmaxKernel, PackedRowsF32Scores) {
  checkSoftmax(true, kSoftmaxSeqF32, 4, "fwd_f32_packed", "bwd_f32_packed",
               /*packed=*/true);
}

TEST(SoftmaxKernel, PackedRowsBF16Scores) {
  checkSoftmax(false, kSoftmaxSeqBF16, 1, "fwd_bf16_packed", "bwd_bf16_packed",
               /*packed=*/true);
}

TEST(SoftmaxKernel, PackedShortRowsF32Scores) {
  checkSoftmax(true, kSoftmaxSeqShort, 8, "fwd_f32_s32_packed",
               "bwd_f32_s32_packed", /*packed=*/true);
}

} // namespace
