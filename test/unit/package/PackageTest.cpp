//===- PackageTest.cpp - Package manifest round trip and validation -------===//

#include "llamac/Package/Package.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

using namespace llamac;
using namespace llamac::package;

namespace {

std::string temporaryDirectory() {
  std::string pattern =
      (std::filesystem::temp_directory_path() / "llamac-package-XXXXXX")
          .string();
  return mkdtemp(pattern.data());
}

/// A small but complete package: two buffers, one launch, one GEMM with a
/// separate addend, one memset.
Package samplePackage() {
  Package p;
  p.compiler = "llamac test";
  p.configJson = R"({"model_type": "llama"})";
  p.batch = 2;
  p.seq = 16;
  p.precision = "bf16";
  p.arenaBytes = 4096;
  p.ptx = ".version 8.0\n.target sm_90a\n";
  Buffer weight;
  weight.name = "w";
  weight.role = "param";
  weight.param = "model.layers.0.self_attn.qkv_proj.weight";
  weight.parts = {"model.layers.0.self_attn.q_proj.weight",
                  "model.layers.0.self_attn.k_proj.weight"};
  weight.partRows = {8, 8};
  weight.shape = {16, 32};
  weight.bytes = 1024;
  Buffer out = weight;
  out.name = "y";
  out.role = "activation";
  out.param.clear();
  out.parts.clear();
  out.partRows.clear();
  out.type = ElementType::F32;
  out.offset = 1024;
  out.bytes = 2048;
  p.buffers = {weight, out};
  Step launch;
  launch.label = "llama.rms_norm";
  launch.launch.kernel = "rms_norm_fwd_32x16";
  launch.launch.grid[0] = 32;
  launch.launch.block[0] = 128;
  launch.launch.args = {{0, 0, 0}, {1, 64, 32}};
  Step gemm;
  gemm.kind = Step::Kind::Gemm;
  gemm.label = "llama.matmul";
  gemm.gemm.m = 16, gemm.gemm.n = 16, gemm.gemm.k = 32;
  gemm.gemm.transposeB = true;
  gemm.gemm.beta = 1;
  gemm.gemm.a = {0, 0, 32};
  gemm.gemm.b = {0, 0, 32};
  gemm.gemm.d = {1, 0, 16};
  gemm.gemm.c = {1, 1024, 16};
  gemm.gemm.batch = 2;
  gemm.gemm.strideD = 256;
  Step memset;
  memset.kind = Step::Kind::Memset;
  memset.label = "zero grads";
  memset.memset.dst = {1, 0, 0};
  memset.memset.bytes = 2048;
  p.functions = {{"forward_backward", {launch, gemm, memset}}};
  return p;
}

TEST(Package, RoundTripsEveryField) {
  std::string dir = temporaryDirectory();
  Package written = samplePackage();
  ASSERT_TRUE(writePackage(dir, written).ok());
  Result<Package> read = readPackage(dir);
  ASSERT_TRUE(read.ok()) << read.error().message;
  EXPECT_EQ(read->ptx, written.ptx);
  EXPECT_EQ(read->arenaBytes, 4096u);
  ASSERT_EQ(read->buffers.size(), 2u);
  EXPECT_EQ(read->buffers[0].parts, written.buffers[0].parts);
  EXPECT_EQ(read->buffers[0].partRows, written.buffers[0].partRows);
  EXPECT_EQ(read->buffers[1].type, ElementType::F32);
  EXPECT_EQ(read->buffers[1].offset, 1024u);
  const Function *f = read->function("forward_backward");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(f->steps.size(), 3u);
  EXPECT_EQ(f->steps[0].launch.kernel, "rms_norm_fwd_32x16");
  EXPECT_EQ(f->steps[0].launch.args[1].offset, 64u);
  EXPECT_EQ(f->steps[0].launch.args[1].ld, 32);
  EXPECT_TRUE(f->steps[1].gemm.transposeB);
  EXPECT_EQ(f->steps[1].gemm.beta, 1.0f);
  EXPECT_EQ(f->steps[1].gemm.batch, 2);
  EXPECT_EQ(f->steps[1].gemm.strideD, 256);
  EXPECT_EQ(f->steps[1].gemm.c.offset, 1024u);
  EXPECT_EQ(f->steps[1].gemm.c.ld, 16);
  EXPECT_EQ(f->steps[2].memset.bytes, 2048u);
  EXPECT_EQ(read->bufferIndex("y"), 1);
  EXPECT_EQ(read->bufferIndex("nope"), -1);
  std::filesystem::remove_all(dir);
}

TEST(Package, RejectsBuffersPastTheArenaOrMisaligned) {
  Package p = samplePackage();
  p.buffers[1].bytes = 4000;
  Status status = validate(p, "pkg");
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.error().message.find("buffers[1] 'y': ends at byte 5024"),
            std::string::npos)
      << status.error().message;
  p = samplePackage();
  p.buffers[1].offset = 1000;
  status = validate(p, "pkg");
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.error().message.find("not 16-byte aligned"),
            std::string::npos);
}

