//===- TokenizerTest.cpp - Tokenizer against Hugging Face tokenizers ------===//
//
// The golden files come from test/golden/tokenizers/make_tokenizer_golden.py
// (Hugging Face `tokenizers`): every corpus line must encode to exactly the
// same ids, with and without special tokens, and decode to the same text.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/Tokenizer.h"

#include "TestUtil.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <sstream>

using namespace llamac;
using llamac::test::isErrorAbout;
using llamac::test::TempDirTest;
using json = nlohmann::json;

namespace {

const std::string kGoldenDir = LLAMAC_TOKENIZER_GOLDEN_DIR;

/// The JSON values of the lines of \p path.
std::vector<json> readJsonLines(const std::string &path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::vector<json> lines;
  std::string line;
  while (std::getline(in, line))
    lines.push_back(json::parse(line));
  return lines;
}

/// The corpus lines (texts).
const std::vector<std::string> &corpus() {
  static const std::vector<std::string> texts = [] {
    std::vector<std::string> out;
    for (const json &line : readJsonLines(kGoldenDir + "/corpus.jsonl"))
      out.push_back(line.at("text").get<std::string>());
    return out;
  }();
  return texts;
}

/// A loaded golden tokenizer (loaded once per name).
const Tokenizer &golden(const std::string &name) {
  static std::map<std::string, Tokenizer> loaded;
  auto it = loaded.find(name);
  if (it == loaded.end()) {
    Result<Tokenizer> tokenizer = Tokenizer::load(kGoldenDir + "/" + name);
    if (!tokenizer) {
      ADD_FAILURE() << tokenizer.error().message;
      std::abort();
    }
    it = loaded.emplace(name, std::move(*tokenizer)).first;
  }
  return it->second;
}

std::string show(const std::vector<int32_t> &ids) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < ids.size(); ++i)
    out << (i ? ", " : "") << ids[i];
  return out.str() + "]";
}

std::string escaped(const std::string &text) {
  return json(text).dump(-1, ' ', true, json::error_handler_t::replace);
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, EncodesExactlyLikeHuggingFace) {
  const Tokenizer &tokenizer = golden(GetParam());
  const std::vector<json> expected =
      readJsonLines(kGoldenDir + "/expected-" + GetParam() + ".jsonl");
  ASSERT_EQ(expected.size(), corpus().size());
  int failures = 0;
  for (size_t i = 0; i < corpus().size() && failures < 10; ++i) {
    const std::string &text = corpus()[i];
    const auto ids = expected[i].at("ids").get<std::vector<int32_t>>();
    const auto idsSpecial =
        expected[i].at("ids_special").get<std::vector<int32_t>>();
    const std::vector<int32_t> got = tokenizer.encode(text, false);
    const std::vector<int32_t> gotSpecial = tokenizer.encode(text, true);
    if (got != ids) {
      ++failures;
      ADD_FAILURE() << "corpus line " << i + 1 << " " << escaped(text)
                    << "\n  without special tokens: " << show(got)
                    << "\n  Hugging Face:           " << show(ids);
    }
    if (gotSpecial != idsSpecial) {
      ++failures;
      ADD_FAILURE() << "corpus line " << i + 1 << " " << escaped(text)
                    << "\n  with special tokens: " << show(gotSpecial)
                    << "\n  Hugging Face:        " << show(idsSpecial);
    }
  }
}

