//===- TestUtils.h - Helpers of the reference interpreter tests -*- C++ -*-===//

#ifndef LLAMAC_TEST_UNIT_REFERENCE_TESTUTILS_H
#define LLAMAC_TEST_UNIT_REFERENCE_TESTUTILS_H

#include "llamac/Dialect/Llama/LlamaOps.h"
#include "llamac/Frontend/Config.h"
#include "llamac/Reference/Interpreter.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/OwningOpRef.h"
#include "mlir/Parser/Parser.h"
#include "llvm/Support/ErrorHandling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace llamac::reference::test {

/// A fixture with the dialects loaded, a seeded generator, and helpers that
/// stop the test binary with a clear message when parsing or interpretation
/// fails (both are bugs, never expected outcomes of these tests).
class ReferenceTest : public ::testing::Test {
protected:
  ReferenceTest() {
    context.loadDialect<mlir::llama::LlamaDialect, mlir::func::FuncDialect,
                        mlir::arith::ArithDialect>();
  }

  /// Parses a module; the fixture keeps it alive.
  mlir::ModuleOp parse(llvm::StringRef text) {
    mlir::OwningOpRef<mlir::ModuleOp> module =
        mlir::parseSourceString<mlir::ModuleOp>(text, &context);
    if (!module)
      llvm::report_fatal_error("test IR does not parse");
    modules.push_back(std::move(module));
    return modules.back().get();
  }

  /// Parses a module and returns its function `name`.
  mlir::func::FuncOp parseFunc(llvm::StringRef text,
                               llvm::StringRef name = "f") {
    auto func = parse(text).lookupSymbol<mlir::func::FuncOp>(name);
    if (!func)
      llvm::report_fatal_error("test IR has no function @" + name);
    return func;
  }

  /// Interprets `func`, stopping the test binary if it fails.
  std::vector<Tensor>
  run(mlir::func::FuncOp func, llvm::ArrayRef<Tensor> args,
      llvm::DenseMap<mlir::Value, Tensor> *observed = nullptr) {
    llvm::Expected<std::vector<Tensor>> results =
        interpret(func, args, observed);
    if (!results)
      llvm::report_fatal_error(llvm::Twine("interpretation failed: ") +
                               llvm::toString(results.takeError()));
    return std::move(*results);
  }

  /// Uniform values in [lo, hi).
  Tensor random(std::vector<int64_t> shape, double lo = -1, double hi = 1) {
    Tensor tensor = Tensor::zeros(std::move(shape));
    std::uniform_real_distribution<double> uniform(lo, hi);
    for (double &x : tensor.data)
      x = uniform(rng);
    return tensor;
  }

  /// Uniform token ids in [0, limit).
  Tensor tokens(int64_t count, int64_t limit) {
    Tensor tensor = Tensor::zeros({count});
    std::uniform_int_distribution<int64_t> uniform(0, limit - 1);
    for (double &x : tensor.data)
      x = double(uniform(rng));
    return tensor;
  }

  mlir::MLIRContext context;
  std::vector<mlir::OwningOpRef<mlir::ModuleOp>> modules;
  std::mt19937 rng{20261128};
};

inline double maxAbs(const Tensor &tensor) {
  double result = 0;
  for (double x : tensor.data)
    result = std::max(result, std::fabs(x));
  return result;
}

/// max |got - want| / max |want|; infinite when the shapes differ.
inline double relativeError(const Tensor &got, const Tensor &want) {
  if (got.shape != want.shape || got.data.size() != want.data.size())
    return INFINITY;
  double diff = 0;
  for (size_t i = 0; i < got.data.size(); ++i)
    diff = std::max(diff, std::fabs(got.data[i] - want.data[i]));
  return diff / std::max(maxAbs(want), 1e-300);
}

/// Central differences (f(x + h e_i) - f(x - h e_i)) / 2h of a scalar
/// function of `args` with respect to every element of args[index].
inline Tensor
centralDifference(const std::function<double(llvm::ArrayRef<Tensor>)> &f,
                  std::vector<Tensor> args, size_t index, double h = 1e-5) {
  Tensor gradient = Tensor::zeros(args[index].shape);
  for (size_t i = 0; i < gradient.data.size(); ++i) {
    double saved = args[index].data[i];
    args[index].data[i] = saved + h;
    double plus = f(args);
    args[index].data[i] = saved - h;
    double minus = f(args);
    args[index].data[i] = saved;
    gradient.data[i] = (plus - minus) / (2 * h);
  }
  return gradient;
}

