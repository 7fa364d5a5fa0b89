//===- RopeHeadsKernelTest.cpp - QKV heads between layouts, with RoPE -----===//
//
// rope_heads moves the heads of a fused QKV buffer (GQA: 6 query, 2 kv
// heads, 2 sequences) from token rows to the head-major regions [B, heads,
// seq, dim] of queries, keys and values, rotating q and k (position = row
// mod sequence length), and back with the inverse rotation for gradients;
// without rotation it is a plain copy (the attention output and its
// gradient, here with padded token rows). The packed variants take each
// row's RoPE position from position_ids (data rows of 77 tokens packed end
// to end), while the row still goes to its place in its sequence. In place,
// q and k are rotated where they are, as flash attention reads them, and
// rope_table keeps the same cos and sin for its backward. The
// reference follows transformers: the angle is one f32 product, cos and sin
// are rounded to bf16, and so is each product before the sum. Outputs are
// poisoned first.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t T = kRopeRows, S = kRopeSeq, D = kRopeHeadDim, Half = D / 2;
constexpr int64_t Q = kRopeHeads, KV = kRopeKvHeads, Heads = Q + 2 * KV;
constexpr int64_t LD = Heads * D;
/// Token rows of the plain copy: query heads plus 16 unused columns.
constexpr int64_t OutLD = Q * D + 16;

/// Element (t, h, i) of the head-major regions: queries, keys, values.
int64_t headMajor(int64_t t, int64_t h, int64_t i) {
  int64_t first = h < Q ? 0 : h < Q + KV ? Q : Q + KV;
  int64_t count = h < Q ? Q : KV;
  int64_t b = t / S, p = t % S;
  return first * T * D + ((b * count + (h - first)) * S + p) * D + i;
}

std::vector<float> inverseFrequencies() {
  // transformers' inv_freq: 1 / theta^(2i / d), in f32.
  std::vector<float> freqs(Half);
  for (int64_t i = 0; i < Half; ++i)
    freqs[i] = float(1.0 / std::pow(kRopeTheta, double(2 * i) / double(D)));
  return freqs;
}

/// The RoPE position of row t: its place in its sequence, or with `packed`
/// in its data row.
int64_t positionOf(int64_t t, bool packed) {
  return packed ? t % S % kRopePackedRow : t % S;
}

/// A step's rope buffers: token rows and head-major regions (NaN until
/// written), the frequencies, the positions of `packed` rows (or each row's
/// place in its sequence) and room for a rope_table.
struct RopeBuffers {
  DeviceBuffer tokens, heads, table, freqs, positions;
  bool packed;
  RopeBuffers(const std::shared_ptr<cuda::Device> &device, bool packed)
      : tokens(device, T * LD * 2, "tokens"),
        heads(device, T * LD * 2, "heads"), table(device, T * D * 2, "table"),
        freqs(device, Half * 4, "freqs"), positions(device, T * 4, "positions"),
        packed(packed) {
    tokens.fill(0xFF);
    heads.fill(0xFF);
    table.fill(0xFF);
    freqs.upload(inverseFrequencies());
    std::vector<int32_t> rows(T);
    for (int64_t t = 0; t < T; ++t)
      rows[t] = int32_t(positionOf(t, packed));
    positions.upload(rows);
  }
  /// Runs `name` on `args`, then the positions when packed.
  void run(KernelGroup &kernels, const std::string &name,
           std::vector<CUdeviceptr> args) {
    if (packed)
      args.push_back(positions.address());
    kernels.run(name, args);
  }
};