TEST_P(GoldenTest, DecodesExactlyLikeHuggingFace) {
  const Tokenizer &tokenizer = golden(GetParam());
  const std::vector<json> expected =
      readJsonLines(kGoldenDir + "/expected-" + GetParam() + ".jsonl");
  ASSERT_EQ(expected.size(), corpus().size());
  for (size_t i = 0; i < corpus().size(); ++i) {
    const auto ids = expected[i].at("ids_special").get<std::vector<int32_t>>();
    EXPECT_EQ(escaped(tokenizer.decode(ids, /*skipSpecialTokens=*/false)),
              escaped(expected[i].at("decode").get<std::string>()))
        << "corpus line " << i + 1;
    EXPECT_EQ(escaped(tokenizer.decode(ids, /*skipSpecialTokens=*/true)),
              escaped(expected[i].at("decode_skip").get<std::string>()))
        << "corpus line " << i + 1;
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, GoldenTest,
                         ::testing::Values("llama-3", "sp-bpe-32k"),
                         [](const auto &info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(TokenizerTest, ByteLevelRoundTripsEveryLine) {
  const Tokenizer &tokenizer = golden("llama-3");
  for (size_t i = 0; i < corpus().size(); ++i)
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(corpus()[i], true), false),
              corpus()[i])
        << "corpus line " << i + 1;
}

TEST(TokenizerTest, SentencePieceStyleRoundTripsText) {
  // The decoder turns "▁" into a space and strips the one space the
  // normalizer prepended; text without "▁" or special tokens (before each of
  // which the normalizer prepends another "▁") comes back unchanged.
  const Tokenizer &tokenizer = golden("sp-bpe-32k");
  int checked = 0;
  for (size_t i = 0; i < corpus().size(); ++i) {
    const std::string &text = corpus()[i];
    bool skip = false;
    for (const char *marker : {"\xE2\x96\x81", "<s>", "</s>", "<unk>"})
      skip = skip || text.find(marker) != std::string::npos;
    if (skip)
      continue;
    EXPECT_EQ(escaped(tokenizer.decode(tokenizer.encode(text, true))),
              escaped(text))
        << "corpus line " << i + 1;
    ++checked;
  }
  EXPECT_GT(checked, 150);
}

TEST(TokenizerTest, SpecialTokensAndSizes) {
  const Tokenizer &llama3 = golden("llama-3");
  EXPECT_EQ(llama3.vocabSize(), 128256);
  EXPECT_EQ(llama3.bosId(), 128000);
  EXPECT_EQ(llama3.eosId(), 128001);
  EXPECT_EQ(llama3.bosToken(), "<|begin_of_text|>");
  EXPECT_EQ(llama3.eosToken(), "<|end_of_text|>");
  EXPECT_EQ(llama3.tokenToId("<|eot_id|>"), 128009);
  EXPECT_EQ(llama3.tokenToId("Hello"), 9906);
  EXPECT_EQ(llama3.idToToken(9906), "Hello");
  EXPECT_EQ(llama3.idToToken(128009), "<|eot_id|>");
  EXPECT_EQ(llama3.idToToken(128256), std::nullopt);
  EXPECT_EQ(llama3.idToToken(-1), std::nullopt);
  // Llama 3's post-processor (ByteLevel) adds nothing.
  EXPECT_EQ(llama3.encode("Hello", true), std::vector<int32_t>{9906});

  const Tokenizer &sp = golden("sp-bpe-32k");
  EXPECT_EQ(sp.vocabSize(), 32000);
  EXPECT_EQ(sp.bosId(), 1);
  EXPECT_EQ(sp.eosId(), 2);
  EXPECT_EQ(sp.tokenToId("<0x0A>"), 13);
  EXPECT_EQ(sp.encode("Hello", true), (std::vector<int32_t>{1, 22557}));
  EXPECT_EQ(sp.encode("Hello", false), std::vector<int32_t>{22557});
  EXPECT_EQ(sp.encode("", true), std::vector<int32_t>{1});
  EXPECT_TRUE(sp.encode("", false).empty());
  EXPECT_EQ(sp.fingerprint().size(), 32u);
  EXPECT_NE(sp.fingerprint(), llama3.fingerprint());
}

TEST(TokenizerTest, InvalidUtf8BecomesReplacementCharacters) {
  // Python strings cannot hold invalid UTF-8; the tokenizer replaces each
  // maximal invalid subpart by U+FFFD first, as from_utf8_lossy does.
  for (const char *name : {"llama-3", "sp-bpe-32k"}) {
    const Tokenizer &tokenizer = golden(name);
    EXPECT_EQ(tokenizer.encode("a\xFF"
                               "b",
                               false),
              tokenizer.encode("a\xEF\xBF\xBD"
                               "b",
                               false))
        << name;
    // E1 80 is a truncated 3-byte sequence: one replacement, then "c".
    EXPECT_EQ(tokenizer.encode("\xE1\x80"
                               "c\xC0\xAF",
                               false),
              tokenizer.encode("\xEF\xBF\xBD"
                               "c\xEF\xBF\xBD\xEF\xBF\xBD",
                               false))
        << name;
  }
}

TEST(TokenizerTest, EncodesMegabytesPerSecond) {
  // About 4 MB of mixed text: the golden corpus repeated.
  std::string text;
  while (text.size() < (4u << 20))
    for (const std::string &line : corpus())
      text += line + "\n";
  for (const char *name : {"llama-3", "sp-bpe-32k"}) {
    const Tokenizer &tokenizer = golden(name);
    const auto start = std::chrono::steady_clock::now();
    size_t tokens = 0;
    // Row-sized pieces, as the data loader encodes them.
    for (size_t at = 0; at < text.size(); at += 4096)
      tokens += tokenizer.encode(std::string_view(text).substr(at, 4096), true)
                    .size();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    const double mbPerSecond = double(text.size()) / 1e6 / seconds;
    std::cout << name << ": " << text.size() << " bytes, " << tokens
              << " tokens in " << seconds << " s (" << mbPerSecond
              << " MB/s)\n";
    // Generous: a loaded 2-core CI machine manages well over 1 MB/s.
    EXPECT_GT(mbPerSecond, 0.5) << name;
  }
}

using TokenizerFileTest = TempDirTest;

// synthetic.json (make_synthetic_golden.py): tiny tokenizers trained with
// Hugging Face `tokenizers` and variants of them that use the components the
// two real files do not (every Split behavior, ByteLevel options, lstrip /
// rstrip / normalized added tokens, unk handling, Template and Sequence
// post-processors, ignore_merges, subword prefix and suffix...).
TEST_F(TokenizerFileTest, SyntheticVariantsMatchHuggingFace) {
  const json golden = json::parse(readFile(kGoldenDir + "/synthetic.json"));
  const auto texts = golden.at("corpus").get<std::vector<std::string>>();
  ASSERT_GE(golden.at("variants").size(), 20u);
  for (const json &variant : golden.at("variants")) {
    const std::string name = variant.at("name").get<std::string>();
    SCOPED_TRACE(name);
    json spec = golden.at("bases").at(variant.at("base").get<std::string>());
    for (auto &[key, value] : variant.at("set").items())
      spec[key] = value;
    for (auto &[key, value] : variant.at("model").items())
      spec["model"][key] = value;
    const std::string file = writeFile(name + ".json", spec.dump());
    Result<Tokenizer> tokenizer = Tokenizer::load(file);
    ASSERT_TRUE(tokenizer) << tokenizer.error().message;
    for (size_t i = 0; i < texts.size(); ++i) {
      const auto ids = variant.at("ids")[i].get<std::vector<int32_t>>();
      const auto idsSpecial =
          variant.at("ids_special")[i].get<std::vector<int32_t>>();
      EXPECT_EQ(show(tokenizer->encode(texts[i], false)), show(ids))
          << "line " << i << " " << escaped(texts[i]);
      EXPECT_EQ(show(tokenizer->encode(texts[i], true)), show(idsSpecial))
          << "line " << i << " " << escaped(texts[i]);
      EXPECT_EQ(escaped(tokenizer->decode(idsSpecial, false)),
                escaped(variant.at("decode")[i].get<std::string>()))
          << "line " << i << " " << escaped(texts[i]);
    }
  }
}

/// A minimal valid tokenizer.json over the vocabulary {a, b, ab}.
json tinyTokenizer() {
  return json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [{"id": 3, "content": "<s>", "single_word": false,
                      "lstrip": false, "rstrip": false, "normalized": false,
                      "special": true}],
    "normalizer": null, "pre_tokenizer": null, "post_processor": null,
    "decoder": null,
    "model": {"type": "BPE", "dropout": null, "unk_token": null,
              "continuing_subword_prefix": null, "end_of_word_suffix": null,
              "fuse_unk": false, "byte_fallback": false,
              "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})");
}

TEST_F(TokenizerFileTest, LoadsAFileOrADirectory) {
  const std::string file = writeFile("tokenizer.json", tinyTokenizer().dump());
  for (const std::string &path : {file, dir}) {
    Result<Tokenizer> tokenizer = Tokenizer::load(path);
    ASSERT_TRUE(tokenizer) << tokenizer.error().message;
    EXPECT_EQ(tokenizer->encode("abba<s>b", true),
              (std::vector<int32_t>{2, 1, 0, 3, 1}));
    EXPECT_EQ(tokenizer->vocabSize(), 4);
    EXPECT_EQ(tokenizer->bosId(), std::nullopt);
    EXPECT_EQ(tokenizer->path(), file);
    // No decoder: tokens joined by spaces.
    EXPECT_EQ(tokenizer->decode({2, 1, 3}, false), "ab b <s>");
    EXPECT_EQ(tokenizer->decode({2, 1, 3, 99, -5}), "ab b");
  }
}

TEST_F(TokenizerFileTest, ConfigAddBosAndEosOverrideThePostProcessor) {
  json spec = tinyTokenizer();
  spec["added_tokens"].push_back({{"id", 4},
                                  {"content", "</s>"},
                                  {"special", true},
                                  {"normalized", false}});
  writeFile("tokenizer.json", spec.dump());
  writeFile("tokenizer_config.json",
            R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                "add_bos_token": true, "add_eos_token": true})");
  Result<Tokenizer> tokenizer = Tokenizer::load(dir);
  ASSERT_TRUE(tokenizer) << tokenizer.error().message;
  EXPECT_EQ(tokenizer->bosId(), 3);
  EXPECT_EQ(tokenizer->eosId(), 4);
  EXPECT_EQ(tokenizer->encode("ab", true), (std::vector<int32_t>{3, 2, 4}));
  EXPECT_EQ(tokenizer->encode("ab", false), (std::vector<int32_t>{2}));
}