/// sum_i a_i b_i.
inline double dot(const Tensor &a, const Tensor &b) {
  double sum = 0;
  for (size_t i = 0; i < a.data.size(); ++i)
    sum += a.data[i] * b.data[i];
  return sum;
}

/// Checks the VJP of the one differentiable op of @f against central
/// differences of the function's results paired with random cotangents, at
/// `inputs` (one per argument of @f, each an operand of the op). @f returns
/// some or all results of the op; the others get no cotangent. Token (i32)
/// operands must get no cotangent, every other operand one.
class VJPTestBase : public ReferenceTest {
protected:
  void checkVJP(llvm::StringRef text, std::vector<Tensor> inputs) {
    mlir::func::FuncOp forward = parseFunc(text);
    mlir::func::FuncOp vjp = forward.clone();
    vjp.setSymName("vjp");
    forward->getParentOfType<mlir::ModuleOp>().push_back(vjp);

    mlir::llama::VJPOpInterface op;
    vjp.walk([&](mlir::llama::VJPOpInterface found) { op = found; });
    ASSERT_TRUE(op);
    mlir::Block &body = vjp.getBody().front();
    auto ret = mlir::cast<mlir::func::ReturnOp>(body.getTerminator());
    llvm::SmallVector<mlir::Value> resultCotangents(op->getNumResults(),
                                                    nullptr);
    for (mlir::Value returned : ret.getOperands()) {
      auto result = mlir::dyn_cast<mlir::OpResult>(returned);
      ASSERT_TRUE(result && result.getOwner() == op.getOperation());
      ASSERT_TRUE(mlir::succeeded(vjp.insertArgument(
          vjp.getNumArguments(), returned.getType(), {}, vjp.getLoc())));
      resultCotangents[result.getResultNumber()] = vjp.getArguments().back();
    }
    mlir::OpBuilder builder(ret);
    llvm::SmallVector<mlir::Value> operandCotangents =
        op.buildVJP(builder, resultCotangents);
    ASSERT_EQ(operandCotangents.size(), op->getNumOperands());
    llvm::SmallVector<mlir::Value> results;
    llvm::SmallVector<unsigned> argIndices;
    for (auto [operand, cotangent] :
         llvm::zip(op->getOperands(), operandCotangents)) {
      bool isToken = mlir::cast<mlir::ShapedType>(operand.getType())
                         .getElementType()
                         .isInteger(32);
      EXPECT_EQ(cotangent == nullptr, isToken);
      if (!cotangent)
        continue;
      results.push_back(cotangent);
      argIndices.push_back(
          mlir::cast<mlir::BlockArgument>(operand).getArgNumber());
    }
    mlir::func::ReturnOp::create(builder, ret.getLoc(), results);
    ret.erase();
    vjp.setType(builder.getFunctionType(vjp.getArgumentTypes(),
                                        mlir::ValueRange(results).getTypes()));

    std::vector<Tensor> outputs = run(forward, inputs);
    std::vector<Tensor> cotangents;
    std::vector<Tensor> vjpArgs = inputs;
    for (const Tensor &output : outputs) {
      cotangents.push_back(random(output.shape));
      vjpArgs.push_back(cotangents.back());
    }
    std::vector<Tensor> grads = run(vjp, vjpArgs);
    ASSERT_EQ(grads.size(), argIndices.size());

    auto pairing = [&](llvm::ArrayRef<Tensor> args) {
      std::vector<Tensor> values = run(forward, args);
      double sum = 0;
      for (size_t i = 0; i < values.size(); ++i)
        sum += dot(cotangents[i], values[i]);
      return sum;
    };
    for (auto [grad, argIndex] : llvm::zip(grads, argIndices)) {
      SCOPED_TRACE("operand from argument " + std::to_string(argIndex));
      Tensor expected = centralDifference(pairing, inputs, argIndex);
      EXPECT_GT(maxAbs(expected), 1e-3);
      EXPECT_LE(relativeError(grad, expected), 1e-6);
    }
  }
};

/// GQA (4 query heads over 2 kv heads) with Llama 3.1 rope scaling whose
/// short original context puts frequencies in all three bands; untied.
inline LlamaConfig gqaLlama3Config() {
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

} // namespace llamac::reference::test

#endif // LLAMAC_TEST_UNIT_REFERENCE_TESTUTILS_H
