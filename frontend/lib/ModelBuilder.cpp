//===- ModelBuilder.cpp - Builds the forward step as llama IR -------------===//
//
// Mirrors transformers' LlamaForCausalLM.forward with labels, one decoder
// layer after another, on token rows [T = batch * seq, width].
//
//===----------------------------------------------------------------------===//

#include "llamac/Frontend/ModelBuilder.h"

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Dialect/Llama/LlamaOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringMap.h"

#include <cmath>

using namespace mlir;
using namespace mlir::llama;

namespace llamac {

bool parsePrecision(llvm::StringRef text, Precision &precision) {
  if (text == "fp32")
    precision = Precision::FP32;
  else if (text == "bf16")
    precision = Precision::BF16;
  else if (text == "fp64")
    precision = Precision::FP64;
  else
    return false;
  return true;
}

llvm::StringRef precisionName(Precision precision) {
  switch (precision) {
  case Precision::FP32:
    return "fp32";
  case Precision::BF16:
    return "bf16";
  case Precision::FP64:
    return "fp64";
  }
  llvm_unreachable("unknown precision");
}

Type elementType(MLIRContext &context, Precision precision) {
  switch (precision) {
  case Precision::FP32:
    return Float32Type::get(&context);
  case Precision::BF16:
    return BFloat16Type::get(&context);
  case Precision::FP64:
    return Float64Type::get(&context);
  }
  llvm_unreachable("unknown precision");
}

namespace {

/// Emits the ops of one model into the body of @train_step.
class ForwardBuilder {
public:
  ForwardBuilder(OpBuilder &builder, const LlamaConfig &config,
                 const StepShape &shape, Type element,
                 const llvm::StringMap<Value> &params)
      : b(builder), config(config), shape(shape), element(element),
        params(params), tokens(shape.batch * shape.seq) {}

  /// `positions` is null unless the shape is packed.
  Value build(Value inputIds, Value labels, Value positions) {
    this->positions = positions;
    Value table = param("model.embed_tokens.weight");
    Value hidden = EmbeddingOp::create(
        b, at("model.embed_tokens"), rows(config.hiddenSize), table, inputIds);
    for (int64_t layer = 0; layer < config.numLayers; ++layer)
      hidden = decoderLayer(hidden, "model.layers." + std::to_string(layer));
    Value normed = rmsNorm(hidden, "model.norm");
    Value head = config.tieWordEmbeddings ? table : param("lm_head.weight");
    Value logits = linear(normed, head, "lm_head");
    // HF upcasts the logits and computes the loss in f32 (or wider).
    Type lossElement = element.isF64() ? element : b.getF32Type();
    return CrossEntropyOp::create(b, at("loss"),
                                  RankedTensorType::get({}, lossElement),
                                  logits, labels, shape.seq);
  }

private:
  Value decoderLayer(Value hidden, const std::string &prefix) {
    int64_t headDim = config.headDim;
    Value x = rmsNorm(hidden, prefix + ".input_layernorm");
    Value q = linear(x, prefix + ".self_attn.q_proj");
    Value k = linear(x, prefix + ".self_attn.k_proj");
    Value v = linear(x, prefix + ".self_attn.v_proj");
    q = rope(q, config.numHeads, prefix + ".self_attn.q_rope");
    k = rope(k, config.numKvHeads, prefix + ".self_attn.k_rope");
    Value attended = AttentionOp::create(
        b, at(prefix + ".self_attn.attention"), q.getType(), q, k, v, positions,
        config.numHeads, config.numKvHeads, headDim, shape.seq,
        llvm::APFloat(1.0 / std::sqrt(double(headDim))));
    Value projected = linear(attended, prefix + ".self_attn.o_proj");
    hidden = AddOp::create(b, at(prefix + ".attn_residual"), hidden.getType(),
                           hidden, projected);

    x = rmsNorm(hidden, prefix + ".post_attention_layernorm");
    Value gate = linear(x, prefix + ".mlp.gate_proj");
    Value up = linear(x, prefix + ".mlp.up_proj");
    Value activated = SwiGLUOp::create(b, at(prefix + ".mlp.act_fn"),
                                       gate.getType(), gate, up);
    Value down = linear(activated, prefix + ".mlp.down_proj");
    return AddOp::create(b, at(prefix + ".mlp_residual"), hidden.getType(),
                         hidden, down);
  }

