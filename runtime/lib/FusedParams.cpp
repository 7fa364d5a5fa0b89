//===- FusedParams.cpp - Step parameters and their Hugging Face tensors ---===//

#include "llamac/Runtime/FusedParams.h"

#include <nlohmann/json.hpp>

#include <cassert>

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

Result<std::vector<HostTensor>>
llamac::downloadFused(const package::Package &package, const std::string &role,
                      DType dtype, const std::string &prefix,
                      const BufferReader &read) {
  std::vector<HostTensor> tensors;
  for (const package::Buffer &buffer : package.buffers) {
    if (buffer.role != role)
      continue;
    HostTensor whole;
    whole.dtype = DType::BF16;
    whole.shape = buffer.shape;
    whole.bytes.resize(buffer.bytes);
    if (Status status = read(buffer, whole.bytes.data()); !status)
      return status.error();
    for (HostTensor &part :
         splitFused(bufferParts(buffer), whole.toDouble(), dtype, prefix))
      tensors.push_back(std::move(part));
  }
  return tensors;
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
