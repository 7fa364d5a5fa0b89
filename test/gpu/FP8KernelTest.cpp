//===- FP8KernelTest.cpp - FP8 casts, amax and delayed scaling ------------===//
//
// The FP8 kernels against the reference interpreter's emulation, which
// GenerateFP8Reference wrote to FP8_DIR/reference.safetensors (see there):
// - fp8_cast and fp8_cast_transpose (the transposed copy alone, or with the
//   direct copy from the same read), E4M3 and E5M2, over a packed matrix
//   (fp8_cast_transpose's edge tiles cut in both directions), a strided
//   column slice (edge tiles of one 16-column group) and a strided block of
//   whole tiles: every output byte of every copy decodes to
//   exactly reference::roundToFP8(f32(x * scale)) (the same zero sign; NaN
//   where x is NaN), over zeros, infinities, NaN, subnormals, values past
//   the maxima and ties; the amax is max |x| exactly over the cast elements
//   only, none read outside the cast block (NaN wins; a launch only raises
//   it).
// - fp8_scale_update: after each of several steps, the histories and scales
//   equal reference::fp8ScaleUpdate's bit for bit, scale_inv is 1 / scale
//   in f32 and the amax is reset to 0.
// - swiglu_fp8_cast_transpose: the bytes and amax of swiglu_fwd and then
//   fp8_cast_transpose (both copies), edge tiles both ways; and
//   swiglu_d{gate,up}_fp8_cast_transpose those of swiglu_bwd and then the
//   cast of each half of its output.
// - current scaling: fp8_amax gives the cast's amax (max |x| exactly over
//   the block only, NaN wins, a launch only raises it); fp8_current_scale
//   gives f32(fp8_max / amax / 2^margin), or 1 for an amax of 0, inf or NaN
//   (the reference's llama.fp8_quantize without a scale), and 1 / scale.
//
//===----------------------------------------------------------------------===//

#include "FP8TestUtil.h"
#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

#include <cmath>
#include <limits>
#include <tuple>

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t R = kFP8Rows, C = kFP8Cols, N = R * C;

/// The reference tensors, or a failure.
std::map<std::string, std::vector<double>> readReference() {
  std::map<std::string, std::vector<double>> tensors;
  auto file =
      SafetensorsFile::open(std::string(FP8_DIR) + "/reference.safetensors");
  EXPECT_TRUE(file.ok()) << file.error().message;
  if (!file.ok())
    return tensors;
  for (const TensorInfo &info : file->tensors()) {
    auto tensor = file->read(info.name);
    EXPECT_TRUE(tensor.ok()) << tensor.error().message;
    if (tensor.ok())
      tensors[info.name] = tensor->toDouble();
  }
  return tensors;
}

/// Both NaN, or equal with the same sign (so -0 differs from +0).
bool sameValue(double got, double want) {
  if (std::isnan(got) || std::isnan(want))
    return std::isnan(got) && std::isnan(want);
  return got == want && std::signbit(got) == std::signbit(want);
}

/// Which copies a cast kernel writes.
enum class Copies { Direct, Transposed, Both };

/// Which block of x a cast kernel reads.
enum class Block {
  All,   ///< x, packed
  Slice, ///< its first kFP8SliceCols columns, rows kFP8Cols apart
  Tiles, ///< its first kFP8TileRows rows of kFP8TileCols columns
};

struct CastCase {
  const char *format;
  Copies copies;
  Block block;
};

class FP8Cast : public ::testing::TestWithParam<CastCase> {};

