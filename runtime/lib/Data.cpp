//===- Data.cpp - Training data: token rows and batches -------------------===//

#include "llamac/Runtime/Data.h"

#include "llamac/Runtime/Safetensors.h"
#include "llamac/Runtime/Tokenizer.h"

#include "Hash.h"
#include "IOUtil.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cassert>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>

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

namespace {

/// How lines become rows.
struct RowOptions {
  int64_t vocabSize = 0;
  /// Accept text rows (loadTrainingRows, tokenizeRows); with a null
  /// tokenizer they are errors naming the line.
  bool allowText = false;
  const Tokenizer *tokenizer = nullptr;
  bool addSpecialTokens = true;
};

/// A row and where it came from.
struct ParsedRow {
  TokenRow row;
  RowKind kind = RowKind::Tokens;
  int64_t line = 0;
};

/// The rules that turn text rows into tokens; part of the cache key, so
/// changing them invalidates every cache.
const char *const kTextRowRules =
    "llamac text rows v1: TRL SFTTrainer non-conversational rows, EOS text "
    "appended, add_special_tokens=true";

} // namespace

/// Checks the ids a tokenizer produced for a text row against the
/// vocabulary; \p field names the row's text fields.
static Status checkTokenized(const TokenRow &row, const char *field,
                             int64_t vocabSize, const std::string &where) {
  if (row.inputIds.empty())
    return Error{where + field + " gives no tokens"};
  for (int32_t id : row.inputIds)
    if (id < 0 || id >= vocabSize)
      return Error{where + field + ": token " + std::to_string(id) +
                   " is out of range [0, " + std::to_string(vocabSize) +
                   ") (the tokenizer's vocabulary is larger than the "
                   "model's)"};
  return {};
}

/// \p text with the tokenizer's EOS text appended, as TRL's add_eos does.
static std::string withEos(const std::string &text, const Tokenizer &tokenizer,
                           bool addSpecialTokens) {
  const std::string &eos = tokenizer.eosToken();
  if (!addSpecialTokens || eos.empty() ||
      (text.size() >= eos.size() &&
       text.compare(text.size() - eos.size(), eos.size(), eos) == 0))
    return text;
  return text + eos;
}

/// Builds the row of a {"text"} or {"prompt", "completion"} line (see
/// Data.h); errors are prefixed by \p where.
static Status parseTextRow(const json &object, const std::string &where,
                           const RowOptions &options, ParsedRow &out) {
  auto stringField = [&](const char *key, std::string &value) -> Status {
    const json &field = object.at(key);
    if (!field.is_string())
      return Error{where + key + " is " + brief(field) + ", not a string"};
    value = field.get<std::string>();
    return {};
  };
  const bool isPrompt =
      object.contains("prompt") || object.contains("completion");
  if (isPrompt) {
    out.kind = RowKind::PromptCompletion;
    for (const char *key : {"prompt", "completion"})
      if (!object.contains(key))
        return Error{where + "has '" +
                     (key[0] == 'p' ? "completion" : "prompt") + "' but no '" +
                     key + "'"};
  } else {
    out.kind = RowKind::Text;
  }
  if (!options.tokenizer)
    return Error{where + (isPrompt ? "a prompt/completion" : "a text") +
                 " row needs a tokenizer"};
  const Tokenizer &tokenizer = *options.tokenizer;
  const bool special = options.addSpecialTokens;
  if (!isPrompt) {
    std::string text;
    if (Status status = stringField("text", text); !status)
      return status;
    out.row.inputIds =
        tokenizer.encode(withEos(text, tokenizer, special), special);
    out.row.labels = out.row.inputIds;
    return checkTokenized(out.row, "text", options.vocabSize, where);
  }
  std::string prompt, completion;
  if (Status status = stringField("prompt", prompt); !status)
    return status;
  if (Status status = stringField("completion", completion); !status)
    return status;
  const size_t promptLength = tokenizer.encode(prompt, special).size();
  out.row.inputIds = tokenizer.encode(
      prompt + withEos(completion, tokenizer, special), special);
  out.row.labels = out.row.inputIds;
  std::fill_n(out.row.labels.begin(),
              std::min(promptLength, out.row.labels.size()), kIgnoreLabel);
  return checkTokenized(out.row, "prompt/completion", options.vocabSize, where);
}

