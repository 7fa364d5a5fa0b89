//===- Data.h - Training data: token rows and batches ----------*- C++ -*-===//
//
// Training data is JSON Lines, one object per line:
//   {"input_ids": [1, 15043, 29892], "labels": [-100, 15043, 29892]}
// `labels` is optional (absent = a copy of input_ids); -100 marks a position
// the loss ignores. Other fields are ignored, blank lines are skipped.
//
// With a tokenizer (loadTrainingRows), a line may hold text instead, built
// exactly as TRL's SFTTrainer (0.20 and later) builds non-conversational
// rows, where EOS is the eos_token text of tokenizer_config.json:
//   {"text": T}
//     input_ids = encode(T + EOS, add_special_tokens=true), labels = input_ids
//     (EOS is not appended when T already ends with it or there is none);
//   {"prompt": P, "completion": C}
//     C' = C + EOS (likewise), P_ids = encode(P, add_special_tokens=true),
//     input_ids = encode(P + C', add_special_tokens=true),
//     labels = input_ids with the first len(P_ids) positions set to -100.
// add_special_tokens=true adds what the tokenizer's post-processor adds: BOS
// for Llama 2 files, nothing for the Llama 3 file in shared/tokenizers (its
// post-processor is ByteLevel). Appending the EOS text and tokenizing is the
// same as appending the EOS id, since special tokens are split off first.
// A line with input_ids is a token row even when it also has text fields;
// one with prompt or completion is a prompt/completion row even with text.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_DATA_H
#define LLAMAC_RUNTIME_DATA_H

#include "llamac/Runtime/Result.h"

#include <cstdint>
#include <string>
#include <vector>

namespace llamac {

class Tokenizer;

/// The label value the loss ignores.
constexpr int32_t kIgnoreLabel = -100;

/// One training example: token ids and per-position labels of equal length.
struct TokenRow {
  std::vector<int32_t> inputIds, labels;
};

/// Reads and validates the JSON Lines file \p path: every token id must lie
/// in [0, vocabSize), every label too or be -100. Errors name the file, the
/// line and the field ("data.jsonl:3: input_ids[5]: ...").
Result<std::vector<TokenRow>> loadTokenRows(const std::string &path,
                                            int64_t vocabSize);

/// What a line of a training file holds.
enum class RowKind { Tokens, Text, PromptCompletion };

/// How loadTrainingRows got its rows.
struct TrainingDataInfo {
  /// Rows built from text ({"text"} or {"prompt", "completion"}).
  int64_t textRows = 0;
  /// The cache of the tokenized file ("" when there is none: no tokenizer,
  /// or no text rows).
  std::string cachePath;
  /// True when the rows came from the cache instead of the tokenizer.
  bool fromCache = false;
  /// True when this call wrote the cache.
  bool cacheWritten = false;
};

/// Reads the JSON Lines file \p path of token rows and, when \p tokenizer is
/// given, text rows (see the top of this file); ids and labels are checked
/// against \p vocabSize as loadTokenRows does. A text row without a tokenizer
/// is an error naming its line.
///
/// When the file has text rows, the result is cached beside it, in
/// `<path>.llamac-cache-<16 hex digits>.bin`: the digits are a digest of the
/// file's bytes, the tokenizer's fingerprint (tokenizer.json and
/// tokenizer_config.json bytes) and the row-building rules, which the cache
/// also stores in full with a checksum. A later call with the same inputs
/// reads the cache instead of tokenizing; a cache that is corrupt or whose
/// key differs is ignored and rewritten (atomically); caches of older
/// versions of the file are removed. Failing to write the cache is not an
/// error. \p info, when given, tells which happened.
Result<std::vector<TokenRow>>
loadTrainingRows(const std::string &path, const Tokenizer *tokenizer,
                 int64_t vocabSize, TrainingDataInfo *info = nullptr);

/// The rows of a training run, as both backends read them: with \p dataPath
/// empty, builtinRows(vocabSize); otherwise loadTrainingRows of \p dataPath
/// with the tokenizer at \p tokenizerPath (tokenizer.json or its directory)
/// or, when that is empty, the one in \p modelDir if that is a directory
/// holding a tokenizer.json (token rows need none).
Result<std::vector<TokenRow>> loadRunRows(const std::string &dataPath,
                                          const std::string &tokenizerPath,
                                          const std::string &modelDir,
                                          int64_t vocabSize);

/// Built-in data for a run without --data: 64 arithmetic progressions modulo
/// \p vocabSize, of varied start, stride and length (24 to 323 tokens, so
/// some are truncated and some padded). A model learns to continue them
/// within steps.
std::vector<TokenRow> builtinRows(int64_t vocabSize);

/// Reads \p path as loadTrainingRows does (never using the cache), checking
/// ids against tokenizer.vocabSize(). With \p addSpecialTokens false, text
/// rows are plain encodings: input_ids = encode(T, false), and for prompt /
/// completion rows input_ids = encode(P + C, false) with labels -100 over
/// the first len(encode(P, false)) positions (no EOS appended). \p kinds,
/// when given, receives each row's kind.
Result<std::vector<TokenRow>>
tokenizeRows(const std::string &path, const Tokenizer &tokenizer,
             bool addSpecialTokens, std::vector<RowKind> *kinds = nullptr);

/// A row-major [batch, seq] block of token ids and labels.
struct Batch {
  std::vector<int32_t> inputIds, labels;
  /// Position of each token within its data row (Hugging Face's
  /// position_ids) when rows are packed (packBatch); empty otherwise, where
  /// a token's position is its column.
  std::vector<int32_t> positionIds;
  int64_t batch = 0, seq = 0;
  /// Number of positions holding a real (non-padding) input token.
  int64_t tokens = 0;
};

/// Builds a batch from \p batch rows of \p rows, in order from \p firstRow
/// (wrapping around modulo rows.size()), each truncated to \p seq tokens and
/// right-padded with \p padId (labels with -100). Requires a non-empty
/// \p rows and positive \p batch and \p seq.
Batch makeBatch(const std::vector<TokenRow> &rows, int64_t firstRow,
                int64_t batch, int64_t seq, int32_t padId = 0);

/// A [indices.size(), seq] batch of rows[indices[i]], each truncated to
/// \p seq tokens and right-padded with \p padId (labels with -100).
/// Requires valid indices and seq > 0.
Batch gatherBatch(const std::vector<TokenRow> &rows,
                  const std::vector<int64_t> &indices, int64_t seq,
                  int32_t padId = 0);

} // namespace llamac

#endif // LLAMAC_RUNTIME_DATA_H
