//===- Tokenizer.cpp - Hugging Face tokenizer.json encoding ---------------===//
//
// A re-implementation of the parts of Hugging Face `tokenizers` that the
// Llama tokenizers use. Each component follows the Rust source's semantics
// (tokenizers/src/{normalizers,pre_tokenizers,models/bpe,processors,
// decoders}, tokenizer/added_vocabulary.rs); the golden tests in
// test/golden/tokenizers check the ids against the library itself.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/Tokenizer.h"

#include "Hash.h"
#include "IOUtil.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <bitset>
#include <cctype>
#include <filesystem>
#include <mutex>
#include <queue>
#include <stdexcept>
#include <unordered_map>

using namespace llamac;
using namespace llamac::io;
using json = nlohmann::json;

namespace {

//===----------------------------------------------------------------------===//
// UTF-8
//===----------------------------------------------------------------------===//

/// The length of the valid UTF-8 sequence at the start of [s, s + n), or 0
/// when it is invalid, with *invalid set to the length of its maximal subpart
/// (at least 1): the unit that Unicode's "substitution of maximal subparts"
/// (and Rust's String::from_utf8_lossy) replaces by one U+FFFD.
size_t utf8Sequence(const unsigned char *s, size_t n, size_t *invalid) {
  const unsigned char c = s[0];
  if (c < 0x80)
    return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c == 0xE0) {
    need = 2;
    lo = 0xA0;
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    need = 2;
  } else if (c == 0xED) {
    need = 2;
    hi = 0x9F;
  } else if (c == 0xF0) {
    need = 3;
    lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    need = 3;
  } else if (c == 0xF4) {
    need = 3;
    hi = 0x8F;
  } else {
    *invalid = 1;
    return 0;
  }
  for (size_t k = 1; k <= need; ++k) {
    if (k >= n || s[k] < lo || s[k] > hi) {
      *invalid = k;
      return 0;
    }
    lo = 0x80;
    hi = 0xBF;
  }
  return need + 1;
}

/// \p bytes with every invalid UTF-8 subsequence replaced by U+FFFD.
std::string utf8Lossy(std::string_view bytes) {
  const auto *p = reinterpret_cast<const unsigned char *>(bytes.data());
  const size_t n = bytes.size();
  std::string out;
  out.reserve(n);
  size_t i = 0;
  while (i < n) {
    // Copy ASCII runs quickly.
    size_t j = i;
    while (j < n && p[j] < 0x80)
      ++j;
    out.append(bytes.data() + i, j - i);
    i = j;
    if (i >= n)
      break;
    size_t invalid = 0;
    const size_t length = utf8Sequence(p + i, n - i, &invalid);
    if (length) {
      out.append(bytes.data() + i, length);
      i += length;
    } else {
      out += "\xEF\xBF\xBD";
      i += invalid;
    }
  }
  return out;
}

/// True when \p bytes is valid UTF-8.
bool isValidUtf8(std::string_view bytes) {
  const auto *p = reinterpret_cast<const unsigned char *>(bytes.data());
  size_t i = 0, invalid = 0;
  while (i < bytes.size()) {
    const size_t length = utf8Sequence(p + i, bytes.size() - i, &invalid);
    if (!length)
      return false;
    i += length;
  }
  return true;
}

/// Length of the UTF-8 character whose lead byte is \p c (valid input).
inline size_t utf8CharLength(unsigned char c) {
  return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/// The code point of the valid UTF-8 character at \p s.
uint32_t decodeChar(const char *s) {
  const auto *p = reinterpret_cast<const unsigned char *>(s);
  switch (utf8CharLength(p[0])) {
  case 1:
    return p[0];
  case 2:
    return (uint32_t(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
  case 3:
    return (uint32_t(p[0] & 0x0F) << 12) | (uint32_t(p[1] & 0x3F) << 6) |
           (p[2] & 0x3F);
  default:
    return (uint32_t(p[0] & 0x07) << 18) | (uint32_t(p[1] & 0x3F) << 12) |
           (uint32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
  }
}

/// The UTF-8 encoding of code point \p cp.
std::string encodeChar(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
  return out;
}

/// Unicode's White_Space property (Rust's char::is_whitespace).
bool isWhiteSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

//===----------------------------------------------------------------------===//
// Load errors
//===----------------------------------------------------------------------===//

/// Thrown while loading; the message names the JSON field ("model.merges[3]:
/// ...") and load() prefixes the file.
struct LoadError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void bad(const std::string &where, const std::string &what) {
  throw LoadError(where.empty() ? what : where + ": " + what);
}

std::string child(const std::string &where, const std::string &key) {
  return where.empty() ? key : where + "." + key;
}

std::string item(const std::string &where, size_t index) {
  return where + "[" + std::to_string(index) + "]";
}

/// The member \p key of the object \p object (required).
const json &member(const json &object, const std::string &where,
                   const char *key) {
  if (!object.is_object())
    bad(where, "is " + brief(object) + ", not an object");
  auto it = object.find(key);
  if (it == object.end())
    bad(where, std::string("missing '") + key + "'");
  return *it;
}

/// The member \p key, or nullptr when it is absent or null.
const json *optionalMember(const json &object, const char *key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null())
    return nullptr;
  return &*it;
}

std::string stringMember(const json &object, const std::string &where,
                         const char *key) {
  const json &value = member(object, where, key);
  if (!value.is_string())
    bad(child(where, key), "is " + brief(value) + ", not a string");
  return value.get<std::string>();
}

bool boolMember(const json &object, const std::string &where, const char *key,
                bool fallback) {
  const json *value = optionalMember(object, key);
  if (!value)
    return fallback;
  if (!value->is_boolean())
    bad(child(where, key), "is " + brief(*value) + ", not a boolean");
  return value->get<bool>();
}

/// The "type" of a component object.
std::string typeOf(const json &object, const std::string &where) {
  return stringMember(object, where, "type");
}

[[noreturn]] void unsupported(const std::string &where, const char *component,
                              const std::string &type, const char *supported) {
  bad(where, std::string("unsupported ") + component + " type " +
                 io::quoted(type) + " (supported: " + supported + ")");
}

//===----------------------------------------------------------------------===//
// Regular expressions (PCRE2) and patterns
//===----------------------------------------------------------------------===//

/// Per-thread PCRE2 match state: match data and a JIT stack large enough for
/// long runs of whitespace.
struct MatchScratch {
  pcre2_match_data *data = nullptr;
  pcre2_match_context *context = nullptr;
  pcre2_jit_stack *stack = nullptr;

  MatchScratch() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
    if (context && stack)
      pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchScratch &matchScratch() {
  thread_local MatchScratch scratch;
  return scratch;
}

/// A compiled regular expression (UTF-8, Unicode properties).
class Regex {
public:
  Regex(const std::string &pattern, const std::string &where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()),
                         pattern.size(), PCRE2_UTF | PCRE2_UCP, &error, &offset,
                         nullptr);
    if (!code) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      bad(where, "regular expression " + io::quoted(pattern) +
                     " does not compile at offset " + std::to_string(offset) +
                     ": " + reinterpret_cast<const char *>(message));
    }
    // JIT is an optimization; without it (e.g. no executable memory)
    // pcre2_match interprets.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  }
  Regex(const Regex &) = delete;
  Regex &operator=(const Regex &) = delete;
  ~Regex() { pcre2_code_free(code); }

  /// Appends [begin, end) of every non-overlapping match in \p text (valid
  /// UTF-8), left to right. An empty match advances by one character.
  void findAll(std::string_view text,
               std::vector<std::pair<size_t, size_t>> &out) const {
    MatchScratch &scratch = matchScratch();
    const auto *subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t offset = 0;
    while (offset <= text.size()) {
      int rc = pcre2_match(code, subject, text.size(), offset,
                           PCRE2_NO_UTF_CHECK, scratch.data, scratch.context);
      if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)
        // JIT stack or resource limits: retry with the interpreter, which
        // keeps its backtracking frames on the heap.
        rc = pcre2_match(code, subject, text.size(), offset,
                         PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, scratch.data,
                         scratch.context);
      if (rc < 0)
        break; // No (further) match; a limit error leaves the rest unmatched.
      const PCRE2_SIZE *ovector = pcre2_get_ovector_pointer(scratch.data);
      const size_t begin = ovector[0], end = ovector[1];
      out.emplace_back(begin, end);
      if (end > begin) {
        offset = end;
      } else {
        if (end >= text.size())
          break;
        offset = end + utf8CharLength(static_cast<unsigned char>(text[end]));
      }
    }
  }

private:
  pcre2_code *code = nullptr;
};

/// A Split/Replace pattern: {"String": "..."} or {"Regex": "..."}.
class Pattern {
public:
  Pattern(const json &spec, const std::string &where) {
    if (const json *text =
            spec.is_object() ? optionalMember(spec, "String") : nullptr) {
      if (!text->is_string())
        bad(child(where, "String"), "is " + brief(*text) + ", not a string");
      literal = text->get<std::string>();
    } else if (const json *regex =
                   spec.is_object() ? optionalMember(spec, "Regex") : nullptr) {
      if (!regex->is_string())
        bad(child(where, "Regex"), "is " + brief(*regex) + ", not a string");
      this->regex = std::make_shared<Regex>(regex->get<std::string>(),
                                            child(where, "Regex"));
    } else {
      bad(where, "is " + brief(spec) + ", not {\"String\": ...} or " +
                     "{\"Regex\": ...}");
    }
  }

  /// Appends the [begin, end) of every non-overlapping match in \p text.
  void findAll(std::string_view text,
               std::vector<std::pair<size_t, size_t>> &out) const {
    if (regex) {
      regex->findAll(text, out);
      return;
    }
    if (literal.empty())
      return;
    for (size_t at = text.find(literal); at != std::string_view::npos;
         at = text.find(literal, at + literal.size()))
      out.emplace_back(at, at + literal.size());
  }

  /// \p text with every match replaced by \p content.
  std::string replaceAll(const std::string &text,
                         const std::string &content) const {
    std::vector<std::pair<size_t, size_t>> matches;
    findAll(text, matches);
    if (matches.empty())
      return text;
    std::string out;
    size_t previous = 0;
    for (const auto &[begin, end] : matches) {
      out.append(text, previous, begin - previous);
      out += content;
      previous = end;
    }
    out.append(text, previous, std::string::npos);
    return out;
  }

private:
  std::string literal;
  std::shared_ptr<Regex> regex;
};

//===----------------------------------------------------------------------===//
// Byte-level alphabet (GPT-2's bytes_to_unicode)
//===----------------------------------------------------------------------===//

struct ByteAlphabet {
  /// UTF-8 text of the character standing for each byte.
  std::array<std::string, 256> charOf;
  /// Code point -> byte, for the 256 characters (-1 elsewhere below 324).
  std::array<int16_t, 324> byteOf;

  ByteAlphabet() {
    byteOf.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) ||
                             (b >= 0xA1 && b <= 0xAC) ||
                             (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? uint32_t(b) : next++;
      charOf[size_t(b)] = encodeChar(cp);
      byteOf[cp] = int16_t(b);
    }
  }
};

