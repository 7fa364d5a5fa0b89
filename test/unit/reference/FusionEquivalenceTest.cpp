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
// With FP8 (llama-insert-fp8 after autodiff) the fused and unfused steps
// quantize the same tensors with the same scales, so they must carry the
// same state and agree as well, over two steps of delayed scaling and with
// current scaling (tolerances at the tests).
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
  /// if `differentiate`, then llama-insert-fp8 if `fp8`.
  void runPasses(ModuleOp module, unsigned fusions, bool differentiate,
                 const llama::LlamaInsertFP8Options *fp8 = nullptr) {
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
    if (fp8)
      funcPm.addPass(llama::createLlamaInsertFP8Pass(*fp8));
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

  /// The arguments of `func`: parameters packed from `hf`, the tokens, and
  /// FP8 state from `fp8State` (by attribute and id; zero histories and unit
  /// scales where it has none, as a run starts).
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
      if (std::optional<std::string> key = stateKey(func.getArgAttrDict(i))) {
        auto found = fp8State.find(*key);
        auto type = cast<RankedTensorType>(func.getArgument(i).getType());
        args.push_back(found != fp8State.end() ? found->second
                       : type.getRank()        ? Tensor::zeros(type.getShape())
                                               : Tensor::scalar(1.0));
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

  /// "history:<id>" or "scale:<id>" for an FP8 state argument or result.
  static std::optional<std::string> stateKey(DictionaryAttr attrs) {
    static const std::pair<StringRef, StringRef> kinds[] = {
        {llama::kFP8AmaxHistoryAttr, "history:"},
        {llama::kNewFP8AmaxHistoryAttr, "history:"},
        {llama::kFP8ScaleAttr, "scale:"},
        {llama::kNewFP8ScaleAttr, "scale:"}};
    for (auto [attr, prefix] : kinds)
      if (auto id = attrs ? attrs.getAs<StringAttr>(attr) : nullptr)
        return (prefix + id.getValue()).str();
    return std::nullopt;
  }

  /// The updated FP8 state among a step's results, by key.
  static std::map<std::string, Tensor>
  newState(func::FuncOp func, const std::vector<Tensor> &results) {
    std::map<std::string, Tensor> state;
    for (unsigned i = 0; i < func.getNumResults(); ++i)
      if (std::optional<std::string> key = stateKey(func.getResultAttrDict(i)))
        state[*key] = results[i];
    return state;
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

  /// Compares one FP8 step with all fusions against the unfused one (with
  /// delayed scaling for two steps, the second from the unfused run's
  /// updated state): the loss
  /// exactly (the forward quantizes and sums as unfused), every gradient
  /// and the updated FP8 state within `tolerance`. Returns the fused
  /// step's first loss.
  double checkFP8(const LlamaConfig &config, Precision precision,
                  const llama::LlamaInsertFP8Options &fp8, double tolerance) {
    randomize(config);
    fp8State.clear();
    StepShape shape{kBatch, kSeq, precision};
    OwningOpRef<ModuleOp> reference =
        buildForwardModule(context, config, shape);
    OwningOpRef<ModuleOp> fused = buildForwardModule(context, config, shape);
    runPasses(*reference, 0, true, &fp8);
    runPasses(*fused, GatedMLP | NormLinear | RopeAttention, true, &fp8);
    func::FuncOp want = step(*reference), got = step(*fused);
    // The passes kept the fusions, and every quantized tensor of the
    // unfused step is quantized in the fused one.
    EXPECT_EQ(count(*fused, "llama.norm_matmul"), config.numLayers + 1);
    EXPECT_EQ(count(*fused, "llama.gated_mlp"), config.numLayers);
    double firstLoss = 0;
    int steps = fp8.scaling == "delayed" ? 2 : 1;
    for (int stepIndex = 1; stepIndex <= steps; ++stepIndex) {
      SCOPED_TRACE("step " + std::to_string(stepIndex));
      std::vector<Tensor> expected = run(want, arguments(want));
      std::vector<Tensor> results = run(got, arguments(got));
      EXPECT_EQ(results[0].data[0], expected[0].data[0]);
      if (stepIndex == 1)
        firstLoss = results[0].data[0];
      std::map<std::string, Tensor> expectedGrads = gradients(want, expected);
      std::map<std::string, Tensor> grads = gradients(got, results);
      for (unsigned i = 0; i < got.getNumArguments(); ++i) {
        auto name = got.getArgAttrOfType<StringAttr>(i, llama::kParamAttr);
        if (!name)
          continue;
        SCOPED_TRACE(name.str());
        Tensor wantGrad = concatenated(partsOf(got, i), expectedGrads);
        EXPECT_GT(maxAbs(wantGrad), 1e-8);
        EXPECT_LE(relativeError(grads[name.str()], wantGrad), tolerance);
      }
      std::map<std::string, Tensor> expectedState = newState(want, expected);
      std::map<std::string, Tensor> state = newState(got, results);
      EXPECT_EQ(state.size(), expectedState.size());
      for (auto &[key, value] : expectedState) {
        SCOPED_TRACE(key);
        EXPECT_TRUE(state.count(key));
        EXPECT_LE(relativeError(state[key], value), tolerance);
      }
      fp8State = std::move(expectedState);
    }
    return firstLoss;
  }

  std::map<std::string, Tensor> hf;
  Tensor ids, labels, positions;
  std::map<std::string, Tensor> fp8State;
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

// FP8 with the fusions: the same quantization points, so in f64 the fused
// step differs from the unfused one only by the order of the sums in the
// fused dgrad GEMMs (q/k/v and gate/up data gradients summed in one GEMM
// instead of by adds), about 1e-16 relative, grown by a few layers of
// backward: 1e-10 as for the unquantized fusions. Those differences reach
// FP8 casts (of the earlier layers' gradients), which are unaffected unless
// a value falls within them of a rounding boundary of the f32 product
// x * scale: about 1e-9 per element, never among these few thousand (a flip
// would cost 2^-4..2^-3 of an element, far above 1e-10). The forward is
// bit-identical.
TEST_F(FusionEquivalenceTest, FP8DelayedScalingFusedEqualsUnfusedInF64) {
  llama::LlamaInsertFP8Options fp8;
  fp8.amaxHistory = 4;
  for (const LlamaConfig &config : {gqaLlama3Config(), tiedMqaConfig()}) {
    SCOPED_TRACE(config.tieWordEmbeddings ? "tied" : "untied");
    double fp8Loss = checkFP8(config, Precision::FP64, fp8, 1e-10);
    // The GEMMs did run in FP8: the loss is not the unquantized one.
    OwningOpRef<ModuleOp> plain =
        buildForwardModule(context, config, {kBatch, kSeq, Precision::FP64});
    EXPECT_NE(run(step(*plain), arguments(step(*plain)))[0].data[0], fp8Loss);
  }
}

TEST_F(FusionEquivalenceTest, FP8CurrentScalingFusedEqualsUnfusedInF64) {
  llama::LlamaInsertFP8Options fp8;
  fp8.scaling = "current";
  fp8.margin = 1;
  checkFP8(gqaLlama3Config(), Precision::FP64, fp8, 1e-10);
}

// In f32 the unfused step also rounds each projection's data gradient and
// their sum to f32 (2^-24 relative each) where the fused GEMM sums in one
// go. Without an FP8 rounding flip that stays below 1e-6 after the
// backward; a flip needs an element within one f32 ulp of a boundary,
// about 2^-21 per element (the f32 ulp over the FP8 spacing), and would
// show as ~1e-2. 1e-5 tells the two apart.
TEST_F(FusionEquivalenceTest, FP8DelayedScalingFusedEqualsUnfusedInF32) {
  llama::LlamaInsertFP8Options fp8;
  fp8.amaxHistory = 4;
  checkFP8(gqaLlama3Config(), Precision::FP32, fp8, 1e-5);
}

// The delayed-scaling state a fused step carries, after three steps, against
// Transformer Engine's rule applied here to amaxes computed directly from the
// inputs: a block of the fused QKV weight (k_proj), one of the fused gate/up
// weight (up_proj), and layer 0's normalized input, which exists only inside
// the fused norm_matmul. The weights are scaled by 1, 3 and 0.5 in the three
// steps, so that the history's max is not the latest amax. In f64 the fused
// op normalizes exactly as computed here; amaxes are rounded to f32.
TEST_F(FusionEquivalenceTest, FP8StateOfFusedStepAfterThreeSteps) {
  LlamaConfig config = gqaLlama3Config();
  randomize(config);
  fp8State.clear();
  llama::LlamaInsertFP8Options fp8;
  fp8.amaxHistory = 4;
  fp8.margin = 1;
  OwningOpRef<ModuleOp> fused =
      buildForwardModule(context, config, {kBatch, kSeq, Precision::FP64});
  runPasses(*fused, GatedMLP | NormLinear | RopeAttention, true, &fp8);
  func::FuncOp fusedStep = step(*fused);

  auto amaxOf = [](const std::vector<double> &values) {
    double amax = 0;
    for (double v : values)
      amax = std::max(amax, std::fabs(v));
    return double(float(amax));
  };
  // Layer 0's normalized input: rms_norm(embedding rows) in f64.
  auto normalizedInputAmax = [&] {
    const Tensor &table = hf["model.embed_tokens.weight"];
    const Tensor &weight = hf["model.layers.0.input_layernorm.weight"];
    int64_t width = config.hiddenSize;
    std::vector<double> normed;
    for (double id : ids.data) {
      const double *row = &table.data[int64_t(id) * width];
      double sumSquares = 0;
      for (int64_t i = 0; i < width; ++i)
        sumSquares += row[i] * row[i];
      double r = 1 / std::sqrt(sumSquares / double(width) + config.rmsNormEps);
      for (int64_t i = 0; i < width; ++i)
        normed.push_back(weight.data[i] * (row[i] * r));
    }
    return amaxOf(normed);
  };
  const std::map<std::string, std::function<double()>> tracked = {
      {"model.layers.0.self_attn.k_proj.weight",
       [&] {
         return amaxOf(hf["model.layers.0.self_attn.k_proj.weight"].data);
       }},
      {"model.layers.1.mlp.up_proj.weight",
       [&] { return amaxOf(hf["model.layers.1.mlp.up_proj.weight"].data); }},
      {"model.layers.0.self_attn.q_proj.input", normalizedInputAmax}};

  std::map<std::string, Tensor> original = hf;
  std::map<std::string, std::vector<double>> amaxes;
  for (double factor : {1.0, 3.0, 0.5}) {
    for (auto &[name, tensor] : hf)
      if (!llvm::StringRef(name).ends_with("norm.weight"))
        for (size_t i = 0; i < tensor.data.size(); ++i)
          tensor.data[i] = factor * original.at(name).data[i];
    for (auto &[id, amax] : tracked)
      amaxes[id].push_back(amax());
    fp8State = newState(fusedStep, run(fusedStep, arguments(fusedStep)));
  }
  for (auto &[id, measured] : amaxes) {
    SCOPED_TRACE(id);
    ASSERT_GT(measured[0], 0);
    // Newest first, the oldest entry still zero.
    EXPECT_EQ(fp8State["history:" + id].data,
              (std::vector<double>{measured[2], measured[1], measured[0], 0}));
    double max = std::max({measured[0], measured[1], measured[2]});
    EXPECT_EQ(fp8State["scale:" + id].data[0], double(float(448.0 / max / 2)));
  }
}

TEST_F(FusionEquivalenceTest, PackedSequences) {
  packed = true;
  checkFusions(gqaLlama3Config(), RopeAttention);
  checkFusions(gqaLlama3Config(), GatedMLP | NormLinear | RopeAttention);
  checkFusions(tiedMqaConfig(), GatedMLP | NormLinear | RopeAttention);
}

} // namespace
