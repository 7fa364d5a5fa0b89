//===- AdamWKernelTest.cpp - Generated AdamW kernel vs CPU reference ------===//
//
// Runs the compiler-generated AdamW PTX on fresh random bf16 state and checks
// every element against torch.optim.AdamW's formula computed in double on
// the same bf16 inputs (bounds derived below), with 99% of elements required
// to round exactly like the reference. The same for
// adamw_fp8_cast_transpose (an FP8 weight's AdamW fused with its casts, as
// @optimizer_step runs it), whose FP8 copies and amax must also be exactly
// those of fp8_cast_transpose (checked bit for bit against the reference in
// FP8KernelTest) of the bf16 weight it wrote, with the same scale.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "GpuTestUtil.h"
#include "KernelTestUtil.h"

#include "llamac/Runtime/Safetensors.h"

#include <fstream>
#include <sstream>

using namespace llamac;
using namespace llamac::test;

namespace {

std::string readFile(const std::string &path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// Random bf16 AdamW state of `n` elements: param, grad, m, v.
std::vector<std::vector<uint16_t>> randomState(int64_t n) {
  std::mt19937 rng(std::random_device{}());
  auto toBF16 = [](const std::vector<float> &values, float scale, bool square) {
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < values.size(); ++i)
      bits[i] = floatToBF16(square ? values[i] * values[i] * scale
                                   : values[i] * scale);
    return bits;
  };
  return {toBF16(randomValues(n, rng), 0.05f, false),
          toBF16(randomValues(n, rng), 1e-3f, false),
          toBF16(randomValues(n, rng), 1e-4f, false),
          toBF16(randomValues(n, rng), 1e-7f, true)};
}

// Clipping on: max_norm 0.5 against a norm of 2 scales gradients by ~1/4.
const float hyper[8] = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 3.0f, 0.5f, 0};
const float normSq = 4.0f;

/// Checks new p, m, v (`updated`) of every element against the formula
/// applied to `state` (randomState's).
void expectAdamW(const std::vector<std::vector<uint16_t>> &state,
                 const std::vector<std::vector<uint16_t>> &updated) {
  const std::vector<uint16_t> &param = state[0], &grad = state[1],
                              &m = state[2], &v = state[3];
  const std::vector<uint16_t> &newParam = updated[0], &newM = updated[1],
                              &newV = updated[2];
  const int64_t n = int64_t(param.size());

  double lr = hyper[0], beta1 = hyper[1], beta2 = hyper[2], eps = hyper[3],
         wd = hyper[4], step = hyper[5];
  // Each result is a difference or sum of two terms computed in f32, then
  // rounded to bf16: allowed error = one bf16 ulp of the result plus a few
  // f32 ulps of the two terms (cancellation near zero makes the second
  // dominate: a parameter that its update almost cancels).
  auto tolerance = [](double result, double termA, double termB) {
    double bf16Ulp = std::abs(result) * std::ldexp(1.0, -7);
    double f32Ulps =
        4 * std::ldexp(1.0, -24) * (std::abs(termA) + std::abs(termB));
    return bf16Ulp + f32Ulps;
  };
  double clip =
      std::min(1.0, double(float(hyper[6] / (std::sqrt(normSq) + 1e-6f))));
  int64_t far = 0, exact = 0;
  for (int64_t i = 0; i < n; ++i) {
    double g = bf16ToFloat(grad[i]) * clip;
    double mA = beta1 * bf16ToFloat(m[i]), mB = (1 - beta1) * g;
    double vA = beta2 * bf16ToFloat(v[i]), vB = (1 - beta2) * g * g;
    double m1 = mA + mB, v1 = vA + vB;
    double denom = std::sqrt(v1) / std::sqrt(1 - std::pow(beta2, step)) + eps;
    double pA = bf16ToFloat(param[i]) * (1 - lr * wd);
    double pB = lr / (1 - std::pow(beta1, step)) * m1 / denom;
    double p1 = pA - pB;
    // 1 - beta2^t is formed in f32 from a number near 1: its absolute error
    // (an f32 ulp of 1) is relative error 2^-24 / (1 - beta2^t) in the update.
    double bc2 = 1 - std::pow(beta2, step);
    double pBound =
        tolerance(p1, pA, pB) + std::abs(pB) * std::ldexp(1.0, -24) / bc2;
    double got[] = {bf16ToFloat(newParam[i]), bf16ToFloat(newM[i]),
                    bf16ToFloat(newV[i])};
    double want[] = {p1, m1, v1};
    double bound[] = {pBound, tolerance(m1, mA, mB), tolerance(v1, vA, vB)};
    for (int j = 0; j < 3; ++j) {
      exact += got[j] == double(bf16ToFloat(floatToBF16(float(want[j]))));
      far += !(std::abs(got[j] - want[j]) <= bound[j]);
    }
  }
  EXPECT_EQ(far, 0) << "elements outside the f32/bf16 rounding bound";
  EXPECT_GE(double(exact) / double(3 * n), 0.99);
}