/// Parses one non-blank line into a row; errors are prefixed by \p where.
static Status parseRow(const std::string &line, const std::string &where,
                       const RowOptions &options, ParsedRow &out) {
  json object;
  try {
    object = json::parse(line);
  } catch (const json::exception &e) {
    return Error{where + "not valid JSON: " + jsonMessage(e)};
  }
  if (!object.is_object())
    return Error{where + "line is " + brief(object) + ", not a JSON object"};
  auto inputIds = object.find("input_ids");
  if (inputIds == object.end()) {
    if (!options.allowText)
      return Error{where + "missing 'input_ids'"};
    if (object.contains("text") || object.contains("prompt") ||
        object.contains("completion"))
      return parseTextRow(object, where, options, out);
    return Error{where + "missing 'input_ids', 'text' or 'prompt' and "
                         "'completion'"};
  }
  const int64_t vocabSize = options.vocabSize;
  TokenRow &row = out.row;
  out.kind = RowKind::Tokens;
  if (Status status = readIds(*inputIds, "input_ids", vocabSize,
                              /*allowIgnore=*/false, where, row.inputIds);
      !status)
    return status.error();
  if (row.inputIds.empty())
    return Error{where + "input_ids is empty"};
  auto labels = object.find("labels");
  if (labels == object.end()) {
    row.labels = row.inputIds;
    return {};
  }
  if (Status status = readIds(*labels, "labels", vocabSize,
                              /*allowIgnore=*/true, where, row.labels);
      !status)
    return status.error();
  if (row.labels.size() != row.inputIds.size())
    return Error{where + "labels has " + std::to_string(row.labels.size()) +
                 " entries, but input_ids has " +
                 std::to_string(row.inputIds.size())};
  return {};
}

/// Checks \p vocabSize as every loader does.
static Status checkVocabSize(const std::string &path, int64_t vocabSize) {
  constexpr int64_t maxVocab = int64_t(1) << 31;
  if (vocabSize < 1 || vocabSize > maxVocab)
    return fail(path, "vocabulary size " + std::to_string(vocabSize) +
                          " is not in [1, 2^31]");
  return {};
}

/// Parses every non-blank line of \p contents, the text of \p path.
static Result<std::vector<ParsedRow>> parseRows(const std::string &path,
                                                const std::string &contents,
                                                const RowOptions &options) {
  std::vector<ParsedRow> rows;
  size_t begin = 0;
  for (int64_t number = 1; begin < contents.size(); ++number) {
    size_t end = contents.find('\n', begin);
    if (end == std::string::npos)
      end = contents.size();
    const std::string line = contents.substr(begin, end - begin);
    begin = end + 1;
    if (line.find_first_not_of(" \t\r\n") == std::string::npos)
      continue;
    ParsedRow row;
    row.line = number;
    if (Status status = parseRow(
            line, path + ":" + std::to_string(number) + ": ", options, row);
        !status)
      return status.error();
    rows.push_back(std::move(row));
  }
  if (rows.empty())
    return fail(path, "no rows (the file is empty or only blank lines)");
  return rows;
}

static std::vector<TokenRow> tokenRowsOf(std::vector<ParsedRow> &rows) {
  std::vector<TokenRow> out;
  out.reserve(rows.size());
  for (ParsedRow &row : rows)
    out.push_back(std::move(row.row));
  return out;
}

Result<std::vector<TokenRow>> llamac::loadTokenRows(const std::string &path,
                                                    int64_t vocabSize) {
  return guard(path, [&]() -> Result<std::vector<TokenRow>> {
    if (Status status = checkVocabSize(path, vocabSize); !status)
      return status.error();
    Result<std::string> contents = readWholeFile(path);
    if (!contents)
      return contents.error();
    RowOptions options;
    options.vocabSize = vocabSize;
    Result<std::vector<ParsedRow>> rows = parseRows(path, *contents, options);
    if (!rows)
      return rows.error();
    return tokenRowsOf(*rows);
  });
}

//===----------------------------------------------------------------------===//
// The cache of tokenized files
//===----------------------------------------------------------------------===//
//
// Layout (native byte order, i.e. little-endian on every supported machine):
//   "LLAMACTR" | u32 version | 32 bytes: key (hex) | 32 bytes: tokenizer
//   fingerprint (hex) | u64 rows
//   per row: u64 line | u32 kind | u64 n | n x i32 input_ids | n x i32 labels
//   32 bytes: Digest (hex) of everything before