TEST_P(FP8Cast, MatchesTheReferenceBitForBitWithExactAmax) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "fp8");
  ASSERT_TRUE(kernels.ok());
  auto reference = readReference();
  const CastCase &c = GetParam();
  bool e4m3 = std::string(c.format) == "e4m3";
  const std::vector<double> &x = reference["x"];
  const std::vector<double> &want = reference[std::string("cast_") + c.format];
  ASSERT_EQ(x.size(), size_t(N));
  ASSERT_EQ(want.size(), size_t(N));
  std::vector<uint16_t> xBits(N);
  for (int64_t i = 0; i < N; ++i)
    xBits[i] = doubleToBF16(x[i]);
  float scale = e4m3 ? kFP8ScaleE4M3 : kFP8ScaleE5M2;
  // The cast matrix: x, or its first rows and columns (which hold the
  // specials).
  const int64_t rows = c.block == Block::Tiles ? kFP8TileRows : R;
  const int64_t cols = c.block == Block::All     ? C
                       : c.block == Block::Slice ? kFP8SliceCols
                                                 : kFP8TileCols;
  const int64_t n = rows * cols;
  bool direct = c.copies != Copies::Transposed;
  bool transposed = c.copies != Copies::Direct;

  // The copies with a tail of 4 KiB that no kernel may write.
  const int64_t tail = 4096;
  DeviceBuffer in(device, N * 2, "x"), scaleBuffer(device, 4, "scale"),
      directOut(device, n + tail, "fp8 copy"),
      transposedOut(device, n + tail, "fp8 copy^T"), amax(device, 4, "amax");
  in.upload(xBits);
  scaleBuffer.upload(std::vector<float>{scale});
  directOut.fill(0x7F); // NaN in both formats: unwritten bytes show
  transposedOut.fill(0x7F);
  const char *kinds[] = {"cast_", "transpose_", "both_"};
  const char *blocks[] = {"", "slice_", "tiles_"};
  std::string key =
      kinds[int(c.copies)] + std::string(blocks[int(c.block)]) + c.format;
  std::vector<CUdeviceptr> args = {in.address(), scaleBuffer.address()};
  if (direct)
    args.push_back(directOut.address());
  if (transposed)
    args.push_back(transposedOut.address());
  args.push_back(amax.address());

  amax.fill(0);
  kernels.run(key, args);
  std::vector<uint8_t> gotDirect = directOut.download<uint8_t>(n + tail);
  std::vector<uint8_t> gotTransposed =
      transposedOut.download<uint8_t>(n + tail);
  for (int64_t i = n; i < n + tail; ++i) {
    ASSERT_EQ(gotDirect[i], 0x7F) << key << " writes past its copy, at " << i;
    ASSERT_EQ(gotTransposed[i], 0x7F)
        << key << " writes past its transposed copy, at " << i;
  }
  float amaxAll = amax.download<float>(1)[0];
  EXPECT_TRUE(std::isnan(amaxAll))
      << "a NaN input must make the amax NaN, got " << amaxAll;

  int64_t mismatches = 0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      int64_t at = i * C + j;
      for (bool t : {false, true}) {
        if (!(t ? transposed : direct))
          continue;
        uint8_t bits =
            t ? gotTransposed[j * rows + i] : gotDirect[i * cols + j];
        double value = decodeFP8(bits, e4m3);
        if (!sameValue(value, want[at]) && ++mismatches <= 10)
          ADD_FAILURE() << key << (t ? " transposed" : " direct") << ": x[" << i
                        << ", " << j << "] = " << x[at] << " gives byte 0x"
                        << std::hex << int(bits) << std::dec << " = " << value
                        << ", the reference " << want[at];
      }
    }
  EXPECT_EQ(mismatches, 0) << "of " << n << " per copy";

  // Finite inputs only (the specials replaced by 1): the exact maximum; a
  // launch into a larger amax leaves it. Outside the cast block, bf16's
  // largest value, which a read past its rows or columns would measure.
  std::vector<uint16_t> finiteBits = xBits;
  double wantMax = 0;
  for (int64_t i = 0; i < N; ++i) {
    bool inside = i % C < cols && i / C < rows;
    if (!inside)
      finiteBits[i] = doubleToBF16(0x1.FEp127);
    else if (!std::isfinite(x[i]))
      finiteBits[i] = doubleToBF16(1.0);
    if (inside)
      wantMax = std::max(wantMax, std::abs(bf16(finiteBits[i])));
  }
  in.upload(finiteBits);
  amax.fill(0);
  kernels.run(key, args);
  EXPECT_EQ(double(amax.download<float>(1)[0]), wantMax);
  // (The largest f32: the inputs reach bf16's largest finite value, so a
  // multiple of their maximum would overflow to Inf.)
  const float larger = std::numeric_limits<float>::max();
  amax.upload(std::vector<float>{larger});
  kernels.run(key, args);
  EXPECT_EQ(amax.download<float>(1)[0], larger);
}

