//===- PassEquivalenceTest.cpp - Autodiff and AdamW keep the semantics ----===//
//
// A one-layer Llama (GQA attention, SwiGLU MLP, shifted loss) in f64: the
// loss must be unchanged by --llama-autodiff and --llama-adamw, every
// gradient must match central differences of the whole function, and
// @optimizer_step must give the global gradient norm and parameters one
// AdamW step from those gradients, clipped as torch's clip_grad_norm_.
//
//===----------------------------------------------------------------------===//

#include "TestUtils.h"

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Transforms/Passes.h"

#include "mlir/Pass/PassManager.h"

#include <map>

using namespace mlir;
using namespace llamac::reference;
using namespace llamac::reference::test;

namespace {

// Vocabulary 16, hidden 16, 4 query and 2 kv heads of dim 4, MLP width 24,
// 2 sequences of 4 tokens.
constexpr int64_t kVocab = 16, kHidden = 16, kTokens = 8;

/// The forward step; with `tied`, lm_head is the embedding table.
std::string modelText(bool tied) {
  std::string lmHead = tied ? "%embed" : "%lm_head";
  std::string lmHeadArg =
      tied ? ""
           : "    %lm_head: tensor<16x16xf64> {llama.param = "
             "\"lm_head.weight\"},\n";
  return R"mlir(
  func.func @step(
    %embed: tensor<16x16xf64> {llama.param = "model.embed_tokens.weight"},
    %ln1: tensor<16xf64> {llama.param = "model.layers.0.input_layernorm.weight"},
    %wq: tensor<16x16xf64> {llama.param = "model.layers.0.self_attn.q_proj.weight"},
    %wk: tensor<8x16xf64> {llama.param = "model.layers.0.self_attn.k_proj.weight"},
    %wv: tensor<8x16xf64> {llama.param = "model.layers.0.self_attn.v_proj.weight"},
    %wo: tensor<16x16xf64> {llama.param = "model.layers.0.self_attn.o_proj.weight"},
    %ln2: tensor<16xf64> {llama.param = "model.layers.0.post_attention_layernorm.weight"},
    %wg: tensor<24x16xf64> {llama.param = "model.layers.0.mlp.gate_proj.weight"},
    %wu: tensor<24x16xf64> {llama.param = "model.layers.0.mlp.up_proj.weight"},
    %wd: tensor<16x24xf64> {llama.param = "model.layers.0.mlp.down_proj.weight"},
    %lnf: tensor<16xf64> {llama.param = "model.norm.weight"},
)mlir" + lmHeadArg +
         R"mlir(    %ids: tensor<8xi32> {llama.input = "input_ids"},
    %labels: tensor<8xi32> {llama.input = "labels"}) -> tensor<f64> {
    %x = llama.embedding %embed, %ids : (tensor<16x16xf64>, tensor<8xi32>) -> tensor<8x16xf64>
    %n1 = llama.rms_norm %x, %ln1 {eps = 1.0e-5 : f64} : (tensor<8x16xf64>, tensor<16xf64>) -> tensor<8x16xf64>
    %q = llama.matmul %n1, %wq {transpose_rhs = true} : (tensor<8x16xf64>, tensor<16x16xf64>) -> tensor<8x16xf64>
    %k = llama.matmul %n1, %wk {transpose_rhs = true} : (tensor<8x16xf64>, tensor<8x16xf64>) -> tensor<8x8xf64>
    %v = llama.matmul %n1, %wv {transpose_rhs = true} : (tensor<8x16xf64>, tensor<8x16xf64>) -> tensor<8x8xf64>
    %qr = llama.rope %q {num_heads = 4 : i64, head_dim = 4 : i64, seq_len = 4 : i64, theta = 10000.0 : f64} : (tensor<8x16xf64>) -> tensor<8x16xf64>
    %kr = llama.rope %k {num_heads = 2 : i64, head_dim = 4 : i64, seq_len = 4 : i64, theta = 10000.0 : f64} : (tensor<8x8xf64>) -> tensor<8x8xf64>
    %a = llama.attention %qr, %kr, %v {num_heads = 4 : i64, num_kv_heads = 2 : i64, head_dim = 4 : i64, seq_len = 4 : i64, scale = 0.5 : f64} : (tensor<8x16xf64>, tensor<8x8xf64>, tensor<8x8xf64>) -> tensor<8x16xf64>
    %o = llama.matmul %a, %wo {transpose_rhs = true} : (tensor<8x16xf64>, tensor<16x16xf64>) -> tensor<8x16xf64>
    %h = llama.add %x, %o : (tensor<8x16xf64>, tensor<8x16xf64>) -> tensor<8x16xf64>
    %n2 = llama.rms_norm %h, %ln2 {eps = 1.0e-5 : f64} : (tensor<8x16xf64>, tensor<16xf64>) -> tensor<8x16xf64>
    %g = llama.matmul %n2, %wg {transpose_rhs = true} : (tensor<8x16xf64>, tensor<24x16xf64>) -> tensor<8x24xf64>
    %u = llama.matmul %n2, %wu {transpose_rhs = true} : (tensor<8x16xf64>, tensor<24x16xf64>) -> tensor<8x24xf64>
    %s = llama.swiglu %g, %u : (tensor<8x24xf64>, tensor<8x24xf64>) -> tensor<8x24xf64>
    %d = llama.matmul %s, %wd {transpose_rhs = true} : (tensor<8x24xf64>, tensor<16x24xf64>) -> tensor<8x16xf64>
    %h2 = llama.add %h, %d : (tensor<8x16xf64>, tensor<8x16xf64>) -> tensor<8x16xf64>
    %nf = llama.rms_norm %h2, %lnf {eps = 1.0e-5 : f64} : (tensor<8x16xf64>, tensor<16xf64>) -> tensor<8x16xf64>
    %logits = llama.matmul %nf, )mlir" +
         lmHead +
         R"mlir( {transpose_rhs = true} : (tensor<8x16xf64>, tensor<16x16xf64>) -> tensor<8x16xf64>
    %loss = llama.cross_entropy %logits, %labels {seq_len = 4 : i64} : (tensor<8x16xf64>, tensor<8xi32>) -> tensor<f64>
    return %loss : tensor<f64>
  })mlir";
}

