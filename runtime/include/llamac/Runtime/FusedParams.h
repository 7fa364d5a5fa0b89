//===- FusedParams.h - Step parameters and their HF tensors ---*- C++ -*-===//
//
// A parameter of the train step holds one Hugging Face tensor, or several
// concatenated along dim 0 where a pass fused them (q/k/v, gate/up). Both
// training loops keep checkpoints under the Hugging Face names, so both split
// a fused tensor with splitFused. The GPU loop, whose package lists each
// buffer's parts (package::Buffer::parts and partRows), also builds its fused
// buffers from Hugging Face tensors (gatherFused) and a checkpoint from its
// buffers (downloadFused, packageCheckpoint); these take the buffer transfer
// as a function, so they run without a GPU too.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_FUSEDPARAMS_H
#define LLAMAC_RUNTIME_FUSEDPARAMS_H

#include "llamac/Package/Package.h"
#include "llamac/Runtime/Checkpoint.h"
#include "llamac/Runtime/Result.h"
#include "llamac/Runtime/Safetensors.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace llamac {

/// The Hugging Face tensors of one fused tensor, in order along dim 0.
struct FusedParts {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
};

/// The parts of a package buffer: its `parts`, each of its `partRows` rows
/// and the buffer's other dimensions.
FusedParts bufferParts(const package::Buffer &buffer);

/// Splits \p values (row-major; the parts one after another, as many values
/// as they hold in all) into one tensor per part, named \p prefix + its name
/// and stored as \p dtype.
std::vector<HostTensor> splitFused(const FusedParts &parts,
                                   const std::vector<double> &values,
                                   DType dtype, const std::string &prefix = "");

/// The values of Hugging Face tensor `name`, which must have `shape`; errors
/// name the file and the tensor.
using TensorSource = std::function<Result<std::vector<double>>(
    const std::string &name, const std::vector<int64_t> &shape)>;

/// A TensorSource over a safetensors file (SafetensorsFile) or a model's
/// weights (WeightStore): tensor \p prefix + name, checked against the shape.
template <typename Store>
TensorSource tensorsIn(const Store &store, const std::string &prefix = "") {
  return [&store, prefix](
             const std::string &name,
             const std::vector<int64_t> &shape) -> Result<std::vector<double>> {
    const std::string stored = prefix + name;
    const TensorInfo *info = store.find(stored);
    if (!info)
      return Error{store.path() + ": missing tensor '" + stored + "'"};
    if (info->shape != shape)
      return Error{store.path() + ": tensor '" + stored + "' has shape " +
                   formatShape(info->shape) + ", the step needs " +
                   formatShape(shape)};
    Result<HostTensor> tensor = store.read(stored);
    if (!tensor)
      return tensor.error();
    return tensor->toDouble();
  };
}

/// The contents of a fused package buffer: its parts read from \p source and
/// concatenated, as a bf16 tensor named after the buffer.
Result<HostTensor> gatherFused(const package::Buffer &buffer,
                               const TensorSource &source);

/// Copies the bytes of a package buffer into `data` (buffer.bytes of them):
/// the executor's download on a GPU.
using BufferReader =
    std::function<Status(const package::Buffer &buffer, void *data)>;

/// Every bf16 buffer of \p role, read through \p read and split into its
/// Hugging Face tensors (\p prefix + name, as \p dtype), in package order.
Result<std::vector<HostTensor>>
downloadFused(const package::Package &package, const std::string &role,
              DType dtype, const std::string &prefix, const BufferReader &read);

/// The model's config.json as checkpoints hold it (the package's, indented).
std::string checkpointConfig(const package::Package &package);

/// The FP8 delayed-scaling state of an fp8 package (its "fp8_history" and
/// "fp8_scale" buffers, read through \p read) as the CPU loop checkpoints it:
/// per quantized tensor (a row of those buffers, `parts` naming it) its
/// amax history and scale under fp8StateTensorName, F32, sorted by name.
/// Empty for a package without that state.
Result<std::vector<HostTensor>>
downloadFP8State(const package::Package &package, const BufferReader &read);

/// What the FP8 state buffers of \p package hold when it resumes from the
/// checkpoint in \p checkpointDir: histories and scales from its
/// fp8_state.safetensors; in column 0 of each "fp8_scale_inv" row 1 / scale
/// (f32, as the scale update computes it), the other columns as the package
/// initialises them; "fp8_amax" zero. One F32 tensor per buffer, named
/// after it. Empty for a package without FP8 state. A missing file, a
/// missing tensor or another history length is a one-line error naming the
/// file.
Result<std::vector<HostTensor>>
restoreFP8State(const package::Package &package,
                const std::string &checkpointDir);

/// A training checkpoint of the package's state, as the CPU loop writes it:
/// its checkpointConfig; the "param" buffers as the model and the AdamW
/// moments as the optimizer state (`exp_avg.<name>`, then `exp_avg_sq.<name>`),
/// all bf16 as they are held; an fp8 package's FP8 state (downloadFP8State).
Result<CheckpointContents> packageCheckpoint(const package::Package &package,
                                             const BufferReader &read);

} // namespace llamac

#endif // LLAMAC_RUNTIME_FUSEDPARAMS_H
