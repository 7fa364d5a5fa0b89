//===- Config.cpp - Hugging Face Llama config.json ------------------------===//
//
// Mirrors the defaults and checks of transformers' LlamaConfig, but rejects
// what llamac cannot run (biases, RoPE scalings other than llama3) instead of
// loading it and computing something else.
//
//===----------------------------------------------------------------------===//

#include "llamac/Frontend/Config.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

#include <charconv>
#include <cmath>
#include <functional>
#include <map>
#include <optional>

using namespace llvm;
using namespace llamac;

namespace {

/// Formats \p d like Python's repr(): shortest round-trip digits, and always
/// a decimal point or exponent so that Python reads a float back (transformers
/// checks isinstance(factor, float) for llama3 RoPE).
std::string formatFloat(double d) {
  char buffer[64];
  double magnitude = std::fabs(d);
  bool fixed = magnitude == 0 || (magnitude >= 1e-4 && magnitude < 1e16);
  std::to_chars_result result = std::to_chars(
      buffer, buffer + sizeof(buffer), d,
      fixed ? std::chars_format::fixed : std::chars_format::scientific);
  std::string text(buffer, result.ptr);
  if (fixed && text.find('.') == std::string::npos)
    text += ".0";
  return text;
}

/// The value of \p v if the file spelled it as an integer. llvm::json keeps
/// 4096 and 4096.0 apart internally but getAsInteger() accepts both;
/// getAsUINT64() accepts only integer tokens, which tells them apart for
/// non-negative values (negative ones are rejected as sizes either way).
std::optional<int64_t> getIntegerToken(const json::Value &v) {
  std::optional<int64_t> i = v.getAsInteger();
  if (i && (v.getAsUINT64() || *i < 0))
    return i;
  return std::nullopt;
}

/// \p v as it appears in messages: compact JSON, floats with their point.
std::string render(const json::Value &v) {
  if (v.kind() == json::Value::Number && !getIntegerToken(v))
    return formatFloat(*v.getAsNumber());
  return formatv("{0}", v).str();
}

/// Error sink shared by the readers of one file: keeps the first problem, as
/// one line naming the file and the field.
class Diagnostics {
public:
  explicit Diagnostics(StringRef file) : file(file) {}

  /// Records a problem with \p field unless an earlier one was recorded.
  void fail(const Twine &field, const Twine &problem) {
    if (first.empty())
      first = message(field, problem);
  }
  Error error(const Twine &field, const Twine &problem) const {
    return createStringError(message(field, problem));
  }
  bool ok() const { return first.empty(); }
  Error firstError() const { return createStringError(first); }

private:
  std::string message(const Twine &field, const Twine &problem) const {
    return (file + ": " + field + ": " + problem).str();
  }

  StringRef file;
  std::string first;
};

/// Typed reads of the members of one JSON object. A failed read records an
/// error and returns a placeholder, so that a config reads top to bottom and
/// the first problem is the one reported. JSON null counts as absent, as
/// transformers treats None as "use the default".
class Fields {
public:
  Fields(const json::Object &object, std::string prefix, Diagnostics &diag)
      : object(object), prefix(std::move(prefix)), diag(diag) {}

  bool has(StringRef key) const { return find(key); }

  void fail(StringRef key, const Twine &problem) {
    diag.fail(Twine(prefix) + key, problem);
  }
  Error error(StringRef key, const Twine &problem) const {
    return diag.error(Twine(prefix) + key, problem);
  }

  /// A positive integer; \p fallback when absent, an error when absent
  /// without one.
  int64_t positiveInt(StringRef key,
                      std::optional<int64_t> fallback = std::nullopt) {
    const json::Value *v = find(key);
    if (!v)
      return orMissing(key, fallback);
    std::optional<int64_t> i = getIntegerToken(*v);
    if (!i || *i <= 0) {
      fail(key, "expected a positive integer, got " + render(*v));
      return 1;
    }
    return *i;
  }

  /// A positive finite number, integer or float.
  double positiveNumber(StringRef key,
                        std::optional<double> fallback = std::nullopt) {
    const json::Value *v = find(key);
    if (!v)
      return orMissing(key, fallback);
    std::optional<double> d = v->getAsNumber();
    if (!d || !(*d > 0) || !std::isfinite(*d)) {
      fail(key, "expected a positive number, got " + render(*v));
      return 1;
    }
    return *d;
  }

