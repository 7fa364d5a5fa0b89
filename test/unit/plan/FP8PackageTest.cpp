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

#include <cctype>
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

/// The number after `key` in a kernel's name ("_n", "_r", "_c").
int64_t sizeIn(const std::string &kernel, const std::string &key) {
  for (size_t at = kernel.find(key); at != std::string::npos;
       at = kernel.find(key, at + 1))
    if (at + key.size() < kernel.size() &&
        std::isdigit((unsigned char)kernel[at + key.size()]))
      return std::stoll(kernel.substr(at + key.size()));
  ADD_FAILURE() << kernel << " has no size " << key;
  return 0;
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
    if (b.role.rfind("fp8_", 0) != 0 || b.role == "fp8_copy" ||
        b.role == "fp8_weight_copy")
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
  // Without accumulation the weights' copies are persistent, cast by
  // fp8_weight_copies (before the first step; rewritten by optimizer_step,
  // checked below), and the forward casts no weight.
  const std::vector<Step> &steps = p.function("forward_backward")->steps;
  const package::Function *weightCopies =
      p.function(package::kFP8WeightCopiesFunction);
  ASSERT_EQ(weightCopies == nullptr, accumulate);
  // Each step, and whether it is fp8_weight_copies'.
  std::vector<std::pair<const Step *, bool>> castSteps;
  if (weightCopies)
    for (const Step &step : weightCopies->steps)
      castSteps.emplace_back(&step, true);
  for (const Step &step : steps)
    castSteps.emplace_back(&step, false);
  std::map<std::pair<int, uint64_t>, uint64_t> castRow;
  std::map<std::string, std::set<uint64_t>> raised;
  std::set<std::tuple<std::string, uint64_t, bool>> copiesMade;
  std::map<std::string, int> casts; // by kind
  int gemms = 0, mixed = 0, weightReads = 0;
  for (auto [at, weightCopy] : castSteps) {
    const Step &step = *at;
    if (weightCopy) {
      // fp8_weight_copies: both copies of a weight block, from the weight.
      ASSERT_EQ(step.kind, Step::Kind::Launch) << step.label;
      EXPECT_NE(step.launch.kernel.find("_both_"), std::string::npos);
      EXPECT_EQ(target(step.launch.args[0]).role, "param") << step.label;
    } else if (!accumulate && step.kind == Step::Kind::Launch &&
               step.launch.kernel.rfind("fp8_cast", 0) == 0) {
      EXPECT_NE(target(step.launch.args[0]).role, "param")
          << step.label << ": the forward casts a weight";
    }
    // The forward's norms write their FP8 copy themselves (arguments x, w,
    // scale, copy, amax, rstd).
    if (step.kind == Step::Kind::Launch &&
        step.launch.kernel.rfind("rms_norm_fwd_", 0) == 0 &&
        step.launch.kernel.find("_e4m3") != std::string::npos) {
      const std::vector<package::Operand> &args = step.launch.args;
      ASSERT_EQ(args.size(), 6u) << step.label;
      ++casts["norm"];
      EXPECT_EQ(target(args[2]).name, "fp8_scale.e4m3") << step.label;
      EXPECT_EQ(target(args[4]).name, "fp8_amax.e4m3") << step.label;
      EXPECT_EQ(args[2].offset, args[4].offset) << step.label;
      EXPECT_EQ(target(args[3]).role, "fp8_copy") << step.label;
      EXPECT_EQ(target(args[3]).type, ElementType::F8E4M3) << step.label;
      EXPECT_TRUE(copiesMade.insert({"e4m3", args[2].offset, false}).second)
          << step.label << ": makes a copy a cast made before";
      castRow[{args[3].buffer, args[3].offset}] = args[2].offset / 4;
      raised["e4m3"].insert(args[4].offset / 4);
    }
    // The casts that compute their tensor read more: SwiGLU's output's, the
    // gate/up output's two halves (x, and up `width` elements on); its
    // gradient halves', dy (x) and the gate/up output (gate, and for the
    // gate half up `width` on). Checked, then left out like the source.
    const std::string &kernel = step.launch.kernel;
    bool swiglu = step.kind == Step::Kind::Launch &&
                  kernel.rfind("swiglu_fp8_cast_transpose", 0) == 0;
    bool swigluGrad =
        step.kind == Step::Kind::Launch &&
        (kernel.rfind("swiglu_dgate_fp8_cast_transpose", 0) == 0 ||
         kernel.rfind("swiglu_dup_fp8_cast_transpose", 0) == 0);
    if (step.kind == Step::Kind::Launch &&
        (swiglu || swigluGrad || kernel.rfind("fp8_cast", 0) == 0)) {
      std::vector<package::Operand> args = step.launch.args;
      uint64_t halfBytes = uint64_t(sizeIn(kernel, "_c")) * 2;
      if (swiglu) {
        ASSERT_EQ(args.size(), 6u) << step.label;
        EXPECT_EQ(args[1].buffer, args[0].buffer) << step.label;
        EXPECT_EQ(args[1].offset - args[0].offset, halfBytes) << step.label;
        args.erase(args.begin() + 1);
      }
      if (swigluGrad) {
        bool gateHalf = kernel.rfind("swiglu_dgate", 0) == 0;
        ASSERT_EQ(args.size(), gateHalf ? 7u : 6u) << step.label;
        EXPECT_NE(args[1].buffer, args[0].buffer) << step.label;
        if (gateHalf) {
          EXPECT_EQ(args[2].buffer, args[1].buffer) << step.label;
          EXPECT_EQ(args[2].offset - args[1].offset, halfBytes) << step.label;
        }
        args.erase(args.begin() + 1, args.begin() + (gateHalf ? 3 : 2));
      }
      bool both = step.launch.kernel.find("_both_") != std::string::npos;
      bool transposed =
          swiglu || swigluGrad || kernel.rfind("fp8_cast_transpose", 0) == 0;
      ASSERT_EQ(args.size(), both ? 5u : 4u) << step.label;
      if (!weightCopy)
        ++casts[swiglu       ? "swiglu"
                : swigluGrad ? "swiglu gradient"
                : both       ? "both"
                : transposed ? "transposed"
                             : "direct"];
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
        EXPECT_EQ(target(args[copy]).role,
                  weightCopy ? "fp8_weight_copy" : "fp8_copy")
            << step.label;
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
      // The forward's and the dgrad's weight operands (B) are persistent
      // copies unless accumulating.
      bool weight = target(operand).role == "fp8_weight_copy";
      weightReads += weight;
      EXPECT_EQ(weight || target(operand).role == "fp8_copy", true)
          << step.label;
      EXPECT_FALSE(weight && accumulate) << step.label;
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
  EXPECT_EQ(weightReads, accumulate ? 0 : 2 * 14);
  EXPECT_EQ(mixed, 2 * 14);
  for (auto &[format, rows] : raised)
    EXPECT_EQ(rows.size(), ids[format].size())
        << format << ": a tensor's amax is never measured";
  // Per layer both copies from one read of the input of o_proj, the 5
  // incoming gradients of q, k, v, o and down, and (accumulating) the 7
  // weight blocks; of down_proj's input as SwiGLU computes it from the
  // gate/up output, and of the gate and up gradients as SwiGLU's backward
  // computes them; the direct copy of the normalized inputs of q/k/v and
  // gate/up by their norms (forward), only the transposed one of their
  // recomputation (backward).
  EXPECT_EQ(casts,
            (std::map<std::string, int>{{"both", 2 * (accumulate ? 13 : 6)},
                                        {"swiglu", 2},
                                        {"swiglu gradient", 2 * 2},
                                        {"norm", 2 * 2},
                                        {"transposed", 2 * 2}}));
  if (weightCopies) {
    EXPECT_EQ(weightCopies->steps.size(), 2u * 7);
  }

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

TEST_P(FP8PackageTest, OptimizerStepUpdatesEachElementOnceAndRecastsWeights) {
  bool accumulate = GetParam();
  llvm::Expected<package::Package> built = build(accumulate, "delayed");
  ASSERT_TRUE(bool(built)) << llvm::toString(built.takeError());
  const package::Package &p = *built;
  auto address = [&](const package::Operand &operand) {
    return p.buffers[operand.buffer].offset + operand.offset;
  };
  auto region = [&](const char *name) {
    int index = p.bufferIndex(name);
    EXPECT_GE(index, 0) << name;
    return index;
  };
  int params = region("params");
  const char *moments[] = {"grads", "exp_avg", "exp_avg_sq"};

  // What fp8_weight_copies casts, by the weight block it reads: the
  // operands of its copies, scale and amax.
  using Casts = std::vector<uint64_t>;
  std::map<uint64_t, Casts> weightCasts;
  const package::Function *weightCopies =
      p.function(package::kFP8WeightCopiesFunction);
  ASSERT_EQ(weightCopies == nullptr, accumulate);
  if (weightCopies)
    for (const Step &step : weightCopies->steps) {
      const std::vector<package::Operand> &args = step.launch.args;
      ASSERT_EQ(args.size(), 5u) << step.label;
      weightCasts[address(args[0])] = {address(args[1]), address(args[2]),
                                       address(args[3]), address(args[4])};
    }

  // The ranges of the params region that AdamW updates, [start, end) in
  // bytes from its start, by kind of launch; the fused launches' copies.
  std::vector<std::tuple<uint64_t, uint64_t, bool>> updated;
  std::map<uint64_t, Casts> fusedCasts;
  for (const Step &step : p.function("optimizer_step")->steps) {
    if (step.kind != Step::Kind::Launch ||
        step.launch.kernel.find("adamw") == std::string::npos)
      continue;
    const std::string &kernel = step.launch.kernel;
    const std::vector<package::Operand> &args = step.launch.args;
    bool fused = kernel.rfind("adamw_fp8_cast_transpose_r", 0) == 0;
    ASSERT_TRUE(fused || kernel.rfind("adamw_n", 0) == 0) << kernel;
    ASSERT_EQ(args.size(), fused ? 10u : 6u) << step.label;
    // Parameter, gradient and moments at the same place in their regions.
    ASSERT_EQ(args[0].buffer, params) << step.label;
    for (int m = 0; m < 3; ++m) {
      EXPECT_EQ(args[1 + m].buffer, region(moments[m])) << step.label;
      EXPECT_EQ(args[1 + m].offset, args[0].offset) << step.label;
    }
    EXPECT_EQ(test::target(p, args[4]).name, "hyperparameters") << step.label;
    EXPECT_EQ(test::target(p, args[5]).name, "grad_norm_sq") << step.label;
    int64_t elements = fused ? sizeIn(kernel, "_r") * sizeIn(kernel, "_c")
                             : sizeIn(kernel, "_n");
    updated.emplace_back(args[0].offset, args[0].offset + elements * 2, fused);
    if (fused) {
      EXPECT_EQ(test::target(p, args[6]).role, "fp8_scale") << step.label;
      EXPECT_EQ(test::target(p, args[9]).role, "fp8_amax") << step.label;
      for (int copy : {7, 8})
        EXPECT_EQ(test::target(p, args[copy]).role, "fp8_weight_copy")
            << step.label;
      fusedCasts[address(args[0])] = {address(args[6]), address(args[7]),
                                      address(args[8]), address(args[9])};
    }
  }
  // Each element once: the ranges tile the region.
  std::sort(updated.begin(), updated.end());
  uint64_t covered = 0;
  int fusedLaunches = 0, flatLaunches = 0;
  for (auto [start, end, fused] : updated) {
    EXPECT_EQ(start, covered) << "a gap or an overlap at byte " << start;
    covered = std::max(covered, end);
    (fused ? fusedLaunches : flatLaunches) += 1;
  }
  EXPECT_EQ(covered, p.buffers[params].bytes);
  // Each FP8 weight block (7 per layer) fused with its casts, into the
  // copies fp8_weight_copies writes, with the same scale and amax rows;
  // the other parameters by flat runs between them: the embedding, and
  // each layer's two norms (after its linear weights; the last layer's with
  // the final norm and lm_head). Accumulating: one flat launch.
  EXPECT_EQ(fusedCasts, weightCasts);
  EXPECT_EQ(fusedLaunches, accumulate ? 0 : 2 * 7);
  EXPECT_EQ(flatLaunches, accumulate ? 1 : 1 + 2);

  // Which parameters the fused launches update: the FP8 weights, whole.
  for (const package::Buffer &b : p.buffers) {
    if (b.role != "param")
      continue;
    bool isFP8Weight = b.name.find("proj") != std::string::npos;
    for (auto [start, end, fused] : updated) {
      uint64_t from = b.offset - p.buffers[params].offset;
      if (start < from + b.bytes && end > from)
        EXPECT_EQ(fused, isFP8Weight && !accumulate) << b.name;
    }
  }
}

/// The arena bytes [begin, end) of every buffer a step names.
std::vector<std::pair<int, std::pair<uint64_t, uint64_t>>>
touchedBuffers(const package::Package &p, const Step &step) {
  std::vector<package::Operand> operands = step.launch.args;
  for (const package::Operand *o :
       {&step.gemm.a, &step.gemm.b, &step.gemm.c, &step.gemm.d,
        &step.gemm.scaleInvA, &step.gemm.scaleInvB, &step.memset.dst})
    operands.push_back(*o);
  std::vector<std::pair<int, std::pair<uint64_t, uint64_t>>> touched;
  for (const package::Operand &o : operands)
    if (o.buffer >= 0) {
      const package::Buffer &b = p.buffers[o.buffer];
      touched.push_back({o.buffer, {b.offset, b.offset + b.bytes}});
    }
  return touched;
}

TEST(FP8Package, WeightCopiesLendTheirMemoryOnlyWhileDead) {
  // Each FP8 weight copy is alive from @optimizer_step (or
  // fp8_weight_copies) to its last read in the next @forward_backward; no
  // other buffer in its arena bytes may be touched in that time, and some
  // activation does use them in between (the memory the plan lends).
  llvm::Expected<package::Package> built = build(false, "delayed");
  ASSERT_TRUE(bool(built)) << llvm::toString(built.takeError());
  const package::Package &p = *built;
  const package::Function &fb = *p.function(package::kForwardBackwardFunction);
  int copies = 0, lent = 0;
  for (size_t c = 0; c < p.buffers.size(); ++c) {
    const package::Buffer &copy = p.buffers[c];
    if (copy.role != "fp8_weight_copy")
      continue;
    ++copies;
    auto clashes = [&](const Step &step) {
      for (auto [index, range] : touchedBuffers(p, step))
        if (size_t(index) != c && range.first < copy.offset + copy.bytes &&
            copy.offset < range.second)
          return true;
      return false;
    };
    size_t lastRead = 0;
    for (size_t i = 0; i < fb.steps.size(); ++i)
      for (auto [index, range] : touchedBuffers(p, fb.steps[i]))
        if (size_t(index) == c)
          lastRead = i;
    ASSERT_GT(lastRead, 0u) << copy.name << " is never read";
    for (size_t i = 0; i <= lastRead; ++i)
      EXPECT_FALSE(clashes(fb.steps[i]))
          << copy.name << ": " << fb.steps[i].label << " (step " << i
          << ") uses its memory before its last read at step " << lastRead;
    bool used = false;
    for (size_t i = lastRead + 1; i < fb.steps.size(); ++i)
      used |= clashes(fb.steps[i]);
    lent += used;
    for (const char *name :
         {package::kOptimizerStepFunction, package::kFP8WeightCopiesFunction})
      for (const Step &step : p.function(name)->steps)
        EXPECT_FALSE(clashes(step)) << copy.name << ": " << name << "'s "
                                    << step.label << " uses its memory";
  }
  EXPECT_GT(copies, 0);
  EXPECT_GT(lent, 0) << "no copy lends its memory to activations";
}

INSTANTIATE_TEST_SUITE_P(Accumulate, FP8PackageTest, ::testing::Bool());

TEST_P(FP8PackageTest, CurrentScalingScalesEachCastFromItsOwnAmax) {
  // Current scaling: no history and no scale update; every cast of a block
  // is preceded, in the same function, by its amax row's zeroing, an
  // fp8_amax over the same source, and an fp8_current_scale from that amax
  // into the scale and inverse rows of the same tensor, which the cast and
  // then the GEMMs reading its copies use. The weights are cast in the
  // forward (no persistent copies: AdamW cannot know a weight's new amax
  // before its last block), so optimizer_step is the flat AdamW alone.
  bool accumulate = GetParam();
  llvm::Expected<package::Package> built = build(accumulate, "current");
  ASSERT_TRUE(bool(built)) << llvm::toString(built.takeError());
  const package::Package &p = *built;
  EXPECT_EQ(p.precision, "fp8");
  auto target = [&](const package::Operand &operand) -> const auto & {
    return p.buffers[operand.buffer];
  };
  std::map<std::string, size_t> rowsOf;
  for (const package::Buffer &b : p.buffers) {
    EXPECT_NE(b.role, "fp8_history") << b.name;
    EXPECT_NE(b.role, "fp8_scale") << b.name;
    EXPECT_NE(b.role, "fp8_weight_copy") << b.name;
    if (b.role.rfind("fp8_current_", 0) == 0)
      rowsOf[b.name] = b.parts.size();
  }
  // The same tensors as delayed scaling's rows, plus the backward's casts
  // of the recomputed normalized inputs (which delayed scaling casts with
  // the forward's row): 22 + 4 e4m3 and 14 e5m2 tensors.
  EXPECT_EQ(rowsOf["fp8_current_amax.e4m3"], 26u);
  EXPECT_EQ(rowsOf["fp8_current_scale.e4m3"], 26u);
  EXPECT_EQ(rowsOf["fp8_current_scale_inv.e4m3"], 26u);
  EXPECT_EQ(rowsOf["fp8_current_amax.e5m2"], 14u);
  EXPECT_EQ(p.function(package::kFP8WeightCopiesFunction), nullptr);
  for (const Step &step : p.function("optimizer_step")->steps)
    if (step.kind == Step::Kind::Launch) {
      EXPECT_EQ(step.launch.kernel.find("fp8"), std::string::npos)
          << step.label;
    }

  using Row = std::pair<int, uint64_t>; // buffer, byte offset
  auto row = [](const package::Operand &o) { return Row{o.buffer, o.offset}; };
  std::set<Row> zeroed, measured; // amax rows
  std::map<Row, Row> scaledFrom;  // scale row -> the amax row it came from
  std::set<Row> inverses;         // scale-inverse rows written
  std::map<Row, Row> copyScale;   // FP8 copy -> the scale row of its cast
  int casts = 0, gemms = 0, weightCasts = 0;
  for (const Step &step : p.function("forward_backward")->steps) {
    if (step.kind == Step::Kind::Memset &&
        target(step.memset.dst).role == "fp8_current_amax") {
      EXPECT_EQ(step.memset.bytes, 4u);
      zeroed.insert(row(step.memset.dst));
      measured.erase(row(step.memset.dst));
      continue;
    }
    if (step.kind == Step::Kind::Launch) {
      const std::string &kernel = step.launch.kernel;
      const std::vector<package::Operand> &args = step.launch.args;
      EXPECT_EQ(kernel.rfind("fp8_scale_update", 0), std::string::npos);
      if (kernel.rfind("fp8_amax", 0) == 0) {
        ASSERT_EQ(args.size(), 2u);
        EXPECT_TRUE(zeroed.count(row(args[1])))
            << step.label << ": an amax not zeroed first";
        measured.insert(row(args[1]));
      } else if (kernel.rfind("fp8_current_scale", 0) == 0) {
        ASSERT_EQ(args.size(), 3u);
        EXPECT_TRUE(measured.count(row(args[0])))
            << step.label << ": a scale from an amax not measured";
        EXPECT_EQ(target(args[1]).role, "fp8_current_scale");
        EXPECT_EQ(target(args[2]).role, "fp8_current_scale_inv");
        // One tensor: the same row of each region.
        EXPECT_EQ(args[1].offset, args[0].offset);
        EXPECT_EQ(args[2].offset, 4 * args[0].offset);
        scaledFrom[row(args[1])] = row(args[0]);
        inverses.insert(row(args[2]));
      } else if (kernel.rfind("fp8_cast", 0) == 0) {
        ++casts;
        weightCasts += target(args[0]).role == "param";
        auto from = scaledFrom.find(row(args[1]));
        ASSERT_NE(from, scaledFrom.end())
            << step.label << ": casts with a scale not computed before";
        EXPECT_EQ(from->second, row(args.back()))
            << step.label << ": its scale came from another tensor's amax";
        for (size_t copy = 2; copy + 1 < args.size(); ++copy)
          copyScale[row(args[copy])] = row(args[1]);
      }
      continue;
    }
    if (step.kind != Step::Kind::Gemm || !isFP8(step.gemm.type))
      continue;
    ++gemms;
    const package::Gemm &g = step.gemm;
    for (auto [operand, scaleInv] :
         {std::pair{g.a, g.scaleInvA}, std::pair{g.b, g.scaleInvB}}) {
      auto cast = copyScale.find(row(operand));
      ASSERT_NE(cast, copyScale.end())
          << step.label << ": reads an FP8 copy no earlier cast wrote";
      EXPECT_TRUE(inverses.count(row(scaleInv))) << step.label;
      EXPECT_EQ(scaleInv.offset, 4 * cast->second.second)
          << step.label << ": unscales with another tensor's scale";
    }
  }
  EXPECT_EQ(gemms, 2 * 21);
  // Per layer the 7 weight blocks (q, k, v, o, gate, up, down) are cast in
  // the forward, one launch each.
  EXPECT_EQ(weightCasts, 2 * 7);
  EXPECT_GT(casts, weightCasts);
}

} // namespace
