//===- Config.h - Hugging Face Llama config.json ----------------*- C++ -*-===//
//
// Reads and writes the `config.json` of a Hugging Face Llama checkpoint,
// accepting both the transformers 4.x spelling (rope_theta + rope_scaling,
// torch_dtype) and the 5.x one (rope_parameters, dtype), and lists the
// parameter tensors of the model it describes in state-dict order.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_FRONTEND_CONFIG_H
#define LLAMAC_FRONTEND_CONFIG_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <string>
#include <vector>

namespace llamac {

/// RoPE frequency scaling: transformers' rope_scaling / rope_parameters.
struct RopeScaling {
  std::string type = "default"; // "default" or "llama3"
  double factor = 1.0, lowFreqFactor = 1.0, highFreqFactor = 4.0;
  int64_t originalMaxPositionEmbeddings = 8192;
};

/// The model a config.json describes, after defaults and validation.
struct LlamaConfig {
  int64_t vocabSize = 0, hiddenSize = 0, intermediateSize = 0, numLayers = 0,
          numHeads = 0, numKvHeads = 0, headDim = 0, maxPositionEmbeddings = 0;
  double rmsNormEps = 0, ropeTheta = 0, initializerRange = 0;
  RopeScaling rope;
  bool tieWordEmbeddings = false;
  std::string torchDtype; // as given, "" if absent
  std::string source;     // the file it came from, for messages
};

/// Parses and validates the text of a config.json. \p fileName is only used
/// in messages and recorded as LlamaConfig::source. Errors are one line of the
/// form "<fileName>: <field>: <problem>".
llvm::Expected<LlamaConfig> parseConfig(llvm::StringRef jsonText,
                                        llvm::StringRef fileName);

/// Reads \p path, which is either a config.json file or a model directory
/// holding one, and parses it with parseConfig.
llvm::Expected<LlamaConfig> loadConfig(llvm::StringRef path);

/// Renders \p config as a config.json that transformers' LlamaConfig (4.x and
/// 5.x) loads back to the same model: pretty-printed with sorted keys, as
/// transformers itself writes it, RoPE in the rope_theta + rope_scaling
/// spelling.
std::string toHFConfigJson(const LlamaConfig &config);

/// The built-in tiny model used by default runs: vocab 256, hidden 64,
/// intermediate 172, 2 layers, 4 heads over 2 KV heads (GQA), head_dim 16.
LlamaConfig tinyLlamaConfig();

/// One parameter tensor: its Hugging Face state-dict name and shape.
struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
};

/// The parameter tensors of \p config's model, named and ordered as in
/// transformers' LlamaForCausalLM state dict; lm_head.weight is left out when
/// the embeddings are tied.
std::vector<ParamSpec> parameterSpecs(const LlamaConfig &config);

} // namespace llamac

#endif // LLAMAC_FRONTEND_CONFIG_H
