//===- Tokenize.cpp - `llamac tokenize`: text rows to token rows ----------===//
//
//   llamac tokenize --tokenizer DIR FILE.jsonl [--add-special-tokens] [-o OUT]
//
// Reads training rows ({"text"}, {"prompt", "completion"} or token rows) and
// writes one {"input_ids": [...]} line per row, with "labels" when they
// differ from input_ids (prompt/completion rows, labelled token rows). Without
// --add-special-tokens the ids are plain encodings; with it they are exactly
// what `llamac train` trains on (BOS from the tokenizer's template, the EOS
// text appended; see runtime/include/llamac/Runtime/Data.h).
//
//===----------------------------------------------------------------------===//

#include "Commands.h"

#include "llamac/Runtime/Data.h"
#include "llamac/Runtime/Safetensors.h"
#include "llamac/Runtime/Tokenizer.h"

#include "llvm/Support/raw_ostream.h"

using namespace llamac;

/// Appends `"name": [a, b, ...]` to \p out.
static void appendIds(std::string &out, const char *name,
                      const std::vector<int32_t> &ids) {
  out += '"';
  out += name;
  out += "\": [";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i)
      out += ", ";
    out += std::to_string(ids[i]);
  }
  out += ']';
}

int llamac::runTokenize(const TokenizeOptions &options) {
  if (options.tokenizerPath.empty())
    return reportError("tokenize: --tokenizer: expected a tokenizer.json or "
                       "its directory");
  if (options.inputPath.empty())
    return reportError("tokenize: expected a JSON Lines file (llamac tokenize "
                       "--tokenizer DIR FILE.jsonl)");
  Result<Tokenizer> tokenizer = Tokenizer::load(options.tokenizerPath);
  if (!tokenizer)
    return reportError(tokenizer.error().message);
  std::vector<RowKind> kinds;
  Result<std::vector<TokenRow>> rows = tokenizeRows(
      options.inputPath, *tokenizer, options.addSpecialTokens, &kinds);
  if (!rows)
    return reportError(rows.error().message);

  std::string text;
  for (const TokenRow &row : *rows) {
    text += '{';
    appendIds(text, "input_ids", row.inputIds);
    if (row.labels != row.inputIds) {
      text += ", ";
      appendIds(text, "labels", row.labels);
    }
    text += "}\n";
  }
  if (options.outputPath == "-") {
    llvm::outs() << text;
    return 0;
  }
  if (Status status = writeFileAtomic(options.outputPath, text); !status)
    return reportError(status.error().message);
  return 0;
}
