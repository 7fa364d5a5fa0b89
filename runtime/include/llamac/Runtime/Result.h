//===- Result.h - Value-or-error return type for the runtime ---*- C++ -*-===//
//
// The runtime's public API never throws (its callers build with
// -fno-exceptions); functions that can fail return a Result<T> instead: either
// a value or an Error holding a one-line, human-readable message.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_RESULT_H
#define LLAMAC_RUNTIME_RESULT_H

#include <cassert>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace llamac {

/// A failure: a one-line message that names what went wrong and where.
struct Error {
  std::string message;
};

/// Either a T or an Error. Accessing the value of an error (or the error of a
/// value) is a programming mistake and asserts.
template <typename T> class [[nodiscard]] Result {
public:
  /// A successful result holding \p value.
  Result(T value) : storage(std::in_place_index<0>, std::move(value)) {}
  /// A failed result holding \p error.
  Result(Error error) : storage(std::in_place_index<1>, std::move(error)) {}

  /// True when this holds a value.
  bool ok() const { return storage.index() == 0; }
  /// True when this holds a value.
  explicit operator bool() const { return ok(); }

  /// The value; requires ok().
  T &value() & {
    assert(ok() && "value() of a failed Result");
    return *std::get_if<0>(&storage);
  }
  /// The value; requires ok().
  const T &value() const & {
    assert(ok() && "value() of a failed Result");
    return *std::get_if<0>(&storage);
  }
  /// The value, moved out; requires ok().
  T &&value() && {
    assert(ok() && "value() of a failed Result");
    return std::move(*std::get_if<0>(&storage));
  }
  T &operator*() & { return value(); }
  const T &operator*() const & { return value(); }
  T &&operator*() && { return std::move(*this).value(); }
  T *operator->() { return &value(); }
  const T *operator->() const { return &value(); }

  /// The error; requires !ok().
  const Error &error() const {
    assert(!ok() && "error() of a successful Result");
    return *std::get_if<1>(&storage);
  }

private:
  std::variant<T, Error> storage;
};

/// Success (no value) or an Error.
template <> class [[nodiscard]] Result<void> {
public:
  /// A successful result.
  Result() = default;
  /// A failed result holding \p error.
  Result(Error error) : failure(std::move(error)) {}

  /// True on success.
  bool ok() const { return !failure.has_value(); }
  /// True on success.
  explicit operator bool() const { return ok(); }

  /// The error; requires !ok().
  const Error &error() const {
    assert(!ok() && "error() of a successful Result");
    return *failure;
  }

private:
  std::optional<Error> failure;
};

/// The result of an operation that returns nothing on success.
using Status = Result<void>;

} // namespace llamac

#endif // LLAMAC_RUNTIME_RESULT_H
