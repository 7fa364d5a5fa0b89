//===- ExecutorTest.cpp - A package runs, eagerly and by graph replay -----===//
//
// A two-step plan: a cuBLASLt GEMM writes a "gradient" G = A Bᵀ into the
// arena, then the generated AdamW kernel updates a parameter from it. The
// first run records a CUDA graph; the second replays it after new
// hyperparameters were uploaded. Both steps are checked against the CPU. A
// second test tunes the GEMMs of a two-GEMM plan inside its step and keeps
// the choices in a tuning file.
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "GpuTestUtil.h"

#include "llamac/Runtime/Executor.h"
#include "llamac/Runtime/Safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <unistd.h>

using namespace llamac;
using namespace llamac::test;

namespace {

constexpr int64_t kN = 24, kK = 64, kM = kAdamWElements / kN;
static_assert(kM * kN == kAdamWElements, "GEMM output feeds AdamW");

/// A plan with no buffers or steps yet, and the AdamW kernel's PTX.
package::Package withAdamWKernel() {
  package::Package p;
  std::ifstream in(std::string(KERNEL_DIR) + "/adamw.ptx");
  std::stringstream ptx;
  ptx << in.rdbuf();
  p.ptx = ptx.str();
  return p;
}

/// Adds a scratch buffer of `count` elements to `p`; returns its index.
int addBuffer(package::Package &p, const std::string &name,
              package::ElementType type, uint64_t count) {
  package::Buffer b;
  b.name = name;
  b.role = "scratch";
  b.type = type;
  b.shape = {int64_t(count)};
  b.bytes = count * package::elementBytes(type);
  b.offset = p.arenaBytes;
  p.arenaBytes += (b.bytes + 15) / 16 * 16;
  p.buffers.push_back(b);
  return int(p.buffers.size() - 1);
}

/// A bf16 GEMM step D = A op(B) over whole buffers.
package::Step gemmStep(const std::string &label, int64_t m, int64_t n,
                       int64_t k, bool transposeB, int a, int b, int d) {
  package::Step step;
  step.kind = package::Step::Kind::Gemm;
  step.label = label;
  step.gemm.m = m, step.gemm.n = n, step.gemm.k = k;
  step.gemm.transposeB = transposeB;
  step.gemm.a = {a, 0, 0}, step.gemm.b = {b, 0, 0}, step.gemm.d = {d, 0, 0};
  return step;
}

package::Package gemmThenAdamW() {
  using namespace package;
  Package p = withAdamWKernel();
  int a = addBuffer(p, "a", ElementType::BF16, kM * kK);
  int b = addBuffer(p, "b", ElementType::BF16, kN * kK);
  int param = addBuffer(p, "param", ElementType::BF16, kAdamWElements);
  int grad = addBuffer(p, "grad", ElementType::BF16, kAdamWElements);
  int m = addBuffer(p, "m", ElementType::BF16, kAdamWElements);
  int v = addBuffer(p, "v", ElementType::BF16, kAdamWElements);
  int hyper = addBuffer(p, "hyper", ElementType::F32, 8);
  int normSq = addBuffer(p, "norm_sq", ElementType::F32, 4);
  Step gemm = gemmStep("gradient GEMM", kM, kN, kK, true, a, b, grad);
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

/// Two GEMMs in one function "step": G = A Bᵀ [kM, kN], then H zeroed and
/// H += G B [kM, kK], a GEMM that adds into its own output as a gradient
/// accumulation does (the old back-to-back tuner could not time it).
package::Package twoGemms() {
  using namespace package;
  Package p = withAdamWKernel();
  int a = addBuffer(p, "a", ElementType::BF16, kM * kK);
  int b = addBuffer(p, "b", ElementType::BF16, kN * kK);
  int g = addBuffer(p, "g", ElementType::BF16, kM * kN);
  int h = addBuffer(p, "h", ElementType::BF16, kM * kK);
  Step zero;
  zero.kind = Step::Kind::Memset;
  zero.label = "H = 0";
  zero.memset.dst = {h, 0, 0};
  zero.memset.bytes = p.buffers[h].bytes;
  Step accumulate = gemmStep("H += G B", kM, kK, kN, false, g, b, h);
  accumulate.gemm.beta = 1;
  p.functions = {
      {"step",
       {gemmStep("G = A B^T", kM, kN, kK, true, a, b, g), zero, accumulate}}};
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

/// The start of BlasLt's key for an untransposed-A GEMM of this shape.
std::string keyPrefix(int64_t m, int64_t n, int64_t k, bool transposeB) {
  return std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) +
         ":0" + std::to_string(transposeB) + ":";
}

// tuneGemms tries each GEMM's candidates in the replayed step and keeps, per
// GEMM key, one that runs (the heuristic's unless another made the step
// faster), writing them with this GPU's identity to the tuning file: its
// keys are the plan's two GEMMs (the one adding into its own output
// included). It leaves no graph behind: the next run captures the tuned
// algorithms. The tuned GEMMs compute what the heuristic's
// compute (another algorithm only changes the f32 summation order: bf16
// noise, a few 2^-9 relative roundings). A second executor reads the file
// and tunes nothing: the file is not rewritten and the results are the
// tuned ones bit for bit (the same algorithms). Tuning is refused once a
// graph was captured; a file from another GPU is tuned again and
// overwritten; bad files and arguments are refused by name.
TEST(Executor, TunesGemmsInTheStepAndRemembersThem) {
  LLAMAC_REQUIRE_GPU(device);
  std::string dir = (std::filesystem::temp_directory_path() /
                     ("llamac-tuning-" + std::to_string(::getpid())))
                        .string();
  std::filesystem::create_directories(dir);
  std::string file = dir + "/gemm-tuning.json";
  std::mt19937 rng(std::random_device{}());
  std::vector<uint16_t> a = bf16Random(kM * kK, 0.1f, rng);
  std::vector<uint16_t> b = bf16Random(kN * kK, 0.1f, rng);
  auto create = [&]() -> std::unique_ptr<Executor> {
    auto executor = Executor::create(device, twoGemms());
    EXPECT_TRUE(executor.ok()) << executor.error().message;
    if (!executor.ok())
      return nullptr;
    EXPECT_TRUE((*executor)->upload("a", a.data(), a.size() * 2).ok());
    EXPECT_TRUE((*executor)->upload("b", b.data(), b.size() * 2).ok());
    return std::move(*executor);
  };
  // G then H after a graph run of "step".
  auto results = [&](Executor &e) {
    std::vector<double> values;
    Status run = e.run("step");
    EXPECT_TRUE(run.ok()) << run.error().message;
    for (auto [name, count] : {std::pair{"g", kM * kN}, {"h", kM * kK}}) {
      std::vector<uint16_t> bits(count);
      EXPECT_TRUE(e.download(name, bits.data(), bits.size() * 2).ok());
      for (uint16_t bit : bits)
        values.push_back(bf16ToFloat(bit));
    }
    return values;
  };
  auto readJson = [&] {
    std::ifstream in(file);
    return nlohmann::json::parse(in, nullptr, false);
  };

  std::unique_ptr<Executor> heuristic = create();
  ASSERT_TRUE(heuristic);
  std::vector<double> plain = results(*heuristic);

  std::unique_ptr<Executor> tuner = create();
  ASSERT_TRUE(tuner);
  Result<bool> loaded = tuner->useTuningFile(file);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_FALSE(*loaded) << "no file yet";
  Result<GemmTuningResult> tuning = tuner->tuneGemms({"step"});
  ASSERT_TRUE(tuning.ok()) << tuning.error().message;
  ASSERT_EQ(tuning->choices.size(), 2u);
  std::map<std::string, std::string> labels; // by key prefix
  std::set<std::string> keys;
  for (const GemmChoice &choice : tuning->choices) {
    keys.insert(choice.key);
    labels[choice.key.substr(0, choice.key.find(':') + 4)] = choice.label;
    ASSERT_FALSE(choice.candidates.empty()) << choice.key;
    EXPECT_EQ(choice.candidates.front(), 0) << choice.key;
    EXPECT_LE(choice.candidates.size(), size_t(kGemmTuningCandidates))
        << choice.key;
    EXPECT_NE(std::find(choice.candidates.begin(), choice.candidates.end(),
                        choice.chosen),
              choice.candidates.end())
        << choice.key;
    EXPECT_GT(choice.chosenMs, 0) << choice.key;
    EXPECT_LE(choice.chosenMs, choice.heuristicMs) << choice.key;
  }
  EXPECT_GT(tuning->tunedMs, 0);
  EXPECT_LE(tuning->tunedMs, tuning->heuristicMs);
  EXPECT_EQ(labels, (std::map<std::string, std::string>{
                        {keyPrefix(kM, kN, kK, true), "G = A B^T"},
                        {keyPrefix(kM, kK, kN, false), "H += G B"}}));
  std::vector<double> tuned = results(*tuner);
  ASSERT_FALSE(plain.empty());
  ASSERT_EQ(tuned.size(), plain.size());
  EXPECT_LE(relativeError(tuned, plain), 1e-2);

  nlohmann::json written = readJson();
  ASSERT_TRUE(written.is_object()) << "no tuning file written";
  std::string identity = written.value("identity", "");
  EXPECT_NE(identity.find(device->name()), std::string::npos) << identity;
  std::set<std::string> writtenKeys;
  for (auto &[key, words] : written["algorithms"].items()) {
    writtenKeys.insert(key);
    EXPECT_EQ(words.size(), 8u) << key;
  }
  EXPECT_EQ(writtenKeys, keys);

  std::filesystem::last_write_time(file, std::filesystem::file_time_type{});
  std::unique_ptr<Executor> again = create();
  ASSERT_TRUE(again);
  loaded = again->useTuningFile(file);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_TRUE(*loaded);
  EXPECT_EQ(results(*again), tuned); // the remembered algorithms
  EXPECT_EQ(std::filesystem::last_write_time(file),
            std::filesystem::file_time_type{})
      << "the tuning file was rewritten though nothing was tuned";

  Result<GemmTuningResult> late = again->tuneGemms({"step"});
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().message,
            "GEMM tuning: step already runs as a CUDA graph with its GEMM "
            "algorithms fixed in it (tune before any function's first graph "
            "run)");

  std::ofstream(file) << R"({"identity": "another GPU", "algorithms": {}})";
  std::unique_ptr<Executor> elsewhere = create();
  ASSERT_TRUE(elsewhere);
  loaded = elsewhere->useTuningFile(file);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_FALSE(*loaded) << "a file from another GPU was used";
  Result<GemmTuningResult> retuned =
      elsewhere->tuneGemms({"step"}, /*replays=*/1);
  ASSERT_TRUE(retuned.ok()) << retuned.error().message;
  EXPECT_EQ(readJson().value("identity", ""), identity);
  EXPECT_EQ(readJson()["algorithms"].size(), 2u);

  std::unique_ptr<Executor> fresh = create();
  ASSERT_TRUE(fresh);
  Result<GemmTuningResult> refusedTuning = fresh->tuneGemms({"absent"});
  ASSERT_FALSE(refusedTuning.ok());
  EXPECT_EQ(refusedTuning.error().message,
            "the package has no function 'absent'");
  refusedTuning = fresh->tuneGemms({"step"}, /*replays=*/0);
  ASSERT_FALSE(refusedTuning.ok());
  EXPECT_EQ(refusedTuning.error().message,
            "GEMM tuning: replays must be at least 1, got 0");
  std::ofstream(file) << "[1, 2]";
  Result<bool> refused = fresh->useTuningFile(file);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().message,
            file + ": not a GEMM tuning file (delete it to tune again)");
  nlohmann::json shortEntry = {{"identity", identity}};
  shortEntry["algorithms"]["1x1x1"] = {1, 2};
  std::ofstream(file) << shortEntry;
  refused = fresh->useTuningFile(file);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().message,
            file + ": algorithms.1x1x1: expected 8 integers (delete the file "
                   "to tune again)");
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