namespace {

constexpr char kCacheMagic[8] = {'L', 'L', 'A', 'M', 'A', 'C', 'T', 'R'};
constexpr uint32_t kCacheVersion = 1;
constexpr size_t kKeySize = 32, kFingerprintSize = 32;

template <typename T> void put(std::string &out, T value) {
  out.append(reinterpret_cast<const char *>(&value), sizeof(T));
}

/// Reads fixed-size values from a byte string; fails past its end.
struct Reader {
  const std::string &bytes;
  size_t at = 0;
  bool ok = true;
  template <typename T> T get() {
    T value{};
    if (!ok || bytes.size() - at < sizeof(T)) {
      ok = false;
      return value;
    }
    std::memcpy(&value, bytes.data() + at, sizeof(T));
    at += sizeof(T);
    return value;
  }
  void getInts(std::vector<int32_t> &out, uint64_t count) {
    if (!ok || (bytes.size() - at) / sizeof(int32_t) < count) {
      ok = false;
      return;
    }
    out.resize(size_t(count));
    std::memcpy(out.data(), bytes.data() + at, size_t(count) * sizeof(int32_t));
    at += size_t(count) * sizeof(int32_t);
  }
};

std::string serializeCache(const std::vector<ParsedRow> &rows,
                           const std::string &key,
                           const std::string &fingerprint) {
  std::string out(kCacheMagic, sizeof(kCacheMagic));
  put(out, kCacheVersion);
  out += key;
  out += fingerprint;
  put(out, uint64_t(rows.size()));
  for (const ParsedRow &row : rows) {
    put(out, uint64_t(row.line));
    put(out, uint32_t(row.kind));
    put(out, uint64_t(row.row.inputIds.size()));
    out.append(reinterpret_cast<const char *>(row.row.inputIds.data()),
               row.row.inputIds.size() * sizeof(int32_t));
    out.append(reinterpret_cast<const char *>(row.row.labels.data()),
               row.row.labels.size() * sizeof(int32_t));
  }
  out += Digest().update(out).hex();
  return out;
}

/// The rows of the cache \p bytes, or nothing when it is corrupt, of another
/// version or of another key.
std::optional<std::vector<ParsedRow>> parseCache(const std::string &bytes,
                                                 const std::string &key) {
  constexpr size_t digestSize = 32;
  if (bytes.size() < sizeof(kCacheMagic) + digestSize ||
      bytes.compare(0, sizeof(kCacheMagic), kCacheMagic, sizeof(kCacheMagic)))
    return std::nullopt;
  const size_t body = bytes.size() - digestSize;
  if (bytes.compare(
          body, digestSize,
          Digest().update(std::string_view(bytes).substr(0, body)).hex()))
    return std::nullopt;
  const std::string payload = bytes.substr(0, body);
  Reader in{payload, sizeof(kCacheMagic)};
  if (in.get<uint32_t>() != kCacheVersion || !in.ok ||
      payload.size() - in.at < key.size() + kFingerprintSize ||
      payload.compare(in.at, key.size(), key))
    return std::nullopt;
  in.at += key.size() + kFingerprintSize;
  const uint64_t count = in.get<uint64_t>();
  std::vector<ParsedRow> rows;
  for (uint64_t i = 0; i < count && in.ok; ++i) {
    ParsedRow row;
    row.line = int64_t(in.get<uint64_t>());
    const uint32_t kind = in.get<uint32_t>();
    if (kind > uint32_t(RowKind::PromptCompletion))
      return std::nullopt;
    row.kind = RowKind(kind);
    const uint64_t length = in.get<uint64_t>();
    in.getInts(row.row.inputIds, length);
    in.getInts(row.row.labels, length);
    rows.push_back(std::move(row));
  }
  if (!in.ok || in.at != payload.size() || rows.empty())
    return std::nullopt;
  return rows;
}

/// Checks cached rows against \p vocabSize with the messages a fresh parse
/// gives.
Status checkCachedRows(const std::vector<ParsedRow> &rows,
                       const std::string &path, int64_t vocabSize) {
  for (const ParsedRow &row : rows) {
    const std::string where = path + ":" + std::to_string(row.line) + ": ";
    if (row.kind == RowKind::Text) {
      if (Status status = checkTokenized(row.row, "text", vocabSize, where);
          !status)
        return status;
      continue;
    }
    if (row.kind == RowKind::PromptCompletion) {
      if (Status status =
              checkTokenized(row.row, "prompt/completion", vocabSize, where);
          !status)
        return status;
      continue;
    }
    // Token rows: a value out of range is re-checked through readIds, for
    // the message a fresh parse gives.
    auto inRange = [&](int32_t id) { return id >= 0 && id < vocabSize; };
    const bool idsOk =
        std::all_of(row.row.inputIds.begin(), row.row.inputIds.end(), inRange);
    const bool labelsOk = std::all_of(
        row.row.labels.begin(), row.row.labels.end(),
        [&](int32_t id) { return inRange(id) || id == kIgnoreLabel; });
    std::vector<int32_t> scratch;
    if (!idsOk)
      if (Status status = readIds(json(row.row.inputIds), "input_ids",
                                  vocabSize, false, where, scratch);
          !status)
        return status;
    if (!labelsOk)
      if (Status status = readIds(json(row.row.labels), "labels", vocabSize,
                                  true, where, scratch);
          !status)
        return status;
  }
  return {};
}

/// Removes the caches of \p path made with the tokenizer \p fingerprint
/// other than \p keep: those of older versions of the file. Caches of other
/// tokenizers stay.
void removeStaleCaches(const std::string &path, const std::string &keep,
                       const std::string &fingerprint) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path file(path);
  const fs::path directory =
      file.has_parent_path() ? file.parent_path() : fs::path(".");
  const std::string prefix = file.filename().string() + ".llamac-cache-";
  const std::string keepName = fs::path(keep).filename().string();
  for (fs::directory_iterator it(directory, ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name == keepName || name.size() != prefix.size() + 16 + 4 ||
        name.compare(0, prefix.size(), prefix) ||
        name.compare(name.size() - 4, 4, ".bin") ||
        name.find_first_not_of("0123456789abcdef", prefix.size()) !=
            prefix.size() + 16)
      continue;
    // The header up to the fingerprint.
    const size_t headerSize =
        sizeof(kCacheMagic) + sizeof(uint32_t) + kKeySize + kFingerprintSize;
    std::string header(headerSize, '\0');
    {
      std::ifstream in(it->path(), std::ios::binary);
      if (!in.read(header.data(), std::streamsize(headerSize)))
        continue;
    }
    if (header.compare(0, sizeof(kCacheMagic), kCacheMagic,
                       sizeof(kCacheMagic)) ||
        header.compare(headerSize - kFingerprintSize, kFingerprintSize,
                       fingerprint))
      continue;
    std::error_code ignored;
    fs::remove(it->path(), ignored);
  }
}

} // namespace