const ByteAlphabet &byteAlphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

//===----------------------------------------------------------------------===//
// Normalizers
//===----------------------------------------------------------------------===//

struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void apply(std::string &text) const = 0;
};

struct PrependNormalizer : Normalizer {
  std::string prepend;
  void apply(std::string &text) const override {
    if (!text.empty())
      text.insert(0, prepend);
  }
};

struct ReplaceNormalizer : Normalizer {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void apply(std::string &text) const override {
    text = pattern->replaceAll(text, content);
  }
};

struct SequenceNormalizer : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> steps;
  void apply(std::string &text) const override {
    for (const auto &step : steps)
      step->apply(text);
  }
};

std::unique_ptr<Normalizer> parseNormalizer(const json &spec,
                                            const std::string &where) {
  const std::string type = typeOf(spec, where);
  if (type == "Sequence") {
    auto sequence = std::make_unique<SequenceNormalizer>();
    const json &steps = member(spec, where, "normalizers");
    const std::string at = child(where, "normalizers");
    if (!steps.is_array())
      bad(at, "is " + brief(steps) + ", not an array");
    for (size_t i = 0; i < steps.size(); ++i)
      sequence->steps.push_back(parseNormalizer(steps[i], item(at, i)));
    return sequence;
  }
  if (type == "Prepend") {
    auto prepend = std::make_unique<PrependNormalizer>();
    prepend->prepend = stringMember(spec, where, "prepend");
    return prepend;
  }
  if (type == "Replace") {
    auto replace = std::make_unique<ReplaceNormalizer>();
    replace->pattern = std::make_unique<Pattern>(member(spec, where, "pattern"),
                                                 child(where, "pattern"));
    replace->content = stringMember(spec, where, "content");
    return replace;
  }
  unsupported(where, "normalizer", type, "Sequence, Prepend, Replace");
}

//===----------------------------------------------------------------------===//
// Pre-tokenizers
//===----------------------------------------------------------------------===//

/// A piece of text on its way to the model.
struct Piece {
  std::string text;
  /// The piece starts at the start of the input (tokenizers'
  /// offsets_original().0 == 0), which Metaspace's "first" scheme tests.
  bool atStart = false;
};

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  /// Splits every piece of \p pieces further; empty pieces are dropped.
  virtual void apply(std::vector<Piece> &pieces) const = 0;
};

enum class SplitBehavior {
  Removed,
  Isolated,
  MergedWithPrevious,
  MergedWithNext,
  Contiguous
};

/// NormalizedString::split of tokenizers: \p matches (sorted, disjoint)
/// partition \p piece into match and non-match segments, which \p behavior
/// turns into pieces (empty ones dropped), appended to \p out.
void splitPieces(const Piece &piece,
                 const std::vector<std::pair<size_t, size_t>> &matches,
                 bool invert, SplitBehavior behavior, std::vector<Piece> &out) {
  const std::string &text = piece.text;
  struct Segment {
    size_t begin, end;
    bool isMatch;
  };
  std::vector<Segment> segments;
  size_t previous = 0;
  for (const auto &[begin, end] : matches) {
    if (previous != begin)
      segments.push_back({previous, begin, false});
    segments.push_back({begin, end, true});
    previous = end;
  }
  if (previous != text.size())
    segments.push_back({previous, text.size(), false});
  if (invert)
    for (Segment &segment : segments)
      segment.isMatch = !segment.isMatch;

  // (begin, end, remove)
  std::vector<Segment> splits;
  switch (behavior) {
  case SplitBehavior::Isolated:
    for (const Segment &s : segments)
      splits.push_back({s.begin, s.end, false});
    break;
  case SplitBehavior::Removed:
    splits = segments;
    break;
  case SplitBehavior::Contiguous: {
    bool previousMatch = false;
    for (const Segment &s : segments) {
      if (s.isMatch == previousMatch && !splits.empty())
        splits.back().end = s.end;
      else
        splits.push_back({s.begin, s.end, false});
      previousMatch = s.isMatch;
    }
    break;
  }
  case SplitBehavior::MergedWithPrevious: {
    bool previousMatch = false;
    for (const Segment &s : segments) {
      if (s.isMatch && !previousMatch && !splits.empty())
        splits.back().end = s.end;
      else
        splits.push_back({s.begin, s.end, false});
      previousMatch = s.isMatch;
    }
    break;
  }
  case SplitBehavior::MergedWithNext: {
    bool previousMatch = false;
    for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
      if (it->isMatch && !previousMatch && !splits.empty())
        splits.back().begin = it->begin;
      else
        splits.push_back({it->begin, it->end, false});
      previousMatch = it->isMatch;
    }
    std::reverse(splits.begin(), splits.end());
    break;
  }
  }
  for (const Segment &s : splits)
    if (!s.isMatch && s.end > s.begin) // isMatch doubles as "remove"
      out.push_back({text.substr(s.begin, s.end - s.begin),
                     piece.atStart && s.begin == 0});
}

