//===- GenerateFP8Reference.cpp - FP8 expectations from the reference -----===//
//
// Built and run on the build machine (which has LLVM/MLIR): writes
// OUT/reference.safetensors with what the reference interpreter's FP8
// emulation (reference::roundToFP8, reference::fp8ScaleUpdate) says the
// GPU's FP8 kernels must produce, so that FP8KernelTest, which links no
// LLVM, compares against the same rules the CPU path uses:
//   x          bf16 [kFP8Rows, kFP8Cols]: special values first (zeros,
//              infinities, NaN, bf16 subnormals, values past the FP8
//              maxima, FP8 subnormals and exact ties), then normal values
//              over 40 binades
//   cast_e4m3, cast_e5m2
//              f32: roundToFP8(f32(x * scale)) with kFP8ScaleE4M3 /
//              kFP8ScaleE5M2 (NaN where x is NaN)
//   amax       f32 [kFP8Steps, kFP8Tensors]: each step's amaxes (zeros,
//              an infinity and a NaN among them)
//   history_e4m3, history_e5m2
//              f32 [kFP8Steps, kFP8Tensors, kFP8History]: the histories after
//              each step, from zeros (E4M3: "max", margin 0; E5M2:
//              "most_recent", margin kFP8MarginE5M2)
//   scale_e4m3, scale_e5m2
//              f32 [kFP8Steps, kFP8Tensors]: the scales after each step,
//              from 1
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"

#include "llamac/Reference/Interpreter.h"
#include "llamac/Runtime/Safetensors.h"

#include "llvm/Support/raw_ostream.h"

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace llamac;
using namespace llamac::test;

namespace {

/// The cast kernels' input: specials, then random values as bf16.
std::vector<double> castInput() {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> x = {0.0,        -0.0,        inf,
                           -inf,       nan,         0x1p-133,
                           -0x1p-130,  0x1.02p-127, // bf16 subnormals
                           0x1.FEp127, -0x1.FEp127, // the largest bf16
                           448.0,      464.0,       480.0,
                           -500.0,
                           1e6, // at and past E4M3's max
                           57344.0,    61440.0,     65536.0,
                           -1e30, // at and past E5M2's max
                           0x1p-9,     0x1p-10,     0x1.8p-10,
                           0x1p-16, // E4M3 subnormals, ties, below
                           0x1p-17,    0x1.8p-17,
                           0x1p-18, // E5M2 subnormals, ties
                           1.0625,     1.1875,      1.125,
                           1.375,      -1.625}; // E4M3/E5M2 mantissa ties
  // The specials once unscaled and once divided by each scale, so that they
  // land on the FP8 grid after scaling as well.
  size_t specials = x.size();
  for (float scale : {kFP8ScaleE4M3, kFP8ScaleE5M2})
    for (size_t i = 0; i < specials; ++i)
      x.push_back(x[i] / scale);
  std::mt19937 rng(5);
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> binade(-24, 16);
  while (x.size() < size_t(kFP8Rows * kFP8Cols))
    x.push_back(std::ldexp(normal(rng), binade(rng)));
  for (double &v : x)
    v = bf16ToFloat(doubleToBF16(v));
  return x;
}

HostTensor f32(std::string name, std::vector<int64_t> shape,
               const std::vector<double> &values) {
  return HostTensor::fromDouble(std::move(name), DType::F32, std::move(shape),
                                values);
}

} // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    llvm::errs() << "usage: GenerateFP8Reference OUTPUT_DIR\n";
    return 2;
  }
  std::vector<HostTensor> tensors;
  std::vector<double> x = castInput();
  tensors.push_back(
      HostTensor::fromDouble("x", DType::BF16, {kFP8Rows, kFP8Cols}, x));
  for (auto [format, scale] :
       {std::pair{"e4m3", kFP8ScaleE4M3}, std::pair{"e5m2", kFP8ScaleE5M2}}) {
    std::vector<double> cast;
    for (double v : x)
      cast.push_back(reference::roundToFP8(double(float(v * scale)), format));
    tensors.push_back(
        f32(std::string("cast_") + format, {kFP8Rows, kFP8Cols}, cast));
  }

  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // Tensor 0: growing then shrinking; 1: zero, then an infinity; 2: a NaN
  // (kept in the history: "max" keeps the old scale while it is there).
  const double amaxes[kFP8Steps][kFP8Tensors] = {
      {0.5, 0.0, 3.0},     {2.0, 0.0, nan},  {1e-3, 7.0, 1.0},
      {0x1p-30, inf, 2.0}, {1e4, 3.5, 0.25}, {0.75, 1e-30, 4.0}};
  // The amaxes are f32 on the GPU (and in the reference's llama.fp8_quantize).
  std::vector<double> amax;
  for (const auto &step : amaxes)
    for (double a : step)
      amax.push_back(double(float(a)));
  tensors.push_back(f32("amax", {kFP8Steps, kFP8Tensors}, amax));
  for (auto [format, margin, algo] :
       {std::tuple{"e4m3", int64_t(0), "max"},
        std::tuple{"e5m2", kFP8MarginE5M2, "most_recent"}}) {
    std::vector<std::vector<double>> history(
        kFP8Tensors, std::vector<double>(kFP8History, 0.0));
    std::vector<double> scale(kFP8Tensors, 1.0), histories, scales;
    for (int64_t s = 0; s < kFP8Steps; ++s)
      for (int64_t t = 0; t < kFP8Tensors; ++t) {
        reference::fp8ScaleUpdate(history[t], amax[s * kFP8Tensors + t],
                                  scale[t], format, margin, algo);
        histories.insert(histories.end(), history[t].begin(), history[t].end());
        scales.push_back(scale[t]);
      }
    tensors.push_back(f32(std::string("history_") + format,
                          {kFP8Steps, kFP8Tensors, kFP8History}, histories));
    tensors.push_back(
        f32(std::string("scale_") + format, {kFP8Steps, kFP8Tensors}, scales));
  }
  std::string path = std::string(argv[1]) + "/reference.safetensors";
  if (Status status = writeSafetensors(path, tensors); !status) {
    llvm::errs() << status.error().message << "\n";
    return 1;
  }
  return 0;
}
