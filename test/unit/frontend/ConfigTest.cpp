//===- ConfigTest.cpp - config.json parsing, writing, parameter specs -----===//

#include "llamac/Frontend/Config.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/SmallString.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

#include "gtest/gtest.h"

#include <utility>

using namespace llvm;
using namespace llamac;

namespace {

constexpr const char *kFile = "cfg/config.json";

std::string configPath(StringRef name) {
  SmallString<256> path(LLAMAC_TEST_CONFIGS_DIR);
  sys::path::append(path, name);
  return path.str().str();
}

std::string readText(StringRef path) {
  ErrorOr<std::unique_ptr<MemoryBuffer>> buffer = MemoryBuffer::getFile(path);
  if (!buffer) {
    ADD_FAILURE() << path.str() << ": " << buffer.getError().message();
    return "";
  }
  return (*buffer)->getBuffer().str();
}

/// The config, or a test failure carrying the error message.
LlamaConfig mustParse(StringRef text, StringRef file = kFile) {
  Expected<LlamaConfig> config = parseConfig(text, file);
  if (!config) {
    ADD_FAILURE() << toString(config.takeError());
    return {};
  }
  return *config;
}

LlamaConfig mustLoad(StringRef name) {
  Expected<LlamaConfig> config = loadConfig(configPath(name));
  if (!config) {
    ADD_FAILURE() << toString(config.takeError());
    return {};
  }
  return *config;
}

/// Compares everything that defines the model (not where it came from).
void expectSameModel(const LlamaConfig &a, const LlamaConfig &b) {
  EXPECT_EQ(a.vocabSize, b.vocabSize);
  EXPECT_EQ(a.hiddenSize, b.hiddenSize);
  EXPECT_EQ(a.intermediateSize, b.intermediateSize);
  EXPECT_EQ(a.numLayers, b.numLayers);
  EXPECT_EQ(a.numHeads, b.numHeads);
  EXPECT_EQ(a.numKvHeads, b.numKvHeads);
  EXPECT_EQ(a.headDim, b.headDim);
  EXPECT_EQ(a.maxPositionEmbeddings, b.maxPositionEmbeddings);
  EXPECT_EQ(a.rmsNormEps, b.rmsNormEps);
  EXPECT_EQ(a.ropeTheta, b.ropeTheta);
  EXPECT_EQ(a.initializerRange, b.initializerRange);
  EXPECT_EQ(a.rope.type, b.rope.type);
  EXPECT_EQ(a.rope.factor, b.rope.factor);
  EXPECT_EQ(a.rope.lowFreqFactor, b.rope.lowFreqFactor);
  EXPECT_EQ(a.rope.highFreqFactor, b.rope.highFreqFactor);
  EXPECT_EQ(a.rope.originalMaxPositionEmbeddings,
            b.rope.originalMaxPositionEmbeddings);
  EXPECT_EQ(a.tieWordEmbeddings, b.tieWordEmbeddings);
  EXPECT_EQ(a.torchDtype, b.torchDtype);
}

/// A small valid config; each member is raw JSON text so that tests can
/// write spellings a json::Value would normalize away, such as 4096.0.
std::vector<std::pair<std::string, std::string>> baseFields() {
  return {{"architectures", R"(["LlamaForCausalLM"])"},
          {"model_type", R"("llama")"},
          {"hidden_act", R"("silu")"},
          {"vocab_size", "32000"},
          {"hidden_size", "4096"},
          {"intermediate_size", "11008"},
          {"num_hidden_layers", "32"},
          {"num_attention_heads", "32"},
          {"num_key_value_heads", "8"}};
}

/// The base config with each edit applied: a member set to raw JSON, or
/// removed when the text is empty.
std::string
configWith(std::initializer_list<std::pair<std::string, std::string>> edits) {
  std::vector<std::pair<std::string, std::string>> fields = baseFields();
  for (const auto &[key, value] : edits) {
    llvm::erase_if(fields, [&](const auto &f) { return f.first == key; });
    if (!value.empty())
      fields.emplace_back(key, value);
  }
  std::string text = "{\n";
  for (const auto &[key, value] : fields)
    text += "  \"" + key + "\": " + value + ",\n";
  text.resize(text.size() - 2); // the last comma
  return text + "\n}\n";
}

/// The message parseConfig gives for \p text, or "" when it parses.
std::string errorFor(StringRef text) {
  Expected<LlamaConfig> config = parseConfig(text, kFile);
  if (config)
    return "";
  return toString(config.takeError());
}

/// Checks that \p text is rejected with one line "cfg/config.json: <field>:
/// ..." that contains \p detail.
void expectError(StringRef text, StringRef field, StringRef detail) {
  std::string message = errorFor(text);
  std::string prefix = std::string(kFile) + ": " + field.str() + ": ";
  EXPECT_EQ(message.rfind(prefix, 0), 0u) << message;
  EXPECT_NE(message.find(detail), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

const char *const kRealConfigs[] = {"llama-2-7b.json",   "llama-2-13b.json",
                                    "llama-2-70b.json",  "llama-3-8b.json",
                                    "llama-3-70b.json",  "llama-3.1-8b.json",
                                    "llama-3.2-1b.json", "tinyllama-1.1b.json"};

//===----------------------------------------------------------------------===//
// Published configs
//===----------------------------------------------------------------------===//

TEST(RealConfigs, EveryFileInTheFolderParses) {
  std::error_code ec;
  int count = 0;
  for (sys::fs::recursive_directory_iterator it(LLAMAC_TEST_CONFIGS_DIR, ec),
       end;
       it != end && !ec; it.increment(ec)) {
    if (sys::path::extension(it->path()) != ".json")
      continue;
    SCOPED_TRACE(it->path());
    Expected<LlamaConfig> config = loadConfig(it->path());
    EXPECT_TRUE(bool(config)) << toString(config.takeError());
    ++count;
  }
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(count, 8 + 4); // published, and re-saved by transformers 5
}

TEST(RealConfigs, Llama2_7B) {
  LlamaConfig c = mustLoad("llama-2-7b.json");
  EXPECT_EQ(c.vocabSize, 32000);
  EXPECT_EQ(c.hiddenSize, 4096);
  EXPECT_EQ(c.intermediateSize, 11008);
  EXPECT_EQ(c.numLayers, 32);
  EXPECT_EQ(c.numHeads, 32);
  EXPECT_EQ(c.numKvHeads, 32); // MHA
  EXPECT_EQ(c.headDim, 128);
  EXPECT_EQ(c.maxPositionEmbeddings, 4096);
  EXPECT_EQ(c.rmsNormEps, 1e-5);
  EXPECT_EQ(c.ropeTheta, 10000.0);
  EXPECT_EQ(c.initializerRange, 0.02);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_FALSE(c.tieWordEmbeddings);
  EXPECT_EQ(c.torchDtype, "float16");
  EXPECT_EQ(c.source, configPath("llama-2-7b.json"));
}

TEST(RealConfigs, Llama2_13B) {
  LlamaConfig c = mustLoad("llama-2-13b.json");
  EXPECT_EQ(c.hiddenSize, 5120);
  EXPECT_EQ(c.intermediateSize, 13824);
  EXPECT_EQ(c.numLayers, 40);
  EXPECT_EQ(c.numHeads, 40);
  EXPECT_EQ(c.numKvHeads, 40);
  EXPECT_EQ(c.headDim, 128);
}

TEST(RealConfigs, Llama2_70B) {
  LlamaConfig c = mustLoad("llama-2-70b.json");
  EXPECT_EQ(c.hiddenSize, 8192);
  EXPECT_EQ(c.intermediateSize, 28672);
  EXPECT_EQ(c.numLayers, 80);
  EXPECT_EQ(c.numHeads, 64);
  EXPECT_EQ(c.numKvHeads, 8); // GQA
  EXPECT_EQ(c.headDim, 128);
  EXPECT_EQ(c.ropeTheta, 10000.0);
}

TEST(RealConfigs, Llama3_8B) {
  LlamaConfig c = mustLoad("llama-3-8b.json");
  EXPECT_EQ(c.vocabSize, 128256);
  EXPECT_EQ(c.intermediateSize, 14336);
  EXPECT_EQ(c.numKvHeads, 8);
  EXPECT_EQ(c.maxPositionEmbeddings, 8192);
  EXPECT_EQ(c.ropeTheta, 500000.0);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.torchDtype, "bfloat16");
}

TEST(RealConfigs, Llama3_70B) {
  LlamaConfig c = mustLoad("llama-3-70b.json");
  EXPECT_EQ(c.vocabSize, 128256);
  EXPECT_EQ(c.hiddenSize, 8192);
  EXPECT_EQ(c.numLayers, 80);
  EXPECT_EQ(c.numHeads, 64);
  EXPECT_EQ(c.numKvHeads, 8);
  EXPECT_EQ(c.ropeTheta, 500000.0);
}

TEST(RealConfigs, Llama31_8B) {
  LlamaConfig c = mustLoad("llama-3.1-8b.json");
  EXPECT_EQ(c.numHeads, 32);
  EXPECT_EQ(c.numKvHeads, 8);
  EXPECT_EQ(c.headDim, 128);
  EXPECT_EQ(c.maxPositionEmbeddings, 131072);
  EXPECT_EQ(c.ropeTheta, 500000.0);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.rope.lowFreqFactor, 1.0);
  EXPECT_EQ(c.rope.highFreqFactor, 4.0);
  EXPECT_EQ(c.rope.originalMaxPositionEmbeddings, 8192);
  EXPECT_FALSE(c.tieWordEmbeddings);
}

TEST(RealConfigs, Llama32_1B) {
  LlamaConfig c = mustLoad("llama-3.2-1b.json");
  EXPECT_EQ(c.hiddenSize, 2048);
  EXPECT_EQ(c.intermediateSize, 8192);
  EXPECT_EQ(c.numLayers, 16);
  EXPECT_EQ(c.numHeads, 32);
  EXPECT_EQ(c.numKvHeads, 8);
  EXPECT_EQ(c.headDim, 64);
  EXPECT_TRUE(c.tieWordEmbeddings);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_EQ(c.rope.factor, 32.0);
}

TEST(RealConfigs, TinyLlama_1_1B) {
  LlamaConfig c = mustLoad("tinyllama-1.1b.json");
  EXPECT_EQ(c.vocabSize, 32000);
  EXPECT_EQ(c.hiddenSize, 2048);
  EXPECT_EQ(c.intermediateSize, 5632);
  EXPECT_EQ(c.numLayers, 22);
  EXPECT_EQ(c.numKvHeads, 4);
  EXPECT_EQ(c.headDim, 64);
  EXPECT_EQ(c.maxPositionEmbeddings, 2048);
  EXPECT_EQ(c.torchDtype, "float32");
}

//===----------------------------------------------------------------------===//
// Defaults and accepted variants
//===----------------------------------------------------------------------===//

TEST(ParseConfig, DefaultsMatchTransformers) {
  LlamaConfig c = mustParse(configWith({{"num_key_value_heads", ""},
                                        {"architectures", ""},
                                        {"model_type", ""},
                                        {"hidden_act", ""}}));
  EXPECT_EQ(c.numKvHeads, 32);
  EXPECT_EQ(c.headDim, 128);
  EXPECT_EQ(c.maxPositionEmbeddings, 2048);
  EXPECT_EQ(c.rmsNormEps, 1e-6);
  EXPECT_EQ(c.initializerRange, 0.02);
  EXPECT_EQ(c.ropeTheta, 10000.0);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_FALSE(c.tieWordEmbeddings);
  EXPECT_EQ(c.torchDtype, "");
  EXPECT_EQ(c.source, kFile);
}

TEST(ParseConfig, NullMeansDefault) {
  LlamaConfig c = mustParse(configWith({{"head_dim", "null"},
                                        {"num_key_value_heads", "null"},
                                        {"rope_scaling", "null"},
                                        {"torch_dtype", "null"}}));
  EXPECT_EQ(c.headDim, 128);
  EXPECT_EQ(c.numKvHeads, 32);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.torchDtype, "");
}

