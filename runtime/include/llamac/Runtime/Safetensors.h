//===- Safetensors.h - Reading and writing safetensors files ---*- C++ -*-===//
//
// Host-side tensors, the safetensors file format (one file, a Hugging Face
// sharded index, or a checkpoint directory) and atomic file writes. Opening a
// file reads and validates only its header; tensor data is read one tensor at
// a time on request. All errors are one-line messages naming the file and the
// offending field or tensor.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_SAFETENSORS_H
#define LLAMAC_RUNTIME_SAFETENSORS_H

#include "llamac/Runtime/Result.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace llamac {

/// Element types the runtime reads and writes.
enum class DType { F64, F32, F16, BF16, I32, I64 };

/// Parses a safetensors dtype name ("F64", "F32", "F16", "BF16", "I32",
/// "I64"); returns std::nullopt for any other string.
std::optional<DType> parseDType(const std::string &name);
/// The safetensors name of \p dtype, e.g. "BF16".
const char *dtypeName(DType dtype);
/// A shape as text: "[d0, d1, ...]".
std::string formatShape(const std::vector<int64_t> &shape);
/// Size of one element of \p dtype in bytes.
int64_t dtypeSize(DType dtype);

/// Rounds \p value to bfloat16 (round to nearest, ties to even; NaN stays NaN,
/// overflow becomes infinity) and returns its bits.
uint16_t floatToBF16(float value);
/// Rounds \p value to bfloat16 directly (no intermediate float rounding).
uint16_t doubleToBF16(double value);
/// The float whose upper 16 bits are \p bits.
float bf16ToFloat(uint16_t bits);
/// Rounds \p value to IEEE half precision (round to nearest, ties to even;
/// subnormals kept, overflow becomes infinity, NaN stays NaN).
uint16_t floatToHalf(float value);
/// Rounds \p value to IEEE half precision directly (no intermediate float).
uint16_t doubleToHalf(double value);
/// The exact float value of the half-precision bits \p bits.
float halfToFloat(uint16_t bits);

/// A tensor in host memory: raw little-endian elements, row-major.
struct HostTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  /// Number of elements (1 for a scalar of shape []).
  int64_t numel() const;
  /// Every element converted exactly to double (integers beyond 2^53 round).
  std::vector<double> toDouble() const;
  /// A tensor of \p dtype and \p shape holding \p values (one per element,
  /// which the caller guarantees): F16/BF16/F32 round to nearest even; I32/I64
  /// round to the nearest integer (ties to even) and saturate, NaN becomes 0.
  static HostTensor fromDouble(std::string name, DType dtype,
                               std::vector<int64_t> shape,
                               const std::vector<double> &values);
};

/// Header entry of one tensor in a safetensors file.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  /// Byte range [begin, end) relative to the start of the data region.
  uint64_t begin = 0, end = 0;

  /// Number of elements (1 for a scalar of shape []).
  int64_t numel() const;
};

/// One safetensors file whose header has been read and validated.
class SafetensorsFile {
public:
  /// Reads and validates the header of \p path; reads no tensor data.
  static Result<SafetensorsFile> open(const std::string &path);

  /// The path the file was opened with.
  const std::string &path() const { return filePath; }
  /// Every tensor in the file, ordered by data offset.
  const std::vector<TensorInfo> &tensors() const { return infos; }
  /// The header's "__metadata__" (empty when absent).
  const std::map<std::string, std::string> &metadata() const { return meta; }
  /// The tensor called \p name, or nullptr.
  const TensorInfo *find(const std::string &name) const;
  /// Reads the data of the tensor called \p name from disk.
  Result<HostTensor> read(const std::string &name) const;

private:
  std::string filePath;
  uint64_t dataStart = 0;
  std::vector<TensorInfo> infos;
  std::map<std::string, size_t> byName;
  std::map<std::string, std::string> meta;
};

/// A checkpoint's weights, possibly spread over several safetensors shards.
class WeightStore {
public:
  /// Opens \p path: a .safetensors file, a model.safetensors.index.json
  /// (sharded; every shard is checked against the index), or a directory
  /// holding model.safetensors or else model.safetensors.index.json.
  static Result<WeightStore> open(const std::string &path);

  /// The file that was opened (the index for a sharded checkpoint).
  const std::string &path() const { return sourcePath; }
  /// Every tensor of every shard, ordered by name.
  const std::vector<TensorInfo> &tensors() const { return infos; }
  /// The tensor called \p name, or nullptr.
  const TensorInfo *find(const std::string &name) const;
  /// Reads the data of the tensor called \p name from its shard.
  Result<HostTensor> read(const std::string &name) const;

private:
  /// A store over \p shards, whose tensor names must be disjoint.
  static WeightStore fromShards(std::string path,
                                std::vector<SafetensorsFile> shards);

  std::string sourcePath;
  std::vector<SafetensorsFile> shards;
  std::vector<TensorInfo> infos;
  /// Tensor name -> index into `shards`.
  std::map<std::string, size_t> shardOf;
};

/// Writes \p tensors (data contiguous, in the given order) and \p metadata to
/// \p path as a safetensors file, atomically (see writeFileAtomic).
Status
writeSafetensors(const std::string &path,
                 const std::vector<HostTensor> &tensors,
                 const std::map<std::string, std::string> &metadata = {});

/// Replaces \p path with \p contents atomically: writes `path.tmp-<pid>` in the
/// same directory, fsyncs it and renames it over \p path. On failure the
/// temporary file is removed and any previous file at \p path is untouched.
Status writeFileAtomic(const std::string &path, const std::string &contents);

} // namespace llamac

#endif // LLAMAC_RUNTIME_SAFETENSORS_H