struct SplitPreTokenizer : PreTokenizer {
  std::unique_ptr<Pattern> pattern;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  void apply(std::vector<Piece> &pieces) const override {
    std::vector<Piece> out;
    std::vector<std::pair<size_t, size_t>> matches;
    for (const Piece &piece : pieces) {
      matches.clear();
      pattern->findAll(piece.text, matches);
      splitPieces(piece, matches, invert, behavior, out);
    }
    pieces = std::move(out);
  }
};

/// GPT-2's pre-tokenization regex (ByteLevel with use_regex).
const char *const kByteLevelRegex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

struct ByteLevelPreTokenizer : PreTokenizer {
  bool addPrefixSpace = false;
  std::unique_ptr<Regex> regex; // when use_regex
  void apply(std::vector<Piece> &pieces) const override {
    std::vector<Piece> split;
    std::vector<std::pair<size_t, size_t>> matches;
    for (Piece &piece : pieces) {
      if (addPrefixSpace && !piece.text.empty() && piece.text[0] != ' ')
        piece.text.insert(0, " ");
      if (regex) {
        matches.clear();
        regex->findAll(piece.text, matches);
        splitPieces(piece, matches, false, SplitBehavior::Isolated, split);
      } else {
        split.push_back(std::move(piece));
      }
    }
    const ByteAlphabet &alphabet = byteAlphabet();
    for (Piece &piece : split) {
      std::string mapped;
      mapped.reserve(piece.text.size() * 2);
      for (unsigned char c : piece.text)
        mapped += alphabet.charOf[c];
      piece.text = std::move(mapped);
    }
    pieces = std::move(split);
  }
};

enum class PrependScheme { Always, First, Never };

/// The prepend scheme of a Metaspace object: "prepend_scheme", or the older
/// "add_prefix_space" (true = always).
PrependScheme parsePrependScheme(const json &spec, const std::string &where) {
  if (const json *scheme = optionalMember(spec, "prepend_scheme")) {
    const std::string name =
        scheme->is_string() ? scheme->get<std::string>() : std::string();
    if (name == "always")
      return PrependScheme::Always;
    if (name == "first")
      return PrependScheme::First;
    if (name == "never")
      return PrependScheme::Never;
    bad(child(where, "prepend_scheme"),
        brief(*scheme) + " is not \"always\", \"first\" or \"never\"");
  }
  return boolMember(spec, where, "add_prefix_space", true)
             ? PrependScheme::Always
             : PrependScheme::Never;
}

/// The "replacement" character of a Metaspace object.
std::string parseReplacement(const json &spec, const std::string &where) {
  std::string replacement = stringMember(spec, where, "replacement");
  if (replacement.empty() || utf8CharLength(static_cast<unsigned char>(
                                 replacement[0])) != replacement.size())
    bad(child(where, "replacement"), "is not one character");
  return replacement;
}

struct MetaspacePreTokenizer : PreTokenizer {
  std::string replacement;
  PrependScheme scheme = PrependScheme::Always;
  bool split = true;
  void apply(std::vector<Piece> &pieces) const override {
    std::vector<Piece> out;
    std::vector<std::pair<size_t, size_t>> matches;
    for (Piece &piece : pieces) {
      std::string text;
      for (char c : piece.text)
        if (c == ' ')
          text += replacement;
        else
          text += c;
      const bool startsWithReplacement =
          text.compare(0, replacement.size(), replacement) == 0;
      if (!startsWithReplacement &&
          (scheme == PrependScheme::Always ||
           (scheme == PrependScheme::First && piece.atStart)))
        text.insert(0, replacement);
      Piece replaced{std::move(text), piece.atStart};
      if (!split) {
        if (!replaced.text.empty())
          out.push_back(std::move(replaced));
        continue;
      }
      matches.clear();
      for (size_t at = replaced.text.find(replacement); at != std::string::npos;
           at = replaced.text.find(replacement, at + replacement.size()))
        matches.emplace_back(at, at + replacement.size());
      splitPieces(replaced, matches, false, SplitBehavior::MergedWithNext, out);
    }
    pieces = std::move(out);
  }
};

struct SequencePreTokenizer : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  void apply(std::vector<Piece> &pieces) const override {
    for (const auto &step : steps)
      step->apply(pieces);
  }
};

std::unique_ptr<PreTokenizer> parsePreTokenizer(const json &spec,
                                                const std::string &where) {
  const std::string type = typeOf(spec, where);
  if (type == "Sequence") {
    auto sequence = std::make_unique<SequencePreTokenizer>();
    const json &steps = member(spec, where, "pretokenizers");
    const std::string at = child(where, "pretokenizers");
    if (!steps.is_array())
      bad(at, "is " + brief(steps) + ", not an array");
    for (size_t i = 0; i < steps.size(); ++i)
      sequence->steps.push_back(parsePreTokenizer(steps[i], item(at, i)));
    return sequence;
  }
  if (type == "Split") {
    auto split = std::make_unique<SplitPreTokenizer>();
    split->pattern = std::make_unique<Pattern>(member(spec, where, "pattern"),
                                               child(where, "pattern"));
    const std::string behavior = stringMember(spec, where, "behavior");
    if (behavior == "Removed")
      split->behavior = SplitBehavior::Removed;
    else if (behavior == "Isolated")
      split->behavior = SplitBehavior::Isolated;
    else if (behavior == "MergedWithPrevious")
      split->behavior = SplitBehavior::MergedWithPrevious;
    else if (behavior == "MergedWithNext")
      split->behavior = SplitBehavior::MergedWithNext;
    else if (behavior == "Contiguous")
      split->behavior = SplitBehavior::Contiguous;
    else
      bad(child(where, "behavior"),
          "unknown split behavior " + io::quoted(behavior) +
              " (known: Removed, Isolated, MergedWithPrevious, "
              "MergedWithNext, Contiguous)");
    split->invert = boolMember(spec, where, "invert", false);
    return split;
  }
  if (type == "ByteLevel") {
    auto byteLevel = std::make_unique<ByteLevelPreTokenizer>();
    byteLevel->addPrefixSpace =
        boolMember(spec, where, "add_prefix_space", true);
    if (boolMember(spec, where, "use_regex", true))
      byteLevel->regex = std::make_unique<Regex>(kByteLevelRegex, where);
    return byteLevel;
  }
  if (type == "Metaspace") {
    auto metaspace = std::make_unique<MetaspacePreTokenizer>();
    metaspace->replacement = parseReplacement(spec, where);
    metaspace->scheme = parsePrependScheme(spec, where);
    metaspace->split = boolMember(spec, where, "split", true);
    return metaspace;
  }
  unsupported(where, "pre-tokenizer", type,
              "Sequence, Split, ByteLevel, Metaspace");
}