TEST(ParseConfig, HeadDimMayDifferFromHiddenOverHeads) {
  LlamaConfig c = mustParse(configWith({{"head_dim", "256"}}));
  EXPECT_EQ(c.headDim, 256);
}

TEST(ParseConfig, FalseBiasesAndPretrainingTpAreAccepted) {
  LlamaConfig c = mustParse(configWith({{"attention_bias", "false"},
                                        {"mlp_bias", "false"},
                                        {"pretraining_tp", "2"}}));
  EXPECT_EQ(c.hiddenSize, 4096);
}

TEST(ParseConfig, DtypeInTransformers5Spelling) {
  EXPECT_EQ(mustParse(configWith({{"dtype", R"("bfloat16")"}})).torchDtype,
            "bfloat16");
}

TEST(ParseConfig, IntegersAcceptedForFloatFields) {
  LlamaConfig c = mustParse(configWith({{"rope_theta", "500000"}}));
  EXPECT_EQ(c.ropeTheta, 500000.0);
}

//===----------------------------------------------------------------------===//
// The two RoPE spellings
//===----------------------------------------------------------------------===//

/// Files re-saved by transformers 5 (rope_parameters, dtype) describe the same
/// models as the published 4.x files.
TEST(RopeSpellings, Transformers5SavedConfigsMatch) {
  for (const char *name : {"llama-2-7b.json", "llama-3-8b.json",
                           "llama-3.1-8b.json", "llama-3.2-1b.json"}) {
    SCOPED_TRACE(name);
    std::string v5Path = configPath(("transformers5/" + Twine(name)).str());
    std::string text = readText(v5Path);
    ASSERT_NE(text.find("\"rope_parameters\""), std::string::npos);
    ASSERT_EQ(text.find("\"rope_scaling\""), std::string::npos);
    ASSERT_EQ(text.find("\"torch_dtype\""), std::string::npos);
    expectSameModel(mustParse(text, v5Path), mustLoad(name));
  }
}

