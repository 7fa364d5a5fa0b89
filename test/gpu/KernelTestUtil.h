//===- KernelTestUtil.h - Generated kernels in GPU tests --------*- C++ -*-===//
//
// The train-step kernel tests load a group of kernels that GenerateKernels
// wrote (KERNEL_DIR/NAME.ptx and NAME.launch, the launch shapes of the
// compiler's KernelSpecs), own their device buffers through DeviceBuffer,
// and compare against CPU references in double. Bounds use the unit
// roundoffs below: a correctly rounded result x' of x has
// |x' - x| <= u |x|.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_TEST_GPU_KERNELTESTUTIL_H
#define LLAMAC_TEST_GPU_KERNELTESTUTIL_H

#include "GpuTestUtil.h"

#include "llamac/Runtime/Safetensors.h"

#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace llamac::test {

/// Unit roundoff of bf16 (8 significant bits) and of f32 (24).
constexpr double kBF16Unit = 1.0 / 256;
constexpr double kF32Unit = 1.0 / (1 << 24);

/// Value of a bf16 bit pattern.
inline double bf16(uint16_t bits) { return bf16ToFloat(bits); }
/// x rounded to bf16 (nearest even), as a double.
inline double roundBF16(double x) { return bf16ToFloat(doubleToBF16(x)); }
/// x rounded to f32, as a double.
inline double roundF32(double x) { return double(float(x)); }

/// bf16 bit patterns of normal(0, scale) values.
inline std::vector<uint16_t> randomBF16(size_t count, std::mt19937 &rng,
                                        float scale = 1.0f) {
  std::vector<float> values = randomValues(count, rng);
  std::vector<uint16_t> bits(count);
  for (size_t i = 0; i < count; ++i)
    bits[i] = floatToBF16(values[i] * scale);
  return bits;
}

/// A device allocation freed on destruction. Errors are test failures.
class DeviceBuffer {
public:
  DeviceBuffer(std::shared_ptr<cuda::Device> device, size_t bytes,
               const std::string &what)
      : device(std::move(device)), bytes(bytes), what(what) {
    auto allocated = this->device->allocate(bytes ? bytes : 1, what);
    EXPECT_TRUE(allocated.ok()) << allocated.error().message;
    if (allocated.ok())
      pointer = *allocated;
  }
  DeviceBuffer(const DeviceBuffer &) = delete;
  DeviceBuffer &operator=(const DeviceBuffer &) = delete;
  ~DeviceBuffer() {
    if (pointer) {
      EXPECT_TRUE(device->free(pointer).ok()) << what;
    }
  }

  /// The device address (a kernel argument).
  CUdeviceptr address() const { return pointer; }

  /// Copies `host` to the start of the buffer, after the device's work.
  template <typename T> void upload(const std::vector<T> &host) {
    ASSERT_LE(host.size() * sizeof(T), bytes) << what;
    Status synced = device->synchronize("upload of " + what);
    ASSERT_TRUE(synced.ok()) << synced.error().message;
    Status copied =
        device->copyToDevice(pointer, host.data(), host.size() * sizeof(T));
    ASSERT_TRUE(copied.ok()) << copied.error().message;
  }

  /// The first `count` elements, after the device's work.
  template <typename T> std::vector<T> download(size_t count) const {
    std::vector<T> host(count);
    EXPECT_LE(count * sizeof(T), bytes) << what;
    Status copied = device->copyToHost(host.data(), pointer, count * sizeof(T));
    EXPECT_TRUE(copied.ok()) << copied.error().message;
    return host;
  }

  /// Fills every byte with `value`: 0xFF makes bf16 and f32 NaNs, so an
  /// element the kernel fails to write shows.
  void fill(uint8_t value) {
    Status filled = device->fill(pointer, value, bytes);
    ASSERT_TRUE(filled.ok()) << filled.error().message;
  }

private:
  std::shared_ptr<cuda::Device> device;
  CUdeviceptr pointer = 0;
  size_t bytes;
  std::string what;
};

/// Expects the first `n` bytes of `got` to be those of `want` (a fused
/// kernel's output against the unfused kernels'), naming the first
/// mismatches; `what` names the output.
inline void expectSameBytes(const DeviceBuffer &want, const DeviceBuffer &got,
                            int64_t n, const std::string &what) {
  std::vector<uint8_t> a = want.download<uint8_t>(n),
                       b = got.download<uint8_t>(n);
  int64_t mismatches = 0;
  for (int64_t i = 0; i < n; ++i)
    if (a[i] != b[i] && ++mismatches <= 5)
      ADD_FAILURE() << what << " byte " << i << ": 0x" << std::hex << int(b[i])
                    << ", the unfused kernels' 0x" << int(a[i]);
  EXPECT_EQ(mismatches, 0) << what << ", of " << n;
}