TEST_F(TokenizerFileTest, FingerprintFollowsBothFiles) {
  writeFile("tokenizer.json", tinyTokenizer().dump());
  Result<Tokenizer> first = Tokenizer::load(dir);
  ASSERT_TRUE(first) << first.error().message;
  writeFile("tokenizer_config.json", R"({"bos_token": "<s>"})");
  Result<Tokenizer> second = Tokenizer::load(dir);
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_NE(first->fingerprint(), second->fingerprint());
  Result<Tokenizer> again = Tokenizer::load(dir);
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(second->fingerprint(), again->fingerprint());
}

TEST_F(TokenizerFileTest, MissingFileAndDirectory) {
  Result<Tokenizer> missing = Tokenizer::load(path("nope.json"));
  ASSERT_FALSE(missing);
  EXPECT_TRUE(isErrorAbout(missing.error().message, path("nope.json"),
                           "cannot open: No such file or directory"));
  // A directory without tokenizer.json.
  Result<Tokenizer> empty = Tokenizer::load(dir);
  ASSERT_FALSE(empty);
  EXPECT_TRUE(isErrorAbout(empty.error().message, path("tokenizer.json"),
                           "cannot open"));
}

struct BadFile {
  const char *name;
  /// Applied to tinyTokenizer(); an empty result means: write `raw`.
  void (*edit)(json &);
  const char *raw;
  const char *expected;
};

