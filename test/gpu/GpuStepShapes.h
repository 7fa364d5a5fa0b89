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

/// Token ids (or labels) of the batch: row 1 is padded after 20 tokens,
/// row 2 has its first 10 labels masked, the rest are full rows.
inline void fillBatch(bool labels, int64_t vocab, std::vector<double> &out) {
  for (int64_t b = 0; b < kStepBatch; ++b)
    for (int64_t s = 0; s < kStepSeq; ++s) {
      int64_t token = (b * 977 + s * 131 + (s * s) % 17) % vocab;
      bool padded = b == 1 && s >= 20;
      bool masked = labels && b == 2 && s < 10;
      out[b * kStepSeq + s] = padded   ? (labels ? -100 : 0)
                              : masked ? -100
                                       : double(token);
    }
}

} // namespace llamac::test

#endif // LLAMAC_TEST_GPU_GPUSTEPSHAPES_H