//===----------------------------------------------------------------------===//
// Post-processors
//===----------------------------------------------------------------------===//

struct PostProcessor {
  virtual ~PostProcessor() = default;
  virtual void apply(std::vector<int32_t> &ids) const = 0;
};

/// ByteLevel's post-processor only trims offsets: the ids stay.
struct NoOpPostProcessor : PostProcessor {
  void apply(std::vector<int32_t> &) const override {}
};

struct TemplatePostProcessor : PostProcessor {
  /// Each item: the ids of a special token, or (when isSequence) the input.
  struct Item {
    bool isSequence = false;
    std::vector<int32_t> ids;
  };
  std::vector<Item> single;
  void apply(std::vector<int32_t> &ids) const override {
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const Item &entry : single) {
      if (entry.isSequence)
        out.insert(out.end(), ids.begin(), ids.end());
      else
        out.insert(out.end(), entry.ids.begin(), entry.ids.end());
    }
    ids = std::move(out);
  }
};

struct SequencePostProcessor : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> steps;
  void apply(std::vector<int32_t> &ids) const override {
    for (const auto &step : steps)
      step->apply(ids);
  }
};

std::unique_ptr<PostProcessor> parseTemplate(const json &spec,
                                             const std::string &where) {
  auto result = std::make_unique<TemplatePostProcessor>();
  // special_tokens: {name: {"id": name, "ids": [...], "tokens": [...]}}
  std::unordered_map<std::string, std::vector<int32_t>> specials;
  if (const json *table = optionalMember(spec, "special_tokens")) {
    const std::string at = child(where, "special_tokens");
    if (!table->is_object())
      bad(at, "is " + brief(*table) + ", not an object");
    for (auto it = table->begin(); it != table->end(); ++it) {
      const std::string entryAt = at + "[" + io::quoted(it.key()) + "]";
      const json &ids = member(it.value(), entryAt, "ids");
      std::vector<int32_t> values;
      if (!ids.is_array())
        bad(child(entryAt, "ids"), "is " + brief(ids) + ", not an array");
      for (size_t i = 0; i < ids.size(); ++i) {
        if (!ids[i].is_number_unsigned() || ids[i].get<uint64_t>() > INT32_MAX)
          bad(item(child(entryAt, "ids"), i),
              brief(ids[i]) + " is not a token id");
        values.push_back(ids[i].get<int32_t>());
      }
      specials[it.key()] = std::move(values);
    }
  }
  const json &single = member(spec, where, "single");
  const std::string at = child(where, "single");
  if (!single.is_array())
    bad(at, "is " + brief(single) + ", not an array");
  for (size_t i = 0; i < single.size(); ++i) {
    const std::string entryAt = item(at, i);
    const json &entry = single[i];
    TemplatePostProcessor::Item piece;
    std::string sequenceId, specialName;
    if (entry.is_object() && entry.contains("Sequence")) {
      sequenceId =
          stringMember(entry["Sequence"], child(entryAt, "Sequence"), "id");
      piece.isSequence = true;
    } else if (entry.is_object() && entry.contains("SpecialToken")) {
      specialName = stringMember(entry["SpecialToken"],
                                 child(entryAt, "SpecialToken"), "id");
    } else if (entry.is_string()) {
      // The compact form: "$A", "$A:0", "$0", "<s>", "<s>:1".
      std::string text = entry.get<std::string>();
      const size_t colon = text.rfind(':');
      if (colon != std::string::npos && colon + 1 < text.size() &&
          text.find_first_not_of("0123456789", colon + 1) == std::string::npos)
        text.resize(colon);
      if (!text.empty() && text[0] == '$') {
        piece.isSequence = true;
        sequenceId = text.size() == 1 ? "A" : text.substr(1);
        if (sequenceId == "0")
          sequenceId = "A";
      } else {
        specialName = text;
      }
    } else {
      bad(entryAt,
          "is " + brief(entry) +
              ", not a {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
    if (piece.isSequence) {
      if (sequenceId != "A")
        bad(entryAt, "a single-sequence template refers to sequence " +
                         io::quoted(sequenceId));
    } else {
      auto found = specials.find(specialName);
      if (found == specials.end())
        bad(entryAt, "special token " + io::quoted(specialName) +
                         " is not in special_tokens");
      piece.ids = found->second;
    }
    result->single.push_back(std::move(piece));
  }
  return result;
}

std::unique_ptr<PostProcessor> parsePostProcessor(const json &spec,
                                                  const std::string &where) {
  const std::string type = typeOf(spec, where);
  if (type == "TemplateProcessing")
    return parseTemplate(spec, where);
  if (type == "ByteLevel")
    return std::make_unique<NoOpPostProcessor>();
  if (type == "Sequence") {
    auto sequence = std::make_unique<SequencePostProcessor>();
    const json &steps = member(spec, where, "processors");
    const std::string at = child(where, "processors");
    if (!steps.is_array())
      bad(at, "is " + brief(steps) + ", not an array");
    for (size_t i = 0; i < steps.size(); ++i)
      sequence->steps.push_back(parsePostProcessor(steps[i], item(at, i)));
    return sequence;
  }
  unsupported(where, "post-processor", type,
              "TemplateProcessing, ByteLevel, Sequence");
}

//===----------------------------------------------------------------------===//
// Decoders
//===----------------------------------------------------------------------===//

struct Decoder {
  virtual ~Decoder() = default;
  /// tokenizers' decode_chain: tokens in, tokens out.
  virtual void apply(std::vector<std::string> &tokens) const = 0;
};

struct ByteLevelDecoder : Decoder {
  void apply(std::vector<std::string> &tokens) const override {
    const ByteAlphabet &alphabet = byteAlphabet();
    std::string bytes;
    for (const std::string &token : tokens) {
      // A token with a character outside the alphabet keeps its own bytes.
      std::string mapped;
      bool ok = true;
      for (size_t i = 0; i < token.size() && ok;) {
        const size_t length =
            utf8CharLength(static_cast<unsigned char>(token[i]));
        const uint32_t cp = decodeChar(token.data() + i);
        if (cp < alphabet.byteOf.size() && alphabet.byteOf[cp] >= 0)
          mapped += char(alphabet.byteOf[cp]);
        else
          ok = false;
        i += length;
      }
      bytes += ok ? mapped : token;
    }
    tokens.assign(1, utf8Lossy(bytes));
  }
};

struct ByteFallbackDecoder : Decoder {
  void apply(std::vector<std::string> &tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty())
        return;
      if (isValidUtf8(pending))
        out.push_back(pending);
      else
        for (size_t i = 0; i < pending.size(); ++i)
          out.push_back("\xEF\xBF\xBD");
      pending.clear();
    };
    for (std::string &token : tokens) {
      int value = -1;
      if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 &&
          token[5] == '>' &&
          std::isxdigit(static_cast<unsigned char>(token[3])) &&
          std::isxdigit(static_cast<unsigned char>(token[4])))
        value = std::stoi(token.substr(3, 2), nullptr, 16);
      if (value >= 0) {
        pending += char(value);
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

struct FuseDecoder : Decoder {
  void apply(std::vector<std::string> &tokens) const override {
    std::string joined;
    for (const std::string &token : tokens)
      joined += token;
    tokens.assign(1, joined);
  }
};

struct ReplaceDecoder : Decoder {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void apply(std::vector<std::string> &tokens) const override {
    for (std::string &token : tokens)
      token = pattern->replaceAll(token, content);
  }
};

struct StripDecoder : Decoder {
  std::string content; // one character
  size_t start = 0, stop = 0;
  void apply(std::vector<std::string> &tokens) const override {
    for (std::string &token : tokens) {
      std::vector<std::pair<size_t, size_t>> chars; // byte offset, length
      for (size_t i = 0; i < token.size();) {
        const size_t length =
            utf8CharLength(static_cast<unsigned char>(token[i]));
        chars.emplace_back(i, length);
        i += length;
      }
      auto is = [&](size_t k) {
        return token.compare(chars[k].first, chars[k].second, content) == 0;
      };
      size_t startCut = 0;
      for (size_t k = 0; k < start && k < chars.size() && is(k); ++k)
        startCut = k + 1;
      size_t stopCut = chars.size();
      for (size_t k = 0; k < stop && k < chars.size(); ++k) {
        const size_t index = chars.size() - k - 1;
        if (!is(index))
          break;
        stopCut = index;
      }
      if (startCut >= stopCut) {
        token.clear();
        continue;
      }
      const size_t begin = chars[startCut].first;
      const size_t end =
          stopCut == chars.size() ? token.size() : chars[stopCut].first;
      token = token.substr(begin, end - begin);
    }
  }
};

struct MetaspaceDecoder : Decoder {
  std::string replacement;
  PrependScheme scheme = PrependScheme::Always;
  void apply(std::vector<std::string> &tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      // The first token loses every replacement character (tokenizers
      // drops them rather than turning them into spaces).
      const bool drop = i == 0 && scheme != PrependScheme::Never;
      std::string out;
      const std::string &token = tokens[i];
      for (size_t at = 0; at < token.size();) {
        if (token.compare(at, replacement.size(), replacement) == 0) {
          if (!drop)
            out += ' ';
          at += replacement.size();
        } else {
          out += token[at++];
        }
      }
      tokens[i] = std::move(out);
    }
  }
};

struct SequenceDecoder : Decoder {
  std::vector<std::unique_ptr<Decoder>> steps;
  void apply(std::vector<std::string> &tokens) const override {
    for (const auto &step : steps)
      step->apply(tokens);
  }
};

std::unique_ptr<Decoder> parseDecoder(const json &spec,
                                      const std::string &where) {
  const std::string type = typeOf(spec, where);
  if (type == "Sequence") {
    auto sequence = std::make_unique<SequenceDecoder>();
    const json &steps = member(spec, where, "decoders");
    const std::string at = child(where, "decoders");
    if (!steps.is_array())
      bad(at, "is " + brief(steps) + ", not an array");
    for (size_t i = 0; i < steps.size(); ++i)
      sequence->steps.push_back(parseDecoder(steps[i], item(at, i)));
    return sequence;
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback")
    return std::make_unique<ByteFallbackDecoder>();
  if (type == "Metaspace") {
    auto metaspace = std::make_unique<MetaspaceDecoder>();
    metaspace->replacement = parseReplacement(spec, where);
    metaspace->scheme = parsePrependScheme(spec, where);
    return metaspace;
  }
  if (type == "Fuse")
    return std::make_unique<FuseDecoder>();
  if (type == "Replace") {
    auto replace = std::make_unique<ReplaceDecoder>();
    replace->pattern = std::make_unique<Pattern>(member(spec, where, "pattern"),
                                                 child(where, "pattern"));
    replace->content = stringMember(spec, where, "content");
    return replace;
  }
  if (type == "Strip") {
    auto strip = std::make_unique<StripDecoder>();
    strip->content = stringMember(spec, where, "content");
    if (strip->content.empty() ||
        utf8CharLength(static_cast<unsigned char>(strip->content[0])) !=
            strip->content.size())
      bad(child(where, "content"), "is not one character");
    for (auto [key, field] :
         {std::pair{"start", &strip->start}, std::pair{"stop", &strip->stop}}) {
      const json &value = member(spec, where, key);
      if (!value.is_number_unsigned())
        bad(child(where, key), "is " + brief(value) + ", not a count");
      *field = value.get<size_t>();
    }
    return strip;
  }
  unsupported(where, "decoder", type,
              "Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, "
              "Metaspace");
}

//===----------------------------------------------------------------------===//
// Added tokens
//===----------------------------------------------------------------------===//

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, normalized = false;
};

/// A piece of text: either an added token (token >= 0, an index into the
/// added tokens) or text for the model, [begin, end) of the input.
struct Segment {
  size_t begin, end;
  int32_t token;
};

/// Leftmost-longest matching of a set of added tokens (tokenizers' Aho-
/// Corasick with MatchKind::LeftmostLongest), as a byte trie.
class TokenMatcher {
public:
  /// Adds \p pattern (non-empty) standing for added token \p token.
  void add(const std::string &pattern, int32_t token) {
    int32_t node = 0;
    for (unsigned char c : pattern) {
      const uint64_t key = (uint64_t(node) << 8) | c;
      auto it = edges.find(key);
      if (it == edges.end()) {
        terminal.push_back(-1);
        it = edges.emplace(key, int32_t(terminal.size() - 1)).first;
      }
      node = it->second;
    }
    if (terminal[size_t(node)] < 0) // the first token with this text wins
      terminal[size_t(node)] = token;
    first.set(static_cast<unsigned char>(pattern[0]));
  }

  bool empty() const { return terminal.size() == 1; }

  /// tokenizers' AddedVocabulary::find_matches over \p text: the added tokens
  /// and the text between them, in order.
  void split(const std::string &text, const std::vector<AddedToken> &tokens,
             std::vector<Segment> &out) const {
    out.clear();
    size_t startOffset = 0;
    const auto *p = reinterpret_cast<const unsigned char *>(text.data());
    size_t i = 0;
    while (i < text.size()) {
      if (!first.test(p[i])) {
        ++i;
        continue;
      }
      // The longest token starting at i.
      int32_t node = 0, found = -1;
      size_t foundEnd = 0;
      for (size_t j = i; j < text.size(); ++j) {
        auto it = edges.find((uint64_t(node) << 8) | p[j]);
        if (it == edges.end())
          break;
        node = it->second;
        if (terminal[size_t(node)] >= 0) {
          found = terminal[size_t(node)];
          foundEnd = j + 1;
        }
      }
      if (found < 0) {
        ++i;
        continue;
      }
      const AddedToken &token = tokens[size_t(found)];
      size_t start = i, stop = foundEnd;
      if (token.lstrip) {
        size_t newStart = start;
        while (newStart > 0) {
          size_t lead = newStart - 1;
          while (lead > 0 && (p[lead] & 0xC0) == 0x80)
            --lead;
          if (!isWhiteSpace(decodeChar(text.data() + lead)))
            break;
          newStart = lead;
        }
        start = std::max(newStart, startOffset);
      }
      if (token.rstrip) {
        while (stop < text.size() &&
               isWhiteSpace(decodeChar(text.data() + stop)))
          stop += utf8CharLength(p[stop]);
      }
      if (startOffset < start)
        out.push_back({startOffset, start, -1});
      out.push_back({start, stop, found});
      startOffset = stop;
      i = stop > foundEnd ? stop : foundEnd;
    }
    if (startOffset != text.size())
      out.push_back({startOffset, text.size(), -1});
  }

private:
  /// (node << 8 | byte) -> child node.
  std::unordered_map<uint64_t, int32_t> edges;
  /// node -> added token index, or -1. Node 0 is the root.
  std::vector<int32_t> terminal{-1};
  std::bitset<256> first;
};

//===----------------------------------------------------------------------===//
// BPE
//===----------------------------------------------------------------------===//

/// The merges of a BPE model: (left id, right id) -> (rank, merged id), in
/// an open-addressing table (lookups dominate encoding time).
class MergeTable {
public:
  struct Entry {
    uint64_t key;
    int32_t rank, newId;
  };

  void reserve(size_t count) {
    size_t capacity = 16;
    while (capacity < 2 * count)
      capacity *= 2;
    slots.assign(capacity, Entry{kEmpty, 0, 0});
    mask = capacity - 1;
  }

  /// Sets the entry of (left, right); a later pair replaces an earlier one.
  void set(int32_t left, int32_t right, int32_t rank, int32_t newId) {
    if (2 * (used + 1) > slots.size()) {
      std::vector<Entry> old = std::move(slots);
      reserve(used + 1);
      used = 0;
      for (const Entry &entry : old)
        if (entry.key != kEmpty)
          insert(entry);
    }
    insert(Entry{keyOf(left, right), rank, newId});
  }

  /// The entry of (left, right), or nullptr.
  const Entry *find(int32_t left, int32_t right) const {
    if (slots.empty())
      return nullptr;
    const uint64_t key = keyOf(left, right);
    for (size_t i = mix64(key) & mask;; i = (i + 1) & mask) {
      const Entry &entry = slots[i];
      if (entry.key == key)
        return &entry;
      if (entry.key == kEmpty)
        return nullptr;
    }
  }

private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t keyOf(int32_t left, int32_t right) {
    return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  }
  void insert(const Entry &entry) {
    for (size_t i = mix64(entry.key) & mask;; i = (i + 1) & mask) {
      if (slots[i].key == entry.key) {
        slots[i] = entry;
        return;
      }
      if (slots[i].key == kEmpty) {
        slots[i] = entry;
        ++used;
        return;
      }
    }
  }

  std::vector<Entry> slots;
  size_t mask = 0, used = 0;
};

class BpeModel {
public:
  /// Token text -> id (views into idToToken's strings).
  std::unordered_map<std::string_view, int32_t> vocab;
  /// id -> token text ("" where no token has the id; see hasToken).
  std::vector<std::string> idToToken;
  std::vector<bool> hasToken;
  MergeTable merges;
  std::optional<int32_t> unkId;
  bool fuseUnk = false, byteFallback = false, ignoreMerges = false;
  std::optional<std::string> continuingSubwordPrefix, endOfWordSuffix;
  /// The id of "<0xNN>" for each byte, or -1.
  std::array<int32_t, 256> byteIds;

  std::optional<int32_t> find(std::string_view token) const {
    auto it = vocab.find(token);
    if (it == vocab.end())
      return std::nullopt;
    return it->second;
  }

  /// Appends the ids of \p word (one pre-tokenized piece, non-empty).
  void encodeWord(const std::string &word, std::vector<int32_t> &out) const {
    if (ignoreMerges)
      if (auto id = find(word)) {
        out.push_back(*id);
        return;
      }
    constexpr size_t cacheableLength = 256;
    const bool cacheable = word.size() < cacheableLength;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cacheMutex);
      auto it = cache.find(word);
      if (it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids = mergeWord(word);
    out.insert(out.end(), ids.begin(), ids.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cacheMutex);
      if (cache.size() >= kCacheCapacity)
        cache.clear();
      cache.emplace(word, std::move(ids));
    }
  }

private:
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    size_t length; // bytes; 0 once merged into its left neighbour
  };

  struct Merge {
    size_t pos;
    int32_t rank, newId;
    /// A min-heap on (rank, pos) through std::priority_queue's max-heap.
    bool operator<(const Merge &other) const {
      if (rank != other.rank)
        return rank > other.rank;
      return pos > other.pos;
    }
  };

  const MergeTable::Entry *findMerge(int32_t left, int32_t right) const {
    return merges.find(left, right);
  }

  /// tokenizers' BPE::merge_word followed by Word::merge_all.
  std::vector<int32_t> mergeWord(const std::string &word) const {
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    auto add = [&](int32_t id, size_t length) {
      const int32_t index = int32_t(symbols.size());
      if (!symbols.empty())
        symbols.back().next = index;
      symbols.push_back({id, index - 1, -1, length});
    };
    // A pending unknown-token run: its id (-1 when none) and byte length.
    int32_t unk = -1;
    size_t unkLength = 0;
    std::string piece;
    for (size_t i = 0; i < word.size();) {
      const size_t length = utf8CharLength(static_cast<unsigned char>(word[i]));
      const bool isFirst = i == 0, isLast = i + length >= word.size();
      piece.assign(word, i, length);
      i += length;
      if (!isFirst && continuingSubwordPrefix)
        piece.insert(0, *continuingSubwordPrefix);
      if (isLast && endOfWordSuffix)
        piece += *endOfWordSuffix;
      if (auto id = find(piece)) {
        if (unk >= 0) {
          add(unk, unkLength);
          unk = -1;
        }
        add(*id, length);
        continue;
      }
      if (byteFallback) {
        bool all = true;
        for (unsigned char c : piece)
          all = all && byteIds[c] >= 0;
        if (all) {
          for (unsigned char c : piece)
            add(byteIds[c], 1);
          continue;
        }
      }
      if (unkId) {
        if (unk >= 0 && fuseUnk) {
          unkLength += length;
        } else {
          if (unk >= 0)
            add(unk, unkLength);
          unk = *unkId;
          unkLength = length;
        }
      }
    }
    if (unk >= 0)
      add(unk, unkLength);

    std::priority_queue<Merge> queue;
    for (size_t i = 0; i + 1 < symbols.size(); ++i)
      if (auto *m = findMerge(symbols[i].id, symbols[i + 1].id))
        queue.push({i, m->rank, m->newId});
    while (!queue.empty()) {
      const Merge top = queue.top();
      queue.pop();
      Symbol &current = symbols[top.pos];
      if (current.length == 0 || current.next == -1)
        continue;
      const size_t nextPos = size_t(current.next);
      const Symbol right = symbols[nextPos];
      const auto *target = findMerge(current.id, right.id);
      if (!target || target->newId != top.newId)
        continue; // a stale entry
      current.id = top.newId;
      current.length += right.length;
      current.next = right.next;
      symbols[nextPos].length = 0;
      if (right.next > -1 && size_t(right.next) < symbols.size())
        symbols[size_t(right.next)].prev = int32_t(top.pos);
      if (current.prev >= 0) {
        const Symbol &previous = symbols[size_t(current.prev)];
        if (auto *m = findMerge(previous.id, current.id))
          queue.push({size_t(current.prev), m->rank, m->newId});
      }
      if (current.next >= 0 && size_t(current.next) < symbols.size()) {
        const Symbol &next = symbols[size_t(current.next)];
        if (auto *m = findMerge(current.id, next.id))
          queue.push({top.pos, m->rank, m->newId});
      }
    }
    std::vector<int32_t> ids;
    for (const Symbol &symbol : symbols)
      if (symbol.length != 0)
        ids.push_back(symbol.id);
    return ids;
  }

  static constexpr size_t kCacheCapacity = 1 << 17;
  mutable std::mutex cacheMutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;
};