/// Runs `key` from `source` and checks each destination head: rotated
/// (sign ±1) for query and key heads, copied bit for bit for values.
/// `packed` kernels read the positions as a fourth argument.
void checkMove(const std::string &key, bool toHeads, double sign,
               bool packed = false) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "rope_heads");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> source = randomBF16(T * LD, rng);
  std::vector<float> freqs = inverseFrequencies();
  RopeBuffers buffers(device, packed);
  DeviceBuffer &from = toHeads ? buffers.tokens : buffers.heads;
  DeviceBuffer &to = toHeads ? buffers.heads : buffers.tokens;
  from.upload(source);
  buffers.run(kernels, key,
              {buffers.tokens.address(), buffers.heads.address(),
               buffers.freqs.address()});
  std::vector<uint16_t> got = to.download<uint16_t>(T * LD);

  // With c = cos a, s = (±)sin a exact at the f32 angle a: the kernel's
  // bf16(cosf(a)) is within (u16 + 4 u32)(1.01) |c| of c (cosf: <= 2 ulp),
  // each bf16 product adds u16, and the final rounding u16 of the result:
  //   |out - (x1 c - x2 s)| <= u16 |out_exact|
  //                            + 1.05 (2 u16 + 4 u32)(|x1 c| + |x2 s|).
  // The exact-emulation count allows cos/sin to round the other way where
  // they lie within cosf's error of a bf16 rounding boundary.
  Checker check(key);
  int64_t badCopies = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Heads; ++h)
      for (int64_t i = 0; i < Half; ++i) {
        int64_t tok1 = t * LD + h * D + i, hm1 = headMajor(t, h, i);
        int64_t from1 = toHeads ? tok1 : hm1, to1 = toHeads ? hm1 : tok1;
        int64_t from2 = from1 + Half, to2 = to1 + Half;
        if (h >= Q + KV) {
          badCopies += got[to1] != source[from1];
          badCopies += got[to2] != source[from2];
          continue;
        }
        double angle = double(float(positionOf(t, packed)) * freqs[i]);
        double c = std::cos(angle), s = sign * std::sin(angle);
        double cb = roundBF16(c), sb = roundBF16(s);
        double x1 = bf16(source[from1]), x2 = bf16(source[from2]);
        double want1 = x1 * c - x2 * s, want2 = x2 * c + x1 * s;
        double spread = 1.05 * (2 * kBF16Unit + 4 * kF32Unit) *
                        (std::abs(x1 * c) + std::abs(x2 * s));
        double spread2 = 1.05 * (2 * kBF16Unit + 4 * kF32Unit) *
                         (std::abs(x2 * c) + std::abs(x1 * s));
        double got1 = bf16(got[to1]), got2 = bf16(got[to2]);
        check.near(got1, want1, kBF16Unit * std::abs(want1) + spread, to1);
        check.exact(got1, roundBF16(roundBF16(x1 * cb) - roundBF16(x2 * sb)));
        check.near(got2, want2, kBF16Unit * std::abs(want2) + spread2, to2);
        check.exact(got2, roundBF16(roundBF16(x2 * cb) + roundBF16(x1 * sb)));
      }
  check.expectExactFraction(0.99);
  EXPECT_EQ(badCopies, 0) << "value heads not copied bit for bit";
}

TEST(RopeHeadsKernel, RotatesIntoHeadMajor) { checkMove("to_heads", true, 1); }

TEST(RopeHeadsKernel, InverseRotatesBackToTokenRows) {
  checkMove("to_tokens_inverse", false, -1);
}

TEST(RopeHeadsKernel, PackedRowsRotateByTheirPositions) {
  checkMove("to_heads_pos", true, 1, /*packed=*/true);
}

TEST(RopeHeadsKernel, PackedRowsInverse) {
  checkMove("to_tokens_inverse_pos", false, -1, /*packed=*/true);
}

/// Runs `key` (in place) and `toHeads` on the same rows: the query and key
/// heads must come out of `key` as `toHeads` writes them head-major (the
/// same rotation, bit for bit; checkMove checks that one against the
/// reference), and the value heads must be left alone.
void checkInPlace(const std::string &key, const std::string &toHeads,
                  bool packed) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "rope_heads");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> source = randomBF16(T * LD, rng);
  RopeBuffers buffers(device, packed);
  DeviceBuffer &tokens = buffers.tokens;
  tokens.upload(source);
  buffers.run(
      kernels, toHeads,
      {tokens.address(), buffers.heads.address(), buffers.freqs.address()});
  std::vector<uint16_t> want = buffers.heads.download<uint16_t>(T * LD);
  buffers.run(kernels, key, {tokens.address(), buffers.freqs.address()});
  std::vector<uint16_t> got = tokens.download<uint16_t>(T * LD);
  int64_t wrong = 0, touched = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Heads; ++h)
      for (int64_t i = 0; i < D; ++i) {
        int64_t at = t * LD + h * D + i;
        if (h < Q + KV)
          wrong += got[at] != want[headMajor(t, h, i)];
        else
          touched += got[at] != source[at];
      }
  EXPECT_EQ(wrong, 0) << "q or k not rotated as " << toHeads << " does";
  EXPECT_EQ(touched, 0) << "value heads written";
}

