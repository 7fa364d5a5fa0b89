//===- FP8PackageTest.cpp - The FP8 train step as a GPU package -----------===//
//
// The structure of the package of the FP8 step (llama-insert-fp8, delayed
// scaling) of the tiny model of test/gpu/hf/tiny, fused as by default: the
// delayed-scaling state (four f32 buffers per format, one row per quantized
// tensor, named by the buffers' parts), every linear layer's GEMMs in FP8
// (K-major, E4M3 forward, E5M2 x E4M3 backward) reading FP8 copies that a
// cast with the same tensor's scale wrote before, no copy made twice (both
// copies from one read where the GEMMs need both), every tensor's amax
// raised by some cast, and one scale update per format at the end. What the
// kernels and GEMMs compute is checked on the GPU (test/gpu
// StepPackage.FP8*).
//
//===----------------------------------------------------------------------===//

#include "TinyPackage.h"

#include <map>
#include <set>
#include <tuple>

using namespace llamac;
using package::ElementType;
using package::Step;

namespace {

constexpr int64_t kHistory = 16;

llvm::Expected<package::Package> build(bool accumulate,
                                       const std::string &scaling) {
  mlir::llama::TrainStepPipelineOptions pipeline;
  pipeline.fp8 = true;
  pipeline.fp8Scaling = scaling;
  pipeline.fp8AmaxHistory = kHistory;
  return test::tryBuildTinyPackage(/*tied=*/false, accumulate, pipeline);
}

bool isFP8(ElementType type) {
  return type == ElementType::F8E4M3 || type == ElementType::F8E5M2;
}

std::string formatOf(ElementType type) {
  return type == ElementType::F8E4M3 ? "e4m3" : "e5m2";
}

class FP8PackageTest : public ::testing::TestWithParam<bool> {};

TEST_P(FP8PackageTest, GemmsReadCastsOfTheirTensorsScales) {
  bool accumulate = GetParam();
  llvm::Expected<package::Package> built = build(accumulate, "delayed");
  ASSERT_TRUE(bool(built)) << llvm::toString(built.takeError());
  const package::Package &p = *built;
  EXPECT_EQ(p.precision, "fp8");
  auto target = [&](const package::Operand &operand) -> const auto & {
    return p.buffers[operand.buffer];
  };

  // The state: per format four buffers with one row per tensor, in the
  // same order (parts), scales and inverses starting at 1.
  std::map<std::string, std::vector<std::string>> ids;
  std::set<std::string> allIds;
  for (const package::Buffer &b : p.buffers) {
    if (b.role.rfind("fp8_", 0) != 0 || b.role == "fp8_copy")
      continue;
    std::string format = b.name.substr(b.name.find('.') + 1);
    EXPECT_EQ(b.name, b.role + "." + format);
    EXPECT_EQ(b.type, ElementType::F32) << b.name;
    if (!ids.count(format))
      ids[format] = b.parts;
    EXPECT_EQ(b.parts, ids[format]) << b.name;
    int64_t count = int64_t(b.parts.size());
    std::vector<int64_t> shape{count};
    if (b.role == "fp8_history")
      shape.push_back(kHistory);
    if (b.role == "fp8_scale_inv")
      shape.push_back(4); // 16-byte rows for cuBLASLt's scale pointers
    EXPECT_EQ(b.shape, shape) << b.name;
    bool ones = b.role == "fp8_scale" || b.role == "fp8_scale_inv";
    int64_t elements = count * (shape.size() > 1 ? shape[1] : 1);
    EXPECT_EQ(b.initF32,
              std::vector<float>(ones ? elements : 0, ones ? 1.0f : 0.0f))
        << b.name;
    allIds.insert(b.parts.begin(), b.parts.end());
  }
  // Per layer 7 weights, 4 GEMM inputs and 7 incoming gradients (as the
  // CPU's fp8 step carries them; test/Tools/compile-fp8.test).
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids["e4m3"].size(), 22u);
  EXPECT_EQ(ids["e5m2"].size(), 14u);
  EXPECT_EQ(allIds.size(), 36u);