Result<std::vector<TokenRow>>
llamac::loadTrainingRows(const std::string &path, const Tokenizer *tokenizer,
                         int64_t vocabSize, TrainingDataInfo *info) {
  return guard(path, [&]() -> Result<std::vector<TokenRow>> {
    TrainingDataInfo local;
    TrainingDataInfo &report = info ? *info : local;
    report = TrainingDataInfo();
    if (Status status = checkVocabSize(path, vocabSize); !status)
      return status.error();
    Result<std::string> contents = readWholeFile(path);
    if (!contents)
      return contents.error();

    std::string key;
    if (tokenizer) {
      key = Digest()
                .update(*contents)
                .update(tokenizer->fingerprint())
                .update(kTextRowRules)
                .hex();
      report.cachePath = path + ".llamac-cache-" + key.substr(0, 16) + ".bin";
      if (Result<std::string> bytes = readWholeFile(report.cachePath)) {
        if (std::optional<std::vector<ParsedRow>> cached =
                parseCache(*bytes, key)) {
          report.fromCache = true;
          if (Status status = checkCachedRows(*cached, path, vocabSize);
              !status)
            return status.error();
          for (const ParsedRow &row : *cached)
            report.textRows += row.kind != RowKind::Tokens;
          return tokenRowsOf(*cached);
        }
      }
    }

    RowOptions options;
    options.vocabSize = vocabSize;
    options.allowText = true;
    options.tokenizer = tokenizer;
    Result<std::vector<ParsedRow>> rows = parseRows(path, *contents, options);
    if (!rows)
      return rows.error();
    for (const ParsedRow &row : *rows)
      report.textRows += row.kind != RowKind::Tokens;
    if (report.textRows == 0) {
      report.cachePath.clear();
    } else if (writeFileAtomic(
                   report.cachePath,
                   serializeCache(*rows, key, tokenizer->fingerprint()))) {
      report.cacheWritten = true;
      removeStaleCaches(path, report.cachePath, tokenizer->fingerprint());
    }
    return tokenRowsOf(*rows);
  });
}