TEST(RopeHeadsKernel, RotatesQueryAndKeyHeadsInPlace) {
  checkInPlace("in_place", "to_heads", false);
}

TEST(RopeHeadsKernel, PackedRowsRotateInPlace) {
  checkInPlace("in_place_pos", "to_heads_pos", true);
}

/// rope_table must hold the very cos and sin that rope_heads rotates with:
/// to_heads turns a head whose first half is 1 and second half 0 into y[i]
/// = bf16(c_i - bf16(0 s_i)) = c_i and y[i + h] = bf16(bf16(0 c_i) + s_i) =
/// s_i, bit for bit.
void checkTable(const std::string &key, const std::string &toHeads,
                bool packed) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "rope_heads");
  ASSERT_TRUE(kernels.ok());
  std::vector<uint16_t> source(T * LD);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Heads; ++h)
      for (int64_t i = 0; i < D; ++i)
        source[t * LD + h * D + i] = i < Half ? 0x3F80 : 0; // 1, 0
  RopeBuffers buffers(device, packed);
  buffers.tokens.upload(source);
  buffers.run(kernels, toHeads,
              {buffers.tokens.address(), buffers.heads.address(),
               buffers.freqs.address()});
  buffers.run(kernels, key, {buffers.freqs.address(), buffers.table.address()});
  std::vector<uint16_t> rotated = buffers.heads.download<uint16_t>(T * LD);
  std::vector<uint16_t> got = buffers.table.download<uint16_t>(T * D);
  int64_t wrong = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < Half; ++i) {
      wrong += got[(t * Half + i) * 2] != rotated[headMajor(t, 0, i)];
      wrong +=
          got[(t * Half + i) * 2 + 1] != rotated[headMajor(t, 0, i + Half)];
    }
  EXPECT_EQ(wrong, 0) << "table entries unlike " << toHeads << "'s cos, sin";
}

TEST(RopeHeadsKernel, TableHoldsTheRotationsCosAndSin) {
  checkTable("table", "to_heads", false);
}

TEST(RopeHeadsKernel, PackedTableFollowsThePositions) {
  checkTable("table_pos", "to_heads_pos", true);
}

TEST(RopeHeadsKernel, CopiesQueryHeadsBothWaysWithPaddedRows) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "rope_heads");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> rows = randomBF16(T * OutLD, rng);
  DeviceBuffer tokens(device, T * OutLD * 2, "tokens"),
      heads(device, T * Q * D * 2, "heads"),
      back(device, T * OutLD * 2, "back"),
      freqBuffer(device, Half * 4, "freqs");
  tokens.upload(rows);
  heads.fill(0xFF);
  kernels.run("plain_to_heads",
              {tokens.address(), heads.address(), freqBuffer.address()});
  std::vector<uint16_t> headMajorGot = heads.download<uint16_t>(T * Q * D);
  // NaN everywhere: the heads must be written, the 16 padding columns not.
  back.upload(std::vector<uint16_t>(T * OutLD, 0x7FC0));
  kernels.run("plain_to_tokens",
              {back.address(), heads.address(), freqBuffer.address()});
  std::vector<uint16_t> roundTrip = back.download<uint16_t>(T * OutLD);
  int64_t wrongHeads = 0, wrongRows = 0, touchedPadding = 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < Q; ++h)
      for (int64_t i = 0; i < D; ++i) {
        int64_t b = t / S, p = t % S;
        wrongHeads += headMajorGot[((b * Q + h) * S + p) * D + i] !=
                      rows[t * OutLD + h * D + i];
        wrongRows +=
            roundTrip[t * OutLD + h * D + i] != rows[t * OutLD + h * D + i];
      }
    for (int64_t k = Q * D; k < OutLD; ++k)
      touchedPadding += roundTrip[t * OutLD + k] != 0x7FC0;
  }
  EXPECT_EQ(wrongHeads, 0) << "token rows -> head-major";
  EXPECT_EQ(wrongRows, 0) << "head-major -> token rows";
  EXPECT_EQ(touchedPadding, 0) << "columns past the heads were written";
}

} // namespace