  // Casts: scale and amax of one tensor; what each wrote (one copy, or the
  // direct and the transposed copy from one read), by copy and byte offset,
  // with which tensor's row. No tensor is cast into the same copy twice.
  const std::vector<Step> &steps = p.function("forward_backward")->steps;
  std::map<std::pair<int, uint64_t>, uint64_t> castRow;
  std::map<std::string, std::set<uint64_t>> raised;
  std::set<std::tuple<std::string, uint64_t, bool>> copiesMade;
  std::map<std::string, int> casts; // by kind
  int gemms = 0, mixed = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step &step = steps[i];
    if (step.kind == Step::Kind::Launch &&
        step.launch.kernel.rfind("fp8_cast", 0) == 0) {
      const std::vector<package::Operand> &args = step.launch.args;
      bool both = step.launch.kernel.find("_both_") != std::string::npos;
      bool transposed = step.launch.kernel.rfind("fp8_cast_transpose", 0) == 0;
      ASSERT_EQ(args.size(), both ? 5u : 4u) << step.label;
      ++casts[both ? "both" : transposed ? "transposed" : "direct"];
      const package::Operand &scale = args[1], &amax = args.back();
      std::string format = formatOf(target(args[2]).type);
      EXPECT_NE(step.launch.kernel.find("_" + format), std::string::npos);
      EXPECT_EQ(target(scale).name, "fp8_scale." + format) << step.label;
      EXPECT_EQ(target(amax).name, "fp8_amax." + format) << step.label;
      EXPECT_EQ(scale.offset, amax.offset) << step.label;
      for (bool t : {false, true})
        if (both || t == transposed) {
          EXPECT_TRUE(copiesMade.insert({format, scale.offset, t}).second)
              << step.label << ": makes a copy a cast made before";
        }
      for (size_t copy = 2; copy + 1 < args.size(); ++copy) {
        EXPECT_EQ(target(args[copy]).role, "fp8_copy") << step.label;
        EXPECT_EQ(target(args[copy]).type, target(args[2]).type);
        castRow[{args[copy].buffer, args[copy].offset}] = scale.offset / 4;
      }
      raised[format].insert(amax.offset / 4);
    }
    if (step.kind != Step::Kind::Gemm || !isFP8(step.gemm.type))
      continue;
    const package::Gemm &g = step.gemm;
    ++gemms;
    EXPECT_FALSE(g.transposeA) << step.label;
    EXPECT_TRUE(g.transposeB) << step.label;
    ElementType typeB = g.typeB.value_or(g.type);
    mixed += typeB != g.type;
    // Forward GEMMs are E4M3 x E4M3; the backward reads an E5M2 gradient.
    EXPECT_EQ(typeB, ElementType::F8E4M3) << step.label;
    for (auto [operand, scaleInv, type] :
         {std::tuple{g.a, g.scaleInvA, g.type},
          std::tuple{g.b, g.scaleInvB, typeB}}) {
      EXPECT_EQ(target(operand).role, "fp8_copy") << step.label;
      EXPECT_EQ(target(operand).type, type) << step.label;
      EXPECT_EQ(target(scaleInv).name, "fp8_scale_inv." + formatOf(type))
          << step.label;
      auto cast = castRow.find({operand.buffer, operand.offset});
      ASSERT_NE(cast, castRow.end())
          << step.label << ": reads an FP8 copy no earlier cast wrote";
      // Scales are 4-byte rows, scale inverses 16-byte rows.
      EXPECT_EQ(scaleInv.offset % 16, 0u) << step.label;
      EXPECT_EQ(cast->second, scaleInv.offset / 16)
          << step.label << ": unscales with another tensor's scale";
    }
    // Weight gradients add into their slot when accumulating.
    if (target(g.d).role == "grad") {
      EXPECT_EQ(g.beta, accumulate ? 1.0f : 0.0f) << step.label;
    }
  }
  // Per layer: forward q, k, v, o, gate, up, down; their dgrad and wgrad.
  EXPECT_EQ(gemms, 2 * 21);
  EXPECT_EQ(mixed, 2 * 14);
  for (auto &[format, rows] : raised)
    EXPECT_EQ(rows.size(), ids[format].size())
        << format << ": a tensor's amax is never measured";
  // Per layer both copies from one read of the 7 weight blocks, the inputs
  // of o_proj and down_proj and the 7 incoming gradients; only the direct
  // copy of the normalized inputs of q/k/v and gate/up (forward), only the
  // transposed one of their recomputation (backward).
  EXPECT_EQ(casts,
            (std::map<std::string, int>{
                {"both", 2 * 16}, {"direct", 2 * 2}, {"transposed", 2 * 2}}));

  // One scale update per format, last, over that format's state.
  ASSERT_GE(steps.size(), 2u);
  std::set<std::string> updated;
  for (size_t i = steps.size() - 2; i < steps.size(); ++i) {
    const Step &step = steps[i];
    ASSERT_EQ(step.kind, Step::Kind::Launch);
    ASSERT_EQ(step.launch.kernel.rfind("fp8_scale_update", 0), 0u);
    std::string format = target(step.launch.args[0]).name.substr(12);
    const char *roles[] = {"fp8_history", "fp8_amax", "fp8_scale",
                           "fp8_scale_inv"};
    for (int a = 0; a < 4; ++a)
      EXPECT_EQ(target(step.launch.args[a]).name,
                std::string(roles[a]) + "." + format);
    updated.insert(format);
  }
  EXPECT_EQ(updated, (std::set<std::string>{"e4m3", "e5m2"}));
  int updates = 0;
  for (const Step &step : steps)
    updates += step.kind == Step::Kind::Launch &&
               step.launch.kernel.rfind("fp8_scale_update", 0) == 0;
  EXPECT_EQ(updates, 2);
}

INSTANTIATE_TEST_SUITE_P(Accumulate, FP8PackageTest, ::testing::Bool());

TEST(FP8Package, CurrentScalingIsRefused) {
  llvm::Expected<package::Package> built = build(false, "current");
  ASSERT_FALSE(bool(built));
  EXPECT_NE(llvm::toString(built.takeError()).find("current scaling"),
            std::string::npos);
}

} // namespace
