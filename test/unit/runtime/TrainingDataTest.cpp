//===- TrainingDataTest.cpp - Text rows, prompt/completion rows, cache ----===//
//
// Expected ids come from Hugging Face `tokenizers` applied as TRL's
// SFTTrainer does (text + eos_token; prompt + completion + eos_token with the
// prompt's own encoding masked).
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/Data.h"
#include "llamac/Runtime/Tokenizer.h"

#include "TestUtil.h"

#include <filesystem>

using namespace llamac;
using llamac::test::isErrorAbout;
using llamac::test::TempDirTest;

namespace {

const std::string kGoldenDir = LLAMAC_TOKENIZER_GOLDEN_DIR;

const Tokenizer &loaded(const std::string &name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    Result<Tokenizer> tokenizer = Tokenizer::load(kGoldenDir + "/" + name);
    if (!tokenizer) {
      ADD_FAILURE() << tokenizer.error().message;
      std::abort();
    }
    it = cache.emplace(name, std::move(*tokenizer)).first;
  }
  return it->second;
}

const Tokenizer &spBpe() { return loaded("sp-bpe-32k"); }
const Tokenizer &llama3() { return loaded("llama-3"); }

using Ids = std::vector<int32_t>;
constexpr int32_t X = kIgnoreLabel;

const char *const kPromptRow =
    R"({"prompt": "Q: What is 2+2?\nA:", "completion": " 4"})";

class TrainingDataTest : public TempDirTest {
protected:
  /// Cache files beside the data.
  std::vector<std::string> caches() const {
    std::vector<std::string> out;
    for (const std::string &name : listDir())
      if (name.find(".llamac-cache-") != std::string::npos)
        out.push_back(name);
    return out;
  }
};

TEST_F(TrainingDataTest, TextRowsAreTokenizedWithBosAndEos) {
  const std::string file = writeFile("data.jsonl", R"({"text": "Hello world"}
{"text": "Hello world</s>"}
)");
  Result<std::vector<TokenRow>> rows = loadTrainingRows(file, &spBpe(), 32000);
  ASSERT_TRUE(rows) << rows.error().message;
  ASSERT_EQ(rows->size(), 2u);
  // HF: encode("Hello world</s>") = <s> ▁Hello ▁world </s>.
  EXPECT_EQ((*rows)[0].inputIds, (Ids{1, 22557, 1526, 2}));
  EXPECT_EQ((*rows)[0].labels, (Ids{1, 22557, 1526, 2}));
  // Text that already ends with the EOS text gets no second one.
  EXPECT_EQ((*rows)[1].inputIds, (Ids{1, 22557, 1526, 2}));
}

TEST_F(TrainingDataTest, RunRowsUseTheGivenOrTheModelsTokenizer) {
  const std::string file = writeFile("data.jsonl", R"({"text": "Hello world"}
{"input_ids": [5, 6]}
)");
  const Ids hello = {1, 22557, 1526, 2};
  // --tokenizer, or the model directory's tokenizer.json.
  for (auto [tokenizerPath, modelDir] :
       {std::pair{kGoldenDir + "/sp-bpe-32k", dir},
        std::pair{std::string(), kGoldenDir + "/sp-bpe-32k"}}) {
    Result<std::vector<TokenRow>> rows =
        loadRunRows(file, tokenizerPath, modelDir, 32000);
    ASSERT_TRUE(rows) << rows.error().message;
    ASSERT_EQ(rows->size(), 2u);
    EXPECT_EQ((*rows)[0].inputIds, hello);
    EXPECT_EQ((*rows)[1].inputIds, (Ids{5, 6}));
  }
  // A model directory without one: the text row names its line.
  Result<std::vector<TokenRow>> rows = loadRunRows(file, "", dir, 32000);
  ASSERT_FALSE(rows);
  EXPECT_TRUE(
      isErrorAbout(rows.error().message, file + ":1", "row needs a tokenizer"));
  rows = loadRunRows(file, dir + "/nowhere", "", 32000);
  ASSERT_FALSE(rows);
  EXPECT_NE(rows.error().message.find(dir + "/nowhere"), std::string::npos)
      << rows.error().message;
}