/// A token id from a JSON number.
int32_t tokenId(const json &value, const std::string &where) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
      value.get<int64_t>() > INT32_MAX)
    bad(where, brief(value) + " is not a token id");
  return value.get<int32_t>();
}

std::unique_ptr<BpeModel> parseBpe(const json &spec, const std::string &where) {
  auto model = std::make_unique<BpeModel>();
  if (const json *dropout = optionalMember(spec, "dropout"))
    if (!dropout->is_number() || dropout->get<double>() != 0.0)
      bad(child(where, "dropout"),
          "BPE dropout is random; only null or 0 is supported");

  // Vocabulary: {token: id}.
  const json &vocab = member(spec, where, "vocab");
  const std::string vocabAt = child(where, "vocab");
  if (!vocab.is_object())
    bad(vocabAt, "is " + brief(vocab) + ", not an object");
  int32_t maxId = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    maxId = std::max(
        maxId, tokenId(it.value(), vocabAt + "[" + io::quoted(it.key()) + "]"));
  model->idToToken.assign(size_t(maxId + 1), std::string());
  model->hasToken.assign(size_t(maxId + 1), false);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int32_t id = it.value().get<int32_t>();
    if (model->hasToken[size_t(id)])
      bad(vocabAt + "[" + io::quoted(it.key()) + "]",
          "id " + std::to_string(id) + " is also the id of " +
              io::quoted(model->idToToken[size_t(id)]));
    model->idToToken[size_t(id)] = it.key();
    model->hasToken[size_t(id)] = true;
  }
  // The strings no longer move: views into them are stable.
  model->vocab.reserve(vocab.size());
  for (size_t id = 0; id < model->idToToken.size(); ++id)
    if (model->hasToken[id])
      model->vocab.emplace(model->idToToken[id], int32_t(id));

  auto optionalString = [&](const char *key) -> std::optional<std::string> {
    const json *value = optionalMember(spec, key);
    if (!value)
      return std::nullopt;
    if (!value->is_string())
      bad(child(where, key), "is " + brief(*value) + ", not a string");
    return value->get<std::string>();
  };
  if (auto unk = optionalString("unk_token")) {
    model->unkId = model->find(*unk);
    if (!model->unkId)
      bad(child(where, "unk_token"),
          io::quoted(*unk) + " is not in the vocabulary");
  }
  model->continuingSubwordPrefix = optionalString("continuing_subword_prefix");
  model->endOfWordSuffix = optionalString("end_of_word_suffix");
  model->fuseUnk = boolMember(spec, where, "fuse_unk", false);
  model->byteFallback = boolMember(spec, where, "byte_fallback", false);
  model->ignoreMerges = boolMember(spec, where, "ignore_merges", false);
  static const char hex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const std::string name =
        std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
    model->byteIds[size_t(b)] = model->find(name).value_or(-1);
  }

  // Merges: "left right" strings or [left, right] pairs, by rank.
  const json &merges = member(spec, where, "merges");
  const std::string mergesAt = child(where, "merges");
  if (!merges.is_array())
    bad(mergesAt, "is " + brief(merges) + ", not an array");
  model->merges.reserve(merges.size());
  const size_t prefixLength = model->continuingSubwordPrefix
                                  ? model->continuingSubwordPrefix->size()
                                  : 0;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json &entry = merges[rank];
    std::string left, right;
    if (entry.is_string()) {
      const std::string &text = entry.get_ref<const std::string &>();
      const size_t space = text.find(' ');
      if (space == std::string::npos ||
          text.find(' ', space + 1) != std::string::npos)
        bad(item(mergesAt, rank),
            io::quoted(text) + " is not two tokens separated by one space");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      bad(item(mergesAt, rank),
          "is " + brief(entry) + ", not \"left right\" or [left, right]");
    }
    const auto leftId = model->find(left), rightId = model->find(right);
    std::string merged = left;
    if (right.size() >= prefixLength && prefixLength &&
        right.compare(0, prefixLength, *model->continuingSubwordPrefix) == 0)
      merged += right.substr(prefixLength);
    else
      merged += right;
    const auto mergedId = model->find(merged);
    if (!leftId || !rightId || !mergedId)
      bad(item(mergesAt, rank), "token " +
                                    io::quoted(!leftId    ? left
                                               : !rightId ? right
                                                          : merged) +
                                    " is not in the vocabulary");
    // A repeated pair keeps its last rank, as tokenizers' HashMap collect.
    model->merges.set(*leftId, *rightId, int32_t(rank), *mergedId);
  }
  return model;
}