std::vector<CastCase> castCases() {
  std::vector<CastCase> cases;
  for (Block block : {Block::All, Block::Slice, Block::Tiles})
    for (Copies copies : {Copies::Direct, Copies::Transposed, Copies::Both})
      for (const char *format : {"e4m3", "e5m2"})
        cases.push_back({format, copies, block});
  return cases;
}

/// e4m3, e5m2_transpose, e4m3_both_slice, e5m2_both_tiles, ...
std::string castCaseName(const ::testing::TestParamInfo<CastCase> &info) {
  static const char *const copies[] = {"", "_transpose", "_both"};
  static const char *const blocks[] = {"", "_slice", "_tiles"};
  return std::string(info.param.format) + copies[int(info.param.copies)] +
         blocks[int(info.param.block)];
}

INSTANTIATE_TEST_SUITE_P(Formats, FP8Cast, ::testing::ValuesIn(castCases()),
                         castCaseName);

TEST(FP8SwiGLUCast, EqualsSwiGLUThenTheCast) {
  // swiglu_fp8_cast_transpose over a gate/up output of kFP8Rows x 2
  // kFP8Cols (edge tiles both ways) writes the bytes and amax that
  // swiglu_fwd and then fp8_cast_transpose (both copies) write.
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "fp8");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> gu = randomBF16(R * 2 * C, rng, 4.0f);
  gu[5] = doubleToBF16(3000.0); // h = 6000: saturates at the scale below
  gu[C + 5] = doubleToBF16(2.0);
  const int64_t n = R * C;
  DeviceBuffer gateUp(device, R * 2 * C * 2, "gate_up"), h(device, n * 2, "h"),
      scale(device, 4, "scale"), direct(device, n, "direct"),
      transposed(device, n, "transposed"), amax(device, 4, "amax"),
      fusedDirect(device, n, "fused direct"),
      fusedTransposed(device, n, "fused transposed"),
      fusedAmax(device, 4, "fused amax");
  gateUp.upload(gu);
  scale.upload(std::vector<float>{kFP8ScaleE4M3});
  for (DeviceBuffer *b : {&direct, &transposed, &fusedDirect, &fusedTransposed})
    b->fill(0x7F);
  amax.fill(0);
  fusedAmax.fill(0);
  kernels.run("swiglu_fwd", {gateUp.address(), h.address()});
  kernels.run("both_packed_e4m3",
              {h.address(), scale.address(), direct.address(),
               transposed.address(), amax.address()});
  kernels.run("swiglu_e4m3", {gateUp.address(), gateUp.address() + C * 2,
                              scale.address(), fusedDirect.address(),
                              fusedTransposed.address(), fusedAmax.address()});
  expectSameBytes(direct, fusedDirect, n, "direct");
  expectSameBytes(transposed, fusedTransposed, n, "transposed");
  expectSameAmax(amax, fusedAmax, 1000.0f);
}

