//===- ExecutorTest.cpp - A package runs, eagerly and by graph replay -----===//
//
// A two-step plan: a cuBLASLt GEMM writes a "gradient" G = A Bᵀ into the
// arena, then the generated AdamW kernel updates a parameter from it. The
// first run records a CUDA graph; the second replays it after new
// hyperparameters were uploaded. Both steps are checked against the CPU. A
// second test tunes the GEMM through a tuning file.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "GpuTestUtil.h"

#include "llamac/Runtime/Executor.h"
#include "llamac/Runtime/Safetensors.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t kN = 24, kK = 64, kM = kAdamWElements / kN;
static_assert(kM * kN == kAdamWElements, "GEMM output feeds AdamW");

package::Package gemmThenAdamW() {
  using namespace package;
  Package p;
  std::ifstream in(std::string(KERNEL_DIR) + "/adamw.ptx");
  std::stringstream ptx;
  ptx << in.rdbuf();
  p.ptx = ptx.str();
  auto add = [&](const std::string &name, ElementType type, uint64_t count) {
    Buffer b;
    b.name = name;
    b.role = "scratch";
    b.type = type;
    b.shape = {int64_t(count)};
    b.bytes = count * elementBytes(type);
    b.offset = p.arenaBytes;
    p.arenaBytes += (b.bytes + 15) / 16 * 16;
    p.buffers.push_back(b);
    return int(p.buffers.size() - 1);
  };
  int a = add("a", ElementType::BF16, kM * kK);
  int b = add("b", ElementType::BF16, kN * kK);
  int param = add("param", ElementType::BF16, kAdamWElements);
  int grad = add("grad", ElementType::BF16, kAdamWElements);
  int m = add("m", ElementType::BF16, kAdamWElements);
  int v = add("v", ElementType::BF16, kAdamWElements);
  int hyper = add("hyper", ElementType::F32, 8);
  int normSq = add("norm_sq", ElementType::F32, 4);
  Step gemm;
  gemm.kind = Step::Kind::Gemm;
  gemm.label = "gradient GEMM";
  gemm.gemm.m = kM, gemm.gemm.n = kN, gemm.gemm.k = kK;
  gemm.gemm.transposeB = true;
  gemm.gemm.a = {a, 0, 0}, gemm.gemm.b = {b, 0, 0}, gemm.gemm.d = {grad, 0, 0};
  Step adamw;
  adamw.label = "adamw";
  adamw.launch.kernel = "adamw_n" + std::to_string(kAdamWElements);
  adamw.launch.grid[0] = unsigned((kAdamWElements / 8 / 4 + 255) / 256);
  adamw.launch.block[0] = 256;
  adamw.launch.args = {{param, 0, 0}, {grad, 0, 0},  {m, 0, 0},
                       {v, 0, 0},     {hyper, 0, 0}, {normSq, 0, 0}};
  p.functions = {{"step", {gemm, adamw}}};
  return p;
}

std::vector<uint16_t> bf16Random(int64_t n, float scale, std::mt19937 &rng) {
  std::vector<uint16_t> bits(n);
  std::vector<float> values = randomValues(n, rng);
  for (int64_t i = 0; i < n; ++i)
    bits[i] = floatToBF16(values[i] * scale);
  return bits;
}

TEST(Executor, RunsEagerlyThenReplaysTheGraph) {
  LLAMAC_REQUIRE_GPU(device);
  auto executor = Executor::create(device, gemmThenAdamW());
  ASSERT_TRUE(executor.ok()) << executor.error().message;
  Executor &e = **executor;

  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> a = bf16Random(kM * kK, 0.1f, rng);
  std::vector<uint16_t> b = bf16Random(kN * kK, 0.1f, rng);
  std::vector<uint16_t> param = bf16Random(kAdamWElements, 0.05f, rng);
  std::vector<uint16_t> zeros(kAdamWElements, 0);
  ASSERT_TRUE(e.upload("a", a.data(), a.size() * 2).ok());
  ASSERT_TRUE(e.upload("b", b.data(), b.size() * 2).ok());
  ASSERT_TRUE(e.upload("param", param.data(), param.size() * 2).ok());
  ASSERT_TRUE(e.upload("m", zeros.data(), zeros.size() * 2).ok());
  ASSERT_TRUE(e.upload("v", zeros.data(), zeros.size() * 2).ok());
  float normSq[4] = {0, 0, 0, 0}; // max_norm 0 below: no clipping
  ASSERT_TRUE(e.upload("norm_sq", normSq, sizeof(normSq)).ok());

  // CPU model of the same two steps, in double from the same bf16 values,
  // rounding the gradient and the state to bf16 where the GPU stores them.
  auto round = [](double x) {
    return double(bf16ToFloat(floatToBF16(float(x))));
  };
  std::vector<double> p(kAdamWElements), mm(kAdamWElements, 0),
      vv(kAdamWElements, 0), g(kAdamWElements);
  for (int64_t i = 0; i < kAdamWElements; ++i)
    p[i] = bf16ToFloat(param[i]);
  for (int64_t i = 0; i < kM; ++i)
    for (int64_t j = 0; j < kN; ++j) {
      double sum = 0;
      for (int64_t l = 0; l < kK; ++l)
        sum += double(bf16ToFloat(a[i * kK + l])) * bf16ToFloat(b[j * kK + l]);
      g[i * kN + j] = round(sum);
    }

  for (int step = 1; step <= 2; ++step) {
    float hyper[8] = {float(1e-3 * step), 0.9f, 0.999f, 1e-8f, 0.01f,
                      float(step),        0,    0};
    ASSERT_TRUE(e.upload("hyper", hyper, sizeof(hyper)).ok());
    Status run = e.run("step");
    ASSERT_TRUE(run.ok()) << run.error().message;
    double lr = hyper[0], b1 = hyper[1], b2 = hyper[2];
    for (int64_t i = 0; i < kAdamWElements; ++i) {
      mm[i] = round(b1 * mm[i] + (1 - b1) * g[i]);
      vv[i] = round(b2 * vv[i] + (1 - b2) * g[i] * g[i]);
      double denom = std::sqrt(vv[i]) / std::sqrt(1 - std::pow(b2, step)) +
                     double(hyper[3]);
      p[i] = round(p[i] * (1 - lr * double(hyper[4])) -
                   lr / (1 - std::pow(b1, step)) * mm[i] / denom);
    }
  }
  std::vector<uint16_t> out(kAdamWElements);
  ASSERT_TRUE(e.download("param", out.data(), out.size() * 2).ok());
  std::vector<double> got(kAdamWElements);
  for (int64_t i = 0; i < kAdamWElements; ++i)
    got[i] = bf16ToFloat(out[i]);
  // Two bf16-rounded updates of size ~lr on values ~0.05: a few bf16 ulps.
  EXPECT_LE(relativeError(got, p), 1e-2);
  // The update really happened: the parameter moved by about 2 lr.
  std::vector<double> start(kAdamWElements);
  for (int64_t i = 0; i < kAdamWElements; ++i)
    start[i] = bf16ToFloat(param[i]);
  EXPECT_GE(relativeError(got, start), 0.02);
}

