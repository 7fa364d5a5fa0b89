//===- Safetensors.cpp - Reading and writing safetensors files -----------===//
//
// File layout: an 8-byte little-endian header length N, N bytes of JSON
// mapping tensor names to {dtype, shape, data_offsets} (plus an optional
// "__metadata__" object of strings), then the data region that the offsets
// index into.
//
//===----------------------------------------------------------------------===//

#include "llamac/Runtime/Safetensors.h"

#include "IOUtil.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "tensor data is copied as-is: the host must be little-endian");

using namespace llamac;
using namespace llamac::io;
using json = nlohmann::json;
namespace fs = std::filesystem;

//===----------------------------------------------------------------------===//
// DType and floating-point conversions
//===----------------------------------------------------------------------===//

std::optional<DType> llamac::parseDType(const std::string &name) {
  static const std::pair<const char *, DType> names[] = {
      {"F64", DType::F64},   {"F32", DType::F32}, {"F16", DType::F16},
      {"BF16", DType::BF16}, {"I32", DType::I32}, {"I64", DType::I64}};
  for (const auto &[text, dtype] : names)
    if (name == text)
      return dtype;
  return std::nullopt;
}

const char *llamac::dtypeName(DType dtype) {
  switch (dtype) {
  case DType::F64:
    return "F64";
  case DType::F32:
    return "F32";
  case DType::F16:
    return "F16";
  case DType::BF16:
    return "BF16";
  case DType::I32:
    return "I32";
  case DType::I64:
    return "I64";
  }
  return "?";
}

int64_t llamac::dtypeSize(DType dtype) {
  switch (dtype) {
  case DType::F64:
  case DType::I64:
    return 8;
  case DType::F32:
  case DType::I32:
    return 4;
  case DType::F16:
  case DType::BF16:
    return 2;
  }
  return 0;
}

/// Rounds \p value to the binary floating-point format with \p expBits
/// exponent bits and \p mantBits stored mantissa bits (IEEE layout: sign,
/// biased exponent, mantissa), to nearest with ties to even. Subnormals are
/// produced, overflow gives infinity, NaN gives a quiet NaN of the same sign.
static uint32_t roundToFormat(double value, int expBits, int mantBits) {
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t sign = uint32_t(bits >> 63) << (expBits + mantBits);
  const int exp = int((bits >> 52) & 0x7FF);
  const uint64_t frac = bits & ((uint64_t(1) << 52) - 1);
  const int expMax = (1 << expBits) - 1;
  const uint32_t inf = sign | (uint32_t(expMax) << mantBits);
  if (exp == 0x7FF)
    return frac ? inf | (uint32_t(1) << (mantBits - 1)) : inf;
  // Zero, or a double subnormal: far below half the smallest subnormal of
  // any target format, so it rounds to a signed zero.
  if (exp == 0)
    return sign;
  const int bias = (1 << (expBits - 1)) - 1;
  int field = exp - 1023 + bias;
  const uint64_t sig = frac | (uint64_t(1) << 52);
  // Number of low significand bits that do not fit; a subnormal result loses
  // one more per step below the smallest normal exponent.
  const int shift = 52 - mantBits + (field < 1 ? 1 - field : 0);
  if (shift > 53)
    return sign;
  uint64_t keep = sig >> shift;
  const uint64_t rem = sig & ((uint64_t(1) << shift) - 1);
  const uint64_t half = uint64_t(1) << (shift - 1);
  if (rem > half || (rem == half && (keep & 1)))
    ++keep;
  // A subnormal that rounds up to 2^mantBits carries into the exponent field
  // and correctly becomes the smallest normal number.
  if (field < 1)
    return sign | uint32_t(keep);
  if (keep >> (mantBits + 1)) {
    keep >>= 1;
    ++field;
  }
  if (field >= expMax)
    return inf;
  return sign | (uint32_t(field) << mantBits) |
         uint32_t(keep & ((uint64_t(1) << mantBits) - 1));
}

uint16_t llamac::floatToBF16(float value) {
  return uint16_t(roundToFormat(value, 8, 7));
}

uint16_t llamac::doubleToBF16(double value) {
  return uint16_t(roundToFormat(value, 8, 7));
}

