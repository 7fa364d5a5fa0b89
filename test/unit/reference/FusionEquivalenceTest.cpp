//===- FusionEquivalenceTest.cpp - The fusions keep the train step --------===//
//
// A 2-layer Llama built by llamac::buildForwardModule in f64, differentiated
// with and without the fusions (each pass alone, then all three together):
// on the same random weights and tokens, the loss and every gradient must
// agree within 1e-10 (relative), the gradient of a concatenated parameter
// with the concatenation of the unfused gradients of its parts. The fused
// forward alone must give the same loss too, and the passes must actually
// have fused what they should. Packed sequences (position_ids) likewise.
//
//===----------------------------------------------------------------------===//

#include "TestUtils.h"

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Frontend/ModelBuilder.h"
#include "llamac/Transforms/Passes.h"

#include "mlir/Pass/PassManager.h"

#include <map>

using namespace mlir;
using namespace llamac;
using namespace llamac::reference;
using namespace llamac::reference::test;

namespace {

constexpr int64_t kBatch = 2, kSeq = 5;

/// GQA (4 query heads over 2 kv heads) with Llama 3.1 rope scaling whose
/// short original context puts frequencies in all three bands; untied.
LlamaConfig gqaLlama3Config() {
  LlamaConfig config;
  config.vocabSize = 32;
  config.hiddenSize = 32;
  config.intermediateSize = 40;
  config.numLayers = 2;
  config.numHeads = 4;
  config.numKvHeads = 2;
  config.headDim = 8;
  config.maxPositionEmbeddings = 64;
  config.rmsNormEps = 1e-5;
  config.ropeTheta = 500000;
  config.initializerRange = 0.02;
  config.rope.type = "llama3";
  config.rope.factor = 8;
  config.rope.lowFreqFactor = 1;
  config.rope.highFreqFactor = 4;
  config.rope.originalMaxPositionEmbeddings = 16;
  return config;
}

/// MQA (one kv head), default rope, tied embeddings.
LlamaConfig tiedMqaConfig() {
  LlamaConfig config = gqaLlama3Config();
  config.numKvHeads = 1;
  config.rope = RopeScaling();
  config.ropeTheta = 10000;
  config.tieWordEmbeddings = true;
  return config;
}

enum Fusion { GatedMLP = 1, NormLinear = 2, RopeAttention = 4 };

class FusionEquivalenceTest : public ReferenceTest {
protected:
  OwningOpRef<ModuleOp> build(const LlamaConfig &config) {
    return buildForwardModule(context, config,
                              {kBatch, kSeq, Precision::FP64, packed});
  }

  /// Runs the fusions in `fusions` (in the pipeline's order), then autodiff
  /// if `differentiate`.
  void runPasses(ModuleOp module, unsigned fusions, bool differentiate) {
    PassManager pm(&context);
    OpPassManager &funcPm = pm.nest<func::FuncOp>();
    if (fusions & GatedMLP)
      funcPm.addPass(llama::createLlamaFuseGatedMLPPass());
    if (fusions & NormLinear)
      funcPm.addPass(llama::createLlamaFuseNormLinearPass());
    if (fusions & RopeAttention)
      funcPm.addPass(llama::createLlamaFuseRopeAttentionPass());
    if (differentiate)
      funcPm.addPass(llama::createLlamaAutodiffPass());
    ASSERT_TRUE(succeeded(pm.run(module)));
  }

  static func::FuncOp step(ModuleOp module) {
    return module.lookupSymbol<func::FuncOp>(kTrainStepName);
  }

  /// Random Hugging Face tensors (norm weights near 1) and tokens.
  void randomize(const LlamaConfig &config) {
    hf.clear();
    for (const ParamSpec &spec : parameterSpecs(config))
      hf[spec.name] = llvm::StringRef(spec.name).ends_with("norm.weight")
                          ? random(spec.shape, 0.7, 1.3)
                          : random(spec.shape, -0.3, 0.3);
    ids = tokens(kBatch * kSeq, config.vocabSize);
    labels = tokens(kBatch * kSeq, config.vocabSize);
    labels.data[3] = -100;
    labels.data[7] = -100;
    // Data rows of 3 + 2 and 1 + 4 tokens (used when packed).
    positions = Tensor{{kBatch * kSeq}, {0, 1, 2, 0, 1, 0, 0, 1, 2, 3}};
  }

