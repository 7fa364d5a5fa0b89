//===- FusedParams.cpp - Step parameters and their Hugging Face tensors ---===//

#include "llamac/Runtime/FusedParams.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cassert>
#include <optional>

using namespace llamac;

static int64_t product(const std::vector<int64_t> &shape) {
  int64_t count = 1;
  for (int64_t d : shape)
    count *= d;
  return count;
}

FusedParts llamac::bufferParts(const package::Buffer &buffer) {
  FusedParts parts;
  for (size_t i = 0; i < buffer.parts.size(); ++i) {
    std::vector<int64_t> shape = buffer.shape;
    shape[0] = buffer.partRows[i];
    parts.names.push_back(buffer.parts[i]);
    parts.shapes.push_back(std::move(shape));
  }
  return parts;
}

std::vector<HostTensor> llamac::splitFused(const FusedParts &parts,
                                           const std::vector<double> &values,
                                           DType dtype,
                                           const std::string &prefix) {
  std::vector<HostTensor> tensors;
  size_t offset = 0;
  for (size_t i = 0; i < parts.names.size(); ++i) {
    size_t count = size_t(product(parts.shapes[i]));
    assert(offset + count <= values.size() && "fewer values than parts");
    std::vector<double> part(values.begin() + offset,
                             values.begin() + offset + count);
    tensors.push_back(HostTensor::fromDouble(prefix + parts.names[i], dtype,
                                             parts.shapes[i], part));
    offset += count;
  }
  assert(offset == values.size() && "more values than parts");
  return tensors;
}

Result<HostTensor> llamac::gatherFused(const package::Buffer &buffer,
                                       const TensorSource &source) {
  FusedParts parts = bufferParts(buffer);
  std::vector<double> values;
  values.reserve(size_t(product(buffer.shape)));
  for (size_t i = 0; i < parts.names.size(); ++i) {
    Result<std::vector<double>> part = source(parts.names[i], parts.shapes[i]);
    if (!part)
      return part.error();
    values.insert(values.end(), part->begin(), part->end());
  }
  return HostTensor::fromDouble(buffer.name, DType::BF16, buffer.shape, values);
}

/// The values of a package buffer of element type \p dtype, read through
/// \p read.
static Result<std::vector<double>> readValues(const package::Buffer &buffer,
                                              DType dtype,
                                              const BufferReader &read) {
  HostTensor whole;
  whole.dtype = dtype;
  whole.shape = buffer.shape;
  whole.bytes.resize(buffer.bytes);
  if (Status status = read(buffer, whole.bytes.data()); !status)
    return status.error();
  return whole.toDouble();
}

Result<std::vector<HostTensor>>
llamac::downloadFused(const package::Package &package, const std::string &role,
                      DType dtype, const std::string &prefix,
                      const BufferReader &read) {
  std::vector<HostTensor> tensors;
  for (const package::Buffer &buffer : package.buffers) {
    if (buffer.role != role)
      continue;
    Result<std::vector<double>> values = readValues(buffer, DType::BF16, read);
    if (!values)
      return values.error();
    for (HostTensor &part :
         splitFused(bufferParts(buffer), *values, dtype, prefix))
      tensors.push_back(std::move(part));
  }
  return tensors;
}

/// The FP8 state kind a checkpoint holds of buffers of \p role, if any.
static std::optional<FP8StateKind> savedFP8State(const std::string &role) {
  if (role == "fp8_history")
    return FP8StateKind::AmaxHistory;
  if (role == "fp8_scale")
    return FP8StateKind::Scale;
  return std::nullopt;
}