void PrintTo(const BadFile &c, std::ostream *os) { *os << c.name; }

const BadFile badFiles[] = {
    {"MalformedJson", nullptr, "{\"model\": {", "malformed JSON: "},
    {"NotAnObject", nullptr, "[1, 2]", "is [1,2], not a JSON object"},
    {"NoModel", [](json &j) { j.erase("model"); }, nullptr, "missing 'model'"},
    {"WordPiece", [](json &j) { j["model"]["type"] = "WordPiece"; }, nullptr,
     "model: unsupported model type 'WordPiece' (supported: BPE)"},
    {"Unigram", [](json &j) { j["model"]["type"] = "Unigram"; }, nullptr,
     "model: unsupported model type 'Unigram' (supported: BPE)"},
    {"Nfkc",
     [](json &j) {
       j["normalizer"] = {{"type", "NFKC"}};
     },
     nullptr,
     "normalizer: unsupported normalizer type 'NFKC' (supported: Sequence, "
     "Prepend, Replace)"},
    {"NestedNormalizer",
     [](json &j) {
       j["normalizer"] = json::parse(
           R"({"type": "Sequence", "normalizers": [{"type": "Prepend",
              "prepend": "x"}, {"type": "Lowercase"}]})");
     },
     nullptr,
     "normalizer.normalizers[1]: unsupported normalizer type 'Lowercase'"},
    {"Whitespace",
     [](json &j) {
       j["pre_tokenizer"] = {{"type", "Whitespace"}};
     },
     nullptr, "pre_tokenizer: unsupported pre-tokenizer type 'Whitespace'"},
    {"BertProcessing",
     [](json &j) {
       j["post_processor"] = {{"type", "BertProcessing"}};
     },
     nullptr,
     "post_processor: unsupported post-processor type "
     "'BertProcessing'"},
    {"WordPieceDecoder",
     [](json &j) {
       j["decoder"] = {{"type", "WordPiece"}};
     },
     nullptr, "decoder: unsupported decoder type 'WordPiece'"},
    {"BadRegex",
     [](json &j) {
       j["pre_tokenizer"] = json::parse(
           R"({"type": "Split", "pattern": {"Regex": "(a"},
              "behavior": "Isolated", "invert": false})");
     },
     nullptr,
     "pre_tokenizer.pattern.Regex: regular expression '(a' does not "
     "compile"},
    {"BadBehavior",
     [](json &j) {
       j["pre_tokenizer"] = json::parse(
           R"({"type": "Split", "pattern": {"String": " "},
              "behavior": "Sideways", "invert": false})");
     },
     nullptr, "pre_tokenizer.behavior: unknown split behavior 'Sideways'"},
    {"MergeOutOfVocab", [](json &j) { j["model"]["merges"].push_back("b a"); },
     nullptr, "model.merges[1]: token 'ba' is not in the vocabulary"},
    {"MergeNotAPair", [](json &j) { j["model"]["merges"].push_back("abb"); },
     nullptr,
     "model.merges[1]: 'abb' is not two tokens separated by one space"},
    {"UnkNotInVocab", [](json &j) { j["model"]["unk_token"] = "<unk>"; },
     nullptr, "model.unk_token: '<unk>' is not in the vocabulary"},
    {"Dropout", [](json &j) { j["model"]["dropout"] = 0.1; }, nullptr,
     "model.dropout: BPE dropout is random"},
    {"VocabNotObject", [](json &j) { j["model"]["vocab"] = json::array(); },
     nullptr, "model.vocab: is [], not an object"},
    {"NegativeId", [](json &j) { j["model"]["vocab"]["c"] = -1; }, nullptr,
     "model.vocab['c']: -1 is not a token id"},
    {"DuplicateId", [](json &j) { j["model"]["vocab"]["c"] = 1; }, nullptr,
     "model.vocab['c']: id 1 is also the id of 'b'"},
    {"AddedTokenWithoutId", [](json &j) { j["added_tokens"][0].erase("id"); },
     nullptr, "added_tokens[0]: missing 'id'"},
    {"SingleWord", [](json &j) { j["added_tokens"][0]["single_word"] = true; },
     nullptr,
     "added_tokens[0].single_word: single_word added tokens are not "
     "supported"},
    {"TemplateUnknownSpecial",
     [](json &j) {
       j["post_processor"] = json::parse(
           R"({"type": "TemplateProcessing",
              "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}}],
              "special_tokens": {}})");
     },
     nullptr,
     "post_processor.single[0]: special token '<bos>' is not in "
     "special_tokens"},
};