  /// Each op is located at the name of the Hugging Face module it stands for
  /// (`model.layers.0.self_attn.q_proj`; RoPE, attention, SwiGLU and the
  /// residual adds get names of their own), so that passes and reports can
  /// say what went where.
  Location at(const std::string &module) {
    return NameLoc::get(b.getStringAttr(module));
  }

  /// HF Linear without bias: y = x Wᵀ with W : [out, in], the parameter
  /// `<module>.weight`.
  Value linear(Value x, const std::string &module) {
    return linear(x, param(module + ".weight"), module);
  }

  Value linear(Value x, Value weight, const std::string &module) {
    int64_t out = cast<RankedTensorType>(weight.getType()).getDimSize(0);
    return MatmulOp::create(b, at(module), rows(out), x, weight,
                            /*transpose_lhs=*/false, /*transpose_rhs=*/true);
  }

  /// LlamaRMSNorm `<module>` with the parameter `<module>.weight`.
  Value rmsNorm(Value x, const std::string &module) {
    return RMSNormOp::create(b, at(module), x.getType(), x,
                             param(module + ".weight"),
                             b.getF64FloatAttr(config.rmsNormEps));
  }

  Value rope(Value x, int64_t heads, const std::string &name) {
    const RopeScaling &scaling = config.rope;
    return RoPEOp::create(
        b, at(name), x.getType(), x, positions, heads, config.headDim,
        shape.seq, llvm::APFloat(config.ropeTheta), scaling.type,
        llvm::APFloat(scaling.factor), llvm::APFloat(scaling.lowFreqFactor),
        llvm::APFloat(scaling.highFreqFactor),
        scaling.originalMaxPositionEmbeddings, /*inverse=*/false);
  }

  RankedTensorType rows(int64_t width) {
    return RankedTensorType::get({tokens, width}, element);
  }

  Value param(const std::string &name) const {
    Value value = params.lookup(name);
    assert(value && "parameter list and model structure disagree");
    return value;
  }

  OpBuilder &b;
  const LlamaConfig &config;
  const StepShape &shape;
  Type element;
  const llvm::StringMap<Value> &params;
  int64_t tokens;
  Value positions;
};

} // namespace

OwningOpRef<ModuleOp> buildForwardModule(MLIRContext &context,
                                         const LlamaConfig &config,
                                         const StepShape &shape) {
  context.loadDialect<LlamaDialect, func::FuncDialect>();
  OpBuilder builder(&context);
  Location loc = builder.getUnknownLoc();
  OwningOpRef<ModuleOp> module = ModuleOp::create(loc);
  builder.setInsertionPointToEnd(module->getBody());

  Type element = elementType(context, shape.precision);
  std::vector<ParamSpec> specs = parameterSpecs(config);
  auto ids =
      RankedTensorType::get({shape.batch * shape.seq}, builder.getI32Type());
  SmallVector<Type> argTypes;
  SmallVector<DictionaryAttr> argAttrs;
  for (const ParamSpec &spec : specs) {
    argTypes.push_back(RankedTensorType::get(spec.shape, element));
    argAttrs.push_back(builder.getDictionaryAttr(
        builder.getNamedAttr(kParamAttr, builder.getStringAttr(spec.name))));
  }
  SmallVector<StringRef, 3> inputs{"input_ids", "labels"};
  if (shape.packed)
    inputs.push_back("position_ids");
  for (StringRef input : inputs) {
    argTypes.push_back(ids);
    argAttrs.push_back(builder.getDictionaryAttr(
        builder.getNamedAttr(kInputAttr, builder.getStringAttr(input))));
  }

  auto func = func::FuncOp::create(builder, loc, kTrainStepName,
                                   builder.getFunctionType(argTypes, {}));
  func.setAllArgAttrs(argAttrs);
  Block *body = func.addEntryBlock();
  builder.setInsertionPointToStart(body);

  llvm::StringMap<Value> params;
  for (auto [index, spec] : llvm::enumerate(specs))
    params[spec.name] = body->getArgument(index);
  ForwardBuilder forward(builder, config, shape, element, params);
  Value loss = forward.build(
      body->getArgument(specs.size()), body->getArgument(specs.size() + 1),
      shape.packed ? body->getArgument(specs.size() + 2) : Value());
  func::ReturnOp::create(builder, loc, loss);
  func.setType(builder.getFunctionType(argTypes, loss.getType()));
  func.setResultAttr(0, kLossAttr, builder.getUnitAttr());
  return module;
}

} // namespace llamac