  /// The tensors of HF tensors `parts` concatenated along dimension 0.
  Tensor concatenated(const std::vector<std::string> &parts,
                      const std::map<std::string, Tensor> &tensors) {
    Tensor whole = tensors.at(parts.front());
    for (size_t i = 1; i < parts.size(); ++i) {
      const Tensor &part = tensors.at(parts[i]);
      whole.shape[0] += part.shape[0];
      whole.data.insert(whole.data.end(), part.data.begin(), part.data.end());
    }
    return whole;
  }

  /// The Hugging Face tensors parameter argument `index` holds.
  static std::vector<std::string> partsOf(func::FuncOp func, unsigned index) {
    std::vector<std::string> parts;
    if (auto list =
            func.getArgAttrOfType<ArrayAttr>(index, llama::kParamPartsAttr))
      for (Attribute part : list)
        parts.push_back(cast<StringAttr>(part).str());
    else
      parts.push_back(
          func.getArgAttrOfType<StringAttr>(index, llama::kParamAttr).str());
    return parts;
  }

  /// The arguments of `func`: parameters packed from `hf`, then the tokens.
  std::vector<Tensor> arguments(func::FuncOp func) {
    std::vector<Tensor> args;
    for (unsigned i = 0; i < func.getNumArguments(); ++i) {
      if (auto input =
              func.getArgAttrOfType<StringAttr>(i, llama::kInputAttr)) {
        args.push_back(input.getValue() == "input_ids" ? ids
                       : input.getValue() == "labels"  ? labels
                                                       : positions);
        continue;
      }
      args.push_back(concatenated(partsOf(func, i), hf));
    }
    return args;
  }

  /// Gradient results by parameter name.
  static std::map<std::string, Tensor>
  gradients(func::FuncOp func, const std::vector<Tensor> &results) {
    std::map<std::string, Tensor> grads;
    for (unsigned i = 0; i < func.getNumResults(); ++i)
      if (auto name = func.getResultAttrOfType<StringAttr>(i, llama::kGradAttr))
        grads[name.str()] = results[i];
    return grads;
  }

  static int64_t count(ModuleOp module, StringRef opName) {
    int64_t n = 0;
    module.walk(
        [&](Operation *op) { n += op->getName().getStringRef() == opName; });
    return n;
  }

  /// Compares the fused step with the unfused one on random inputs.
  void checkFusions(const LlamaConfig &config, unsigned fusions) {
    randomize(config);
    OwningOpRef<ModuleOp> reference = build(config);
    double forwardLoss =
        run(step(*reference), arguments(step(*reference)))[0].data[0];
    ASSERT_NO_FATAL_FAILURE(runPasses(*reference, 0, true));
    std::vector<Tensor> expected =
        run(step(*reference), arguments(step(*reference)));
    EXPECT_EQ(expected[0].data[0], forwardLoss);
    std::map<std::string, Tensor> expectedGrads =
        gradients(step(*reference), expected);

    // The fused forward alone, and what the passes did.
    OwningOpRef<ModuleOp> fused = build(config);
    ASSERT_NO_FATAL_FAILURE(runPasses(*fused, fusions, false));
    int64_t layers = config.numLayers;
    int64_t gatedMLPs = count(*fused, "llama.gated_mlp");
    int64_t normMatmuls = count(*fused, "llama.norm_matmul");
    EXPECT_EQ(gatedMLPs, fusions & GatedMLP ? layers : 0);
    // q/k/v per layer, the final norm with lm_head, and gate/up per layer
    // unless those went into a gated_mlp.
    EXPECT_EQ(normMatmuls, fusions & NormLinear
                               ? (fusions & GatedMLP ? 1 : 2) * layers + 1
                               : 0);
    EXPECT_EQ(count(*fused, "llama.rms_norm"),
              fusions & NormLinear ? 0 : 2 * layers + 1);
    EXPECT_EQ(count(*fused, "llama.rope_attention"),
              fusions & RopeAttention ? layers : 0);
    EXPECT_EQ(count(*fused, "llama.rope"),
              fusions & RopeAttention ? 0 : 2 * layers);
    func::FuncOp forward = step(*fused);
    double fusedForwardLoss = run(forward, arguments(forward))[0].data[0];
    EXPECT_LE(std::fabs(fusedForwardLoss - forwardLoss),
              1e-10 * std::fabs(forwardLoss));

    ASSERT_NO_FATAL_FAILURE(runPasses(*fused, 0, true));
    func::FuncOp fusedStep = step(*fused);
    std::vector<Tensor> results = run(fusedStep, arguments(fusedStep));
    EXPECT_LE(std::fabs(results[0].data[0] - forwardLoss),
              1e-10 * std::fabs(forwardLoss));
    std::map<std::string, Tensor> grads = gradients(fusedStep, results);

    // Every Hugging Face tensor is covered exactly once.
    size_t covered = 0;
    for (unsigned i = 0; i < fusedStep.getNumArguments(); ++i) {
      if (!fusedStep.getArgAttr(i, llama::kParamAttr))
        continue;
      std::string name =
          fusedStep.getArgAttrOfType<StringAttr>(i, llama::kParamAttr).str();
      std::vector<std::string> parts = partsOf(fusedStep, i);
      covered += parts.size();
      SCOPED_TRACE(name);
      ASSERT_TRUE(grads.count(name));
      Tensor want = concatenated(parts, expectedGrads);
      EXPECT_GT(maxAbs(want), 1e-8);
      EXPECT_LE(relativeError(grads[name], want), 1e-10);
    }
    EXPECT_EQ(covered, expectedGrads.size());
  }

