//===- IOUtil.cpp - Helpers shared by the runtime's I/O code --------------===//

#include "IOUtil.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace llamac;
using namespace llamac::io;

Error io::fail(const std::string &path, const std::string &what) {
  return Error{path + ": " + what};
}

std::string io::quoted(const std::string &text) {
  std::string out = "'";
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7F) {
      static const char digits[] = "0123456789ABCDEF";
      out += "\\x";
      out += digits[c >> 4];
      out += digits[c & 15];
    } else {
      out += char(c);
    }
  }
  return out + "'";
}

std::string io::brief(const nlohmann::json &value) {
  constexpr size_t limit = 40;
  std::string text =
      value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > limit)
    text = text.substr(0, limit) + "...";
  return text;
}

std::string io::jsonMessage(const std::exception &e) {
  std::string message = e.what();
  if (message.rfind("[json.exception.", 0) == 0) {
    const size_t tagEnd = message.find("] ");
    if (tagEnd != std::string::npos)
      message.erase(0, tagEnd + 2);
  }
  return message;
}

Result<InputFile> InputFile::open(const std::string &path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    const int error = errno;
    ::close(fd);
    return fail(path, std::string("cannot stat: ") + std::strerror(error));
  }
  if (S_ISDIR(info.st_mode)) {
    ::close(fd);
    return fail(path, "is a directory, not a file");
  }
  return InputFile(fd, uint64_t(info.st_size));
}

InputFile::InputFile(InputFile &&other) noexcept
    : fd(other.fd), bytes(other.bytes) {
  other.fd = -1;
}

InputFile &InputFile::operator=(InputFile &&other) noexcept {
  if (this != &other) {
    if (fd >= 0)
      ::close(fd);
    fd = other.fd;
    bytes = other.bytes;
    other.fd = -1;
  }
  return *this;
}

InputFile::~InputFile() {
  if (fd >= 0)
    ::close(fd);
}

Status InputFile::readAt(void *data, uint64_t size, uint64_t offset) const {
  char *p = static_cast<char *>(data);
  uint64_t done = 0;
  while (done < size) {
    const ssize_t got =
        ::pread(fd, p + done, size - done, off_t(offset + done));
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0)
      return Error{"cannot read " + std::to_string(size) + " bytes at offset " +
                   std::to_string(offset) + ": " + std::strerror(errno)};
    if (got == 0)
      return Error{"the file ends at byte " + std::to_string(offset + done) +
                   ", inside the " + std::to_string(size) +
                   " bytes expected at offset " + std::to_string(offset)};
    done += uint64_t(got);
  }
  return {};
}

Result<std::string> io::readWholeFile(const std::string &path) {
  Result<InputFile> file = InputFile::open(path);
  if (!file)
    return file.error();
  std::string text(file->size(), '\0');
  if (Status status = file->readAt(text.data(), text.size(), 0); !status)
    return fail(path, status.error().message);
  return text;
}

std::string io::format(const char *pattern, ...) {
  va_list args, copy;
  va_start(args, pattern);
  va_copy(copy, args);
  int size = std::vsnprintf(nullptr, 0, pattern, copy);
  va_end(copy);
  std::string text(size_t(std::max(size, 0)), '\0');
  std::vsnprintf(text.data(), text.size() + 1, pattern, args);
  va_end(args);
  return text;
}