/// The text of a tokenizer_config.json token entry: "..." or {"content": ...}.
std::optional<std::string> configToken(const json &config, const char *key,
                                       const std::string &where) {
  const json *value = optionalMember(config, key);
  if (!value)
    return std::nullopt;
  if (value->is_string())
    return value->get<std::string>();
  if (value->is_object())
    return stringMember(*value, child(where, key), "content");
  bad(child(where, key), "is " + brief(*value) + ", not a string or object");
}

json parseJson(const std::string &text) {
  try {
    return json::parse(text);
  } catch (const json::exception &e) {
    throw LoadError("malformed JSON: " + jsonMessage(e));
  }
}

} // namespace

//===----------------------------------------------------------------------===//
// Tokenizer
//===----------------------------------------------------------------------===//

struct Tokenizer::Impl {
  std::string path, fingerprint;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> preTokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<PostProcessor> postProcessor;
  std::unique_ptr<Decoder> decoder;
  std::vector<AddedToken> added;
  /// Added tokens matched on the raw text / on normalized pieces.
  TokenMatcher rawMatcher, normalizedMatcher;
  /// id -> index into `added`.
  std::unordered_map<int32_t, size_t> addedById;
  std::unordered_map<std::string, int32_t> addedByContent;
  std::string bosToken, eosToken;
  std::optional<int32_t> bosId, eosId;
  int64_t vocabSize = 0;