  bool boolean(StringRef key, bool fallback) {
    const json::Value *v = find(key);
    if (!v)
      return fallback;
    std::optional<bool> b = v->getAsBoolean();
    if (!b)
      fail(key, "expected true or false, got " + render(*v));
    return b.value_or(fallback);
  }

  std::optional<std::string> string(StringRef key) {
    const json::Value *v = find(key);
    if (!v)
      return std::nullopt;
    std::optional<StringRef> s = v->getAsString();
    if (!s) {
      fail(key, "expected a string, got " + render(*v));
      return std::nullopt;
    }
    return s->str();
  }

  /// The object under \p key, or null when absent.
  const json::Object *optionalObject(StringRef key) {
    const json::Value *v = find(key);
    if (!v)
      return nullptr;
    const json::Object *o = v->getAsObject();
    if (!o)
      fail(key, "expected an object or null, got " + render(*v));
    return o;
  }

  /// The array under \p key, or null when absent.
  const json::Array *optionalArray(StringRef key) {
    const json::Value *v = find(key);
    if (!v)
      return nullptr;
    const json::Array *a = v->getAsArray();
    if (!a)
      fail(key, "expected an array, got " + render(*v));
    return a;
  }

  Diagnostics &diagnostics() { return diag; }

private:
  const json::Value *find(StringRef key) const {
    const json::Value *v = object.get(key);
    return v && v->kind() != json::Value::Null ? v : nullptr;
  }

  template <typename T> T orMissing(StringRef key, std::optional<T> fallback) {
    if (!fallback)
      fail(key, "missing");
    return fallback.value_or(1);
  }

  const json::Object &object;
  std::string prefix;
  Diagnostics &diag;
};

/// Rejects configs of other models and of Llama variants llamac does not
/// compute (biased projections, other activations).
void checkModelKind(Fields &top) {
  std::optional<std::string> modelType = top.string("model_type");
  if (modelType && *modelType != "llama")
    top.fail("model_type",
             "unsupported model type '" + *modelType + "' (supported: llama)");

  if (const json::Array *architectures = top.optionalArray("architectures")) {
    bool listsLlama = false;
    for (const json::Value &entry : *architectures) {
      std::optional<StringRef> name = entry.getAsString();
      if (!name)
        top.fail("architectures", "expected strings, got " + render(entry));
      else if (*name != "LlamaForCausalLM")
        top.fail("architectures", "unsupported architecture '" + *name +
                                      "' (supported: LlamaForCausalLM)");
      else
        listsLlama = true;
    }
    if (!listsLlama)
      top.fail("architectures", "does not list LlamaForCausalLM");
  }

  std::optional<std::string> act = top.string("hidden_act");
  if (act && *act != "silu")
    top.fail("hidden_act",
             "unsupported activation '" + *act + "' (supported: silu)");

  for (StringRef key : {"attention_bias", "mlp_bias"})
    if (top.boolean(key, false))
      top.fail(key, "true is not supported (llamac's projections have no "
                    "bias)");

  // pretraining_tp > 1 only makes transformers split each projection into
  // slices and sum their products: the same math, so it is not read.
}

/// Reads RoPE in either spelling: 4.x's top-level rope_theta + rope_scaling,
/// or 5.x's rope_parameters, which carries rope_theta itself. As in
/// transformers 5, a non-null rope_scaling wins over rope_parameters, a
/// rope_theta inside the object wins over the top-level one, and a missing
/// rope_type falls back to the legacy "type", then to "default".
void readRope(Fields &top, LlamaConfig &config) {
  config.ropeTheta = top.positiveNumber("rope_theta", 10000.0);
  config.rope = RopeScaling();
  StringRef objectKey = "rope_scaling";
  const json::Object *object = top.optionalObject(objectKey);
  if (!object) {
    objectKey = "rope_parameters";
    object = top.optionalObject(objectKey);
  }
  if (!object)
    return;

  Fields rope(*object, (objectKey + ".").str(), top.diagnostics());
  config.ropeTheta = rope.positiveNumber("rope_theta", config.ropeTheta);
  StringRef typeKey = rope.has("rope_type") ? "rope_type" : "type";
  std::string type = rope.string(typeKey).value_or("default");
  if (type == "default")
    return;
  if (type != "llama3") {
    rope.fail(typeKey, "unsupported rope type '" + type +
                           "' (supported: default, llama3)");
    return;
  }
  config.rope.type = type;
  config.rope.factor = rope.positiveNumber("factor");
  config.rope.lowFreqFactor = rope.positiveNumber("low_freq_factor");
  config.rope.highFreqFactor = rope.positiveNumber("high_freq_factor");
  config.rope.originalMaxPositionEmbeddings =
      rope.positiveInt("original_max_position_embeddings");
  // Llama 3's smoothing divides by (high - low): equal factors are invalid.
  if (config.rope.highFreqFactor <= config.rope.lowFreqFactor)
    rope.fail("high_freq_factor",
              formatv("{0} must be greater than low_freq_factor ({1})",
                      formatFloat(config.rope.highFreqFactor),
                      formatFloat(config.rope.lowFreqFactor)));
}

/// One member of a JSON object being written, deferred so that the members
/// can be written in key order.
using JsonWriter = std::function<void(json::OStream &)>;
/// Sorted by key, as transformers writes config.json (sort_keys=True).
using JsonMembers = std::map<std::string, JsonWriter>;

JsonWriter jsonValue(json::Value v) {
  return [v = std::move(v)](json::OStream &os) { os.value(v); };
}

JsonWriter jsonFloat(double d) {
  return [d](json::OStream &os) { os.rawValue(formatFloat(d)); };
}

JsonWriter jsonObject(JsonMembers members) {
  return [members = std::move(members)](json::OStream &os) {
    os.object([&] {
      for (const auto &[key, write] : members) {
        os.attributeBegin(key);
        write(os);
        os.attributeEnd();
      }
    });
  };
}

} // namespace