TEST(FP8SwiGLUCast, GradientHalvesEqualSwiGLUBackwardThenTheCast) {
  // swiglu_d{gate,up}_fp8_cast_transpose over dy [kFP8Rows, kFP8Cols] and
  // a gate/up output of 2 kFP8Cols columns write the bytes and amax that
  // swiglu_bwd and then fp8_cast_transpose (both copies) of each half of its
  // output write.
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "fp8");
  ASSERT_TRUE(kernels.ok());
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> gu = randomBF16(R * 2 * C, rng, 4.0f),
                        dy = randomBF16(R * C, rng, 1e-3f);
  const int64_t n = R * C;
  DeviceBuffer gateUp(device, R * 2 * C * 2, "gate_up"),
      dyBuffer(device, n * 2, "dy"), dgu(device, 2 * n * 2, "dgate_up"),
      scale(device, 4, "scale");
  gateUp.upload(gu);
  dyBuffer.upload(dy);
  scale.upload(std::vector<float>{kFP8ScaleE5M2});
  kernels.run("swiglu_bwd",
              {dyBuffer.address(), gateUp.address(), dgu.address()});
  for (bool gateHalf : {true, false}) {
    SCOPED_TRACE(gateHalf ? "gate half" : "up half");
    DeviceBuffer direct(device, n, "direct"), transposed(device, n, "t"),
        amax(device, 4, "amax"), fusedDirect(device, n, "fused direct"),
        fusedTransposed(device, n, "fused t"), fusedAmax(device, 4, "amax'");
    for (DeviceBuffer *b :
         {&direct, &transposed, &fusedDirect, &fusedTransposed})
      b->fill(0x7F);
    amax.fill(0);
    fusedAmax.fill(0);
    kernels.run("both_half_e5m2",
                {dgu.address() + (gateHalf ? 0 : C * 2), scale.address(),
                 direct.address(), transposed.address(), amax.address()});
    std::vector<CUdeviceptr> args = {dyBuffer.address(), gateUp.address()};
    if (gateHalf)
      args.push_back(gateUp.address() + C * 2);
    args.insert(args.end(), {scale.address(), fusedDirect.address(),
                             fusedTransposed.address(), fusedAmax.address()});
    kernels.run(gateHalf ? "swiglu_dgate_e5m2" : "swiglu_dup_e5m2", args);
    expectSameBytes(direct, fusedDirect, n, "direct");
    expectSameBytes(transposed, fusedTransposed, n, "transposed");
    expectSameAmax(amax, fusedAmax, 0.0f);
  }
}

TEST(FP8CurrentScaling, AmaxIsTheBlocksMaximum) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "fp8");
  ASSERT_TRUE(kernels.ok());
  auto reference = readReference();
  const std::vector<double> &x = reference["x"];
  ASSERT_EQ(x.size(), size_t(N));
  for (bool slice : {false, true}) {
    SCOPED_TRACE(slice ? "column slice" : "packed");
    const int64_t cols = slice ? kFP8SliceCols : C;
    std::vector<uint16_t> bits(N);
    for (int64_t i = 0; i < N; ++i)
      bits[i] = doubleToBF16(x[i]);
    DeviceBuffer in(device, N * 2, "x"), amax(device, 4, "amax");
    const std::string key = slice ? "amax_slice" : "amax";
    // x holds NaN among its first columns: the amax is NaN.
    in.upload(bits);
    amax.fill(0);
    kernels.run(key, {in.address(), amax.address()});
    EXPECT_TRUE(std::isnan(amax.download<float>(1)[0]));
    // Finite values inside the block, bf16's largest outside it.
    double wantMax = 0;
    for (int64_t i = 0; i < N; ++i) {
      if (i % C >= cols)
        bits[i] = doubleToBF16(0x1.FEp127);
      else if (!std::isfinite(x[i]))
        bits[i] = doubleToBF16(1.0);
      if (i % C < cols)
        wantMax = std::max(wantMax, std::abs(bf16(bits[i])));
    }
    in.upload(bits);
    amax.fill(0);
    kernels.run(key, {in.address(), amax.address()});
    EXPECT_EQ(double(amax.download<float>(1)[0]), wantMax);
    const float larger = std::numeric_limits<float>::max();
    amax.upload(std::vector<float>{larger});
    kernels.run(key, {in.address(), amax.address()});
    EXPECT_EQ(amax.download<float>(1)[0], larger);
  }
}