TEST(Package, RejectsPartRowsThatDoNotSplitTheParameter) {
  Package p = samplePackage();
  p.buffers[0].partRows = {8, 4};
  Status status = validate(p, "pkg");
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.error().message.find("part_rows do not split its 16 rows"),
            std::string::npos)
      << status.error().message;
}

TEST(Package, RejectsFP8StateWithoutOneTensorPerRow) {
  // fp8_history.e4m3: the histories (16 entries) of two quantized tensors.
  Package p = samplePackage();
  Buffer history;
  history.name = "fp8_history.e4m3";
  history.role = "fp8_history";
  history.parts = {"model.layers.0.self_attn.q_proj.weight",
                   "model.layers.0.self_attn.q_proj.input"};
  history.partRows = {1, 1};
  history.type = ElementType::F32;
  history.shape = {2, 16};
  history.offset = 3072;
  history.bytes = 128;
  p.buffers.push_back(history);
  Status status = validate(p, "pkg");
  ASSERT_TRUE(status.ok()) << status.error().message;
  for (auto change : std::vector<std::function<void(Buffer &)>>{
           [](Buffer &b) { b.type = ElementType::BF16; },
           [](Buffer &b) {
             b.parts.pop_back();
             b.partRows = {2};
           },
           [](Buffer &b) {
             b.shape = {2, 4, 4};
           },
           [](Buffer &b) { b.bytes = 64; }}) {
    Package bad = p;
    change(bad.buffers.back());
    status = validate(bad, "pkg");
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.error().message,
              "pkg: buffers[2] 'fp8_history.e4m3': fp8_history must be f32 of "
              "rank 2 with one part (a quantized tensor) per row");
  }
}

TEST(Package, RejectsOperandsOutsideTheirBuffer) {
  Package p = samplePackage();
  p.functions[0].steps[2].memset.bytes = 4096;
  Status status = validate(p, "pkg");
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.error().message.find("forward_backward[2] (zero grads)"),
            std::string::npos)
      << status.error().message;
  p = samplePackage();
  p.functions[0].steps[0].launch.args[0].buffer = 7;
  EXPECT_FALSE(validate(p, "pkg").ok());
  p = samplePackage();
  p.functions[0].steps[1].gemm.c.offset = 4096; // past the end of y
  EXPECT_FALSE(validate(p, "pkg").ok());
}

/// samplePackage with its GEMM as an FP8 dgrad (E5M2 x E4M3, K-major) whose
/// scale inverses and D amax live in buffer y.
Package fp8Package() {
  Package p = samplePackage();
  Gemm &g = p.functions[0].steps[1].gemm;
  g.type = ElementType::F8E5M2;
  g.typeB = ElementType::F8E4M3;
  g.beta = 0;
  g.c = {};
  g.batch = 1;
  g.strideD = 0;
  g.scaleInvA = {1, 2016, 0};
  g.scaleInvB = {1, 2032, 0};
  return p;
}

