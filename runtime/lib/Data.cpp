//===- Data.cpp - Training data: token rows and batches -------------------===//

#include "llamac/Runtime/Data.h"

#include "IOUtil.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cassert>
#include <fstream>
#include <limits>

using namespace llamac;
using namespace llamac::io;
using json = nlohmann::json;

/// Reads \p array, the value of the field \p field, into \p out. An entry must
/// lie in [0, vocabSize), or equal -100 when \p allowIgnore. Errors are
/// prefixed by \p where ("file:line: ").
static Status readIds(const json &array, const char *field, int64_t vocabSize,
                      bool allowIgnore, const std::string &where,
                      std::vector<int32_t> &out) {
  if (!array.is_array())
    return Error{where + field + " is " + brief(array) + ", not an array"};
  out.reserve(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    const json &entry = array[i];
    const std::string at = where + field + "[" + std::to_string(i) + "]: ";
    if (!entry.is_number_integer())
      return Error{at + brief(entry) + " is not an integer"};
    // Unsigned JSON numbers beyond int64 are out of range for any vocabulary.
    const bool huge =
        entry.is_number_unsigned() &&
        entry.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max());
    const int64_t value = huge ? -1 : entry.get<int64_t>();
    const bool inRange = !huge && value >= 0 && value < vocabSize;
    if (!inRange && !(allowIgnore && value == kIgnoreLabel)) {
      const std::string range = "[0, " + std::to_string(vocabSize) + ")";
      if (allowIgnore)
        return Error{at + "label " + entry.dump() + " is out of range " +
                     range + " and is not -100"};
      return Error{at + "token " + entry.dump() + " is out of range " + range};
    }
    out.push_back(int32_t(value));
  }
  return {};
}

/// Parses one non-blank line into a row; errors are prefixed by \p where.
static Result<TokenRow> parseRow(const std::string &line, int64_t vocabSize,
                                 const std::string &where) {
  json object;
  try {
    object = json::parse(line);
  } catch (const json::exception &e) {
    return Error{where + "not valid JSON: " + jsonMessage(e)};
  }
  if (!object.is_object())
    return Error{where + "line is " + brief(object) + ", not a JSON object"};
  auto inputIds = object.find("input_ids");
  if (inputIds == object.end())
    return Error{where + "missing 'input_ids'"};
  TokenRow row;
  if (Status status = readIds(*inputIds, "input_ids", vocabSize,
                              /*allowIgnore=*/false, where, row.inputIds);
      !status)
    return status.error();
  if (row.inputIds.empty())
    return Error{where + "input_ids is empty"};
  auto labels = object.find("labels");
  if (labels == object.end()) {
    row.labels = row.inputIds;
    return row;
  }
  if (Status status = readIds(*labels, "labels", vocabSize,
                              /*allowIgnore=*/true, where, row.labels);
      !status)
    return status.error();
  if (row.labels.size() != row.inputIds.size())
    return Error{where + "labels has " + std::to_string(row.labels.size()) +
                 " entries, but input_ids has " +
                 std::to_string(row.inputIds.size())};
  return row;
}

Result<std::vector<TokenRow>> llamac::loadTokenRows(const std::string &path,
                                                    int64_t vocabSize) {
  return guard(path, [&]() -> Result<std::vector<TokenRow>> {
    constexpr int64_t maxVocab = int64_t(1) << 31;
    if (vocabSize < 1 || vocabSize > maxVocab)
      return fail(path, "vocabulary size " + std::to_string(vocabSize) +
                            " is not in [1, 2^31]");
    // Opening it first gives a precise error (and rejects a directory).
    if (Result<InputFile> file = InputFile::open(path); !file)
      return file.error();
    std::ifstream in(path);
    if (!in)
      return fail(path, "cannot open");
    std::vector<TokenRow> rows;
    std::string line;
    for (int64_t number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r\n") == std::string::npos)
        continue;
      Result<TokenRow> row =
          parseRow(line, vocabSize, path + ":" + std::to_string(number) + ": ");
      if (!row)
        return row.error();
      rows.push_back(std::move(*row));
    }
    if (in.bad())
      return fail(path, "read error");
    if (rows.empty())
      return fail(path, "no rows (the file is empty or only blank lines)");
    return rows;
  });
}

Batch llamac::makeBatch(const std::vector<TokenRow> &rows, int64_t firstRow,
                        int64_t batch, int64_t seq, int32_t padId) {
  assert(!rows.empty() && batch > 0 && seq > 0 && "invalid batch request");
  Batch out;
  out.batch = batch;
  out.seq = seq;
  out.inputIds.assign(size_t(batch * seq), padId);
  out.labels.assign(size_t(batch * seq), kIgnoreLabel);
  const int64_t count = int64_t(rows.size());
  const int64_t start = (firstRow % count + count) % count;
  for (int64_t b = 0; b < batch; ++b) {
    const TokenRow &row = rows[size_t((start + b) % count)];
    assert(row.labels.size() == row.inputIds.size() && "ragged row");
    const int64_t length = std::min<int64_t>(seq, int64_t(row.inputIds.size()));
    std::copy_n(row.inputIds.begin(), length, out.inputIds.begin() + b * seq);
    std::copy_n(row.labels.begin(), length, out.labels.begin() + b * seq);
    out.tokens += length;
  }
  return out;
}