TEST(FP8CurrentScaling, ScaleFromTheAmax) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "fp8");
  ASSERT_TRUE(kernels.ok());
  const float inf = std::numeric_limits<float>::infinity();
  const float amaxes[] = {
      0.0f,  inf,      std::numeric_limits<float>::quiet_NaN(),
      1.0f,  448.0f,   3.0e-5f,
      1e30f, 57344.5f, std::numeric_limits<float>::denorm_min()};
  for (auto [format, fmax, margin] :
       {std::tuple{"e4m3", 448.0, int64_t(0)},
        std::tuple{"e5m2", 57344.0, int64_t(kFP8MarginE5M2)}}) {
    SCOPED_TRACE(format);
    for (float a : amaxes) {
      SCOPED_TRACE("amax " + std::to_string(a));
      DeviceBuffer amax(device, 4, "amax"), scale(device, 4, "scale"),
          scaleInv(device, 16, "scale_inv");
      amax.upload(std::vector<float>{a});
      scale.fill(0xFF);
      scaleInv.fill(0xFF);
      kernels.run(std::string("current_scale_") + format,
                  {amax.address(), scale.address(), scaleInv.address()});
      // The reference's rule, in f64 then rounded to f32 (the denormal
      // amax's quotient overflows f32 to inf, its inverse 0).
      float want = a > 0 && std::isfinite(a)
                       ? float(fmax / double(a) / std::ldexp(1.0, int(margin)))
                       : 1.0f;
      EXPECT_EQ(scale.download<float>(1)[0], want);
      std::vector<float> inverse = scaleInv.download<float>(4);
      EXPECT_EQ(inverse[0], 1.0f / want);
      EXPECT_TRUE(std::isnan(inverse[1])) << "writes past its row's first";
    }
  }
}

TEST(FP8ScaleUpdate, FollowsTheReferenceOverSteps) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "fp8");
  ASSERT_TRUE(kernels.ok());
  auto reference = readReference();
  const std::vector<double> &amaxes = reference["amax"];
  ASSERT_EQ(amaxes.size(), size_t(kFP8Steps * kFP8Tensors));
  for (const char *format : {"e4m3", "e5m2"}) {
    SCOPED_TRACE(format);
    const std::vector<double> &wantHistory =
        reference[std::string("history_") + format];
    const std::vector<double> &wantScale =
        reference[std::string("scale_") + format];
    ASSERT_EQ(wantHistory.size(),
              size_t(kFP8Steps * kFP8Tensors * kFP8History));
    DeviceBuffer history(device, kFP8Tensors * kFP8History * 4, "history"),
        amax(device, kFP8Tensors * 4, "amax"),
        scale(device, kFP8Tensors * 4, "scale"),
        scaleInv(device, kFP8Tensors * 16, "scale_inv"); // 16-byte rows
    history.fill(0);
    scale.upload(std::vector<float>(kFP8Tensors, 1.0f));
    scaleInv.fill(0xFF);
    for (int64_t s = 0; s < kFP8Steps; ++s) {
      SCOPED_TRACE("step " + std::to_string(s));
      std::vector<float> stepAmax(kFP8Tensors);
      for (int64_t t = 0; t < kFP8Tensors; ++t)
        stepAmax[t] = float(amaxes[s * kFP8Tensors + t]);
      amax.upload(stepAmax);
      kernels.run(std::string("update_") + format,
                  {history.address(), amax.address(), scale.address(),
                   scaleInv.address()});
      std::vector<float> gotHistory =
          history.download<float>(kFP8Tensors * kFP8History);
      std::vector<float> gotScale = scale.download<float>(kFP8Tensors);
      std::vector<float> gotInv = scaleInv.download<float>(4 * kFP8Tensors);
      std::vector<float> gotAmax = amax.download<float>(kFP8Tensors);
      for (int64_t t = 0; t < kFP8Tensors; ++t) {
        for (int64_t i = 0; i < kFP8History; ++i) {
          double want = wantHistory[(s * kFP8Tensors + t) * kFP8History + i];
          EXPECT_TRUE(sameValue(gotHistory[t * kFP8History + i], want))
              << "history[" << t << ", " << i
              << "] = " << gotHistory[t * kFP8History + i] << ", want " << want;
        }
        float want = float(wantScale[s * kFP8Tensors + t]);
        EXPECT_EQ(gotScale[t], want) << "scale[" << t << "]";
        EXPECT_EQ(gotInv[4 * t], 1.0f / want) << "scale_inv[" << t << "]";
        EXPECT_EQ(gotAmax[t], 0.0f) << "amax[" << t << "] is not reset";
      }
    }
  }
}

} // namespace
