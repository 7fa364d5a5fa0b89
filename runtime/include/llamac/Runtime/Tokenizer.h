//===- Tokenizer.h - Hugging Face tokenizer.json encoding ------*- C++ -*-===//
//
// Loads a Hugging Face `tokenizer.json` (plus the `tokenizer_config.json`
// beside it, when present) and encodes text to the ids Hugging Face's
// `tokenizers` library gives, for the BPE tokenizers of the Llama families:
//
//   - added tokens (special or not) are split off first, leftmost-longest, on
//     the raw text (`normalized: false`) and then on each normalized piece
//     (`normalized: true`); `lstrip`/`rstrip` are honoured;
//   - normalizers: Sequence, Prepend, Replace (String or Regex pattern);
//   - pre-tokenizers: Sequence, Split (String or Regex pattern, every
//     behavior, invert), ByteLevel (add_prefix_space, use_regex), Metaspace
//     (every prepend_scheme, split);
//   - model: BPE (merges by rank, byte_fallback to `<0xNN>`, unk_token with
//     fuse_unk, ignore_merges, continuing_subword_prefix, end_of_word_suffix;
//     no dropout);
//   - post-processors: TemplateProcessing (single sequences), ByteLevel (adds
//     nothing), Sequence;
//   - decoders: ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace,
//     Sequence.
// Anything else (e.g. WordPiece or Unigram models, NFKC or Lowercase
// normalizers, single_word added tokens, BPE dropout) is rejected at load
// time with "unsupported <component> type ...". The `truncation` and
// `padding` sections are ignored, as transformers ignores them.
// Regular expressions run on PCRE2 with Unicode properties (HF uses
// Oniguruma; the Llama 3 pattern behaves the same on both).
//
// tokenizer_config.json gives `bos_token` and `eos_token`. When it sets
// `add_bos_token` or `add_eos_token` (as Llama 2 files do), the post-processor
// becomes `[bos] $A [eos]` exactly as transformers' LlamaTokenizerFast builds
// it (an absent add_bos_token counts as true, an absent add_eos_token as
// false); otherwise the file's own post-processor is used, as `tokenizers`
// does.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_TOKENIZER_H
#define LLAMAC_RUNTIME_TOKENIZER_H

#include "llamac/Runtime/Result.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace llamac {

/// A loaded tokenizer. Immutable after loading (an internal word cache is
/// guarded by a mutex), so one instance may encode from several threads.
/// Copies share the loaded data.
class Tokenizer {
public:
  /// Loads \p dirOrFile: a directory holding tokenizer.json, or a
  /// tokenizer.json file; tokenizer_config.json is read from the same
  /// directory when it exists. Errors name the file and the JSON field.
  static Result<Tokenizer> load(const std::string &dirOrFile);

  /// The ids of \p text, as Hugging Face's `Tokenizer.encode(text,
  /// add_special_tokens=addSpecialTokens).ids`. Special tokens written in the
  /// text (e.g. "</s>") are always recognised; \p addSpecialTokens only
  /// controls the post-processor (e.g. the BOS of a Llama 2 template).
  /// Invalid UTF-8 in \p text is first replaced by U+FFFD, as Rust's
  /// String::from_utf8_lossy does (Python strings cannot hold it).
  std::vector<int32_t> encode(std::string_view text,
                              bool addSpecialTokens) const;

  /// The text of \p ids, as Hugging Face's `Tokenizer.decode(ids,
  /// skip_special_tokens=skipSpecialTokens)`. Ids that name no token are
  /// skipped.
  std::string decode(const std::vector<int32_t> &ids,
                     bool skipSpecialTokens = true) const;

  /// The id of tokenizer_config.json's bos_token / eos_token, if it names
  /// one.
  std::optional<int32_t> bosId() const;
  std::optional<int32_t> eosId() const;
  /// The text of the bos / eos token ("" when there is none).
  const std::string &bosToken() const;
  const std::string &eosToken() const;

  /// One more than the largest id of the model vocabulary and the added
  /// tokens: the number of embedding rows the ids need (128256 for Llama 3,
  /// 32000 for Llama 2).
  int64_t vocabSize() const;

  /// The id of the token whose text is \p token (added tokens first).
  std::optional<int32_t> tokenToId(std::string_view token) const;
  /// The text of token \p id, if there is one.
  std::optional<std::string> idToToken(int32_t id) const;

  /// The tokenizer.json that was loaded.
  const std::string &path() const;
  /// A hex digest of tokenizer.json and tokenizer_config.json: changes when
  /// either file's bytes change (used to key caches of tokenized data).
  const std::string &fingerprint() const;

  struct Impl;

private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl)
      : impl(std::move(impl)) {}

  std::shared_ptr<const Impl> impl;
};

} // namespace llamac

#endif // LLAMAC_RUNTIME_TOKENIZER_H
