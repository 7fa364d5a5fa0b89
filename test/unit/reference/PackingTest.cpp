//===- PackingTest.cpp - Packed rows train as if they ran apart ----------===//
//
// Two data rows packed into one sequence by the runtime's packer (--pack:
// position_ids restart at 0, attention stays within each row, no loss across
// the boundary) must train exactly as the same rows in two sequences of their
// own: the whole f32 train step (@forward_backward of the llamac pipeline,
// with and without the fusions) gives every real token the same logits, and
// the step the same loss and gradients up to f32 reassociation.
//
//===----------------------------------------------------------------------===//

#include "TestUtils.h"

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Frontend/ModelBuilder.h"
#include "llamac/Pipeline/Pipeline.h"
#include "llamac/Runtime/DataOrder.h"

#include "mlir/Pass/PassManager.h"

#include <map>

using namespace mlir;
using namespace llamac;
using namespace llamac::reference;
using namespace llamac::reference::test;

namespace {

constexpr int64_t kSeq = 16;

/// The fusion tests' GQA config with llama3 rope scaling, with a larger
/// vocabulary.
LlamaConfig config() {
  LlamaConfig c = gqaLlama3Config();
  c.vocabSize = 40;
  return c;
}

class PackingTest : public ReferenceTest {
protected:
  /// @forward_backward of the f32 train step for `shape`.
  func::FuncOp trainStep(const StepShape &shape, bool fuse) {
    OwningOpRef<ModuleOp> module = buildForwardModule(context, config(), shape);
    PassManager pm(&context);
    llama::TrainStepPipelineOptions options;
    options.fuseGatedMLP = options.fuseNormLinear = options.fuseRopeAttention =
        fuse;
    llama::buildTrainStepPipeline(pm, options);
    if (failed(pm.run(*module)))
      llvm::report_fatal_error("the train-step pipeline failed");
    modules.push_back(std::move(module));
    return modules.back()->lookupSymbol<func::FuncOp>(
        llama::kForwardBackwardName);
  }

  struct StepResult {
    double loss;
    Tensor logits;
    std::map<std::string, Tensor> grads;
  };

  /// Runs `step` on `batch` with the parameters in `params`; observes the
  /// logits the loss reads.
  StepResult run(func::FuncOp step, const Batch &batch) {
    auto tokenTensor = [](const std::vector<int32_t> &values) {
      Tensor tensor = Tensor::zeros({int64_t(values.size())});
      std::copy(values.begin(), values.end(), tensor.data.begin());
      return tensor;
    };
    std::vector<Tensor> args;
    for (unsigned i = 0; i < step.getNumArguments(); ++i) {
      if (auto input =
              step.getArgAttrOfType<StringAttr>(i, llama::kInputAttr)) {
        StringRef name = input.getValue();
        args.push_back(tokenTensor(name == "input_ids" ? batch.inputIds
                                   : name == "labels"  ? batch.labels
                                                       : batch.positionIds));
        continue;
      }
      auto name = step.getArgAttrOfType<StringAttr>(i, llama::kParamAttr);
      auto type = cast<RankedTensorType>(step.getArgument(i).getType());
      auto [entry, added] = params.try_emplace(name.str());
      if (added)
        entry->second =
            random({type.getShape().begin(), type.getShape().end()}, -0.3, 0.3);
      args.push_back(entry->second);
    }
    Value logits;
    step.walk([&](llama::CrossEntropyOp op) { logits = op.getLogits(); });
    llvm::DenseMap<Value, Tensor> observed;
    observed[logits] = Tensor();
    std::vector<Tensor> results = ReferenceTest::run(step, args, &observed);
    StepResult out{results[0].data[0], observed[logits], {}};
    for (unsigned i = 0; i < step.getNumResults(); ++i)
      if (auto name = step.getResultAttrOfType<StringAttr>(i, llama::kGradAttr))
        out.grads[name.str()] = results[i];
    return out;
  }

  /// Two rows (6 and 7 tokens; the second with a masked prompt) packed
  /// into one sequence of 16 and, apart, into two.
  void checkPackedEqualsApart(bool fuse) {
    std::vector<TokenRow> rows(2);
    std::uniform_int_distribution<int32_t> id(0,
                                              int32_t(config().vocabSize) - 1);
    for (int length : {6, 7}) {
      TokenRow &row = rows[length - 6];
      for (int i = 0; i < length; ++i)
        row.inputIds.push_back(id(rng));
      row.labels = row.inputIds;
    }
    rows[1].labels[1] = rows[1].labels[2] = kIgnoreLabel;
    RowSampler sampler(2, /*shuffle=*/false, /*seed=*/0);
    Batch packed = packBatch(rows, sampler, 1, kSeq);
    ASSERT_EQ(sampler.position(), 2);
    Batch apart = gatherBatch(rows, {0, 1}, kSeq);
    ASSERT_EQ(countLossTokens(packed), countLossTokens(apart));

    StepShape packedShape{1, kSeq, Precision::FP32, /*packed=*/true};
    StepShape apartShape{2, kSeq, Precision::FP32};
    func::FuncOp packedStep = trainStep(packedShape, fuse);
    func::FuncOp apartStep = trainStep(apartShape, fuse);
    StepResult got = run(packedStep, packed);
    StepResult want = run(apartStep, apart);

    // Every real token sees the same rows at the same positions, in the
    // same order: its logits are the same bits.
    const int64_t vocab = config().vocabSize;
    for (auto [row, packedStart] : {std::pair{0, 0}, std::pair{1, 6}})
      for (size_t p = 0; p < rows[row].inputIds.size(); ++p)
        for (int64_t v = 0; v < vocab; ++v)
          ASSERT_EQ(got.logits.data[(packedStart + p) * vocab + v],
                    want.logits.data[(row * kSeq + p) * vocab + v])
              << "row " << row << ", token " << p << ", logit " << v;

    // The loss and gradients sum the same per-token terms over rows laid
    // out differently: each is a sum of at most 2 * 16 f32 terms per
    // element, reassociated, so within 32 u_f32 (2e-6) of the magnitude of
    // its terms; 1e-5 of the largest gradient of a tensor leaves room for
    // the terms' cancellation.
    EXPECT_GT(want.loss, 1.0);
    EXPECT_NEAR(got.loss, want.loss, 1e-6 * want.loss);
    ASSERT_EQ(got.grads.size(), want.grads.size());
    for (const auto &[name, grad] : want.grads) {
      SCOPED_TRACE(name);
      EXPECT_GT(maxAbs(grad), 0);
      EXPECT_LE(relativeError(got.grads.at(name), grad), 1e-5);
    }
  }

  std::map<std::string, Tensor> params;
};

TEST_F(PackingTest, PackedRowsTrainAsApartFused) {
  checkPackedEqualsApart(/*fuse=*/true);
}

TEST_F(PackingTest, PackedRowsTrainAsApartUnfused) {
  checkPackedEqualsApart(/*fuse=*/false);
}

} // namespace