Expected<LlamaConfig> llamac::parseConfig(StringRef jsonText,
                                          StringRef fileName) {
  Diagnostics diag(fileName);
  Expected<json::Value> root = json::parse(jsonText);
  if (!root)
    return createStringError(fileName +
                             ": malformed JSON: " + toString(root.takeError()));
  const json::Object *object = root->getAsObject();
  if (!object)
    return createStringError(fileName +
                             ": expected a JSON object at the top level");

  Fields top(*object, "", diag);
  checkModelKind(top);
  LlamaConfig config;
  config.source = fileName.str();
  config.vocabSize = top.positiveInt("vocab_size");
  config.hiddenSize = top.positiveInt("hidden_size");
  config.intermediateSize = top.positiveInt("intermediate_size");
  config.numLayers = top.positiveInt("num_hidden_layers");
  config.numHeads = top.positiveInt("num_attention_heads");
  config.numKvHeads = top.positiveInt("num_key_value_heads", config.numHeads);
  bool explicitHeadDim = top.has("head_dim");
  if (explicitHeadDim)
    config.headDim = top.positiveInt("head_dim");
  config.maxPositionEmbeddings =
      top.positiveInt("max_position_embeddings", 2048);
  config.rmsNormEps = top.positiveNumber("rms_norm_eps", 1e-6);
  config.initializerRange = top.positiveNumber("initializer_range", 0.02);
  config.tieWordEmbeddings = top.boolean("tie_word_embeddings", false);
  // transformers 5 writes "dtype"; 4.x wrote "torch_dtype".
  std::optional<std::string> dtype = top.string("dtype");
  if (!dtype)
    dtype = top.string("torch_dtype");
  config.torchDtype = dtype.value_or("");
  readRope(top, config);
  if (!diag.ok())
    return diag.firstError();

  if (config.numHeads % config.numKvHeads != 0)
    return top.error("num_key_value_heads",
                     formatv("{0} does not divide num_attention_heads ({1})",
                             config.numKvHeads, config.numHeads));
  if (!explicitHeadDim) {
    if (config.hiddenSize % config.numHeads != 0)
      return top.error(
          "hidden_size",
          formatv("{0} is not divisible by num_attention_heads ({1}) and "
                  "head_dim is not given",
                  config.hiddenSize, config.numHeads));
    config.headDim = config.hiddenSize / config.numHeads;
  }
  // RoPE rotates pairs of dimensions.
  if (config.headDim % 2 != 0)
    return top.error(
        "head_dim",
        formatv("{0}{1} must be even for RoPE", config.headDim,
                explicitHeadDim ? "" : " (hidden_size / num_attention_heads)"));
  return config;
}

Expected<LlamaConfig> llamac::loadConfig(StringRef path) {
  SmallString<256> file(path);
  if (sys::fs::is_directory(path)) {
    sys::path::append(file, "config.json");
    if (!sys::fs::exists(file))
      return createStringError(path + ": no config.json in directory");
  }
  ErrorOr<std::unique_ptr<MemoryBuffer>> buffer =
      MemoryBuffer::getFile(file, /*IsText=*/true);
  if (!buffer)
    return createStringError(file.str() +
                             ": cannot read: " + buffer.getError().message());
  return parseConfig((*buffer)->getBuffer(), file);
}