  std::map<std::string, Tensor> hf;
  Tensor ids, labels, positions;
  /// Build packed steps (with position_ids).
  bool packed = false;
};

// The fused forward ops round every intermediate the unfused ops round and
// sum in the same order, so the forward is bit-identical in every precision.
TEST_F(FusionEquivalenceTest, FusedForwardIsBitIdenticalInF32AndBF16) {
  for (Precision precision : {Precision::FP32, Precision::BF16}) {
    for (const LlamaConfig &config : {gqaLlama3Config(), tiedMqaConfig()}) {
      SCOPED_TRACE(precisionName(precision).str() +
                   (config.tieWordEmbeddings ? " tied" : " untied"));
      randomize(config);
      StepShape shape{kBatch, kSeq, precision};
      OwningOpRef<ModuleOp> reference =
          buildForwardModule(context, config, shape);
      OwningOpRef<ModuleOp> fused = buildForwardModule(context, config, shape);
      ASSERT_NO_FATAL_FAILURE(
          runPasses(*fused, GatedMLP | NormLinear | RopeAttention, false));
      double want =
          run(step(*reference), arguments(step(*reference)))[0].data[0];
      double got = run(step(*fused), arguments(step(*fused)))[0].data[0];
      EXPECT_GT(want, 1.0);
      EXPECT_EQ(got, want);
    }
  }
}

TEST_F(FusionEquivalenceTest, GatedMLPAlone) {
  checkFusions(gqaLlama3Config(), GatedMLP);
  checkFusions(tiedMqaConfig(), GatedMLP);
}

TEST_F(FusionEquivalenceTest, NormLinearAlone) {
  checkFusions(gqaLlama3Config(), NormLinear);
  checkFusions(tiedMqaConfig(), NormLinear);
}

TEST_F(FusionEquivalenceTest, RopeAttentionAlone) {
  checkFusions(gqaLlama3Config(), RopeAttention);
  checkFusions(tiedMqaConfig(), RopeAttention);
}

TEST_F(FusionEquivalenceTest, AllFusionsGQALlama3) {
  checkFusions(gqaLlama3Config(), GatedMLP | NormLinear | RopeAttention);
}

TEST_F(FusionEquivalenceTest, AllFusionsTiedMQA) {
  checkFusions(tiedMqaConfig(), GatedMLP | NormLinear | RopeAttention);
}

TEST_F(FusionEquivalenceTest, PackedSequences) {
  packed = true;
  checkFusions(gqaLlama3Config(), RopeAttention);
  checkFusions(gqaLlama3Config(), GatedMLP | NormLinear | RopeAttention);
  checkFusions(tiedMqaConfig(), GatedMLP | NormLinear | RopeAttention);
}

} // namespace