Result<std::vector<HostTensor>>
llamac::downloadFP8State(const package::Package &package,
                         const BufferReader &read) {
  std::vector<HostTensor> tensors;
  for (const package::Buffer &buffer : package.buffers) {
    std::optional<FP8StateKind> kind = savedFP8State(buffer.role);
    if (!kind)
      continue;
    Result<std::vector<double>> values = readValues(buffer, DType::F32, read);
    if (!values)
      return values.error();
    // One row per quantized tensor: a history [L] or a scalar scale.
    std::vector<int64_t> rowShape(buffer.shape.begin() + 1, buffer.shape.end());
    size_t rowSize = size_t(product(rowShape));
    for (size_t row = 0; row < buffer.parts.size(); ++row)
      tensors.push_back(HostTensor::fromDouble(
          fp8StateTensorName(*kind, buffer.parts[row]), DType::F32, rowShape,
          std::vector<double>(values->begin() + row * rowSize,
                              values->begin() + (row + 1) * rowSize)));
  }
  std::sort(
      tensors.begin(), tensors.end(),
      [](const HostTensor &a, const HostTensor &b) { return a.name < b.name; });
  return tensors;
}

Result<std::vector<HostTensor>>
llamac::restoreFP8State(const package::Package &package,
                        const std::string &checkpointDir) {
  std::vector<HostTensor> contents;
  std::optional<SafetensorsFile> file;
  for (const package::Buffer &buffer : package.buffers) {
    const bool inverse = buffer.role == "fp8_scale_inv";
    std::optional<FP8StateKind> kind =
        inverse ? FP8StateKind::Scale : savedFP8State(buffer.role);
    if (!kind && buffer.role != "fp8_amax")
      continue;
    std::vector<double> values(size_t(product(buffer.shape)), 0.0);
    if (kind) {
      if (!file) {
        Result<SafetensorsFile> opened = openFP8State(checkpointDir);
        if (!opened)
          return opened.error();
        file.emplace(std::move(*opened));
      }
      if (inverse && buffer.initF32.size() == values.size())
        values.assign(buffer.initF32.begin(), buffer.initF32.end());
      std::vector<int64_t> rowShape;
      if (*kind == FP8StateKind::AmaxHistory)
        rowShape.push_back(buffer.shape[1]);
      const size_t rowSize = values.size() / buffer.parts.size();
      for (size_t row = 0; row < buffer.parts.size(); ++row) {
        Result<std::vector<double>> saved =
            readFP8StateTensor(*file, *kind, buffer.parts[row], rowShape,
                               "the package's --fp8-amax-history");
        if (!saved)
          return saved.error();
        if (inverse)
          values[row * rowSize] = double(1.0f / float((*saved)[0]));
        else
          std::copy(saved->begin(), saved->end(),
                    values.begin() + row * rowSize);
      }
    }
    contents.push_back(
        HostTensor::fromDouble(buffer.name, DType::F32, buffer.shape, values));
  }
  return contents;
}

std::string llamac::checkpointConfig(const package::Package &package) {
  nlohmann::json config =
      nlohmann::json::parse(package.configJson, nullptr, false);
  return config.is_discarded() ? package.configJson : config.dump(2) + "\n";
}

Result<CheckpointContents>
llamac::packageCheckpoint(const package::Package &package,
                          const BufferReader &read) {
  CheckpointContents contents;
  contents.configJson = checkpointConfig(package);
  Result<std::vector<HostTensor>> model =
      downloadFused(package, "param", DType::BF16, "", read);
  if (!model)
    return model.error();
  contents.model = std::move(*model);
  Result<std::vector<HostTensor>> fp8State = downloadFP8State(package, read);
  if (!fp8State)
    return fp8State.error();
  contents.fp8State = std::move(*fp8State);
  for (auto [role, prefix] : {std::pair{"exp_avg", "exp_avg."},
                              std::pair{"exp_avg_sq", "exp_avg_sq."}}) {
    Result<std::vector<HostTensor>> moments =
        downloadFused(package, role, DType::BF16, prefix, read);
    if (!moments)
      return moments.error();
    for (HostTensor &tensor : *moments)
      contents.optimizer.push_back(std::move(tensor));
  }
  return contents;
}