std::string llamac::toHFConfigJson(const LlamaConfig &config) {
  JsonMembers members;
  members["architectures"] = jsonValue(json::Array{"LlamaForCausalLM"});
  members["attention_bias"] = jsonValue(false);
  members["head_dim"] = jsonValue(config.headDim);
  members["hidden_act"] = jsonValue("silu");
  members["hidden_size"] = jsonValue(config.hiddenSize);
  members["initializer_range"] = jsonFloat(config.initializerRange);
  members["intermediate_size"] = jsonValue(config.intermediateSize);
  members["max_position_embeddings"] = jsonValue(config.maxPositionEmbeddings);
  members["mlp_bias"] = jsonValue(false);
  members["model_type"] = jsonValue("llama");
  members["num_attention_heads"] = jsonValue(config.numHeads);
  members["num_hidden_layers"] = jsonValue(config.numLayers);
  members["num_key_value_heads"] = jsonValue(config.numKvHeads);
  members["rms_norm_eps"] = jsonFloat(config.rmsNormEps);
  members["rope_theta"] = jsonFloat(config.ropeTheta);
  members["tie_word_embeddings"] = jsonValue(config.tieWordEmbeddings);
  members["vocab_size"] = jsonValue(config.vocabSize);
  if (!config.torchDtype.empty())
    members["torch_dtype"] = jsonValue(config.torchDtype);
  if (config.rope.type == "llama3") {
    const RopeScaling &rope = config.rope;
    members["rope_scaling"] = jsonObject({
        {"factor", jsonFloat(rope.factor)},
        {"high_freq_factor", jsonFloat(rope.highFreqFactor)},
        {"low_freq_factor", jsonFloat(rope.lowFreqFactor)},
        {"original_max_position_embeddings",
         jsonValue(rope.originalMaxPositionEmbeddings)},
        {"rope_type", jsonValue("llama3")},
    });
  } else {
    members["rope_scaling"] = jsonValue(nullptr);
  }

  std::string text;
  raw_string_ostream os(text);
  json::OStream out(os, /*IndentSize=*/2);
  jsonObject(std::move(members))(out);
  os << "\n";
  return text;
}

LlamaConfig llamac::tinyLlamaConfig() {
  LlamaConfig config;
  config.vocabSize = 256;
  config.hiddenSize = 64;
  config.intermediateSize = 172;
  config.numLayers = 2;
  config.numHeads = 4;
  config.numKvHeads = 2;
  config.headDim = 16;
  config.maxPositionEmbeddings = 256;
  config.rmsNormEps = 1e-5;
  config.ropeTheta = 10000.0;
  config.initializerRange = 0.02;
  config.tieWordEmbeddings = false;
  config.source = "<built-in tiny config>";
  return config;
}

std::vector<ParamSpec> llamac::parameterSpecs(const LlamaConfig &config) {
  int64_t hidden = config.hiddenSize, inter = config.intermediateSize;
  int64_t qDim = config.numHeads * config.headDim;
  int64_t kvDim = config.numKvHeads * config.headDim;
  std::vector<ParamSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {config.vocabSize, hidden}});
  for (int64_t i = 0; i < config.numLayers; ++i) {
    std::string layer = "model.layers." + std::to_string(i) + ".";
    specs.push_back({layer + "self_attn.q_proj.weight", {qDim, hidden}});
    specs.push_back({layer + "self_attn.k_proj.weight", {kvDim, hidden}});
    specs.push_back({layer + "self_attn.v_proj.weight", {kvDim, hidden}});
    specs.push_back({layer + "self_attn.o_proj.weight", {hidden, qDim}});
    specs.push_back({layer + "mlp.gate_proj.weight", {inter, hidden}});
    specs.push_back({layer + "mlp.up_proj.weight", {inter, hidden}});
    specs.push_back({layer + "mlp.down_proj.weight", {hidden, inter}});
    specs.push_back({layer + "input_layernorm.weight", {hidden}});
    specs.push_back({layer + "post_attention_layernorm.weight", {hidden}});
  }
  specs.push_back({"model.norm.weight", {hidden}});
  if (!config.tieWordEmbeddings)
    specs.push_back({"lm_head.weight", {config.vocabSize, hidden}});
  return specs;
}
