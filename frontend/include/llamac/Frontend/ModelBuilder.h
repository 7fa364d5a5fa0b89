//===- ModelBuilder.h - Builds the forward step as llama IR -----*- C++ -*-===//

#ifndef LLAMAC_FRONTEND_MODELBUILDER_H
#define LLAMAC_FRONTEND_MODELBUILDER_H

#include "llamac/Frontend/Config.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

namespace llamac {

/// Storage type of parameters and activations in the step.
enum class Precision { FP32, BF16, FP64 };

/// Parses "fp32", "bf16" or "fp64"; returns false on anything else.
bool parsePrecision(llvm::StringRef text, Precision &precision);
llvm::StringRef precisionName(Precision precision);
mlir::Type elementType(mlir::MLIRContext &context, Precision precision);

struct StepShape {
  int64_t batch = 8;
  int64_t seq = 256;
  Precision precision = Precision::FP32;
  /// Sequences hold packed data rows: the step takes `position_ids` (each
  /// token's position within its data row), which RoPE and attention use.
  bool packed = false;
};

/// Name of the train-step function in every module llamac builds.
constexpr llvm::StringLiteral kTrainStepName = "train_step";

/// Builds `func.func @train_step(params..., input_ids, labels) -> loss`: the
/// forward pass of LlamaForCausalLM and its shifted causal-LM loss, with every
/// argument named by its Hugging Face parameter name (`llama.param`) or input
/// (`llama.input`). A packed shape adds a third input, `position_ids`, as
/// LlamaForCausalLM.forward takes it. Autodiff and the optimizer are added by
/// passes.
mlir::OwningOpRef<mlir::ModuleOp> buildForwardModule(mlir::MLIRContext &context,
                                                     const LlamaConfig &config,
                                                     const StepShape &shape);

} // namespace llamac

#endif // LLAMAC_FRONTEND_MODELBUILDER_H
