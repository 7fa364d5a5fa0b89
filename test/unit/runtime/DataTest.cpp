//===- DataTest.cpp - Tests of the training-data loader -------------------===//

#include "llamac/Runtime/Data.h"

#include "TestUtil.h"

using namespace llamac;
using llamac::test::isErrorAbout;
using llamac::test::TempDirTest;

namespace {

using DataTest = TempDirTest;

TEST_F(DataTest, LoadsRowsWithAndWithoutLabels) {
  const std::string file =
      writeFile("data.jsonl", "{\"input_ids\": [1, 2, 3]}\n"
                              "\n"
                              "  \t\r\n"
                              "{\"input_ids\": [4, 5], \"labels\": [-100, 5], "
                              "\"text\": \"ignored\"}\r\n"
                              "{\"labels\": [9], \"input_ids\": [31999]}");
  Result<std::vector<TokenRow>> rows = loadTokenRows(file, 32000);
  ASSERT_TRUE(rows) << rows.error().message;
  ASSERT_EQ(rows->size(), 3u);
  EXPECT_EQ((*rows)[0].inputIds, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ((*rows)[0].labels, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ((*rows)[1].inputIds, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ((*rows)[1].labels, (std::vector<int32_t>{-100, 5}));
  EXPECT_EQ((*rows)[2].inputIds, std::vector<int32_t>{31999});
  EXPECT_EQ((*rows)[2].labels, std::vector<int32_t>{9});
}

TEST_F(DataTest, TokenOutOfRangeHasExactMessage) {
  const std::string file =
      writeFile("data.jsonl", "{\"input_ids\": [1]}\n"
                              "\n"
                              "{\"input_ids\": [0, 1, 2, 3, 4, 70000]}\n");
  Result<std::vector<TokenRow>> rows = loadTokenRows(file, 32000);
  ASSERT_FALSE(rows);
  EXPECT_EQ(rows.error().message,
            file + ":3: input_ids[5]: token 70000 is out of range [0, 32000)");
}

struct BadLine {
  const char *name;
  const char *line;
  const char *expected;
};

/// Names the case in test output.
void PrintTo(const BadLine &c, std::ostream *os) { *os << c.name; }

const BadLine badLines[] = {
    {"MalformedJson", "{\"input_ids\": [1, 2", "not valid JSON: parse error"},
    {"NotAnObject", "[1, 2, 3]", "line is [1,2,3], not a JSON object"},
    {"MissingInputIds", "{\"labels\": [1]}", "missing 'input_ids'"},
    {"InputIdsNotArray", "{\"input_ids\": 5}", "input_ids is 5, not an array"},
    {"FractionalToken", "{\"input_ids\": [1, 2.5]}",
     "input_ids[1]: 2.5 is not an integer"},
    {"StringToken", "{\"input_ids\": [\"7\"]}",
     "input_ids[0]: \"7\" is not an integer"},
    {"BoolToken", "{\"input_ids\": [true]}",
     "input_ids[0]: true is not an integer"},
    {"EmptyInputIds", "{\"input_ids\": []}", "input_ids is empty"},
    {"NegativeToken", "{\"input_ids\": [-100]}",
     "input_ids[0]: token -100 is out of range [0, 100)"},
    {"TokenEqualToVocab", "{\"input_ids\": [3, 100]}",
     "input_ids[1]: token 100 is out of range [0, 100)"},
    {"HugeToken", "{\"input_ids\": [18446744073709551615]}",
     "input_ids[0]: token 18446744073709551615 is out of range [0, 100)"},
    {"LabelOutOfRange", "{\"input_ids\": [1, 2], \"labels\": [-100, 100]}",
     "labels[1]: label 100 is out of range [0, 100) and is not -100"},
    {"NegativeLabel", "{\"input_ids\": [1], \"labels\": [-1]}",
     "labels[0]: label -1 is out of range [0, 100) and is not -100"},
    {"LabelNotInteger", "{\"input_ids\": [1], \"labels\": [null]}",
     "labels[0]: null is not an integer"},
    {"LabelsNotArray", "{\"input_ids\": [1], \"labels\": \"1\"}",
     "labels is \"1\", not an array"},
    {"LabelsLengthMismatch", "{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}",
     "labels has 2 entries, but input_ids has 3"},
};

class BadLineTest : public TempDirTest,
                    public ::testing::WithParamInterface<BadLine> {};

TEST_P(BadLineTest, NamesFileLineAndField) {
  // The bad line is line 4, after a good row and two blank lines.
  const std::string file =
      writeFile("data.jsonl", std::string("{\"input_ids\": [1]}\n\n\n") +
                                  GetParam().line + "\n{\"input_ids\": [2]}\n");
  Result<std::vector<TokenRow>> rows = loadTokenRows(file, 100);
  ASSERT_FALSE(rows);
  EXPECT_TRUE(
      isErrorAbout(rows.error().message, file + ":4", GetParam().expected));
}

INSTANTIATE_TEST_SUITE_P(Data, BadLineTest, ::testing::ValuesIn(badLines),
                         [](const ::testing::TestParamInfo<BadLine> &param) {
                           return std::string(param.param.name);
                         });

TEST_F(DataTest, FileWithoutRowsIsAnError) {
  for (const char *contents : {"", "\n  \n\t\n"}) {
    const std::string file = writeFile("empty.jsonl", contents);
    Result<std::vector<TokenRow>> rows = loadTokenRows(file, 100);
    ASSERT_FALSE(rows);
    EXPECT_TRUE(isErrorAbout(rows.error().message, file, "no rows"));
  }
}

TEST_F(DataTest, UnreadableFileIsAnError) {
  const std::string missing = path("missing.jsonl");
  Result<std::vector<TokenRow>> rows = loadTokenRows(missing, 100);
  ASSERT_FALSE(rows);
  EXPECT_TRUE(isErrorAbout(rows.error().message, missing,
                           "cannot open: No such file or directory"));
  Result<std::vector<TokenRow>> directory = loadTokenRows(dir, 100);
  ASSERT_FALSE(directory);
  EXPECT_TRUE(isErrorAbout(directory.error().message, dir, "directory"));
}

TEST_F(DataTest, InvalidVocabularySizeIsAnError) {
  const std::string file = writeFile("data.jsonl", "{\"input_ids\": [0]}\n");
  for (int64_t vocab : {int64_t(0), int64_t(-5), (int64_t(1) << 31) + 1}) {
    Result<std::vector<TokenRow>> rows = loadTokenRows(file, vocab);
    ASSERT_FALSE(rows) << vocab;
    EXPECT_TRUE(isErrorAbout(rows.error().message, file, "vocabulary size"));
  }
}

std::vector<TokenRow> sampleRows() {
  return {{{1, 2, 3, 4}, {1, 2, 3, 4}},
          {{5, 6}, {-100, 6}},
          {{7, 8, 9}, {7, -100, 9}}};
}

TEST(MakeBatchTest, TruncatesAndPads) {
  Batch batch = makeBatch(sampleRows(), 0, 3, 3);
  EXPECT_EQ(batch.batch, 3);
  EXPECT_EQ(batch.seq, 3);
  EXPECT_EQ(batch.inputIds, (std::vector<int32_t>{1, 2, 3, 5, 6, 0, 7, 8, 9}));
  EXPECT_EQ(batch.labels,
            (std::vector<int32_t>{1, 2, 3, -100, 6, -100, 7, -100, 9}));
  EXPECT_EQ(batch.tokens, 8);
}

TEST(MakeBatchTest, PadsWithPadId) {
  Batch batch = makeBatch(sampleRows(), 1, 1, 5, /*padId=*/2);
  EXPECT_EQ(batch.inputIds, (std::vector<int32_t>{5, 6, 2, 2, 2}));
  EXPECT_EQ(batch.labels, (std::vector<int32_t>{-100, 6, -100, -100, -100}));
  EXPECT_EQ(batch.tokens, 2);
}

TEST(MakeBatchTest, WrapsAroundInFileOrder) {
  Batch batch = makeBatch(sampleRows(), 2, 4, 2);
  EXPECT_EQ(batch.inputIds, (std::vector<int32_t>{7, 8, 1, 2, 5, 6, 7, 8}));
  EXPECT_EQ(batch.labels,
            (std::vector<int32_t>{7, -100, 1, 2, -100, 6, 7, -100}));
  EXPECT_EQ(batch.tokens, 8);
  // A start beyond the end (or before the beginning) counts modulo the rows.
  EXPECT_EQ(makeBatch(sampleRows(), 7, 1, 2).inputIds,
            (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(makeBatch(sampleRows(), -1, 1, 2).inputIds,
            (std::vector<int32_t>{7, 8}));
}

} // namespace