TEST_F(TrainingDataTest, RunsWithoutDataGetTheBuiltInRows) {
  Result<std::vector<TokenRow>> rows = loadRunRows("", "", "", 100);
  ASSERT_TRUE(rows) << rows.error().message;
  ASSERT_EQ(rows->size(), 64u);
  EXPECT_EQ(rows->size(), builtinRows(100).size());
  size_t shortest = SIZE_MAX, longest = 0;
  for (const TokenRow &row : *rows) {
    EXPECT_EQ(row.labels, row.inputIds);
    for (int32_t id : row.inputIds)
      EXPECT_TRUE(id >= 0 && id < 100) << id;
    // An arithmetic progression modulo the vocabulary.
    int64_t stride = (row.inputIds[1] - row.inputIds[0] + 100) % 100;
    for (size_t i = 1; i < row.inputIds.size(); ++i)
      EXPECT_EQ((row.inputIds[i] - row.inputIds[i - 1] + 100) % 100, stride);
    shortest = std::min(shortest, row.inputIds.size());
    longest = std::max(longest, row.inputIds.size());
  }
  EXPECT_EQ(shortest, 24u);
  EXPECT_GT(longest, 256u);
}

TEST_F(TrainingDataTest, Llama3TextRowsGetEosButNoBos) {
  // The Llama 3 tokenizer.json's post-processor adds no BOS, so HF (and TRL)
  // give none; EOS is <|end_of_text|> from tokenizer_config.json.
  const std::string file =
      writeFile("data.jsonl", R"({"text": "Hello world"})");
  Result<std::vector<TokenRow>> rows =
      loadTrainingRows(file, &llama3(), 128256);
  ASSERT_TRUE(rows) << rows.error().message;
  EXPECT_EQ((*rows)[0].inputIds, (Ids{9906, 1917, 128001}));
}

TEST_F(TrainingDataTest, PromptCompletionMasksThePrompt) {
  const std::string file = writeFile("data.jsonl", kPromptRow);
  Result<std::vector<TokenRow>> sp = loadTrainingRows(file, &spBpe(), 32000);
  ASSERT_TRUE(sp) << sp.error().message;
  // encode(P) has 13 ids (with BOS); encode(P + C + "</s>") adds ▁, 4, </s>.
  EXPECT_EQ((*sp)[0].inputIds,
            (Ids{1, 1186, 28747, 1824, 349, 28705, 28750, 28806, 28750, 28804,
                 13, 28741, 28747, 28705, 28781, 2}));
  EXPECT_EQ((*sp)[0].labels,
            (Ids{X, X, X, X, X, X, X, X, X, X, X, X, X, 28705, 28781, 2}));

  Result<std::vector<TokenRow>> l3 = loadTrainingRows(file, &llama3(), 128256);
  ASSERT_TRUE(l3) << l3.error().message;
  EXPECT_EQ((*l3)[0].inputIds, (Ids{48, 25, 3639, 374, 220, 17, 10, 17, 5380,
                                    32, 25, 220, 19, 128001}));
  EXPECT_EQ((*l3)[0].labels,
            (Ids{X, X, X, X, X, X, X, X, X, X, X, 220, 19, 128001}));
}

TEST_F(TrainingDataTest, TokenizeRowsWithoutSpecialTokens) {
  const std::string file = writeFile(
      "data.jsonl", std::string(R"({"text": "Hello world"})") + "\n" +
                        kPromptRow + "\n" + R"({"input_ids": [5, 6]})" + "\n");
  std::vector<RowKind> kinds;
  Result<std::vector<TokenRow>> rows =
      tokenizeRows(file, spBpe(), /*addSpecialTokens=*/false, &kinds);
  ASSERT_TRUE(rows) << rows.error().message;
  EXPECT_EQ(kinds,
            (std::vector<RowKind>{RowKind::Text, RowKind::PromptCompletion,
                                  RowKind::Tokens}));
  EXPECT_EQ((*rows)[0].inputIds, (Ids{22557, 1526}));
  EXPECT_EQ((*rows)[1].inputIds,
            (Ids{1186, 28747, 1824, 349, 28705, 28750, 28806, 28750, 28804, 13,
                 28741, 28747, 28705, 28781}));
  EXPECT_EQ((*rows)[1].labels,
            (Ids{X, X, X, X, X, X, X, X, X, X, X, X, 28705, 28781}));
  EXPECT_EQ((*rows)[2].inputIds, (Ids{5, 6}));
  EXPECT_TRUE(caches().empty());
}

TEST_F(TrainingDataTest, TokenRowsMixWithTextRows) {
  const std::string file =
      writeFile("data.jsonl", "{\"input_ids\": [7, 8], \"labels\": [-100, 8],"
                              " \"text\": \"ignored\"}\n"
                              "\n"
                              "{\"text\": \"Hello world\"}\n");
  Result<std::vector<TokenRow>> rows = loadTrainingRows(file, &spBpe(), 32000);
  ASSERT_TRUE(rows) << rows.error().message;
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].inputIds, (Ids{7, 8}));
  EXPECT_EQ((*rows)[0].labels, (Ids{X, 8}));
  EXPECT_EQ((*rows)[1].inputIds, (Ids{1, 22557, 1526, 2}));
}