Result<std::vector<TokenRow>>
llamac::loadRunRows(const std::string &dataPath,
                    const std::string &tokenizerPath,
                    const std::string &modelDir, int64_t vocabSize) {
  if (dataPath.empty())
    return builtinRows(vocabSize);
  std::string tokenizerSource = tokenizerPath;
  std::error_code error;
  if (tokenizerSource.empty() && !modelDir.empty() &&
      std::filesystem::is_regular_file(
          std::filesystem::path(modelDir) / "tokenizer.json", error))
    tokenizerSource = modelDir;
  std::optional<Tokenizer> tokenizer;
  if (!tokenizerSource.empty()) {
    Result<Tokenizer> loaded = Tokenizer::load(tokenizerSource);
    if (!loaded)
      return loaded.error();
    tokenizer = std::move(*loaded);
  }
  return loadTrainingRows(dataPath, tokenizer ? &*tokenizer : nullptr,
                          vocabSize);
}

std::vector<TokenRow> llamac::builtinRows(int64_t vocabSize) {
  std::vector<TokenRow> rows;
  for (int64_t r = 0; r < 64; ++r) {
    int64_t length = 24 + (r * 37) % 300, start = (r * 13) % vocabSize;
    int64_t stride = 1 + r % 4;
    TokenRow row;
    for (int64_t i = 0; i < length; ++i)
      row.inputIds.push_back(int32_t((start + i * stride) % vocabSize));
    row.labels = row.inputIds;
    rows.push_back(std::move(row));
  }
  return rows;
}

Result<std::vector<TokenRow>>
llamac::tokenizeRows(const std::string &path, const Tokenizer &tokenizer,
                     bool addSpecialTokens, std::vector<RowKind> *kinds) {
  return guard(path, [&]() -> Result<std::vector<TokenRow>> {
    Result<std::string> contents = readWholeFile(path);
    if (!contents)
      return contents.error();
    RowOptions options;
    options.vocabSize = tokenizer.vocabSize();
    options.allowText = true;
    options.tokenizer = &tokenizer;
    options.addSpecialTokens = addSpecialTokens;
    Result<std::vector<ParsedRow>> rows = parseRows(path, *contents, options);
    if (!rows)
      return rows.error();
    if (kinds) {
      kinds->clear();
      for (const ParsedRow &row : *rows)
        kinds->push_back(row.kind);
    }
    return tokenRowsOf(*rows);
  });
}

Batch llamac::makeBatch(const std::vector<TokenRow> &rows, int64_t firstRow,
                        int64_t batch, int64_t seq, int32_t padId) {
  assert(!rows.empty() && batch > 0 && "invalid batch request");
  const int64_t count = int64_t(rows.size());
  const int64_t start = (firstRow % count + count) % count;
  std::vector<int64_t> indices;
  for (int64_t b = 0; b < batch; ++b)
    indices.push_back((start + b) % count);
  return gatherBatch(rows, indices, seq, padId);
}

Batch llamac::gatherBatch(const std::vector<TokenRow> &rows,
                          const std::vector<int64_t> &indices, int64_t seq,
                          int32_t padId) {
  assert(!indices.empty() && seq > 0 && "invalid batch request");
  Batch out;
  out.batch = int64_t(indices.size());
  out.seq = seq;
  out.inputIds.assign(size_t(out.batch * seq), padId);
  out.labels.assign(size_t(out.batch * seq), kIgnoreLabel);
  for (int64_t b = 0; b < out.batch; ++b) {
    const TokenRow &row = rows.at(size_t(indices[size_t(b)]));
    assert(row.labels.size() == row.inputIds.size() && "ragged row");
    const int64_t length = std::min<int64_t>(seq, int64_t(row.inputIds.size()));
    std::copy_n(row.inputIds.begin(), length, out.inputIds.begin() + b * seq);
    std::copy_n(row.labels.begin(), length, out.labels.begin() + b * seq);
    out.tokens += length;
  }
  return out;
}