float llamac::bf16ToFloat(uint16_t bits) {
  const uint32_t wide = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

uint16_t llamac::floatToHalf(float value) {
  return uint16_t(roundToFormat(value, 5, 10));
}

uint16_t llamac::doubleToHalf(double value) {
  return uint16_t(roundToFormat(value, 5, 10));
}

float llamac::halfToFloat(uint16_t bits) {
  const int exp = (bits >> 10) & 0x1F;
  const int frac = bits & 0x3FF;
  float magnitude;
  if (exp == 0)
    magnitude = std::ldexp(float(frac), -24);
  else if (exp == 0x1F)
    magnitude = frac ? std::numeric_limits<float>::quiet_NaN()
                     : std::numeric_limits<float>::infinity();
  else
    magnitude = std::ldexp(float(frac | 0x400), exp - 25);
  return (bits & 0x8000) ? -magnitude : magnitude;
}

//===----------------------------------------------------------------------===//
// HostTensor
//===----------------------------------------------------------------------===//

/// Product of \p shape, or std::nullopt on a negative dimension or overflow.
static std::optional<int64_t> shapeNumel(const std::vector<int64_t> &shape) {
  int64_t numel = 1;
  for (int64_t dim : shape)
    if (dim < 0 || __builtin_mul_overflow(numel, dim, &numel))
      return std::nullopt;
  return numel;
}

/// Size in bytes of a \p dtype tensor of \p shape, or std::nullopt on a
/// negative dimension or overflow.
static std::optional<int64_t> shapeBytes(DType dtype,
                                         const std::vector<int64_t> &shape) {
  std::optional<int64_t> numel = shapeNumel(shape);
  int64_t bytes;
  if (!numel || __builtin_mul_overflow(*numel, dtypeSize(dtype), &bytes))
    return std::nullopt;
  return bytes;
}

int64_t HostTensor::numel() const { return shapeNumel(shape).value_or(0); }

int64_t TensorInfo::numel() const { return shapeNumel(shape).value_or(0); }

template <typename T> static T load(const uint8_t *p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

template <typename T> static void store(uint8_t *p, T value) {
  std::memcpy(p, &value, sizeof(T));
}

std::vector<double> HostTensor::toDouble() const {
  const size_t size = size_t(dtypeSize(dtype));
  const size_t count = bytes.size() / size;
  std::vector<double> values(count);
  for (size_t i = 0; i < count; ++i) {
    const uint8_t *p = bytes.data() + i * size;
    switch (dtype) {
    case DType::F64:
      values[i] = load<double>(p);
      break;
    case DType::F32:
      values[i] = load<float>(p);
      break;
    case DType::F16:
      values[i] = halfToFloat(load<uint16_t>(p));
      break;
    case DType::BF16:
      values[i] = bf16ToFloat(load<uint16_t>(p));
      break;
    case DType::I32:
      values[i] = double(load<int32_t>(p));
      break;
    case DType::I64:
      values[i] = double(load<int64_t>(p));
      break;
    }
  }
  return values;
}

/// \p value rounded to the nearest integer (ties to even) and saturated to
/// the range of I; NaN gives 0.
template <typename I> static I roundToInt(double value) {
  if (std::isnan(value))
    return 0;
  const double rounded = std::nearbyint(value);
  // Both limits are powers of two (up to sign), hence exact doubles.
  const double lo = double(std::numeric_limits<I>::min());
  const double hi = -lo;
  if (rounded <= lo)
    return std::numeric_limits<I>::min();
  if (rounded >= hi)
    return std::numeric_limits<I>::max();
  return I(rounded);
}

HostTensor HostTensor::fromDouble(std::string name, DType dtype,
                                  std::vector<int64_t> shape,
                                  const std::vector<double> &values) {
  HostTensor tensor;
  tensor.name = std::move(name);
  tensor.dtype = dtype;
  tensor.shape = std::move(shape);
  const size_t size = size_t(dtypeSize(dtype));
  tensor.bytes.resize(values.size() * size);
  for (size_t i = 0; i < values.size(); ++i) {
    uint8_t *p = tensor.bytes.data() + i * size;
    switch (dtype) {
    case DType::F64:
      store<double>(p, values[i]);
      break;
    case DType::F32:
      store<uint32_t>(p, roundToFormat(values[i], 8, 23));
      break;
    case DType::F16:
      store<uint16_t>(p, doubleToHalf(values[i]));
      break;
    case DType::BF16:
      store<uint16_t>(p, doubleToBF16(values[i]));
      break;
    case DType::I32:
      store<int32_t>(p, roundToInt<int32_t>(values[i]));
      break;
    case DType::I64:
      store<int64_t>(p, roundToInt<int64_t>(values[i]));
      break;
    }
  }
  return tensor;
}

//===----------------------------------------------------------------------===//
// SafetensorsFile
//===----------------------------------------------------------------------===//

std::string llamac::formatShape(const std::vector<int64_t> &shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

/// "[begin, end]".
static std::string formatRange(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

/// \p value as a non-negative integer, or std::nullopt.
static std::optional<uint64_t> asNonNegative(const json &value) {
  if (value.is_number_unsigned())
    return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0)
    return uint64_t(value.get<int64_t>());
  return std::nullopt;
}

/// Parses one header entry into a TensorInfo, checking it against a data
/// region of \p dataSize bytes; errors are relative to the file.
static Result<TensorInfo> parseEntry(const std::string &name, const json &entry,
                                     uint64_t dataSize) {
  const std::string where = "tensor " + quoted(name) + ": ";
  auto bad = [&](const std::string &what) { return Error{where + what}; };
  if (!entry.is_object())
    return bad("entry is " + brief(entry) + ", not an object");
  TensorInfo info;
  info.name = name;

  auto dtype = entry.find("dtype");
  if (dtype == entry.end())
    return bad("missing 'dtype'");
  if (!dtype->is_string())
    return bad("dtype is " + brief(*dtype) + ", not a string");
  std::optional<DType> parsed = parseDType(dtype->get<std::string>());
  if (!parsed)
    return bad("unknown dtype " + brief(*dtype) +
               " (expected F64, F32, F16, BF16, I32 or I64)");
  info.dtype = *parsed;

  auto shape = entry.find("shape");
  if (shape == entry.end())
    return bad("missing 'shape'");
  if (!shape->is_array())
    return bad("shape is " + brief(*shape) + ", not an array");
  for (size_t i = 0; i < shape->size(); ++i) {
    std::optional<uint64_t> dim = asNonNegative((*shape)[i]);
    if (!dim || *dim > uint64_t(std::numeric_limits<int64_t>::max()))
      return bad("shape[" + std::to_string(i) + "] is " + brief((*shape)[i]) +
                 ", not a non-negative integer");
    info.shape.push_back(int64_t(*dim));
  }

  auto offsets = entry.find("data_offsets");
  if (offsets == entry.end())
    return bad("missing 'data_offsets'");
  if (!offsets->is_array() || offsets->size() != 2)
    return bad("data_offsets is " + brief(*offsets) +
               ", not an array [begin, end]");
  for (size_t i = 0; i < 2; ++i)
    if (!asNonNegative((*offsets)[i]))
      return bad("data_offsets[" + std::to_string(i) + "] is " +
                 brief((*offsets)[i]) + ", not a non-negative integer");
  info.begin = *asNonNegative((*offsets)[0]);
  info.end = *asNonNegative((*offsets)[1]);
  const std::string range = formatRange(info.begin, info.end);
  if (info.begin > info.end)
    return bad("data_offsets " + range + " begin after they end");
  if (info.end > dataSize)
    return bad("data_offsets " + range + " run past the end of the data (" +
               std::to_string(dataSize) + " bytes)");

  std::optional<int64_t> bytes = shapeBytes(info.dtype, info.shape);
  if (!bytes)
    return bad(std::string(dtypeName(info.dtype)) + " " +
               formatShape(info.shape) + " is too large");
  if (info.end - info.begin != uint64_t(*bytes))
    return bad("data_offsets " + range + " hold " +
               std::to_string(info.end - info.begin) + " bytes, but " +
               dtypeName(info.dtype) + " " + formatShape(info.shape) +
               " needs " + std::to_string(*bytes));
  return info;
}

/// Validates `__metadata__` and returns it as a map.
static Result<std::map<std::string, std::string>>
parseMetadata(const json &value) {
  if (!value.is_object())
    return Error{"__metadata__ is " + brief(value) + ", not an object"};
  std::map<std::string, std::string> metadata;
  for (const auto &[key, item] : value.items()) {
    if (!item.is_string())
      return Error{"__metadata__[" + quoted(key) + "] is " + brief(item) +
                   ", not a string"};
    metadata[key] = item.get<std::string>();
  }
  return metadata;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string &path) {
  return guard(path, [&]() -> Result<SafetensorsFile> {
    Result<InputFile> input = InputFile::open(path);
    if (!input)
      return input.error();
    const uint64_t fileSize = input->size();
    if (fileSize < 8)
      return fail(path, "file is " + std::to_string(fileSize) +
                            " bytes, too short for the 8-byte header length");
    uint8_t lengthBytes[8];
    if (Status status = input->readAt(lengthBytes, 8, 0); !status)
      return fail(path, status.error().message);
    uint64_t headerLength = 0;
    for (int i = 7; i >= 0; --i)
      headerLength = (headerLength << 8) | lengthBytes[i];
    if (headerLength > fileSize - 8)
      return fail(path, "header length " + std::to_string(headerLength) +
                            " runs past the end of the file (" +
                            std::to_string(fileSize) + " bytes)");
    std::string text(headerLength, '\0');
    if (Status status = input->readAt(text.data(), headerLength, 8); !status)
      return fail(path, "header: " + status.error().message);

    json header;
    try {
      header = json::parse(text);
    } catch (const json::exception &e) {
      return fail(path, "header is not valid JSON: " + jsonMessage(e));
    }
    if (!header.is_object())
      return fail(path, "header is " + brief(header) + ", not a JSON object");

    SafetensorsFile file;
    file.filePath = path;
    file.dataStart = 8 + headerLength;
    const uint64_t dataSize = fileSize - file.dataStart;
    for (const auto &[name, entry] : header.items()) {
      if (name == "__metadata__") {
        auto metadata = parseMetadata(entry);
        if (!metadata)
          return fail(path, metadata.error().message);
        file.meta = std::move(*metadata);
        continue;
      }
      Result<TensorInfo> info = parseEntry(name, entry, dataSize);
      if (!info)
        return fail(path, info.error().message);
      file.infos.push_back(std::move(*info));
    }

    std::sort(file.infos.begin(), file.infos.end(),
              [](const TensorInfo &a, const TensorInfo &b) {
                return std::tie(a.begin, a.end, a.name) <
                       std::tie(b.begin, b.end, b.name);
              });
    // Sorted by begin, a non-empty range overlaps an earlier one exactly when
    // it starts before the furthest end seen so far.
    const TensorInfo *furthest = nullptr;
    for (const TensorInfo &info : file.infos) {
      if (info.begin == info.end)
        continue;
      if (furthest && info.begin < furthest->end)
        return fail(path, "tensor " + quoted(info.name) + ": data_offsets " +
                              formatRange(info.begin, info.end) +
                              " overlap tensor " + quoted(furthest->name) +
                              " at " +
                              formatRange(furthest->begin, furthest->end));
      if (!furthest || info.end > furthest->end)
        furthest = &info;
    }
    for (size_t i = 0; i < file.infos.size(); ++i)
      file.byName[file.infos[i].name] = i;
    return file;
  });
}

const TensorInfo *SafetensorsFile::find(const std::string &name) const {
  auto it = byName.find(name);
  return it == byName.end() ? nullptr : &infos[it->second];
}

Result<HostTensor> SafetensorsFile::read(const std::string &name) const {
  return guard(filePath, [&]() -> Result<HostTensor> {
    const TensorInfo *info = find(name);
    if (!info)
      return fail(filePath, "no tensor named " + quoted(name));
    Result<InputFile> input = InputFile::open(filePath);
    if (!input)
      return input.error();
    HostTensor tensor;
    tensor.name = info->name;
    tensor.dtype = info->dtype;
    tensor.shape = info->shape;
    tensor.bytes.resize(info->end - info->begin);
    if (Status status = input->readAt(tensor.bytes.data(), tensor.bytes.size(),
                                      dataStart + info->begin);
        !status)
      return fail(filePath,
                  "tensor " + quoted(name) + ": " + status.error().message);
    return tensor;
  });
}

//===----------------------------------------------------------------------===//
// WeightStore
//===----------------------------------------------------------------------===//

WeightStore WeightStore::fromShards(std::string path,
                                    std::vector<SafetensorsFile> shards) {
  WeightStore store;
  store.sourcePath = std::move(path);
  for (size_t s = 0; s < shards.size(); ++s)
    for (const TensorInfo &info : shards[s].tensors()) {
      store.infos.push_back(info);
      store.shardOf[info.name] = s;
    }
  std::sort(
      store.infos.begin(), store.infos.end(),
      [](const TensorInfo &a, const TensorInfo &b) { return a.name < b.name; });
  store.shards = std::move(shards);
  return store;
}

/// Opens every shard that the Hugging Face index \p path names and checks
/// that the shards hold exactly the tensors the index maps to them.
static Result<std::vector<SafetensorsFile>>
openIndexedShards(const std::string &path) {
  Result<std::string> text = readWholeFile(path);
  if (!text)
    return text.error();
  json index;
  try {
    index = json::parse(*text);
  } catch (const json::exception &e) {
    return fail(path, "not valid JSON: " + jsonMessage(e));
  }
  if (!index.is_object())
    return fail(path, "index is " + brief(index) + ", not a JSON object");
  auto weightMap = index.find("weight_map");
  if (weightMap == index.end())
    return fail(path, "missing 'weight_map'");
  if (!weightMap->is_object())
    return fail(path, "weight_map is " + brief(*weightMap) + ", not an object");
  if (weightMap->empty())
    return fail(path, "weight_map is empty");

  // Shard file name -> tensors the index puts there.
  std::map<std::string, std::vector<std::string>> tensorsOfShard;
  for (const auto &[name, shard] : weightMap->items()) {
    if (!shard.is_string())
      return fail(path, "weight_map[" + quoted(name) + "] is " + brief(shard) +
                            ", not a string");
    tensorsOfShard[shard.get<std::string>()].push_back(name);
  }

  const fs::path directory = fs::path(path).parent_path();
  std::vector<SafetensorsFile> shards;
  for (const auto &[shardName, names] : tensorsOfShard) {
    const std::string shardPath = (directory / shardName).string();
    std::error_code ec;
    if (!fs::is_regular_file(shardPath, ec))
      return fail(path, "weight_map[" + quoted(names.front()) + "]: shard " +
                            quoted(shardName) + " does not exist (looked for " +
                            shardPath + ")");
    Result<SafetensorsFile> shard = SafetensorsFile::open(shardPath);
    if (!shard)
      return shard.error();
    for (const std::string &name : names)
      if (!shard->find(name))
        return fail(path, "tensor " + quoted(name) + " is mapped to shard " +
                              quoted(shardName) +
                              ", which does not contain it");
    for (const TensorInfo &info : shard->tensors()) {
      auto mapped = weightMap->find(info.name);
      if (mapped == weightMap->end())
        return fail(path, "shard " + quoted(shardName) + " holds tensor " +
                              quoted(info.name) +
                              ", which the index does not list");
      if (mapped->get<std::string>() != shardName)
        return fail(path, "shard " + quoted(shardName) + " holds tensor " +
                              quoted(info.name) +
                              ", which the index maps to shard " +
                              quoted(mapped->get<std::string>()));
    }
    shards.push_back(std::move(*shard));
  }
  return shards;
}

Result<WeightStore> WeightStore::open(const std::string &path) {
  return guard(path, [&]() -> Result<WeightStore> {
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    if (!fs::exists(status))
      return fail(path, ec ? ec.message() : "no such file or directory");
    std::string file = path;
    if (fs::is_directory(status)) {
      const fs::path single = fs::path(path) / "model.safetensors";
      const fs::path index = fs::path(path) / "model.safetensors.index.json";
      if (fs::exists(single, ec))
        file = single.string();
      else if (fs::exists(index, ec))
        file = index.string();
      else
        return fail(path, "directory holds neither model.safetensors nor "
                          "model.safetensors.index.json");
    }
    if (fs::path(file).extension() == ".json") {
      Result<std::vector<SafetensorsFile>> shards = openIndexedShards(file);
      if (!shards)
        return shards.error();
      return fromShards(file, std::move(*shards));
    }
    Result<SafetensorsFile> single = SafetensorsFile::open(file);
    if (!single)
      return single.error();
    std::vector<SafetensorsFile> shards;
    shards.push_back(std::move(*single));
    return fromShards(file, std::move(shards));
  });
}

const TensorInfo *WeightStore::find(const std::string &name) const {
  auto it = shardOf.find(name);
  return it == shardOf.end() ? nullptr : shards[it->second].find(name);
}

Result<HostTensor> WeightStore::read(const std::string &name) const {
  auto it = shardOf.find(name);
  if (it == shardOf.end())
    return fail(sourcePath, "no tensor named " + quoted(name));
  return shards[it->second].read(name);
}

//===----------------------------------------------------------------------===//
// Writing
//===----------------------------------------------------------------------===//

namespace {
/// A file written under a temporary name and renamed over its target on
/// commit(); destroyed uncommitted, it removes the temporary file.
class AtomicWriter {
public:
  explicit AtomicWriter(const std::string &path)
      : target(path), temp(path + ".tmp-" + std::to_string(::getpid())) {}
  AtomicWriter(const AtomicWriter &) = delete;
  AtomicWriter &operator=(const AtomicWriter &) = delete;
  ~AtomicWriter() {
    if (fd >= 0)
      ::close(fd);
    if (created && !committed)
      ::unlink(temp.c_str());
  }

  /// Creates the temporary file.
  Status create() {
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
      return failure("cannot create temporary file " + temp);
    created = true;
    return {};
  }

  /// Appends \p size bytes at \p data to the temporary file.
  Status write(const void *data, size_t size) {
    const char *p = static_cast<const char *>(data);
    while (size > 0) {
      const ssize_t written = ::write(fd, p, size);
      if (written < 0 && errno == EINTR)
        continue;
      if (written < 0)
        return failure("cannot write temporary file " + temp);
      p += written;
      size -= size_t(written);
    }
    return {};
  }

  /// Flushes the temporary file to disk and renames it over the target.
  Status commit() {
    if (::fsync(fd) != 0)
      return failure("cannot fsync temporary file " + temp);
    const int closing = fd;
    fd = -1;
    if (::close(closing) != 0)
      return failure("cannot close temporary file " + temp);
    if (::rename(temp.c_str(), target.c_str()) != 0)
      return failure("cannot rename " + temp + " over it");
    committed = true;
    // Make the rename itself durable; the data is already safe, so a
    // directory that cannot be synced is not an error.
    fs::path directory = fs::path(target).parent_path();
    if (directory.empty())
      directory = ".";
    const int dirFd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY);
    if (dirFd >= 0) {
      ::fsync(dirFd);
      ::close(dirFd);
    }
    return {};
  }

private:
  Error failure(const std::string &what) const {
    return fail(target, what + ": " + std::strerror(errno));
  }

  std::string target, temp;
  int fd = -1;
  bool created = false, committed = false;
};
} // namespace

Status llamac::writeFileAtomic(const std::string &path,
                               const std::string &contents) {
  return guard(path, [&]() -> Status {
    AtomicWriter writer(path);
    if (Status status = writer.create(); !status)
      return status;
    if (Status status = writer.write(contents.data(), contents.size()); !status)
      return status;
    return writer.commit();
  });
}

Status
llamac::writeSafetensors(const std::string &path,
                         const std::vector<HostTensor> &tensors,
                         const std::map<std::string, std::string> &metadata) {
  return guard(path, [&]() -> Status {
    json header = json::object();
    if (!metadata.empty())
      header["__metadata__"] = metadata;
    uint64_t offset = 0;
    for (const HostTensor &tensor : tensors) {
      const std::string where = "tensor " + quoted(tensor.name) + ": ";
      if (tensor.name == "__metadata__")
        return fail(path, where + "the name is reserved for metadata");
      if (header.contains(tensor.name))
        return fail(path, where + "the name occurs twice");
      std::optional<int64_t> bytes = shapeBytes(tensor.dtype, tensor.shape);
      if (!bytes)
        return fail(path, where + "shape " + formatShape(tensor.shape) +
                              " has a negative dimension or is too large");
      if (tensor.bytes.size() != uint64_t(*bytes))
        return fail(path, where + "holds " +
                              std::to_string(tensor.bytes.size()) +
                              " bytes, but " + dtypeName(tensor.dtype) + " " +
                              formatShape(tensor.shape) + " needs " +
                              std::to_string(*bytes));
      header[tensor.name] = {{"dtype", dtypeName(tensor.dtype)},
                             {"shape", tensor.shape},
                             {"data_offsets", {offset, offset + *bytes}}};
      offset += uint64_t(*bytes);
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    uint8_t length[8];
    for (int i = 0; i < 8; ++i)
      length[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

    AtomicWriter writer(path);
    if (Status status = writer.create(); !status)
      return status;
    if (Status status = writer.write(length, sizeof(length)); !status)
      return status;
    if (Status status = writer.write(text.data(), text.size()); !status)
      return status;
    for (const HostTensor &tensor : tensors)
      if (Status status =
              writer.write(tensor.bytes.data(), tensor.bytes.size());
          !status)
        return status;
    return writer.commit();
  });
}