TEST(AdamWKernel, MatchesTorchFormula) {
  LLAMAC_REQUIRE_GPU(device);
  const int64_t n = kAdamWElements;
  auto module = cuda::Module::load(
      device, readFile(std::string(KERNEL_DIR) + "/adamw.ptx"), "adamw.ptx");
  ASSERT_TRUE(module.ok()) << module.error().message;
  // The kernel loops over pieces of 8 elements a grid's threads apart: the
  // grid adamwKernel plans (4 pieces per thread), one piece per thread, and
  // 7 blocks (many pieces, the last round ragged) must all update every
  // element once.
  const unsigned block = 256;
  for (unsigned grid : {unsigned((n / 8 / 4 + block - 1) / block),
                        unsigned((n / 8 + block - 1) / block), 7u}) {
    SCOPED_TRACE("grid " + std::to_string(grid));
    std::vector<std::vector<uint16_t>> state = randomState(n);
    std::vector<CUdeviceptr> buffers;
    for (const std::vector<uint16_t> &host : state) {
      auto pointer = device->allocate(n * 2, "adamw state");
      ASSERT_TRUE(pointer.ok()) << pointer.error().message;
      ASSERT_TRUE(device->copyToDevice(*pointer, host.data(), n * 2).ok());
      buffers.push_back(*pointer);
    }
    auto hyperBuffer = device->allocate(sizeof(hyper), "hyperparameters");
    ASSERT_TRUE(hyperBuffer.ok());
    ASSERT_TRUE(device->copyToDevice(*hyperBuffer, hyper, sizeof(hyper)).ok());
    buffers.push_back(*hyperBuffer);
    auto normBuffer = device->allocate(sizeof(normSq), "gradient norm");
    ASSERT_TRUE(normBuffer.ok());
    ASSERT_TRUE(
        device->copyToDevice(*normBuffer, &normSq, sizeof(normSq)).ok());
    buffers.push_back(*normBuffer);

    std::vector<void *> args;
    for (CUdeviceptr &buffer : buffers)
      args.push_back(&buffer);
    Status launched =
        module->launch("adamw_n" + std::to_string(n), grid, block, 0, args);
    ASSERT_TRUE(launched.ok()) << launched.error().message;
    std::vector<std::vector<uint16_t>> updated(3, std::vector<uint16_t>(n));
    for (int t = 0; t < 3; ++t)
      ASSERT_TRUE(
          device->copyToHost(updated[t].data(), buffers[t ? t + 1 : 0], n * 2)
              .ok());
    expectAdamW(state, updated);
    for (CUdeviceptr buffer : buffers)
      EXPECT_TRUE(device->free(buffer).ok());
  }
}

