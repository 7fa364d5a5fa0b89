//===- GemmTest.cpp - cuBLASLt GEMMs against a CPU reference --------------===//
//
// Row-major D = alpha op(A) op(B) + beta D for every transpose combination,
// bf16 and f32, on fresh random inputs with the output poisoned first.
// Tolerances: f32 operands with f32 accumulation land near 1e-6; bf16
// operands are exact in the reference (it uses the rounded values), so only
// the bf16 rounding of D remains (2^-9 relative per element, ~2e-3 as a norm).
//
//===----------------------------------------------------------------------===//

#include "GpuTestUtil.h"

#include "llamac/Runtime/Safetensors.h"

using namespace llamac;
using namespace llamac::test;

namespace {

struct GemmCase {
  int64_t m, n, k;
  bool transposeA, transposeB;
  cuda::GemmType type;
  float beta;
  cuda::GemmType outType;
};

class GemmTest : public ::testing::TestWithParam<GemmCase> {};

/// Host copy in the GEMM's element type; `exact` gets the values it holds.
std::vector<uint8_t> encode(const std::vector<float> &values,
                            cuda::GemmType type, std::vector<double> &exact) {
  exact.resize(values.size());
  std::vector<uint8_t> bytes;
  if (type == cuda::GemmType::F32) {
    bytes.resize(values.size() * 4);
    std::memcpy(bytes.data(), values.data(), bytes.size());
    exact.assign(values.begin(), values.end());
    return bytes;
  }
  bytes.resize(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    uint16_t bits = floatToBF16(values[i]);
    std::memcpy(bytes.data() + 2 * i, &bits, 2);
    exact[i] = bf16ToFloat(bits);
  }
  return bytes;
}

std::vector<double> decode(const std::vector<uint8_t> &bytes,
                           cuda::GemmType type) {
  std::vector<double> values;
  if (type == cuda::GemmType::F32) {
    for (size_t i = 0; i < bytes.size(); i += 4) {
      float v;
      std::memcpy(&v, bytes.data() + i, 4);
      values.push_back(v);
    }
  } else {
    for (size_t i = 0; i < bytes.size(); i += 2) {
      uint16_t bits;
      std::memcpy(&bits, bytes.data() + i, 2);
      values.push_back(bf16ToFloat(bits));
    }
  }
  return values;
}

TEST_P(GemmTest, MatchesCpuReference) {
  LLAMAC_REQUIRE_GPU(device);
  const GemmCase &c = GetParam();
  auto blas = cuda::BlasLt::create(device);
  ASSERT_TRUE(blas.ok()) << blas.error().message;

  std::mt19937 rng(std::random_device{}());
  std::vector<double> a, b, d0;
  auto aBytes = encode(randomValues(c.m * c.k, rng), c.type, a);
  auto bBytes = encode(randomValues(c.k * c.n, rng), c.type, b);
  auto dBytes = encode(randomValues(c.m * c.n, rng), c.outType, d0);

  // Reference: op(A)[i, l] and op(B)[l, j] read through the stored layouts.
  std::vector<double> expected(c.m * c.n);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      double sum = 0;
      for (int64_t l = 0; l < c.k; ++l)
        sum += (c.transposeA ? a[l * c.m + i] : a[i * c.k + l]) *
               (c.transposeB ? b[j * c.k + l] : b[l * c.n + j]);
      expected[i * c.n + j] = sum + c.beta * d0[i * c.n + j];
    }

  auto upload = [&](const std::vector<uint8_t> &bytes, const char *what) {
    auto pointer = device->allocate(bytes.size(), what);
    EXPECT_TRUE(pointer.ok());
    EXPECT_TRUE(
        device->copyToDevice(*pointer, bytes.data(), bytes.size()).ok());
    return *pointer;
  };
  cuda::Gemm gemm;
  gemm.m = c.m, gemm.n = c.n, gemm.k = c.k;
  gemm.transposeA = c.transposeA, gemm.transposeB = c.transposeB;
  gemm.type = c.type;
  gemm.outType = c.outType;
  gemm.beta = c.beta;
  gemm.a = upload(aBytes, "A");
  gemm.b = upload(bBytes, "B");
  gemm.d = upload(dBytes, "D");
  if (c.beta == 0) // poison with NaN: every element must be written
    ASSERT_TRUE(device->fill(gemm.d, 0xFF, dBytes.size()).ok());
  Status run = (*blas)->run(gemm, "test GEMM");
  ASSERT_TRUE(run.ok()) << run.error().message;
  std::vector<uint8_t> out(dBytes.size());
  ASSERT_TRUE(device->copyToHost(out.data(), gemm.d, out.size()).ok());
  double tolerance = c.outType == cuda::GemmType::F32 ? 1e-5 : 5e-3;
  EXPECT_LE(relativeError(decode(out, c.outType), expected), tolerance);
  for (CUdeviceptr p : {gemm.a, gemm.b, gemm.d})
    EXPECT_TRUE(device->free(p).ok());
}

std::vector<GemmCase> cases() {
  std::vector<GemmCase> all;
  for (auto type : {cuda::GemmType::BF16, cuda::GemmType::F32})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.0f, 1.0f})
          all.push_back({96, 80, 72, ta, tb, type, beta, type});
  all.push_back({512, 1024, 256, false, true, cuda::GemmType::BF16, 0.0f,
                 cuda::GemmType::BF16});
  // Attention scores: bf16 operands, f32 result (exact products, f32 sums).
  all.push_back({128, 128, 64, false, true, cuda::GemmType::BF16, 0.0f,
                 cuda::GemmType::F32});
  return all;
}

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, GemmTest, ::testing::ValuesIn(cases()),
    [](const ::testing::TestParamInfo<GemmCase> &info) {
      const GemmCase &c = info.param;
      return std::string(c.type == cuda::GemmType::BF16 ? "bf16" : "f32") +
             (c.outType != c.type ? "_to_f32" : "") + "_" +
             std::to_string(c.m) + "x" + std::to_string(c.n) + "x" +
             std::to_string(c.k) + (c.transposeA ? "_tA" : "") +
             (c.transposeB ? "_tB" : "") + (c.beta != 0 ? "_accumulate" : "");
    });

TEST(DeviceTest, ReportsOutOfMemoryWithNeededAndFreeBytes) {
  LLAMAC_REQUIRE_GPU(device);
  auto pointer = device->allocate(size_t(1) << 50, "a test buffer");
  ASSERT_FALSE(pointer.ok());
  EXPECT_NE(pointer.error().message.find("out of GPU memory for a test buffer"),
            std::string::npos)
      << pointer.error().message;
}

TEST(DeviceTest, BadPtxReportsTheJitLog) {
  LLAMAC_REQUIRE_GPU(device);
  auto module = cuda::Module::load(device, ".version 8.0\n.target sm_90\nbogus",
                                   "broken.ptx");
  ASSERT_FALSE(module.ok());
  EXPECT_NE(module.error().message.find("broken.ptx"), std::string::npos);
  EXPECT_NE(module.error().message.find("JIT log"), std::string::npos);
}

} // namespace