  std::optional<int32_t> tokenToId(std::string_view token) const {
    auto it = addedByContent.find(std::string(token));
    if (it != addedByContent.end())
      return it->second;
    return model->find(token);
  }
};

static void loadTokenizerJson(Tokenizer::Impl &t, const json &root) {
  if (!root.is_object())
    bad("", "is " + brief(root) + ", not a JSON object");
  const json &modelSpec = member(root, "", "model");
  std::string modelType = "BPE";
  if (modelSpec.is_object() && modelSpec.contains("type"))
    modelType = typeOf(modelSpec, "model");
  else if (!modelSpec.is_object() || !modelSpec.contains("merges"))
    bad("model", "missing 'type'");
  if (modelType != "BPE")
    unsupported("model", "model", modelType, "BPE");
  t.model = parseBpe(modelSpec, "model");

  if (const json *spec = optionalMember(root, "normalizer"))
    t.normalizer = parseNormalizer(*spec, "normalizer");
  if (const json *spec = optionalMember(root, "pre_tokenizer"))
    t.preTokenizer = parsePreTokenizer(*spec, "pre_tokenizer");
  if (const json *spec = optionalMember(root, "post_processor"))
    t.postProcessor = parsePostProcessor(*spec, "post_processor");
  if (const json *spec = optionalMember(root, "decoder"))
    t.decoder = parseDecoder(*spec, "decoder");

  int64_t maxId = int64_t(t.model->idToToken.size()) - 1;
  if (const json *tokens = optionalMember(root, "added_tokens")) {
    if (!tokens->is_array())
      bad("added_tokens", "is " + brief(*tokens) + ", not an array");
    for (size_t i = 0; i < tokens->size(); ++i) {
      const std::string at = item("added_tokens", i);
      const json &entry = (*tokens)[i];
      AddedToken token;
      token.id = tokenId(member(entry, at, "id"), child(at, "id"));
      token.content = stringMember(entry, at, "content");
      if (token.content.empty())
        bad(child(at, "content"), "is empty");
      token.special = boolMember(entry, at, "special", false);
      token.lstrip = boolMember(entry, at, "lstrip", false);
      token.rstrip = boolMember(entry, at, "rstrip", false);
      token.normalized = boolMember(entry, at, "normalized", !token.special);
      if (boolMember(entry, at, "single_word", false))
        bad(child(at, "single_word"), "single_word added tokens are not "
                                      "supported");
      maxId = std::max<int64_t>(maxId, token.id);
      t.addedById[token.id] = t.added.size();
      t.addedByContent[token.content] = token.id;
      t.added.push_back(std::move(token));
    }
  }
  for (size_t i = 0; i < t.added.size(); ++i) {
    const AddedToken &token = t.added[i];
    if (!token.normalized) {
      t.rawMatcher.add(token.content, int32_t(i));
      continue;
    }
    // Normalized tokens are matched in their normalized form.
    std::string content = token.content;
    if (t.normalizer)
      t.normalizer->apply(content);
    if (!content.empty())
      t.normalizedMatcher.add(content, int32_t(i));
  }
  t.vocabSize = maxId + 1;
}