/// adamw_fp8_cast_transpose over a weight of kFP8Rows x kFP8Cols (edge
/// tiles in both directions; E4M3) and a block of whole tiles
/// (kFP8TileRows x kFP8TileCols; E5M2): p, m, v as the flat kernel's
/// bounds; no element written past the weight; the direct and transposed
/// FP8 copies byte for byte, and the amax exactly, those of
/// fp8_cast_transpose (both copies) of the bf16 weight the kernel wrote,
/// with the same scale; the amax is max |new weight|.
TEST(AdamWKernel, FusedWithFP8CastsMatchesTheFormulaAndTheCast) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "fp8");
  ASSERT_TRUE(kernels.ok());
  for (const char *format : {"e4m3", "e5m2"}) {
    SCOPED_TRACE(format);
    bool e4m3 = std::string(format) == "e4m3";
    const int64_t rows = e4m3 ? kFP8Rows : kFP8TileRows;
    const int64_t cols = e4m3 ? kFP8Cols : kFP8TileCols;
    const int64_t n = rows * cols, tail = 4096;
    std::vector<std::vector<uint16_t>> state = randomState(n);
    // The weights are about 0.05 * N(0, 1): a scale that uses the range.
    const float scale = e4m3 ? 1000.0f : 60000.0f;
    std::vector<std::unique_ptr<DeviceBuffer>> tensors;
    for (int t = 0; t < 4; ++t) {
      tensors.push_back(
          std::make_unique<DeviceBuffer>(device, (n + tail) * 2, "state"));
      tensors[t]->fill(0x7F);
      tensors[t]->upload(state[t]);
    }
    DeviceBuffer hyperBuffer(device, sizeof(hyper), "hyper"),
        normBuffer(device, 4, "norm_sq"), scaleBuffer(device, 4, "scale"),
        direct(device, n, "fp8 copy"), transposed(device, n, "fp8 copy^T"),
        amax(device, 4, "amax"), castDirect(device, n, "cast"),
        castTransposed(device, n, "cast^T"), castAmax(device, 4, "cast amax");
    hyperBuffer.upload(std::vector<float>(hyper, hyper + 8));
    normBuffer.upload(std::vector<float>{normSq});
    scaleBuffer.upload(std::vector<float>{scale});
    amax.fill(0);
    castAmax.fill(0);
    kernels.run(std::string("adamw_") + (e4m3 ? "" : "tiles_") + format,
                {tensors[0]->address(), tensors[1]->address(),
                 tensors[2]->address(), tensors[3]->address(),
                 hyperBuffer.address(), normBuffer.address(),
                 scaleBuffer.address(), direct.address(), transposed.address(),
                 amax.address()});
    std::vector<std::vector<uint16_t>> updated;
    for (int t : {0, 2, 3}) {
      std::vector<uint16_t> all = tensors[t]->download<uint16_t>(n + tail);
      for (int64_t i = n; i < n + tail; ++i)
        ASSERT_EQ(all[i], 0x7F7F) << "tensor " << t << " written at " << i;
      all.resize(n);
      updated.push_back(std::move(all));
    }
    expectAdamW(state, updated);
    // The weight it wrote, cast by fp8_cast_transpose.
    kernels.run(e4m3 ? "both_e4m3" : "both_packed_tiles_e5m2",
                {tensors[0]->address(), scaleBuffer.address(),
                 castDirect.address(), castTransposed.address(),
                 castAmax.address()});
    EXPECT_EQ(direct.download<uint8_t>(n), castDirect.download<uint8_t>(n));
    EXPECT_EQ(transposed.download<uint8_t>(n),
              castTransposed.download<uint8_t>(n));
    double wantMax = 0;
    for (uint16_t bits : updated[0])
      wantMax = std::max(wantMax, std::abs(double(bf16ToFloat(bits))));
    EXPECT_GT(wantMax, 0);
    EXPECT_EQ(double(amax.download<float>(1)[0]), wantMax);
    EXPECT_EQ(amax.download<float>(1)[0], castAmax.download<float>(1)[0]);
  }
}

} // namespace