class BadTokenizerFileTest : public TempDirTest,
                             public ::testing::WithParamInterface<BadFile> {};

TEST_P(BadTokenizerFileTest, IsRejectedWithOneLine) {
  const BadFile &c = GetParam();
  std::string text = c.raw ? c.raw : "";
  if (c.edit) {
    json spec = tinyTokenizer();
    c.edit(spec);
    text = spec.dump();
  }
  const std::string file = writeFile("tokenizer.json", text);
  Result<Tokenizer> tokenizer = Tokenizer::load(file);
  ASSERT_FALSE(tokenizer);
  EXPECT_TRUE(isErrorAbout(tokenizer.error().message, file, c.expected));
}

INSTANTIATE_TEST_SUITE_P(Cases, BadTokenizerFileTest,
                         ::testing::ValuesIn(badFiles),
                         [](const auto &info) { return info.param.name; });

TEST_F(TokenizerFileTest, BadConfigNamesTheConfigFile) {
  writeFile("tokenizer.json", tinyTokenizer().dump());
  const std::string config =
      writeFile("tokenizer_config.json", R"({"bos_token": "<bos>"})");
  Result<Tokenizer> unknown = Tokenizer::load(dir);
  ASSERT_FALSE(unknown);
  EXPECT_TRUE(isErrorAbout(unknown.error().message, config,
                           "bos_token: '<bos>' is not a token of "
                           "tokenizer.json"));

  writeFile("tokenizer_config.json",
            R"({"add_bos_token": false, "add_eos_token": true})");
  Result<Tokenizer> noEos = Tokenizer::load(dir);
  ASSERT_FALSE(noEos);
  EXPECT_TRUE(isErrorAbout(noEos.error().message, config,
                           "add_eos_token: is true, but there is no "
                           "eos_token"));

  writeFile("tokenizer_config.json", "{");
  Result<Tokenizer> malformed = Tokenizer::load(dir);
  ASSERT_FALSE(malformed);
  EXPECT_TRUE(
      isErrorAbout(malformed.error().message, config, "malformed JSON"));
}

} // namespace