static void loadTokenizerConfig(Tokenizer::Impl &t, const json &config) {
  if (!config.is_object())
    bad("", "is " + brief(config) + ", not a JSON object");
  auto resolve = [&](const char *key, std::string &text,
                     std::optional<int32_t> &id) {
    std::optional<std::string> token = configToken(config, key, "");
    if (!token)
      return;
    text = *token;
    id = t.tokenToId(*token);
    if (!id)
      bad(key, io::quoted(*token) + " is not a token of tokenizer.json");
  };
  resolve("bos_token", t.bosToken, t.bosId);
  resolve("eos_token", t.eosToken, t.eosId);

  // transformers' LlamaTokenizerFast.update_post_processor.
  if (!config.contains("add_bos_token") && !config.contains("add_eos_token"))
    return;
  const bool addBos = boolMember(config, "", "add_bos_token", true);
  const bool addEos = boolMember(config, "", "add_eos_token", false);
  if (addBos && !t.bosId)
    bad("add_bos_token", "is true, but there is no bos_token");
  if (addEos && !t.eosId)
    bad("add_eos_token", "is true, but there is no eos_token");
  auto processor = std::make_unique<TemplatePostProcessor>();
  if (addBos)
    processor->single.push_back({false, {*t.bosId}});
  processor->single.push_back({true, {}});
  if (addEos)
    processor->single.push_back({false, {*t.eosId}});
  t.postProcessor = std::move(processor);
}

Result<Tokenizer> Tokenizer::load(const std::string &dirOrFile) {
  namespace fs = std::filesystem;
  return guard(dirOrFile, [&]() -> Result<Tokenizer> {
    std::error_code ec;
    std::string jsonPath = dirOrFile;
    if (fs::is_directory(dirOrFile, ec))
      jsonPath = (fs::path(dirOrFile) / "tokenizer.json").string();
    Result<std::string> text = readWholeFile(jsonPath);
    if (!text)
      return text.error();
    const std::string configPath =
        (fs::path(jsonPath).parent_path() / "tokenizer_config.json").string();
    std::optional<std::string> configText;
    if (fs::exists(configPath, ec)) {
      Result<std::string> read = readWholeFile(configPath);
      if (!read)
        return read.error();
      configText = std::move(*read);
    }

    auto impl = std::make_shared<Impl>();
    impl->path = jsonPath;
    try {
      loadTokenizerJson(*impl, parseJson(*text));
    } catch (const LoadError &e) {
      return fail(jsonPath, e.what());
    }
    if (configText) {
      try {
        loadTokenizerConfig(*impl, parseJson(*configText));
      } catch (const LoadError &e) {
        return fail(configPath, e.what());
      }
    }
    Digest digest;
    digest.update(*text).update(configText ? *configText : std::string());
    digest.update(configText ? "config" : "no config");
    impl->fingerprint = digest.hex();
    return Tokenizer(std::move(impl));
  });
}

std::vector<int32_t> Tokenizer::encode(std::string_view input,
                                       bool addSpecialTokens) const {
  const Impl &t = *impl;
  const std::string text = utf8Lossy(input);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<Segment> outer, inner;
  std::vector<Piece> words;
  t.rawMatcher.split(text, t.added, outer);
  for (const Segment &segment : outer) {
    if (segment.token >= 0) {
      ids.push_back(t.added[size_t(segment.token)].id);
      continue;
    }
    std::string piece = text.substr(segment.begin, segment.end - segment.begin);
    if (piece.empty())
      continue;
    if (t.normalizer)
      t.normalizer->apply(piece);
    t.normalizedMatcher.split(piece, t.added, inner);
    for (const Segment &part : inner) {
      if (part.token >= 0) {
        ids.push_back(t.added[size_t(part.token)].id);
        continue;
      }
      if (part.end == part.begin)
        continue;
      words.clear();
      words.push_back({piece.substr(part.begin, part.end - part.begin),
                       segment.begin == 0 && part.begin == 0});
      if (t.preTokenizer)
        t.preTokenizer->apply(words);
      for (const Piece &word : words)
        if (!word.text.empty())
          t.model->encodeWord(word.text, ids);
    }
  }
  if (addSpecialTokens && t.postProcessor)
    t.postProcessor->apply(ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t> &ids,
                              bool skipSpecialTokens) const {
  const Impl &t = *impl;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    auto added = t.addedById.find(id);
    if (added != t.addedById.end()) {
      const AddedToken &token = t.added[added->second];
      if (!(skipSpecialTokens && token.special))
        tokens.push_back(token.content);
      continue;
    }
    if (id < 0 || size_t(id) >= t.model->idToToken.size() ||
        !t.model->hasToken[size_t(id)])
      continue;
    tokens.push_back(t.model->idToToken[size_t(id)]);
  }
  std::string out;
  if (t.decoder) {
    t.decoder->apply(tokens);
    for (const std::string &token : tokens)
      out += token;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i)
      out += (i ? " " : "") + tokens[i];
  }
  return out;
}

std::optional<int32_t> Tokenizer::bosId() const { return impl->bosId; }
std::optional<int32_t> Tokenizer::eosId() const { return impl->eosId; }
const std::string &Tokenizer::bosToken() const { return impl->bosToken; }
const std::string &Tokenizer::eosToken() const { return impl->eosToken; }
int64_t Tokenizer::vocabSize() const { return impl->vocabSize; }
const std::string &Tokenizer::path() const { return impl->path; }
const std::string &Tokenizer::fingerprint() const { return impl->fingerprint; }

std::optional<int32_t> Tokenizer::tokenToId(std::string_view token) const {
  return impl->tokenToId(token);
}

std::optional<std::string> Tokenizer::idToToken(int32_t id) const {
  auto added = impl->addedById.find(id);
  if (added != impl->addedById.end())
    return impl->added[added->second].content;
  const BpeModel &model = *impl->model;
  if (id < 0 || size_t(id) >= model.idToToken.size() ||
      !model.hasToken[size_t(id)])
    return std::nullopt;
  return model.idToToken[size_t(id)];
}