/// Expects the f32 amax a fused kernel raised (`got`) to equal the unfused
/// kernels' (`want`), which must exceed `above` (the input holds values
/// that large, so a zero amax cannot pass).
inline void expectSameAmax(const DeviceBuffer &want, const DeviceBuffer &got,
                           float above) {
  float wantAmax = want.download<float>(1)[0];
  EXPECT_GT(wantAmax, above);
  EXPECT_EQ(got.download<float>(1)[0], wantAmax);
}

/// A group of generated kernels and the launch shape of each, by key.
class KernelGroup {
public:
  struct Launch {
    std::string name;
    unsigned grid[3] = {1, 1, 1}, block[3] = {1, 1, 1}, sharedBytes = 0;
  };

  /// Loads KERNEL_DIR/`stem`.ptx and .launch; failures are test failures
  /// (check ok()).
  KernelGroup(std::shared_ptr<cuda::Device> device, const std::string &stem) {
    std::string base = std::string(KERNEL_DIR) + "/" + stem;
    std::ifstream ptxFile(base + ".ptx");
    std::stringstream ptx;
    ptx << ptxFile.rdbuf();
    EXPECT_FALSE(ptx.str().empty()) << "no PTX in " << base << ".ptx";
    auto loaded = cuda::Module::load(device, ptx.str(), stem + ".ptx");
    EXPECT_TRUE(loaded.ok()) << loaded.error().message;
    if (loaded.ok())
      module.emplace(std::move(*loaded));
    std::ifstream launchFile(base + ".launch");
    std::string key;
    Launch launch;
    while (launchFile >> key >> launch.name >> launch.grid[0] >>
           launch.grid[1] >> launch.grid[2] >> launch.block[0] >>
           launch.block[1] >> launch.block[2] >> launch.sharedBytes)
      launches[key] = launch;
    EXPECT_FALSE(launches.empty()) << "no launches in " << base << ".launch";
  }

  bool ok() const { return module.has_value() && !launches.empty(); }

  /// The launch shape of kernel `key` (a failure if there is none).
  const Launch &launch(const std::string &key) const {
    static const Launch none;
    auto found = launches.find(key);
    EXPECT_NE(found, launches.end()) << "no kernel " << key;
    return found == launches.end() ? none : found->second;
  }

  /// Runs kernel `key` on `args` (device addresses, in the kernel's order)
  /// with its generated launch shape.
  void run(const std::string &key, std::vector<CUdeviceptr> args) const {
    ASSERT_TRUE(module.has_value());
    const Launch &l = launch(key);
    ASSERT_FALSE(l.name.empty());
    // The tests' kernels are one-dimensional blocks on at most a 2-D grid.
    ASSERT_EQ(l.block[1] * l.block[2] * l.grid[2], 1u) << l.name;
    std::vector<void *> pointers;
    for (CUdeviceptr &arg : args)
      pointers.push_back(&arg);
    Status launched = module->launch(l.name, l.grid[0], l.block[0],
                                     l.sharedBytes, pointers, l.grid[1]);
    ASSERT_TRUE(launched.ok()) << launched.error().message;
  }

private:
  std::optional<cuda::Module> module;
  std::map<std::string, Launch> launches;
};

/// Counts how many checks held, how many values matched a reference
/// exactly, and reports the first few failures.
class Checker {
public:
  explicit Checker(std::string what) : what(std::move(what)) {}

  /// |got - want| <= bound (NaN fails).
  void near(double got, double want, double bound, int64_t index) {
    ++total;
    if (!(std::abs(got - want) <= bound) && ++failures <= 5) {
      ADD_FAILURE() << what << "[" << index << "]: got " << got << ", want "
                    << want << " +- " << bound;
    }
  }

  /// Counts an exact match of `got` with `rounded` (the reference rounded
  /// as the kernel rounds).
  void exact(double got, double rounded) { matches += got == rounded; }

  /// Requires no failures and at least `fraction` exact matches.
  void expectExactFraction(double fraction) const {
    EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << total
                           << " outside their bound";
    if (total) {
      EXPECT_GE(double(matches) / double(total), fraction)
          << what << ": " << matches << " of " << total << " exact";
    }
  }

private:
  std::string what;
  int64_t total = 0, failures = 0, matches = 0;
};

} // namespace llamac::test

#endif // LLAMAC_TEST_GPU_KERNELTESTUTIL_H