TEST_F(TrainingDataTest, OnlyTokenRowsNeedNoTokenizerAndNoCache) {
  const std::string file = writeFile("data.jsonl", "{\"input_ids\": [1, 2]}\n");
  TrainingDataInfo info;
  Result<std::vector<TokenRow>> rows =
      loadTrainingRows(file, &spBpe(), 32000, &info);
  ASSERT_TRUE(rows) << rows.error().message;
  EXPECT_EQ(info.textRows, 0);
  EXPECT_EQ(info.cachePath, "");
  EXPECT_FALSE(info.cacheWritten);
  EXPECT_TRUE(caches().empty());
  Result<std::vector<TokenRow>> plain = loadTrainingRows(file, nullptr, 32000);
  ASSERT_TRUE(plain) << plain.error().message;
  EXPECT_EQ((*plain)[0].inputIds, (Ids{1, 2}));
}

struct BadTextLine {
  const char *name;
  const char *line;
  const char *expected;
  bool withTokenizer;
};

void PrintTo(const BadTextLine &c, std::ostream *os) { *os << c.name; }

const BadTextLine badTextLines[] = {
    {"TextWithoutTokenizer", R"({"text": "hi"})",
     "a text row needs a tokenizer", false},
    {"PromptWithoutTokenizer", kPromptRow,
     "a prompt/completion row needs a tokenizer", false},
    {"TextNotString", R"({"text": 5})", "text is 5, not a string", true},
    {"PromptWithoutCompletion", R"({"prompt": "a"})",
     "has 'prompt' but no 'completion'", true},
    {"CompletionWithoutPrompt", R"({"completion": "a"})",
     "has 'completion' but no 'prompt'", true},
    {"CompletionNotString", R"({"prompt": "a", "completion": null})",
     "completion is null, not a string", true},
    {"NothingToTrainOn", R"({"labels": [1]})",
     "missing 'input_ids', 'text' or 'prompt' and 'completion'", true},
    {"TokenRowErrorsStay", R"({"input_ids": [1, 99999]})",
     "input_ids[1]: token 99999 is out of range [0, 32000)", true},
};

class BadTextLineTest : public TempDirTest,
                        public ::testing::WithParamInterface<BadTextLine> {};

TEST_P(BadTextLineTest, NamesTheLine) {
  const BadTextLine &c = GetParam();
  const std::string file = writeFile(
      "data.jsonl", std::string("{\"input_ids\": [1]}\n\n") + c.line + "\n");
  Result<std::vector<TokenRow>> rows =
      loadTrainingRows(file, c.withTokenizer ? &spBpe() : nullptr, 32000);
  ASSERT_FALSE(rows);
  EXPECT_TRUE(isErrorAbout(rows.error().message, file + ":3", c.expected));
}

INSTANTIATE_TEST_SUITE_P(Data, BadTextLineTest,
                         ::testing::ValuesIn(badTextLines),
                         [](const auto &info) { return info.param.name; });

TEST_F(TrainingDataTest, TokensBeyondTheModelVocabularyAreErrors) {
  const std::string file =
      writeFile("data.jsonl", "{\"input_ids\": [1]}\n{\"text\": \"Hello\"}\n");
  // Llama 3's EOS (128001) does not fit a 32000-token model.
  Result<std::vector<TokenRow>> rows = loadTrainingRows(file, &llama3(), 32000);
  ASSERT_FALSE(rows);
  EXPECT_TRUE(isErrorAbout(rows.error().message, file + ":2",
                           "text: token 128001 is out of range [0, 32000)"));
}

