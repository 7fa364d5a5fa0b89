//===- IOUtil.h - Helpers shared by the runtime's I/O code -----*- C++ -*-===//
//
// Internal to LlamacRuntimeIO: error formatting, the exception barrier of the
// public API, and positioned reads from a file.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_LIB_IOUTIL_H
#define LLAMAC_RUNTIME_LIB_IOUTIL_H

#include "llamac/Runtime/Result.h"

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <exception>
#include <string>

namespace llamac::io {

/// An Error reading "<path>: <what>".
Error fail(const std::string &path, const std::string &what);

/// \p text in single quotes, control characters escaped as \xNN so that the
/// message stays on one line.
std::string quoted(const std::string &text);

/// printf into a std::string.
std::string format(const char *pattern, ...)
    __attribute__((format(printf, 1, 2)));

/// Compact one-line JSON text of \p value, shortened when long.
std::string brief(const nlohmann::json &value);

/// The message of a JSON exception without its "[json.exception...] " tag.
std::string jsonMessage(const std::exception &e);

/// Runs \p body, turning any exception that escapes it (e.g. std::bad_alloc)
/// into an error about \p path: the public API never throws.
template <typename F>
auto guard(const std::string &path, F &&body) -> decltype(body()) {
  try {
    return body();
  } catch (const std::exception &e) {
    return fail(path, e.what());
  }
}

/// A file opened for positioned reads; closed on destruction.
class InputFile {
public:
  /// Opens \p path for reading; a directory is an error.
  static Result<InputFile> open(const std::string &path);

  InputFile(InputFile &&other) noexcept;
  InputFile &operator=(InputFile &&other) noexcept;
  InputFile(const InputFile &) = delete;
  InputFile &operator=(const InputFile &) = delete;
  ~InputFile();

  /// Size of the file when it was opened.
  uint64_t size() const { return bytes; }
  /// Reads exactly \p size bytes at \p offset into \p data; the error message
  /// does not name the file.
  Status readAt(void *data, uint64_t size, uint64_t offset) const;

private:
  InputFile(int handle, uint64_t size) : fd(handle), bytes(size) {}

  int fd = -1;
  uint64_t bytes = 0;
};

/// The whole contents of \p path.
Result<std::string> readWholeFile(const std::string &path);

} // namespace llamac::io

#endif // LLAMAC_RUNTIME_LIB_IOUTIL_H
