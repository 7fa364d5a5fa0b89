//===- GpuStepShapes.h - The step the GPU end-to-end test runs --*- C++ -*-===//
//
// Shared by GenerateStepPackage (CPU, with the compiler) and StepPackageTest
// (GPU, LLVM-free): the batch, the data and the optimizer settings.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_TEST_GPU_GPUSTEPSHAPES_H
#define LLAMAC_TEST_GPU_GPUSTEPSHAPES_H

#include <cstdint>
#include <string>
#include <vector>

namespace llamac::test {

constexpr int64_t kStepBatch = 4, kStepSeq = 32;
/// The flash-attention variants of the step (GenerateStepPackage --flash,
/// --flash-packed): two 64-row tiles a sequence, so the kernels take the
/// diagonal, full and skipped tiles.
constexpr int64_t kFlashStepSeq = 128;

/// The FP8 step (GenerateStepPackage --fp8): delayed scaling with this many
/// amax history entries, run for kFP8Steps steps.
/// Its learning rate is lower than the one step's (hyperparameter): over
/// several steps, AdamW's sign-like first updates of noise-level gradients
/// would otherwise move the two runs' weights apart by whole updates.
constexpr int64_t kFP8AmaxHistory = 16;
constexpr int kFP8Steps = 3;
constexpr double kFP8Lr = 1e-3;

/// AdamW settings of the step, with clipping that bites (max norm 0.5).
inline double hyperparameter(const std::string &name) {
  if (name == "lr") // updates of several bf16 ulps of the weights
    return 1e-2;
  if (name == "beta1")
    return 0.9;
  if (name == "beta2")
    return 0.999;
  if (name == "eps")
    return 1e-8;
  if (name == "weight_decay")
    return 0.01;
  if (name == "step")
    return 1;
  if (name == "max_grad_norm")
    return 0.5;
  return 0;
}

/// The lengths of the data rows in sequence b of the packed step
/// (`--pack`); sequence 1 ends in 12 tokens of padding.
inline std::vector<int64_t> packedRows(int64_t b) {
  static const std::vector<int64_t> rows[kStepBatch] = {
      {32}, {7, 13}, {10, 5, 17}, {1, 3, 28}};
  return rows[b];
}

/// position_ids of the packed step of sequence length `seq`: 0, 1, ...
/// within each data row and within the rest of the sequence, as llamac's
/// packer lays them out.
inline void fillPositions(std::vector<double> &out, int64_t seq) {
  for (int64_t b = 0; b < kStepBatch; ++b) {
    int64_t s = 0;
    for (int64_t length : packedRows(b))
      for (int64_t p = 0; p < length; ++p)
        out[b * seq + s++] = double(p);
    for (int64_t p = 0; s < seq; ++p)
      out[b * seq + s++] = double(p);
  }
}

/// Token ids (or labels) of the batch: row 1 is padded after 20 tokens,
/// row 2 has its first 10 labels masked, the rest are full rows. `packed`
/// also masks the label of the first token of every data row (the
/// packer's separator), so no token predicts across a row boundary.
inline void fillBatch(bool labels, int64_t vocab, std::vector<double> &out,
                      bool packed, int64_t seq) {
  std::vector<double> positions(kStepBatch * seq);
  fillPositions(positions, seq);
  for (int64_t b = 0; b < kStepBatch; ++b)
    for (int64_t s = 0; s < seq; ++s) {
      int64_t token = (b * 977 + s * 131 + (s * s) % 17) % vocab;
      bool padded = b == 1 && s >= 20;
      bool masked = labels && ((b == 2 && s < 10) ||
                               (packed && positions[b * seq + s] == 0));
      out[b * seq + s] = padded   ? (labels ? -100 : 0)
                         : masked ? -100
                                  : double(token);
    }
}

} // namespace llamac::test

#endif // LLAMAC_TEST_GPU_GPUSTEPSHAPES_H
