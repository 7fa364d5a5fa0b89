//===- AdamWKernelTest.cpp - Generated AdamW kernel vs CPU reference ------===//
//
// Runs the compiler-generated AdamW PTX on fresh random bf16 state and checks
// every element against torch.optim.AdamW's formula computed in double on
// the same bf16 inputs (bounds derived below), with 99% of elements required
// to round exactly like the reference.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "GpuTestUtil.h"

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

TEST(AdamWKernel, MatchesTorchFormula) {
  LLAMAC_REQUIRE_GPU(device);
  const int64_t n = kAdamWElements;
  auto module = cuda::Module::load(
      device, readFile(std::string(KERNEL_DIR) + "/adamw.ptx"), "adamw.ptx");
  ASSERT_TRUE(module.ok()) << module.error().message;

  std::mt19937 rng(std::random_device{}());
  auto toBF16 = [](const std::vector<float> &values, float scale, bool square) {
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < values.size(); ++i)
      bits[i] = floatToBF16(square ? values[i] * values[i] * scale
                                   : values[i] * scale);
    return bits;
  };
  std::vector<uint16_t> param = toBF16(randomValues(n, rng), 0.05f, false);
  std::vector<uint16_t> grad = toBF16(randomValues(n, rng), 1e-3f, false);
  std::vector<uint16_t> m = toBF16(randomValues(n, rng), 1e-4f, false);
  std::vector<uint16_t> v = toBF16(randomValues(n, rng), 1e-7f, true);
  // Clipping on: max_norm 0.5 against a norm of 2 scales gradients by ~1/4.
  const float hyper[8] = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 3.0f, 0.5f, 0};
  const float normSq = 4.0f;

  std::vector<CUdeviceptr> buffers;
  for (auto *host : {&param, &grad, &m, &v}) {
    auto pointer = device->allocate(n * 2, "adamw state");
    ASSERT_TRUE(pointer.ok()) << pointer.error().message;
    ASSERT_TRUE(device->copyToDevice(*pointer, host->data(), n * 2).ok());
    buffers.push_back(*pointer);
  }
  auto hyperBuffer = device->allocate(sizeof(hyper), "hyperparameters");
  ASSERT_TRUE(hyperBuffer.ok());
  ASSERT_TRUE(device->copyToDevice(*hyperBuffer, hyper, sizeof(hyper)).ok());
  buffers.push_back(*hyperBuffer);
  auto normBuffer = device->allocate(sizeof(normSq), "gradient norm");
  ASSERT_TRUE(normBuffer.ok());
  ASSERT_TRUE(device->copyToDevice(*normBuffer, &normSq, sizeof(normSq)).ok());
  buffers.push_back(*normBuffer);

  std::vector<void *> args;
  for (CUdeviceptr &buffer : buffers)
    args.push_back(&buffer);
  const unsigned block = 256, perThread = 8;
  unsigned grid = unsigned((n / perThread + block - 1) / block);
  Status launched =
      module->launch("adamw_n" + std::to_string(n), grid, block, 0, args);
  ASSERT_TRUE(launched.ok()) << launched.error().message;
  std::vector<uint16_t> newParam(n), newM(n), newV(n);
  ASSERT_TRUE(device->copyToHost(newParam.data(), buffers[0], n * 2).ok());
  ASSERT_TRUE(device->copyToHost(newM.data(), buffers[2], n * 2).ok());
  ASSERT_TRUE(device->copyToHost(newV.data(), buffers[3], n * 2).ok());

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
  for (CUdeviceptr buffer : buffers)
    EXPECT_TRUE(device->free(buffer).ok());
}

} // namespace