// With a tuning file the first run times the heuristic's candidates for
// each GEMM shape and writes the choices (for this GPU and cuBLASLt); a
// second executor reads them and tunes nothing, so the file is not
// rewritten. The tuned GEMM computes what the untuned one computes (up to
// the f32 summation order of another algorithm: bf16 noise). A file that is
// not a tuning file is refused by name.
TEST(Executor, TunesGemmShapesOnceAndRemembersThem) {
  LLAMAC_REQUIRE_GPU(device);
  std::string dir = (std::filesystem::temp_directory_path() /
                     ("llamac-tuning-" + std::to_string(::getpid())))
                        .string();
  std::filesystem::create_directories(dir);
  std::string file = dir + "/gemm-tuning.json";
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> a = bf16Random(kM * kK, 0.1f, rng);
  std::vector<uint16_t> b = bf16Random(kN * kK, 0.1f, rng);
  float hyper[8] = {1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1, 0, 0};
  auto gradient = [&](const std::string &tuning) {
    std::vector<double> values;
    auto executor = Executor::create(device, gemmThenAdamW());
    EXPECT_TRUE(executor.ok()) << executor.error().message;
    if (!executor.ok())
      return values;
    Executor &e = **executor;
    if (!tuning.empty()) {
      Status s = e.useTuningFile(tuning);
      EXPECT_TRUE(s.ok()) << s.error().message;
    }
    EXPECT_TRUE(e.upload("a", a.data(), a.size() * 2).ok());
    EXPECT_TRUE(e.upload("b", b.data(), b.size() * 2).ok());
    EXPECT_TRUE(e.upload("hyper", hyper, sizeof(hyper)).ok());
    Status run = e.run("step");
    EXPECT_TRUE(run.ok()) << run.error().message;
    std::vector<uint16_t> bits(kAdamWElements);
    EXPECT_TRUE(e.download("grad", bits.data(), bits.size() * 2).ok());
    for (uint16_t bit : bits)
      values.push_back(bf16ToFloat(bit));
    return values;
  };
  std::vector<double> plain = gradient("");
  std::vector<double> tuned = gradient(file);
  ASSERT_FALSE(plain.empty());
  ASSERT_EQ(tuned.size(), plain.size());
  EXPECT_LE(relativeError(tuned, plain), 1e-2);

  auto read = [&] {
    std::ifstream in(file);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  };
  std::string written = read();
  EXPECT_NE(written.find(device->name()), std::string::npos) << written;
  EXPECT_NE(written.find("\"algorithms\""), std::string::npos);
  EXPECT_NE(written.find(std::to_string(kM) + "x" + std::to_string(kN) + "x" +
                         std::to_string(kK)),
            std::string::npos)
      << written;
  std::filesystem::last_write_time(file, std::filesystem::file_time_type{});
  std::vector<double> again = gradient(file);
  EXPECT_EQ(again, tuned); // the remembered algorithm
  EXPECT_EQ(std::filesystem::last_write_time(file),
            std::filesystem::file_time_type{})
      << "the tuning file was rewritten though nothing was tuned";

  std::ofstream(file) << "[1, 2]";
  auto executor = Executor::create(device, gemmThenAdamW());
  ASSERT_TRUE(executor.ok());
  Status refused = (*executor)->useTuningFile(file);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find(file + ": not a GEMM tuning file"),
            std::string::npos)
      << refused.error().message;
  std::filesystem::remove_all(dir);
}

TEST(Executor, RefusesAPlanLargerThanTheGpu) {
  LLAMAC_REQUIRE_GPU(device);
  package::Package p = gemmThenAdamW();
  p.arenaBytes = uint64_t(1) << 50;
  auto executor = Executor::create(device, p);
  ASSERT_FALSE(executor.ok());
  EXPECT_NE(executor.error().message.find("out of GPU memory for the train "
                                          "step's arena"),
            std::string::npos)
      << executor.error().message;
}

} // namespace