/// Hyperparameters of the AdamW check, as the f32 values the step receives.
const std::map<std::string, double> kHyperparameters = {
    {"lr", double(0.01f)},          {"beta1", double(0.9f)},
    {"beta2", double(0.999f)},      {"eps", double(1e-8f)},
    {"weight_decay", double(0.1f)}, {"step", 3.0},
    {"max_grad_norm", 0.0}};

class PassEquivalenceTest : public ReferenceTest {
protected:
  /// Random parameters (norm weights near 1), ids and labels with ignored
  /// positions, in the order of @step's arguments.
  std::vector<Tensor> randomArguments(func::FuncOp func) {
    std::vector<Tensor> args;
    for (BlockArgument arg : func.getArguments()) {
      auto shape = cast<RankedTensorType>(arg.getType()).getShape();
      std::vector<int64_t> dims(shape.begin(), shape.end());
      auto input = func.getArgAttrOfType<StringAttr>(arg.getArgNumber(),
                                                     llama::kInputAttr);
      if (!input) {
        args.push_back(dims.size() == 1 ? random(dims, 0.7, 1.3)
                                        : random(dims, -0.5, 0.5));
        continue;
      }
      args.push_back(tokens(kTokens, kVocab));
      if (input.getValue() == "labels") {
        args.back().data[2] = -100;
        args.back().data[5] = -100;
      }
    }
    return args;
  }

