//===- FusedParamsTest.cpp - Fused parameters <-> Hugging Face tensors ----===//
//
// The split both loops use for checkpoints, and the GPU loop's way between
// package buffers and Hugging Face tensors, run here over host memory: a
// fake package (a fused q/k/v parameter and a plain one, their gradients and
// moments) and a reader that copies from host bytes. Values are bf16 numbers,
// so the round trips are exact.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/FusedParams.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>

using namespace llamac;
namespace fs = std::filesystem;

namespace {

const std::string kQ = "model.layers.0.self_attn.q_proj.weight";
const std::string kK = "model.layers.0.self_attn.k_proj.weight";
const std::string kV = "model.layers.0.self_attn.v_proj.weight";
const std::string kNorm = "model.norm.weight";

/// i-th value of tensor `name`: distinct per tensor, exact in bf16.
double valueOf(const std::string &name, size_t i) {
  return double(name.size() % 7) + 0.25 * double(i % 64) - 4.0;
}

std::vector<double> valuesOf(const std::string &name,
                             const std::vector<int64_t> &shape) {
  int64_t count = 1;
  for (int64_t d : shape)
    count *= d;
  std::vector<double> values;
  for (int64_t i = 0; i < count; ++i)
    values.push_back(valueOf(name, size_t(i)));
  return values;
}

/// A package with a fused [q; k; v] parameter (4 + 2 + 2 rows of 3) and a
/// norm weight [3], each with its gradient and moments.
package::Package fakePackage() {
  package::Package p;
  p.configJson = R"({"hidden_size":3,"vocab_size":5})";
  p.precision = "bf16";
  uint64_t offset = 0;
  auto add = [&](const std::string &role, const std::string &param,
                 std::vector<std::string> parts, std::vector<int64_t> rows,
                 std::vector<int64_t> shape) {
    package::Buffer b;
    b.name = role + ":" + param;
    b.role = role;
    b.param = param;
    b.parts = std::move(parts);
    b.partRows = std::move(rows);
    b.shape = std::move(shape);
    b.bytes = 2;
    for (int64_t d : b.shape)
      b.bytes *= uint64_t(d);
    b.offset = offset;
    offset += (b.bytes + 15) / 16 * 16;
    p.buffers.push_back(std::move(b));
  };
  for (const char *role : {"param", "grad", "exp_avg", "exp_avg_sq"}) {
    add(role, "qkv", {kQ, kK, kV}, {4, 2, 2}, {8, 3});
    add(role, kNorm, {kNorm}, {3}, {3});
  }
  p.arenaBytes = offset;
  return p;
}

/// Host "device memory": buffer name -> bytes.
using HostArena = std::map<std::string, std::vector<uint8_t>>;

BufferReader readerOf(const HostArena &arena) {
  return [&arena](const package::Buffer &buffer, void *data) -> Status {
    auto found = arena.find(buffer.name);
    if (found == arena.end() || found->second.size() != buffer.bytes)
      return Error{"no buffer " + buffer.name};
    std::memcpy(data, found->second.data(), buffer.bytes);
    return {};
  };
}

/// A source that hands out valuesOf(prefix + name).
TensorSource syntheticSource(const std::string &prefix = "") {
  return [prefix](
             const std::string &name,
             const std::vector<int64_t> &shape) -> Result<std::vector<double>> {
    return valuesOf(prefix + name, shape);
  };
}

TEST(FusedParams, BufferPartsTakeTheirRows) {
  package::Package p = fakePackage();
  FusedParts parts = bufferParts(p.buffers[0]);
  EXPECT_EQ(parts.names, (std::vector<std::string>{kQ, kK, kV}));
  EXPECT_EQ(parts.shapes,
            (std::vector<std::vector<int64_t>>{{4, 3}, {2, 3}, {2, 3}}));
  parts = bufferParts(p.buffers[1]);
  EXPECT_EQ(parts.names, std::vector<std::string>{kNorm});
  EXPECT_EQ(parts.shapes, std::vector<std::vector<int64_t>>{{3}});
}

TEST(FusedParams, SplitCutsAlongTheFirstDimension) {
  FusedParts parts{{"a", "b"}, {{1, 2}, {2, 2}}};
  std::vector<HostTensor> split =
      splitFused(parts, {1, 2, 3, 4, 5, 6}, DType::F32, "exp_avg.");
  ASSERT_EQ(split.size(), 2u);
  EXPECT_EQ(split[0].name, "exp_avg.a");
  EXPECT_EQ(split[0].dtype, DType::F32);
  EXPECT_EQ(split[0].shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(split[0].toDouble(), (std::vector<double>{1, 2}));
  EXPECT_EQ(split[1].name, "exp_avg.b");
  EXPECT_EQ(split[1].shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(split[1].toDouble(), (std::vector<double>{3, 4, 5, 6}));
}

TEST(FusedParams, GatherConcatenatesThePartsInOrder) {
  package::Package p = fakePackage();
  Result<HostTensor> fused = gatherFused(p.buffers[0], syntheticSource());
  ASSERT_TRUE(fused.ok()) << fused.error().message;
  EXPECT_EQ(fused->name, p.buffers[0].name);
  EXPECT_EQ(fused->dtype, DType::BF16);
  EXPECT_EQ(fused->bytes.size(), p.buffers[0].bytes);
  std::vector<double> want = valuesOf(kQ, {4, 3});
  for (const std::string &part : {kK, kV})
    for (double v : valuesOf(part, {2, 3}))
      want.push_back(v);
  EXPECT_EQ(fused->toDouble(), want);
}

TEST(FusedParams, GatherNamesTheMissingOrMisshapenTensor) {
  std::string dir = ::testing::TempDir();
  std::string path = dir + "/llamac-fused-weights.safetensors";
  ASSERT_TRUE(
      writeSafetensors(path, {HostTensor::fromDouble(kQ, DType::F32, {4, 3},
                                                     valuesOf(kQ, {4, 3})),
                              HostTensor::fromDouble(kK, DType::F32, {3, 2},
                                                     valuesOf(kK, {3, 2}))})
          .ok());
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.error().message;
  package::Package p = fakePackage();
  Result<HostTensor> fused = gatherFused(p.buffers[0], tensorsIn(*file));
  ASSERT_FALSE(fused.ok());
  EXPECT_EQ(fused.error().message,
            path + ": tensor '" + kK +
                "' has shape [3, 2], the step needs [2, 3]");
  fused = gatherFused(p.buffers[1], tensorsIn(*file, "exp_avg."));
  ASSERT_FALSE(fused.ok());
  EXPECT_EQ(fused.error().message,
            path + ": missing tensor 'exp_avg." + kNorm + "'");
  fs::remove(path);
}

TEST(FusedParams, CheckpointOfAPackageRoundTrips) {
  // Fill the host arena as the GPU loop fills the device from a checkpoint.
  package::Package p = fakePackage();
  HostArena arena;
  const std::map<std::string, std::string> prefixes = {
      {"param", ""}, {"exp_avg", "exp_avg."}, {"exp_avg_sq", "exp_avg_sq."}};
  for (const package::Buffer &buffer : p.buffers) {
    auto prefix = prefixes.find(buffer.role);
    if (prefix == prefixes.end())
      continue;
    Result<HostTensor> fused =
        gatherFused(buffer, syntheticSource(prefix->second));
    ASSERT_TRUE(fused.ok()) << fused.error().message;
    arena[buffer.name] = fused->bytes;
  }

  Result<CheckpointContents> contents = packageCheckpoint(p, readerOf(arena));
  ASSERT_TRUE(contents.ok()) << contents.error().message;
  EXPECT_EQ(contents->configJson,
            "{\n  \"hidden_size\": 3,\n  \"vocab_size\": 5\n}\n");
  auto names = [](const std::vector<HostTensor> &tensors) {
    std::vector<std::string> out;
    for (const HostTensor &t : tensors)
      out.push_back(t.name);
    return out;
  };
  EXPECT_EQ(names(contents->model),
            (std::vector<std::string>{kQ, kK, kV, kNorm}));
  EXPECT_EQ(names(contents->optimizer),
            (std::vector<std::string>{
                "exp_avg." + kQ, "exp_avg." + kK, "exp_avg." + kV,
                "exp_avg." + kNorm, "exp_avg_sq." + kQ, "exp_avg_sq." + kK,
                "exp_avg_sq." + kV, "exp_avg_sq." + kNorm}));
  for (const std::vector<HostTensor> *tensors :
       {&contents->model, &contents->optimizer})
    for (const HostTensor &t : *tensors) {
      EXPECT_EQ(t.dtype, DType::BF16) << t.name;
      EXPECT_EQ(t.toDouble(), valuesOf(t.name, t.shape)) << t.name;
    }

  // Written and read back as a checkpoint, the tensors fill the same arena.
  std::string dir = ::testing::TempDir() + "llamac-fused-checkpoint";
  fs::remove_all(dir);
  TrainerState state;
  state.globalStep = 3;
  Result<std::string> path = writeTrainingCheckpoint(dir, state, *contents);
  ASSERT_TRUE(path.ok()) << path.error().message;
  Result<WeightStore> model = WeightStore::open(*path);
  Result<SafetensorsFile> optimizer =
      SafetensorsFile::open(*path + "/optimizer.safetensors");
  ASSERT_TRUE(model.ok() && optimizer.ok());
  for (const package::Buffer &buffer : p.buffers) {
    auto prefix = prefixes.find(buffer.role);
    if (prefix == prefixes.end())
      continue;
    Result<HostTensor> fused =
        prefix->second.empty()
            ? gatherFused(buffer, tensorsIn(*model))
            : gatherFused(buffer, tensorsIn(*optimizer, prefix->second));
    ASSERT_TRUE(fused.ok()) << fused.error().message;
    EXPECT_EQ(fused->bytes, arena[buffer.name]) << buffer.name;
  }
  fs::remove_all(dir);
}

TEST(FusedParams, DownloadSplitsGradientsAsF32) {
  package::Package p = fakePackage();
  HostArena arena;
  for (const package::Buffer &buffer : p.buffers)
    if (buffer.role == "grad")
      arena[buffer.name] = gatherFused(buffer, syntheticSource())->bytes;
  Result<std::vector<HostTensor>> grads =
      downloadFused(p, "grad", DType::F32, "", readerOf(arena));
  ASSERT_TRUE(grads.ok()) << grads.error().message;
  ASSERT_EQ(grads->size(), 4u);
  for (const HostTensor &t : *grads) {
    EXPECT_EQ(t.dtype, DType::F32);
    EXPECT_EQ(t.toDouble(), valuesOf(t.name, t.shape)) << t.name;
  }
  // A failing transfer is the download's error.
  arena.erase(p.buffers[3].name);
  grads = downloadFused(p, "grad", DType::F32, "", readerOf(arena));
  ASSERT_FALSE(grads.ok());
  EXPECT_EQ(grads.error().message, "no buffer grad:" + kNorm);
}

} // namespace