TEST(RopeSpellings, Llama3ScalingInRopeParameters) {
  LlamaConfig c = mustLoad("transformers5/llama-3.1-8b.json");
  EXPECT_EQ(c.ropeTheta, 500000.0);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.torchDtype, "bfloat16");
}

TEST(RopeSpellings, LegacyTypeKey) {
  LlamaConfig legacy = mustParse(
      configWith({{"rope_scaling",
                   R"({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"}}));
  EXPECT_EQ(legacy.rope.type, "llama3");
  EXPECT_EQ(legacy.rope.factor, 8.0);
}

TEST(RopeSpellings, RopeParametersWithoutThetaUsesTopLevel) {
  LlamaConfig c = mustParse(
      configWith({{"rope_theta", "500000.0"},
                  {"rope_parameters", R"({"rope_type": "default"})"}}));
  EXPECT_EQ(c.ropeTheta, 500000.0);
}

TEST(RopeSpellings, RopeScalingWinsOverRopeParameters) {
  // transformers 5 reads rope_scaling first: `rope_scaling or rope_parameters`.
  LlamaConfig c = mustParse(configWith(
      {{"rope_scaling",
        R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"},
       {"rope_parameters", R"({"rope_type": "yarn"})"}}));
  EXPECT_EQ(c.rope.type, "llama3");
}

//===----------------------------------------------------------------------===//
// Rejected inputs: one line naming the file and the field
//===----------------------------------------------------------------------===//

TEST(ConfigErrors, MalformedJson) {
  std::string message = errorFor("{\n  \"vocab_size\": 32000,\n  oops\n}");
  EXPECT_EQ(message.rfind("cfg/config.json: malformed JSON: [3:", 0), 0u)
      << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST(ConfigErrors, TopLevelNotAnObject) {
  EXPECT_EQ(errorFor("[1, 2]"),
            "cfg/config.json: expected a JSON object at the top level");
}

TEST(ConfigErrors, ModelTypeNotLlama) {
  expectError(configWith({{"model_type", R"("mistral")"}}), "model_type",
              "unsupported model type 'mistral' (supported: llama)");
}

TEST(ConfigErrors, OtherArchitecture) {
  expectError(configWith({{"architectures", R"(["MistralForCausalLM"])"}}),
              "architectures", "unsupported architecture 'MistralForCausalLM'");
}

TEST(ConfigErrors, ExtraArchitecture) {
  expectError(
      configWith(
          {{"architectures",
            R"(["LlamaForCausalLM", "LlamaForSequenceClassification"])"}}),
      "architectures", "'LlamaForSequenceClassification'");
}

TEST(ConfigErrors, ArchitecturesWithoutLlama) {
  expectError(configWith({{"architectures", "[]"}}), "architectures",
              "does not list LlamaForCausalLM");
}

TEST(ConfigErrors, HiddenActNotSilu) {
  expectError(configWith({{"hidden_act", R"("gelu")"}}), "hidden_act",
              "unsupported activation 'gelu' (supported: silu)");
}

/// Each required size, rejected when missing or not a positive integer.
class RequiredSize : public testing::TestWithParam<const char *> {};

TEST_P(RequiredSize, Missing) {
  EXPECT_EQ(errorFor(configWith({{GetParam(), ""}})),
            std::string(kFile) + ": " + GetParam() + ": missing");
}

TEST_P(RequiredSize, FloatSpelling) {
  expectError(configWith({{GetParam(), "4096.0"}}), GetParam(),
              "expected a positive integer, got 4096.0");
}

TEST_P(RequiredSize, String) {
  EXPECT_EQ(errorFor(configWith({{GetParam(), R"("abc")"}})),
            std::string(kFile) + ": " + GetParam() +
                ": expected a positive integer, got \"abc\"");
}

TEST_P(RequiredSize, Zero) {
  expectError(configWith({{GetParam(), "0"}}), GetParam(),
              "expected a positive integer, got 0");
}

TEST_P(RequiredSize, Negative) {
  expectError(configWith({{GetParam(), "-8"}}), GetParam(),
              "expected a positive integer, got -8");
}

INSTANTIATE_TEST_SUITE_P(ConfigErrors, RequiredSize,
                         testing::Values("vocab_size", "hidden_size",
                                         "intermediate_size",
                                         "num_hidden_layers",
                                         "num_attention_heads"));

TEST(ConfigErrors, KvHeadsDoNotDivideHeads) {
  EXPECT_EQ(errorFor(configWith({{"num_key_value_heads", "5"}})),
            "cfg/config.json: num_key_value_heads: 5 does not divide "
            "num_attention_heads (32)");
}

TEST(ConfigErrors, KvHeadsFloat) {
  expectError(configWith({{"num_key_value_heads", "8.0"}}),
              "num_key_value_heads", "got 8.0");
}

TEST(ConfigErrors, HiddenNotDivisibleByHeads) {
  expectError(configWith({{"hidden_size", "4000"},
                          {"num_attention_heads", "48"},
                          {"num_key_value_heads", "8"}}),
              "hidden_size",
              "4000 is not divisible by num_attention_heads (48)");
}

TEST(ConfigErrors, OddHeadDim) {
  expectError(configWith({{"head_dim", "127"}}), "head_dim",
              "127 must be even for RoPE");
}

TEST(ConfigErrors, OddDerivedHeadDim) {
  expectError(configWith({{"hidden_size", "4064"}}), "head_dim",
              "127 (hidden_size / num_attention_heads) must be even");
}

TEST(ConfigErrors, HeadDimNotPositive) {
  expectError(configWith({{"head_dim", "0"}}), "head_dim",
              "expected a positive integer, got 0");
}

TEST(ConfigErrors, MaxPositionEmbeddingsFloat) {
  expectError(configWith({{"max_position_embeddings", "4096.0"}}),
              "max_position_embeddings", "got 4096.0");
}

TEST(ConfigErrors, RmsNormEpsNotPositive) {
  expectError(configWith({{"rms_norm_eps", "0"}}), "rms_norm_eps",
              "expected a positive number, got 0");
  expectError(configWith({{"rms_norm_eps", "-1e-05"}}), "rms_norm_eps",
              "got -1e-05");
}

TEST(ConfigErrors, InitializerRangeNotPositive) {
  expectError(configWith({{"initializer_range", "0.0"}}), "initializer_range",
              "expected a positive number, got 0.0");
}

TEST(ConfigErrors, RopeThetaNotANumber) {
  expectError(configWith({{"rope_theta", R"("10000")"}}), "rope_theta",
              "expected a positive number, got \"10000\"");
}

TEST(ConfigErrors, TieWordEmbeddingsNotBoolean) {
  expectError(configWith({{"tie_word_embeddings", "1"}}), "tie_word_embeddings",
              "expected true or false, got 1");
}

TEST(ConfigErrors, AttentionBias) {
  expectError(configWith({{"attention_bias", "true"}}), "attention_bias",
              "true is not supported");
}

TEST(ConfigErrors, MlpBias) {
  expectError(configWith({{"mlp_bias", "true"}}), "mlp_bias",
              "true is not supported");
}

TEST(ConfigErrors, UnsupportedRopeType) {
  EXPECT_EQ(
      errorFor(configWith({{"rope_scaling",
                            R"({"rope_type": "yarn", "factor": 4.0,
                "original_max_position_embeddings": 32768})"}})),
      "cfg/config.json: rope_scaling.rope_type: unsupported rope type 'yarn' "
      "(supported: default, llama3)");
}

TEST(ConfigErrors, UnsupportedLegacyRopeType) {
  expectError(
      configWith({{"rope_scaling", R"({"type": "linear", "factor": 2.0})"}}),
      "rope_scaling.type",
      "unsupported rope type 'linear' (supported: default, llama3)");
}

TEST(ConfigErrors, UnsupportedRopeTypeInRopeParameters) {
  expectError(configWith({{"rope_parameters",
                           R"({"rope_type": "dynamic", "rope_theta": 10000.0,
                       "factor": 2.0})"}}),
              "rope_parameters.rope_type", "unsupported rope type 'dynamic'");
}

TEST(ConfigErrors, RopeScalingNotAnObject) {
  expectError(configWith({{"rope_scaling", R"("llama3")"}}), "rope_scaling",
              "expected an object or null, got \"llama3\"");
}

/// Each field llama3 RoPE needs, rejected when missing.
class Llama3Field : public testing::TestWithParam<const char *> {};

TEST_P(Llama3Field, Missing) {
  json::Object scaling{{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  scaling.erase(GetParam());
  std::string text = formatv("{0}", json::Value(std::move(scaling))).str();
  EXPECT_EQ(errorFor(configWith({{"rope_scaling", text}})),
            std::string(kFile) + ": rope_scaling." + GetParam() + ": missing");
}

INSTANTIATE_TEST_SUITE_P(ConfigErrors, Llama3Field,
                         testing::Values("factor", "low_freq_factor",
                                         "high_freq_factor",
                                         "original_max_position_embeddings"));

/// A llama3 rope_scaling with one member replaced by raw JSON.
std::string llama3With(StringRef key, StringRef value) {
  const std::pair<StringRef, StringRef> valid[] = {
      {"factor", "8.0"},
      {"low_freq_factor", "1.0"},
      {"high_freq_factor", "4.0"},
      {"original_max_position_embeddings", "8192"}};
  std::string members;
  for (auto [k, v] : valid)
    members += formatv(R"("{0}": {1}, )", k, k == key ? value : v).str();
  return configWith(
      {{"rope_scaling", "{" + members + R"("rope_type": "llama3"})"}});
}

TEST(ConfigErrors, Llama3FactorNotPositive) {
  expectError(llama3With("factor", "0.0"), "rope_scaling.factor",
              "expected a positive number, got 0.0");
}

TEST(ConfigErrors, Llama3LowFreqFactorNotPositive) {
  expectError(llama3With("low_freq_factor", "-1.0"),
              "rope_scaling.low_freq_factor",
              "expected a positive number, got -1");
}

TEST(ConfigErrors, Llama3HighNotAboveLow) {
  expectError(llama3With("high_freq_factor", "1.0"),
              "rope_scaling.high_freq_factor",
              "1.0 must be greater than low_freq_factor (1.0)");
}

TEST(ConfigErrors, Llama3OriginalMaxNotPositiveInteger) {
  expectError(llama3With("original_max_position_embeddings", "8192.0"),
              "rope_scaling.original_max_position_embeddings", "got 8192.0");
  expectError(llama3With("original_max_position_embeddings", "0"),
              "rope_scaling.original_max_position_embeddings", "got 0");
}

//===----------------------------------------------------------------------===//
// loadConfig
//===----------------------------------------------------------------------===//

/// A fresh directory, removed with everything in it at the end of the test.
class TempDir {
public:
  TempDir() {
    std::error_code ec =
        sys::fs::createUniqueDirectory("llamac-config-test", path);
    EXPECT_FALSE(ec) << ec.message();
  }
  ~TempDir() { sys::fs::remove_directories(path); }
  SmallString<128> path;
};

TEST(LoadConfig, FromModelDirectory) {
  TempDir dir;
  SmallString<128> file(dir.path);
  sys::path::append(file, "config.json");
  {
    std::error_code ec;
    raw_fd_ostream os(file, ec);
    ASSERT_FALSE(ec) << ec.message();
    os << readText(configPath("llama-3.2-1b.json"));
  }
  Expected<LlamaConfig> loaded = loadConfig(dir.path);
  ASSERT_TRUE(bool(loaded)) << toString(loaded.takeError());
  EXPECT_EQ(loaded->source, file.str());
  expectSameModel(*loaded, mustLoad("llama-3.2-1b.json"));
}

TEST(LoadConfig, DirectoryWithoutConfig) {
  TempDir dir;
  Expected<LlamaConfig> loaded = loadConfig(dir.path);
  ASSERT_FALSE(bool(loaded));
  EXPECT_EQ(toString(loaded.takeError()),
            (dir.path + ": no config.json in directory").str());
}

TEST(LoadConfig, MissingFile) {
  TempDir dir;
  SmallString<128> file(dir.path);
  sys::path::append(file, "absent.json");
  Expected<LlamaConfig> loaded = loadConfig(file);
  ASSERT_FALSE(bool(loaded));
  std::string message = toString(loaded.takeError());
  EXPECT_EQ(message.rfind((file + ": cannot read: ").str(), 0), 0u) << message;
}

//===----------------------------------------------------------------------===//
// toHFConfigJson
//===----------------------------------------------------------------------===//

TEST(ToHFConfigJson, RoundTripsRealConfigs) {
  for (const char *name : kRealConfigs) {
    SCOPED_TRACE(name);
    LlamaConfig original = mustLoad(name);
    expectSameModel(mustParse(toHFConfigJson(original)), original);
  }
}

TEST(ToHFConfigJson, RoundTripsTinyConfig) {
  LlamaConfig tiny = tinyLlamaConfig();
  expectSameModel(mustParse(toHFConfigJson(tiny)), tiny);
}

TEST(ToHFConfigJson, WritesTransformersSpelling) {
  std::string text = toHFConfigJson(mustLoad("llama-3.1-8b.json"));
  for (const char *expected :
       {"\"architectures\": [\n    \"LlamaForCausalLM\"\n  ]",
        "\"model_type\": \"llama\"", "\"hidden_act\": \"silu\"",
        "\"rope_theta\": 500000.0", "\"rms_norm_eps\": 1e-05",
        "\"initializer_range\": 0.02", "\"head_dim\": 128",
        "\"torch_dtype\": \"bfloat16\"", "\"factor\": 8.0",
        "\"low_freq_factor\": 1.0",
        "\"original_max_position_embeddings\": 8192",
        "\"rope_type\": \"llama3\""})
    EXPECT_NE(text.find(expected), std::string::npos) << expected << "\n"
                                                      << text;
  EXPECT_NE(toHFConfigJson(mustLoad("llama-2-7b.json"))
                .find("\"rope_scaling\": null"),
            std::string::npos);

  // Top-level keys (indented by two spaces) come in sorted order.
  std::vector<std::string> keys;
  SmallVector<StringRef> lines;
  StringRef(text).split(lines, '\n');
  for (StringRef line : lines)
    if (line.starts_with("  \""))
      keys.push_back(line.drop_front(3).split('"').first.str());
  EXPECT_EQ(keys.size(), 19u);
  EXPECT_TRUE(llvm::is_sorted(keys));
}

//===----------------------------------------------------------------------===//
// Built-in tiny model and parameter lists
//===----------------------------------------------------------------------===//

TEST(TinyLlamaConfig, Fields) {
  LlamaConfig c = tinyLlamaConfig();
  EXPECT_EQ(c.vocabSize, 256);
  EXPECT_EQ(c.hiddenSize, 64);
  EXPECT_EQ(c.intermediateSize, 172);
  EXPECT_EQ(c.numLayers, 2);
  EXPECT_EQ(c.numHeads, 4);
  EXPECT_EQ(c.numKvHeads, 2);
  EXPECT_EQ(c.headDim, 16);
  EXPECT_EQ(c.maxPositionEmbeddings, 256);
  EXPECT_EQ(c.rmsNormEps, 1e-5);
  EXPECT_EQ(c.ropeTheta, 10000.0);
  EXPECT_EQ(c.initializerRange, 0.02);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_FALSE(c.tieWordEmbeddings);
}

int64_t countParameters(const std::vector<ParamSpec> &specs) {
  int64_t total = 0;
  for (const ParamSpec &spec : specs) {
    int64_t size = 1;
    for (int64_t d : spec.shape)
      size *= d;
    total += size;
  }
  return total;
}

TEST(ParameterSpecs, Llama2_7B) {
  std::vector<ParamSpec> specs = parameterSpecs(mustLoad("llama-2-7b.json"));
  ASSERT_EQ(specs.size(), 291u);
  EXPECT_EQ(countParameters(specs), 6738415616);
  EXPECT_EQ(specs.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(specs.front().shape, (std::vector<int64_t>{32000, 4096}));
  std::vector<std::string> layer0;
  for (int i = 1; i <= 9; ++i)
    layer0.push_back(specs[i].name);
  EXPECT_EQ(layer0, (std::vector<std::string>{
                        "model.layers.0.self_attn.q_proj.weight",
                        "model.layers.0.self_attn.k_proj.weight",
                        "model.layers.0.self_attn.v_proj.weight",
                        "model.layers.0.self_attn.o_proj.weight",
                        "model.layers.0.mlp.gate_proj.weight",
                        "model.layers.0.mlp.up_proj.weight",
                        "model.layers.0.mlp.down_proj.weight",
                        "model.layers.0.input_layernorm.weight",
                        "model.layers.0.post_attention_layernorm.weight"}));
  EXPECT_EQ(specs[289].name, "model.norm.weight");
  EXPECT_EQ(specs[289].shape, (std::vector<int64_t>{4096}));
  EXPECT_EQ(specs[290].name, "lm_head.weight");
  EXPECT_EQ(specs[290].shape, (std::vector<int64_t>{32000, 4096}));
}

TEST(ParameterSpecs, GqaShapes) {
  std::vector<ParamSpec> specs = parameterSpecs(mustLoad("llama-3.1-8b.json"));
  EXPECT_EQ(specs[1].shape, (std::vector<int64_t>{4096, 4096}));  // q
  EXPECT_EQ(specs[2].shape, (std::vector<int64_t>{1024, 4096}));  // k
  EXPECT_EQ(specs[3].shape, (std::vector<int64_t>{1024, 4096}));  // v
  EXPECT_EQ(specs[4].shape, (std::vector<int64_t>{4096, 4096}));  // o
  EXPECT_EQ(specs[5].shape, (std::vector<int64_t>{14336, 4096})); // gate
  EXPECT_EQ(specs[7].shape, (std::vector<int64_t>{4096, 14336})); // down
  EXPECT_EQ(countParameters(specs), 8030261248);
}

TEST(ParameterSpecs, Llama32_1BTiedHasNoLmHead) {
  std::vector<ParamSpec> specs = parameterSpecs(mustLoad("llama-3.2-1b.json"));
  EXPECT_EQ(specs.size(), 1u + 16 * 9 + 1);
  EXPECT_EQ(specs.back().name, "model.norm.weight");
  for (const ParamSpec &spec : specs)
    EXPECT_NE(spec.name, "lm_head.weight");
  // head_dim 64 x 32 heads = hidden 2048; k/v use 8 heads.
  EXPECT_EQ(specs[2].shape, (std::vector<int64_t>{512, 2048}));
  EXPECT_EQ(countParameters(specs), 1235814400);
}

TEST(ParameterSpecs, TinyModel) {
  std::vector<ParamSpec> specs = parameterSpecs(tinyLlamaConfig());
  EXPECT_EQ(specs.size(), 1u + 2 * 9 + 2);
  EXPECT_EQ(countParameters(specs), 123712);
}

} // namespace