  /// Runs one pass over `module` (a function pass: over every function).
  void runPass(ModuleOp module, std::unique_ptr<Pass> pass) {
    PassManager pm(&context);
    if (pass->getOpName() == ModuleOp::getOperationName())
      pm.addPass(std::move(pass));
    else
      pm.addNestedPass<func::FuncOp>(std::move(pass));
    ASSERT_TRUE(succeeded(pm.run(module)));
  }

  /// Maps the string value of result attribute `attr` to the result.
  static std::map<std::string, Tensor>
  resultsNamed(func::FuncOp func, const std::vector<Tensor> &results,
               StringRef attr) {
    std::map<std::string, Tensor> named;
    for (unsigned i = 0; i < func.getNumResults(); ++i)
      if (auto name = func.getResultAttrOfType<StringAttr>(i, attr))
        named[name.str()] = results[i];
    return named;
  }

  /// Checks autodiff then AdamW on the model.
  void checkPasses(bool tied) {
    // The passes rewrite @step in place; a second parse keeps the forward.
    ModuleOp module = parse(modelText(tied));
    auto step = module.lookupSymbol<func::FuncOp>("step");
    func::FuncOp forward = parseFunc(modelText(tied), "step");
    std::vector<Tensor> args = randomArguments(step);
    double loss = run(forward, args)[0].data[0];
    EXPECT_GT(loss, 1.0);

    // Autodiff: the loss is bit-identical, gradients match the whole
    // function's central differences.
    ASSERT_NO_FATAL_FAILURE(runPass(module, llama::createLlamaAutodiffPass()));
    std::vector<Tensor> results = run(step, args);
    ASSERT_EQ(step.getNumResults(), 1 + args.size() - 2);
    EXPECT_TRUE(step.getResultAttr(0, llama::kLossAttr));
    EXPECT_EQ(results[0].data[0], loss);
    std::map<std::string, Tensor> grads =
        resultsNamed(step, results, llama::kGradAttr);
    ASSERT_EQ(grads.size(), args.size() - 2);
    auto lossOf = [&](ArrayRef<Tensor> perturbed) {
      return run(forward, perturbed)[0].data[0];
    };
    std::map<std::string, Tensor> params;
    for (unsigned i = 0; i < step.getNumArguments(); ++i) {
      auto name = step.getArgAttrOfType<StringAttr>(i, llama::kParamAttr);
      if (!name)
        continue;
      SCOPED_TRACE(name.str());
      params[name.str()] = args[i];
      Tensor expected = centralDifference(lossOf, args, i);
      EXPECT_GT(maxAbs(expected), 1e-4);
      EXPECT_LE(relativeError(grads[name.str()], expected), 1e-6);
    }

    // AdamW: the differentiated function becomes @forward_backward with the
    // same results, and @optimizer_step appears beside it.
    ASSERT_NO_FATAL_FAILURE(runPass(module, llama::createLlamaAdamWPass()));
    EXPECT_EQ(step.getSymName(), llama::kForwardBackwardName);
    std::vector<Tensor> again = run(step, args);
    ASSERT_EQ(again.size(), results.size());
    for (size_t i = 0; i < again.size(); ++i)
      EXPECT_EQ(again[i].data, results[i].data) << "result " << i;
    auto optimizer =
        module.lookupSymbol<func::FuncOp>(llama::kOptimizerStepName);
    ASSERT_TRUE(optimizer);

    // The global norm of the gradients, computed independently.
    double sumSquares = 0;
    for (auto &[name, grad] : grads)
      for (double g : grad.data)
        sumSquares += g * g;
    double norm = std::sqrt(sumSquares);
    EXPECT_GT(norm, 0.1);

    // Clipping off, then a limit of half the norm (which clips), as the f32
    // value the step receives.
    for (double maxNorm : {0.0, double(float(0.5 * norm))}) {
      SCOPED_TRACE("max_grad_norm " + std::to_string(maxNorm));
      std::map<std::string, Tensor> expAvgs, expAvgSqs;
      std::vector<Tensor> stepArgs;
      for (unsigned i = 0; i < optimizer.getNumArguments(); ++i) {
        auto attr = [&](StringRef name) {
          return optimizer.getArgAttrOfType<StringAttr>(i, name);
        };
        if (auto name = attr(llama::kParamAttr)) {
          stepArgs.push_back(params.at(name.str()));
        } else if (auto name = attr(llama::kGradAttr)) {
          stepArgs.push_back(grads.at(name.str()));
        } else if (auto name = attr(llama::kExpAvgAttr)) {
          stepArgs.push_back(expAvgs[name.str()] =
                                 random(params[name.str()].shape));
        } else if (auto name = attr(llama::kExpAvgSqAttr)) {
          stepArgs.push_back(expAvgSqs[name.str()] =
                                 random(params[name.str()].shape, 0, 1e-2));
        } else {
          auto hyper = attr(llama::kHyperparameterAttr);
          ASSERT_TRUE(hyper);
          stepArgs.push_back(
              Tensor::scalar(hyper.getValue() == "max_grad_norm"
                                 ? maxNorm
                                 : kHyperparameters.at(hyper.str())));
        }
      }
      ASSERT_EQ(expAvgs.size(), params.size());
      ASSERT_EQ(expAvgSqs.size(), params.size());
      std::vector<Tensor> updated = run(optimizer, stepArgs);
      ASSERT_TRUE(optimizer.getResultAttr(0, llama::kGradNormAttr));
      EXPECT_NEAR(updated[0].data[0], norm, 1e-13 * norm);
      std::map<std::string, Tensor> newParams =
          resultsNamed(optimizer, updated, llama::kNewParamAttr);
      std::map<std::string, Tensor> newExpAvgs =
          resultsNamed(optimizer, updated, llama::kNewExpAvgAttr);
      std::map<std::string, Tensor> newExpAvgSqs =
          resultsNamed(optimizer, updated, llama::kNewExpAvgSqAttr);
      ASSERT_EQ(newParams.size(), params.size());
      ASSERT_EQ(newExpAvgs.size(), params.size());
      ASSERT_EQ(newExpAvgSqs.size(), params.size());
      // torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1.
      double coef = maxNorm > 0 ? std::min(maxNorm / (norm + 1e-6), 1.0) : 1;
      if (maxNorm > 0)
        EXPECT_LT(coef, 0.51);
      const auto &h = kHyperparameters;
      double lr = h.at("lr"), beta1 = h.at("beta1"), beta2 = h.at("beta2");
      double t = h.at("step");
      for (auto &[name, param] : params) {
        SCOPED_TRACE(name);
        Tensor expected = param, expectedM = param, expectedV = param;
        for (size_t i = 0; i < expected.data.size(); ++i) {
          double g = grads[name].data[i] * coef;
          double m = beta1 * expAvgs[name].data[i] + (1 - beta1) * g;
          double v = beta2 * expAvgSqs[name].data[i] + (1 - beta2) * g * g;
          double mHat = m / (1 - std::pow(beta1, t));
          double vHat = v / (1 - std::pow(beta2, t));
          expected.data[i] = param.data[i] * (1 - lr * h.at("weight_decay")) -
                             lr * mHat / (std::sqrt(vHat) + h.at("eps"));
          expectedM.data[i] = m;
          expectedV.data[i] = v;
        }
        EXPECT_LE(relativeError(newParams[name], expected), 1e-12);
        EXPECT_LE(relativeError(newExpAvgs[name], expectedM), 1e-13);
        EXPECT_LE(relativeError(newExpAvgSqs[name], expectedV), 1e-13);
        EXPECT_GT(relativeError(newParams[name], param), 1e-4);
      }
    }
  }
};

TEST_F(PassEquivalenceTest, AutodiffAndAdamWPreserveTheStep) {
  checkPasses(/*tied=*/false);
}

TEST_F(PassEquivalenceTest, TiedEmbeddingGradientSumsBothUses) {
  checkPasses(/*tied=*/true);
}

} // namespace