TEST(Package, FP8GemmsRoundTrip) {
  std::string dir = temporaryDirectory();
  ASSERT_TRUE(writePackage(dir, fp8Package()).ok());
  Result<Package> read = readPackage(dir);
  ASSERT_TRUE(read.ok()) << read.error().message;
  const Gemm &g = read->functions[0].steps[1].gemm;
  EXPECT_EQ(g.type, ElementType::F8E5M2);
  ASSERT_TRUE(g.typeB.has_value());
  EXPECT_EQ(*g.typeB, ElementType::F8E4M3);
  EXPECT_EQ(g.scaleInvA.buffer, 1);
  EXPECT_EQ(g.scaleInvA.offset, 2016u);
  EXPECT_EQ(g.scaleInvB.offset, 2032u);
  // A bf16 GEMM carries none of them, in memory or in the manifest.
  ASSERT_TRUE(writePackage(dir, samplePackage()).ok());
  read = readPackage(dir);
  ASSERT_TRUE(read.ok()) << read.error().message;
  const Gemm &plain = read->functions[0].steps[1].gemm;
  EXPECT_FALSE(plain.typeB.has_value());
  EXPECT_EQ(plain.scaleInvA.buffer, -1);
  EXPECT_EQ(plain.scaleInvB.buffer, -1);
  std::ifstream in(dir + "/manifest.json");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(text.find("scale_inv_a"), std::string::npos);
  EXPECT_EQ(text.find("type_b"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(Package, RejectsFP8GemmsCuBLASLtCannotRun) {
  ASSERT_TRUE(validate(fp8Package(), "pkg").ok());
  auto rejects = [](Package p, const std::string &message) {
    Status status = validate(p, "pkg");
    ASSERT_FALSE(status.ok()) << message;
    EXPECT_NE(status.error().message.find("forward_backward[1] (llama.matmul)"),
              std::string::npos)
        << status.error().message;
    EXPECT_NE(status.error().message.find(message), std::string::npos)
        << status.error().message;
  };
  Package p = fp8Package();
  p.functions[0].steps[1].gemm.transposeB = false;
  rejects(p, "both operands must be K-major");
  p = fp8Package();
  p.functions[0].steps[1].gemm.transposeA = true;
  rejects(p, "both operands must be K-major");
  p = fp8Package();
  p.functions[0].steps[1].gemm.typeB = ElementType::F8E5M2;
  rejects(p, "E5M2 x E5M2");
  p = fp8Package();
  p.functions[0].steps[1].gemm.typeB = ElementType::BF16;
  rejects(p, "both operands must be FP8");
  p = fp8Package();
  p.functions[0].steps[1].gemm.outType = ElementType::F32;
  rejects(p, "out_type must be bf16");
  p = samplePackage();
  p.functions[0].steps[1].gemm.scaleInvA = {1, 0, 0};
  rejects(p, "need FP8 operands");
  p = fp8Package();
  p.functions[0].steps[1].gemm.scaleInvB = {1, 2046, 0}; // 4 bytes past 2048
  rejects(p, "scale_inv_b");
  p = fp8Package();
  p.functions[0].steps[1].gemm.scaleInvA = {1, 2020, 0};
  rejects(p, "scale_inv_a: offset 2020 is not 16-byte aligned");
}

TEST(Package, AccumulatingPackagesRoundTripAndNeedZeroGrads) {
  std::string dir = temporaryDirectory();
  Package written = samplePackage();
  ASSERT_TRUE(writePackage(dir, written).ok());
  Result<Package> plain = readPackage(dir);
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  EXPECT_FALSE(plain->accumulatesGradients);
  written.accumulatesGradients = true;
  Status status = validate(written, "pkg");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().message, "pkg: accumulates_gradients: no function "
                                    "'zero_grads' to zero them");
  written.functions.push_back(
      {kZeroGradsFunction, {written.functions[0].steps[2]}});
  ASSERT_TRUE(writePackage(dir, written).ok());
  Result<Package> read = readPackage(dir);
  ASSERT_TRUE(read.ok()) << read.error().message;
  EXPECT_TRUE(read->accumulatesGradients);
  ASSERT_NE(read->function(kZeroGradsFunction), nullptr);

  // Manifests written before the field existed do not accumulate.
  std::string manifest = dir + "/manifest.json";
  std::ifstream in(manifest);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  in.close();
  const std::string field = "\"accumulates_gradients\": true,";
  ASSERT_NE(text.find(field), std::string::npos);
  std::ofstream(manifest) << text.erase(text.find(field), field.size());
  read = readPackage(dir);
  ASSERT_TRUE(read.ok()) << read.error().message;
  EXPECT_FALSE(read->accumulatesGradients);
  std::filesystem::remove_all(dir);
}

TEST(Package, HyperparametersFillTheirSlots) {
  Hyperparameters values;
  values.lr = 3e-4;
  values.beta1 = 0.8;
  values.beta2 = 0.95;
  values.eps = 1e-6;
  values.weightDecay = 0.1;
  values.maxGradNorm = 0.5;
  values.step = 12;
  // 2^24 + 1 tokens would round in f32; the count of a large step fits.
  values.lossTokens = (1 << 24) - 3;
  std::array<float, kHyperparameterCount> slots = packHyperparameters(values);
  EXPECT_EQ(slots.size(), 8u); // the package's f32 [8] buffer
  EXPECT_EQ(slots[kLrSlot], 3e-4f);
  EXPECT_EQ(slots[kBeta1Slot], 0.8f);
  EXPECT_EQ(slots[kBeta2Slot], 0.95f);
  EXPECT_EQ(slots[kEpsSlot], 1e-6f);
  EXPECT_EQ(slots[kWeightDecaySlot], 0.1f);
  EXPECT_EQ(slots[kStepSlot], 12.0f);
  EXPECT_EQ(slots[kMaxGradNormSlot], 0.5f);
  EXPECT_EQ(slots[kLossTokensSlot], float((1 << 24) - 3));
  EXPECT_EQ(double(slots[kLossTokensSlot]), double((1 << 24) - 3));
}

TEST(Package, ReadReportsBadManifests) {
  std::string dir = temporaryDirectory();
  ASSERT_TRUE(writePackage(dir, samplePackage()).ok());
  std::string manifest = dir + "/manifest.json";
  std::ifstream in(manifest);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  in.close();
  auto rewrite = [&](const std::string &from, const std::string &to) {
    std::string changed = text;
    changed.replace(changed.find(from), from.size(), to);
    std::ofstream(manifest) << changed;
    Result<Package> read = readPackage(dir);
    EXPECT_FALSE(read.ok()) << from << " -> " << to;
    return read.ok() ? std::string() : read.error().message;
  };
  EXPECT_NE(rewrite("\"version\": 2", "\"version\": 9").find("version: 9"),
            std::string::npos);
  EXPECT_NE(rewrite("\"kind\": \"gemm\"", "\"kind\": \"fft\"")
                .find("unknown step kind 'fft'"),
            std::string::npos);
  EXPECT_NE(rewrite("\"type\": \"f32\"", "\"type\": \"f7\"")
                .find("unknown element type 'f7'"),
            std::string::npos);
  EXPECT_NE(rewrite("{", "[").find("manifest.json"), std::string::npos);
  std::filesystem::remove_all(dir);
}

} // namespace
