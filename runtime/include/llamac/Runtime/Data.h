//===- Data.h - Training data: token rows and batches ----------*- C++ -*-===//
//
// Training data is JSON Lines, one object per line:
//   {"input_ids": [1, 15043, 29892], "labels": [-100, 15043, 29892]}
// `labels` is optional (absent = a copy of input_ids); -100 marks a position
// the loss ignores. Other fields are ignored, blank lines are skipped.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_DATA_H
#define LLAMAC_RUNTIME_DATA_H

#include "llamac/Runtime/Result.h"

#include <cstdint>
#include <string>
#include <vector>

namespace llamac {

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

/// A row-major [batch, seq] block of token ids and labels.
struct Batch {
  std::vector<int32_t> inputIds, labels;
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

} // namespace llamac

#endif // LLAMAC_RUNTIME_DATA_H
