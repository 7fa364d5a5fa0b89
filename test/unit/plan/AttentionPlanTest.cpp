//===- AttentionPlanTest.cpp - The attention forward and backward plan ----===//
//
// On the tiny model's package (batch 2 x seq 32, 4 heads): each
// rope_attention's softmax writes P (bf16) into an activation that stays
// untouched by every other step until its gradient's softmax backward,
// which reads it and dP (an f32 scratch buffer) and writes dS over it; the
// dV GEMM reads P before, the dQ and dK GEMMs read dS after. The backward
// recomputes neither the scores nor the softmax: its only attention GEMMs
// are dP, dV, dQ and dK.
// What the kernels compute is checked on the GPU (test/gpu).
//
//===----------------------------------------------------------------------===//

#include "TinyPackage.h"

#include <map>

using namespace llamac;
using namespace llamac::test;
using package::Step;

namespace {

bool startsWith(const std::string &text, const std::string &prefix) {
  return text.rfind(prefix, 0) == 0;
}

bool endsWith(const std::string &text, const std::string &suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// The operands of a step.
std::vector<package::Operand> operandsOf(const Step &step) {
  if (step.kind == Step::Kind::Launch)
    return step.launch.args;
  if (step.kind == Step::Kind::Gemm)
    return {step.gemm.a, step.gemm.b, step.gemm.c, step.gemm.d};
  return {step.memset.dst};
}

/// True when buffers `a` and `b` share arena bytes.
bool overlap(const package::Buffer &a, const package::Buffer &b) {
  return a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
}

TEST(AttentionPlan, BackwardReusesTheForwardsProbabilities) {
  package::Package p = buildTinyPackage(false, false);
  const package::Function *step = p.function("forward_backward");
  ASSERT_NE(step, nullptr);
  const std::vector<Step> &steps = step->steps;
  const LlamaConfig config = tinyLlamaConfig();
  const uint64_t blocks = 2 * uint64_t(config.numHeads), seq = 32;

  // Index of each forward softmax, by its P buffer.
  std::map<int, size_t> forwardOf;
  size_t backwards = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].kind != Step::Kind::Launch)
      continue;
    const package::Launch &launch = steps[i].launch;
    if (startsWith(launch.kernel, "causal_softmax_fwd_")) {
      ASSERT_EQ(launch.args.size(), 2u) << launch.kernel;
      const package::Buffer &P = target(p, launch.args[1]);
      EXPECT_EQ(P.role, "activation");
      EXPECT_EQ(P.type, package::ElementType::BF16);
      EXPECT_EQ(P.bytes, blocks * seq * seq * 2);
      EXPECT_TRUE(forwardOf.emplace(launch.args[1].buffer, i).second);
      continue;
    }
    if (!startsWith(launch.kernel, "attention_softmax_bwd_"))
      continue;
    ++backwards;
    ASSERT_EQ(launch.args.size(), 2u) << launch.kernel;
    auto found = forwardOf.find(launch.args[0].buffer);
    ASSERT_NE(found, forwardOf.end()) << "dS is not written over a forward P";
    const package::Launch &forward = steps[found->second].launch;
    const package::Buffer &P = p.buffers[forward.args[1].buffer];
    const package::Buffer &dP = target(p, launch.args[1]);
    EXPECT_EQ(dP.role, "scratch");
    EXPECT_EQ(dP.type, package::ElementType::F32);
    EXPECT_EQ(dP.bytes, blocks * seq * seq * 4);
    EXPECT_FALSE(overlap(P, dP));

    // Between the two softmaxes nothing else touches P's bytes.
    for (size_t k = found->second + 1; k < i; ++k)
      for (const package::Operand &operand : operandsOf(steps[k]))
        if (operand.buffer >= 0 && operand.buffer != forward.args[1].buffer)
          EXPECT_FALSE(overlap(P, target(p, operand)))
              << steps[k].label << " touches " << P.name;

    // dV reads P before; dQ and dK read dS after, from the same buffer.
    int dv = 0, dqk = 0;
    for (size_t k = found->second + 1; k < steps.size(); ++k) {
      if (steps[k].kind != Step::Kind::Gemm)
        continue;
      bool reads = steps[k].gemm.a.buffer == launch.args[0].buffer;
      if (endsWith(steps[k].label, "(dV)") && reads)
        dv += k < i;
      if ((endsWith(steps[k].label, "(dQ)") ||
           endsWith(steps[k].label, "(dK)")) &&
          reads)
        dqk += k > i;
    }
    EXPECT_EQ(dv, 1);
    EXPECT_EQ(dqk, 2);
  }
  // One forward softmax and one scores GEMM per layer: the backward
  // recomputes neither.
  EXPECT_EQ(forwardOf.size(), size_t(config.numLayers));
  EXPECT_EQ(backwards, size_t(config.numLayers));
  size_t scoreGemms = 0;
  for (const Step &s : steps)
    scoreGemms += s.kind == Step::Kind::Gemm && endsWith(s.label, "(scores)");
  EXPECT_EQ(scoreGemms, size_t(config.numLayers));
}

} // namespace