TEST_F(TrainingDataTest, CacheIsWrittenReadAndInvalidated) {
  const std::string file =
      writeFile("data.jsonl", std::string(R"({"text": "Hello world"})") + "\n" +
                                  kPromptRow + "\n{\"input_ids\": [3, 4]}\n");
  TrainingDataInfo first;
  Result<std::vector<TokenRow>> fresh =
      loadTrainingRows(file, &spBpe(), 32000, &first);
  ASSERT_TRUE(fresh) << fresh.error().message;
  EXPECT_EQ(first.textRows, 2);
  EXPECT_FALSE(first.fromCache);
  EXPECT_TRUE(first.cacheWritten);
  ASSERT_EQ(caches().size(), 1u);
  EXPECT_EQ(first.cachePath, path(caches()[0]));
  EXPECT_EQ(caches()[0].rfind("data.jsonl.llamac-cache-", 0), 0u);
  EXPECT_EQ(caches()[0].size(), std::string("data.jsonl.llamac-cache-").size() +
                                    16 + std::string(".bin").size());

  // The second run reads the cache and gets the same rows.
  TrainingDataInfo second;
  Result<std::vector<TokenRow>> cached =
      loadTrainingRows(file, &spBpe(), 32000, &second);
  ASSERT_TRUE(cached) << cached.error().message;
  EXPECT_TRUE(second.fromCache);
  EXPECT_FALSE(second.cacheWritten);
  EXPECT_EQ(second.textRows, 2);
  ASSERT_EQ(cached->size(), fresh->size());
  for (size_t i = 0; i < fresh->size(); ++i) {
    EXPECT_EQ((*cached)[i].inputIds, (*fresh)[i].inputIds) << i;
    EXPECT_EQ((*cached)[i].labels, (*fresh)[i].labels) << i;
  }

  // Another tokenizer has another cache.
  TrainingDataInfo other;
  ASSERT_TRUE(loadTrainingRows(file, &llama3(), 128256, &other));
  EXPECT_FALSE(other.fromCache);
  EXPECT_NE(other.cachePath, first.cachePath);

  // Checked against the vocabulary even when cached, with the same message.
  Result<std::vector<TokenRow>> small =
      loadTrainingRows(file, &spBpe(), 3, &second);
  ASSERT_FALSE(small);
  EXPECT_TRUE(second.fromCache);
  EXPECT_TRUE(isErrorAbout(small.error().message, file + ":1",
                           "text: token 22557 is out of range [0, 3)"));

  // Changing the file invalidates the cache; the old one is removed.
  writeFile("data.jsonl", R"({"text": "Goodbye world"})");
  TrainingDataInfo changed;
  Result<std::vector<TokenRow>> reread =
      loadTrainingRows(file, &spBpe(), 32000, &changed);
  ASSERT_TRUE(reread) << reread.error().message;
  EXPECT_FALSE(changed.fromCache);
  EXPECT_TRUE(changed.cacheWritten);
  EXPECT_NE(changed.cachePath, first.cachePath);
  EXPECT_FALSE(std::filesystem::exists(first.cachePath));
  EXPECT_EQ(reread->size(), 1u);
  EXPECT_EQ(caches().size(), 2u); // sp-bpe's new cache and llama-3's
}

TEST_F(TrainingDataTest, CorruptCacheIsIgnoredAndRewritten) {
  const std::string file =
      writeFile("data.jsonl", R"({"text": "Hello world"})");
  TrainingDataInfo info;
  ASSERT_TRUE(loadTrainingRows(file, &spBpe(), 32000, &info));
  const std::string good = readFile(info.cachePath);
  ASSERT_GT(good.size(), 60u);

  std::vector<std::string> corruptions = {
      "",                              // empty
      good.substr(0, good.size() / 2), // truncated
      "not a cache at all",
  };
  std::string flipped = good;
  flipped[flipped.size() / 2] ^= 0x40; // a changed id: the checksum fails
  corruptions.push_back(flipped);
  for (const std::string &bytes : corruptions) {
    writeFile(std::filesystem::path(info.cachePath).filename().string(), bytes);
    TrainingDataInfo again;
    Result<std::vector<TokenRow>> rows =
        loadTrainingRows(file, &spBpe(), 32000, &again);
    ASSERT_TRUE(rows) << rows.error().message;
    EXPECT_FALSE(again.fromCache);
    EXPECT_TRUE(again.cacheWritten);
    EXPECT_EQ((*rows)[0].inputIds, (Ids{1, 22557, 1526, 2}));
    EXPECT_EQ(readFile(info.cachePath), good);
  }
}

TEST_F(TrainingDataTest, UnwritableDirectoryStillLoads) {
  const std::string file =
      writeFile("data.jsonl", R"({"text": "Hello world"})");
  std::filesystem::permissions(dir, std::filesystem::perms::owner_read |
                                        std::filesystem::perms::owner_exec);
  TrainingDataInfo info;
  Result<std::vector<TokenRow>> rows =
      loadTrainingRows(file, &spBpe(), 32000, &info);
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all);
  ASSERT_TRUE(rows) << rows.error().message;
  EXPECT_EQ((*rows)[0].inputIds, (Ids{1, 22557, 1526, 2}));
  // Root may write anyway; either way the rows are right.
  if (!info.cacheWritten) {
    EXPECT_TRUE(caches().empty());
  }
}

} // namespace
