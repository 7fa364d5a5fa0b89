//===- Cuda.cpp - CUDA driver and cuBLASLt, resolved at run time ----------===//

#include "llamac/Runtime/Cuda.h"

#include "llamac/Package/Package.h"
#include "llamac/Runtime/GemmTuning.h"
#include "llamac/Runtime/Safetensors.h"

#include <nlohmann/json.hpp>

#include <dlfcn.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>

namespace llamac::cuda {

/// The driver entry points llamac uses, looked up with cuGetProcAddress so
/// that each name resolves to the version this header was written against.
struct DriverApi {
#define LLAMAC_DRIVER_FUNCTIONS(X)                                             \
  X(cuInit)                                                                    \
  X(cuGetErrorString)                                                          \
  X(cuDeviceGet)                                                               \
  X(cuDeviceGetCount)                                                          \
  X(cuDeviceGetName)                                                           \
  X(cuDeviceGetAttribute)                                                      \
  X(cuDevicePrimaryCtxRetain)                                                  \
  X(cuDevicePrimaryCtxRelease)                                                 \
  X(cuCtxSetCurrent)                                                           \
  X(cuStreamCreate)                                                            \
  X(cuStreamDestroy)                                                           \
  X(cuStreamSynchronize)                                                       \
  X(cuMemGetInfo)                                                              \
  X(cuMemAlloc)                                                                \
  X(cuMemFree)                                                                 \
  X(cuMemcpyHtoD)                                                              \
  X(cuMemcpyDtoH)                                                              \
  X(cuMemsetD8Async)                                                           \
  X(cuModuleLoadDataEx)                                                        \
  X(cuModuleUnload)                                                            \
  X(cuModuleGetFunction)                                                       \
  X(cuFuncGetParamInfo)                                                        \
  X(cuFuncSetAttribute)                                                        \
  X(cuLaunchKernel)                                                            \
  X(cuStreamBeginCapture)                                                      \
  X(cuStreamEndCapture)                                                        \
  X(cuGraphInstantiateWithFlags)                                               \
  X(cuGraphLaunch)                                                             \
  X(cuGraphDestroy)                                                            \
  X(cuGraphExecDestroy)                                                        \
  X(cuEventCreate)                                                             \
  X(cuEventDestroy)                                                            \
  X(cuEventRecord)                                                             \
  X(cuEventSynchronize)                                                        \
  X(cuEventElapsedTime)
#define LLAMAC_DECLARE(name) decltype(&::name) name = nullptr;
  LLAMAC_DRIVER_FUNCTIONS(LLAMAC_DECLARE)
#undef LLAMAC_DECLARE
};

struct BlasLtApi {
#define LLAMAC_BLASLT_FUNCTIONS(X)                                             \
  X(cublasLtCreate)                                                            \
  X(cublasLtDestroy)                                                           \
  X(cublasLtGetStatusString)                                                   \
  X(cublasLtMatmul)                                                            \
  X(cublasLtMatmulDescCreate)                                                  \
  X(cublasLtMatmulDescDestroy)                                                 \
  X(cublasLtMatmulDescSetAttribute)                                            \
  X(cublasLtMatrixLayoutCreate)                                                \
  X(cublasLtMatrixLayoutDestroy)                                               \
  X(cublasLtMatrixLayoutSetAttribute)                                          \
  X(cublasLtMatmulPreferenceCreate)                                            \
  X(cublasLtMatmulPreferenceDestroy)                                           \
  X(cublasLtMatmulPreferenceSetAttribute)                                      \
  X(cublasLtMatmulAlgoGetHeuristic)                                            \
  X(cublasLtGetVersion)
#define LLAMAC_DECLARE(name) decltype(&::name) name = nullptr;
  LLAMAC_BLASLT_FUNCTIONS(LLAMAC_DECLARE)
#undef LLAMAC_DECLARE
};

namespace {

/// dlopen of the first library in `names` that opens.
void *openLibrary(std::initializer_list<const char *> names,
                  std::string &error) {
  for (const char *name : names)
    if (void *handle = dlopen(name, RTLD_NOW | RTLD_LOCAL))
      return handle;
  const char *reason = dlerror();
  error = reason ? reason : "not found";
  return nullptr;
}

Result<const DriverApi *> loadDriver() {
  static DriverApi api;
  static std::string failure;
  static std::once_flag once;
  std::call_once(once, [] {
    void *library = openLibrary({"libcuda.so.1", "libcuda.so"}, failure);
    if (!library) {
      failure = "no CUDA driver: " + failure;
      return;
    }
    using GetProc = CUresult (*)(const char *, void **, int, cuuint64_t,
                                 CUdriverProcAddressQueryResult *);
    auto getProc =
        reinterpret_cast<GetProc>(dlsym(library, "cuGetProcAddress_v2"));
    if (!getProc) {
      failure = "no CUDA driver: libcuda lacks cuGetProcAddress_v2 (driver "
                "older than CUDA 12)";
      return;
    }
#define LLAMAC_RESOLVE(name)                                                   \
  if (getProc(#name, reinterpret_cast<void **>(&api.name), CUDA_VERSION,       \
              CU_GET_PROC_ADDRESS_DEFAULT, nullptr) != CUDA_SUCCESS ||         \
      !api.name) {                                                             \
    failure = "CUDA driver: cannot resolve " #name;                            \
    return;                                                                    \
  }
    LLAMAC_DRIVER_FUNCTIONS(LLAMAC_RESOLVE)
#undef LLAMAC_RESOLVE
  });
  if (!failure.empty())
    return Error{failure};
  return &api;
}

Result<const BlasLtApi *> loadBlasLt() {
  static BlasLtApi api;
  static std::string failure;
  static std::once_flag once;
  std::call_once(once, [] {
    void *library = openLibrary(
        {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"}, failure);
    if (!library) {
      failure = "no cuBLASLt: " + failure;
      return;
    }
#define LLAMAC_RESOLVE(name)                                                   \
  api.name = reinterpret_cast<decltype(api.name)>(dlsym(library, #name));      \
  if (!api.name) {                                                             \
    failure = "cuBLASLt: cannot resolve " #name;                               \
    return;                                                                    \
  }
    LLAMAC_BLASLT_FUNCTIONS(LLAMAC_RESOLVE)
#undef LLAMAC_RESOLVE
  });
  if (!failure.empty())
    return Error{failure};
  return &api;
}

std::string gib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f GiB", double(bytes) / (1ull << 30));
  return text;
}

} // namespace

//===----------------------------------------------------------------------===//
// Device
//===----------------------------------------------------------------------===//

Status Device::check(CUresult result, const std::string &what) const {
  if (result == CUDA_SUCCESS)
    return {};
  const char *text = nullptr;
  if (driver->cuGetErrorString(result, &text) != CUDA_SUCCESS || !text)
    text = "unknown error";
  return Error{"CUDA error in " + what + ": " + text + " (" +
               std::to_string(int(result)) + ")"};
}

Result<std::shared_ptr<Device>> Device::open(int ordinal) {
  Result<const DriverApi *> api = loadDriver();
  if (!api)
    return api.error();
  std::shared_ptr<Device> device(new Device());
  device->driver = *api;
  const DriverApi &d = **api;
  if (Status s = device->check(d.cuInit(0), "cuInit"); !s)
    return Error{"no CUDA device: " + s.error().message};
  int count = 0;
  if (Status s = device->check(d.cuDeviceGetCount(&count), "cuDeviceGetCount");
      !s)
    return s.error();
  if (ordinal >= count)
    return Error{"no CUDA device " + std::to_string(ordinal) + " (found " +
                 std::to_string(count) + ")"};
  char name[256] = {};
  Status status =
      device->check(d.cuDeviceGet(&device->device, ordinal), "cuDeviceGet");
  if (status)
    status =
        device->check(d.cuDeviceGetName(name, sizeof(name) - 1, device->device),
                      "cuDeviceGetName");
  if (status)
    status = device->check(
        d.cuDeviceGetAttribute(&device->major,
                               CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                               device->device),
        "cuDeviceGetAttribute");
  if (status)
    status = device->check(
        d.cuDeviceGetAttribute(&device->minor,
                               CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                               device->device),
        "cuDeviceGetAttribute");
  if (status)
    status = device->check(
        d.cuDeviceGetAttribute(&device->smCount,
                               CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                               device->device),
        "cuDeviceGetAttribute");
  if (status)
    status = device->check(
        d.cuDevicePrimaryCtxRetain(&device->context, device->device),
        "cuDevicePrimaryCtxRetain");
  if (status)
    status =
        device->check(d.cuCtxSetCurrent(device->context), "cuCtxSetCurrent");
  if (status)
    status = device->check(
        d.cuStreamCreate(&device->mainStream, CU_STREAM_NON_BLOCKING),
        "cuStreamCreate");
  if (!status)
    return status.error();
  device->deviceName = name;
  return device;
}

Device::~Device() {
  if (mainStream)
    driver->cuStreamDestroy(mainStream);
  if (context)
    driver->cuDevicePrimaryCtxRelease(device);
}

Result<std::pair<size_t, size_t>> Device::memoryInfo() const {
  size_t freeBytes = 0, totalBytes = 0;
  if (Status s =
          check(driver->cuMemGetInfo(&freeBytes, &totalBytes), "cuMemGetInfo");
      !s)
    return s.error();
  return std::make_pair(freeBytes, totalBytes);
}

Result<CUdeviceptr> Device::allocate(size_t bytes, const std::string &what) {
  Result<std::pair<size_t, size_t>> memory = memoryInfo();
  if (!memory)
    return memory.error();
  if (bytes > memory->first)
    return Error{"out of GPU memory for " + what + ": needs " + gib(bytes) +
                 ", " + gib(memory->first) + " free of " + gib(memory->second) +
                 " on " + deviceName};
  CUdeviceptr pointer = 0;
  if (Status s = check(driver->cuMemAlloc(&pointer, bytes ? bytes : 1),
                       "cuMemAlloc of " + gib(bytes) + " for " + what);
      !s)
    return s.error();
  return pointer;
}

Status Device::free(CUdeviceptr pointer) {
  return check(driver->cuMemFree(pointer), "cuMemFree");
}

Status Device::copyToDevice(CUdeviceptr dst, const void *src, size_t bytes) {
  return check(driver->cuMemcpyHtoD(dst, src, bytes), "cuMemcpyHtoD");
}

Status Device::copyToHost(void *dst, CUdeviceptr src, size_t bytes) {
  if (Status s = synchronize("before cuMemcpyDtoH"); !s)
    return s;
  return check(driver->cuMemcpyDtoH(dst, src, bytes), "cuMemcpyDtoH");
}

Status Device::fill(CUdeviceptr dst, uint8_t value, size_t bytes) {
  return check(driver->cuMemsetD8Async(dst, value, bytes, mainStream),
               "cuMemsetD8Async");
}

Status Device::synchronize(const std::string &after) {
  return check(driver->cuStreamSynchronize(mainStream),
               "cuStreamSynchronize (" + after + ")");
}

Status Device::beginCapture() {
  return check(driver->cuStreamBeginCapture(
                   mainStream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
               "cuStreamBeginCapture");
}

Result<CUgraphExec> Device::endCapture() {
  CUgraph graph = nullptr;
  if (Status s = check(driver->cuStreamEndCapture(mainStream, &graph),
                       "cuStreamEndCapture");
      !s)
    return s.error();
  CUgraphExec exec = nullptr;
  Status s = check(driver->cuGraphInstantiateWithFlags(&exec, graph, 0),
                   "cuGraphInstantiateWithFlags");
  driver->cuGraphDestroy(graph);
  if (!s)
    return s.error();
  return exec;
}

Status Device::launchGraph(CUgraphExec graph) {
  return check(driver->cuGraphLaunch(graph, mainStream), "cuGraphLaunch");
}

void Device::destroyGraph(CUgraphExec graph) {
  driver->cuGraphExecDestroy(graph);
}

Result<CUevent> Device::createEvent() {
  CUevent event = nullptr;
  if (Status s = check(driver->cuEventCreate(&event, CU_EVENT_DEFAULT),
                       "cuEventCreate");
      !s)
    return s.error();
  return event;
}

void Device::destroyEvent(CUevent event) { driver->cuEventDestroy(event); }

Status Device::record(CUevent event) {
  return check(driver->cuEventRecord(event, mainStream), "cuEventRecord");
}

Result<float> Device::elapsedMs(CUevent start, CUevent end) {
  if (Status s = check(driver->cuEventSynchronize(end), "cuEventSynchronize");
      !s)
    return s.error();
  float ms = 0;
  if (Status s = check(driver->cuEventElapsedTime(&ms, start, end),
                       "cuEventElapsedTime");
      !s)
    return s.error();
  return ms;
}

//===----------------------------------------------------------------------===//
// Module
//===----------------------------------------------------------------------===//

Result<Module> Module::load(std::shared_ptr<Device> device,
                            const std::string &ptx, const std::string &name) {
  constexpr size_t kLogBytes = 1 << 14;
  std::vector<char> log(kLogBytes, 0);
  CUjit_option options[] = {CU_JIT_ERROR_LOG_BUFFER,
                            CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void *values[] = {log.data(), reinterpret_cast<void *>(kLogBytes)};
  Module module;
  module.device = device;
  module.moduleName = name;
  CUresult result = device->api().cuModuleLoadDataEx(
      &module.module, ptx.c_str(), 2, options, values);
  if (result != CUDA_SUCCESS) {
    std::string jitLog(log.data());
    for (char &c : jitLog)
      if (c == '\n')
        c = ' ';
    Status s = device->check(result, "cuModuleLoadDataEx of " + name);
    return Error{s.error().message + "; JIT log: " + jitLog};
  }
  return module;
}

Module::Module(Module &&other) noexcept
    : device(std::move(other.device)), module(other.module),
      moduleName(std::move(other.moduleName)) {
  other.module = nullptr;
}

Module::~Module() {
  if (module)
    device->api().cuModuleUnload(module);
}

Result<CUfunction> Module::function(const std::string &kernel) const {
  CUfunction function = nullptr;
  if (Status s = device->check(
          device->api().cuModuleGetFunction(&function, module, kernel.c_str()),
          "cuModuleGetFunction(" + kernel + ") in " + moduleName);
      !s)
    return s.error();
  return function;
}

Status Module::launch(const std::string &kernel, unsigned gridX,
                      unsigned blockX, unsigned sharedBytes,
                      std::vector<void *> args, unsigned gridY) const {
  Result<CUfunction> function = this->function(kernel);
  if (!function)
    return function.error();
  // The driver reads one pointer per kernel parameter from `args`: a count
  // that does not match would read past it, so check it first.
  size_t offset = 0, size = 0;
  bool lastExists = args.empty() || device->api().cuFuncGetParamInfo(
                                        *function, args.size() - 1, &offset,
                                        &size) == CUDA_SUCCESS;
  bool oneMore = device->api().cuFuncGetParamInfo(
                     *function, args.size(), &offset, &size) == CUDA_SUCCESS;
  if (!lastExists || oneMore)
    return Error{"launch of kernel " + kernel + ": " +
                 std::to_string(args.size()) +
                 " arguments do not match its parameters"};
  // Past 48 KiB a kernel must opt in to its dynamic shared memory.
  if (sharedBytes > 48 * 1024)
    if (Status s = device->check(
            device->api().cuFuncSetAttribute(
                *function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                int(sharedBytes)),
            "shared memory of " + std::to_string(sharedBytes) +
                " bytes for kernel " + kernel);
        !s)
      return s;
  return device->check(device->api().cuLaunchKernel(
                           *function, gridX, gridY, 1, blockX, 1, 1,
                           sharedBytes, device->stream(), args.data(), nullptr),
                       "launch of kernel " + kernel);
}

//===----------------------------------------------------------------------===//
// BlasLt
//===----------------------------------------------------------------------===//

namespace {

/// Releases cuBLASLt descriptors on every exit path.
struct GemmDescriptors {
  const BlasLtApi &api;
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t preference = nullptr;
  ~GemmDescriptors() {
    if (preference)
      api.cublasLtMatmulPreferenceDestroy(preference);
    for (cublasLtMatrixLayout_t layout : {a, b, d})
      if (layout)
        api.cublasLtMatrixLayoutDestroy(layout);
    if (operation)
      api.cublasLtMatmulDescDestroy(operation);
  }
};

/// The cuBLASLt data type of `type`.
cudaDataType_t cudaType(GemmType type) {
  switch (type) {
  case GemmType::F32:
    return CUDA_R_32F;
  case GemmType::BF16:
    return CUDA_R_16BF;
  case GemmType::F8E4M3:
    return CUDA_R_8F_E4M3;
  case GemmType::F8E5M2:
    return CUDA_R_8F_E5M2;
  }
  return CUDA_R_32F;
}

bool isFP8(GemmType type) {
  return type == GemmType::F8E4M3 || type == GemmType::F8E5M2;
}

/// Checks the operand types of `gemm` and, for FP8, its layout, and sets its
/// scale-inverse and amax pointers on `operation`. cuBLASLt's A is our B
/// (see BlasLt::run), so our B's scale is its A scale.
Status setFP8Attributes(const BlasLtApi &api, cublasLtMatmulDesc_t operation,
                        const Gemm &gemm, const std::string &what) {
  GemmType typeB = gemm.typeB.value_or(gemm.type);
  auto fail = [&](const std::string &message) {
    return Error{"FP8 GEMM " + what + ": " + message};
  };
  if (!isFP8(gemm.type) && !isFP8(typeB)) {
    if (typeB != gemm.type || gemm.scaleInvA || gemm.scaleInvB)
      return Error{"GEMM " + what +
                   ": mixed operand types and scales need FP8 operands"};
    return {};
  }
  if (!isFP8(gemm.type) || !isFP8(typeB))
    return fail("both operands must be FP8");
  if (gemm.type == GemmType::F8E5M2 && typeB == GemmType::F8E5M2)
    return fail("E5M2 x E5M2 is not supported; one operand must be E4M3");
  if (gemm.transposeA || !gemm.transposeB)
    return fail("both operands must be K-major (A [m, k] untransposed, B "
                "[n, k] transposed), got transpose_a " +
                std::to_string(gemm.transposeA) + ", transpose_b " +
                std::to_string(gemm.transposeB));
  if (gemm.outType != GemmType::BF16)
    return fail("the output must be bf16");
  if (gemm.batch != 1)
    return fail("batched FP8 GEMMs are not supported");
  std::pair<cublasLtMatmulDescAttributes_t, CUdeviceptr> pointers[] = {
      {CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, gemm.scaleInvB},
      {CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, gemm.scaleInvA}};
  for (auto [attribute, address] : pointers) {
    if (!address)
      continue;
    if (address % 16 != 0)
      return fail("scale inverses must be 16-byte aligned");
    void *pointer = reinterpret_cast<void *>(address);
    if (cublasStatus_t s = api.cublasLtMatmulDescSetAttribute(
            operation, attribute, &pointer, sizeof(pointer)))
      return fail(std::string("cublasLtMatmulDescSetAttribute: ") +
                  api.cublasLtGetStatusString(s));
  }
  return {};
}

/// The heuristic's first `count` algorithms for the GEMM described by
/// `desc` that it marks usable, in its order; fails when there is none.
/// Creates `desc`'s preference (the workspace limit).
Result<std::vector<cublasLtMatmulAlgo_t>>
heuristicAlgorithms(const BlasLtApi &api, cublasLtHandle_t handle,
                    GemmDescriptors &desc, size_t workspaceBytes, int count,
                    const std::string &what) {
  auto fail = [&](cublasStatus_t status, const char *call) {
    return Error{"cuBLASLt error in " + std::string(call) + " for " + what +
                 ": " + api.cublasLtGetStatusString(status)};
  };
  if (cublasStatus_t s = api.cublasLtMatmulPreferenceCreate(&desc.preference))
    return fail(s, "cublasLtMatmulPreferenceCreate");
  api.cublasLtMatmulPreferenceSetAttribute(
      desc.preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
      &workspaceBytes, sizeof(workspaceBytes));
  std::vector<cublasLtMatmulHeuristicResult_t> results(
      static_cast<size_t>(count));
  int found = 0;
  cublasStatus_t s = api.cublasLtMatmulAlgoGetHeuristic(
      handle, desc.operation, desc.a, desc.b, desc.d, desc.d, desc.preference,
      count, results.data(), &found);
  std::vector<cublasLtMatmulAlgo_t> algorithms;
  for (int i = 0; !s && i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS)
      algorithms.push_back(results[i].algo);
  if (algorithms.empty())
    return fail(s ? s : CUBLAS_STATUS_NOT_SUPPORTED,
                "cublasLtMatmulAlgoGetHeuristic");
  return algorithms;
}

} // namespace

Result<std::unique_ptr<BlasLt>> BlasLt::create(std::shared_ptr<Device> device) {
  Result<const BlasLtApi *> api = loadBlasLt();
  if (!api)
    return api.error();
  std::unique_ptr<BlasLt> blas(new BlasLt());
  blas->device = device;
  blas->api = *api;
  if (cublasStatus_t s = (*api)->cublasLtCreate(&blas->handle);
      s != CUBLAS_STATUS_SUCCESS)
    return Error{std::string("cublasLtCreate: ") +
                 (*api)->cublasLtGetStatusString(s)};
  blas->workspaceBytes = package::kGemmWorkspaceBytes;
  Result<CUdeviceptr> workspace =
      device->allocate(blas->workspaceBytes, "the cuBLASLt workspace");
  if (!workspace)
    return workspace.error();
  blas->workspace = *workspace;
  return blas;
}

BlasLt::~BlasLt() {
  if (workspace)
    (void)device->free(workspace);
  if (handle)
    api->cublasLtDestroy(handle);
}

Status BlasLt::run(const Gemm &gemm, const std::string &what) {
  // Row-major D = op(A) op(B) is column-major Dᵀ = op(B)ᵀ op(A)ᵀ: cuBLASLt's
  // first operand is our B and its second our A, each viewed column-major.
  auto fail = [&](cublasStatus_t status, const char *call) {
    return Error{"cuBLASLt error in " + std::string(call) + " for " + what +
                 ": " + api->cublasLtGetStatusString(status)};
  };
  GemmType typeB = gemm.typeB.value_or(gemm.type);
  cudaDataType_t outType = cudaType(gemm.outType);
  GemmDescriptors desc{*api};
  cublasStatus_t s = api->cublasLtMatmulDescCreate(
      &desc.operation, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  if (s != CUBLAS_STATUS_SUCCESS)
    return fail(s, "cublasLtMatmulDescCreate");
  if (Status fp8 = setFP8Attributes(*api, desc.operation, gemm, what); !fp8)
    return fp8;
  cublasOperation_t opFirst = gemm.transposeB ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t opSecond = gemm.transposeA ? CUBLAS_OP_T : CUBLAS_OP_N;
  api->cublasLtMatmulDescSetAttribute(
      desc.operation, CUBLASLT_MATMUL_DESC_TRANSA, &opFirst, sizeof(opFirst));
  api->cublasLtMatmulDescSetAttribute(
      desc.operation, CUBLASLT_MATMUL_DESC_TRANSB, &opSecond, sizeof(opSecond));
  // Stored shapes: column-major rows x cols; the leading dimension is our
  // row stride (packed unless given).
  uint64_t firstRows = gemm.transposeB ? gemm.k : gemm.n;
  uint64_t firstCols = gemm.transposeB ? gemm.n : gemm.k;
  uint64_t secondRows = gemm.transposeA ? gemm.m : gemm.k;
  uint64_t secondCols = gemm.transposeA ? gemm.k : gemm.m;
  int64_t ldFirst = gemm.ldb ? gemm.ldb : int64_t(firstRows);
  int64_t ldSecond = gemm.lda ? gemm.lda : int64_t(secondRows);
  int64_t ldOut = gemm.ldd ? gemm.ldd : gemm.n;
  if ((s = api->cublasLtMatrixLayoutCreate(&desc.a, cudaType(typeB), firstRows,
                                           firstCols, ldFirst)) ||
      (s = api->cublasLtMatrixLayoutCreate(&desc.b, cudaType(gemm.type),
                                           secondRows, secondCols, ldSecond)) ||
      (s = api->cublasLtMatrixLayoutCreate(&desc.d, outType, gemm.n, gemm.m,
                                           ldOut)))
    return fail(s, "cublasLtMatrixLayoutCreate");
  if (gemm.batch > 1) {
    int32_t count = int32_t(gemm.batch);
    std::pair<cublasLtMatrixLayout_t, int64_t> strided[] = {
        {desc.a, gemm.strideB}, {desc.b, gemm.strideA}, {desc.d, gemm.strideD}};
    for (auto [layout, stride] : strided) {
      api->cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count));
      api->cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
          sizeof(stride));
    }
  }
  std::string key =
      std::to_string(gemm.m) + "x" + std::to_string(gemm.n) + "x" +
      std::to_string(gemm.k) + ":" + std::to_string(gemm.transposeA) +
      std::to_string(gemm.transposeB) + ":" + std::to_string(int(gemm.type)) +
      std::to_string(int(typeB)) + std::to_string(int(gemm.outType)) + ":" +
      std::to_string(ldFirst) + "," + std::to_string(ldSecond) + "," +
      std::to_string(ldOut) + ":" + std::to_string(gemm.batch) + "," +
      std::to_string(gemm.strideA) + "," + std::to_string(gemm.strideB) + "," +
      std::to_string(gemm.strideD) + ":" + std::to_string(gemm.beta != 0);
  if (tuningRound) {
    // Tuning (Executor::tuneGemms) re-runs whole functions, so every GEMM
    // runs once per run as in training, also one that adds into its own
    // output: its candidates can all be timed.
    auto list = candidates.find(key);
    if (list == candidates.end()) {
      Result<std::vector<cublasLtMatmulAlgo_t>> found = heuristicAlgorithms(
          *api, handle, desc, workspaceBytes, kGemmTuningCandidates, what);
      if (!found)
        return found.error();
      list = candidates.emplace(key, std::move(*found)).first;
    }
    int candidate = gemmTuningCandidate(*tuningRound, int(list->second.size()));
    s = matmul(gemm, desc.operation, desc.a, desc.b, desc.d,
               list->second[candidate]);
    if (s != CUBLAS_STATUS_SUCCESS && candidate != 0) {
      candidate = 0;
      s = matmul(gemm, desc.operation, desc.a, desc.b, desc.d, list->second[0]);
    }
    last = {key, candidate};
  } else {
    auto cached = algorithms.find(key);
    if (cached == algorithms.end()) {
      Result<std::vector<cublasLtMatmulAlgo_t>> found =
          heuristicAlgorithms(*api, handle, desc, workspaceBytes, 1, what);
      if (!found)
        return found.error();
      cached = algorithms.emplace(key, found->front()).first;
    }
    s = matmul(gemm, desc.operation, desc.a, desc.b, desc.d, cached->second);
    last = {key, -1};
  }
  if (s != CUBLAS_STATUS_SUCCESS)
    return fail(s, "cublasLtMatmul");
  return {};
}

cublasStatus_t BlasLt::matmul(const Gemm &gemm, cublasLtMatmulDesc_t operation,
                              cublasLtMatrixLayout_t a,
                              cublasLtMatrixLayout_t b,
                              cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t &algorithm) {
  return api->cublasLtMatmul(
      handle, operation, &gemm.alpha, reinterpret_cast<void *>(gemm.b), a,
      reinterpret_cast<void *>(gemm.a), b, &gemm.beta,
      reinterpret_cast<void *>(gemm.c ? gemm.c : gemm.d), d,
      reinterpret_cast<void *>(gemm.d), d, &algorithm,
      reinterpret_cast<void *>(workspace), workspaceBytes, device->stream());
}

Status BlasLt::choose(const std::string &key, int candidate) {
  auto list = candidates.find(key);
  if (list == candidates.end() || candidate < 0 ||
      candidate >= int(list->second.size()))
    return Error{"GEMM " + key + ": no tuning candidate " +
                 std::to_string(candidate)};
  algorithms[key] = list->second[candidate];
  return {};
}

Result<bool> BlasLt::useTuningFile(const std::string &path) {
  tuningPath = path;
  tuningIdentity = device->name() + ", cuBLASLt " +
                   std::to_string(api->cublasLtGetVersion());
  std::ifstream in(path);
  if (!in)
    return false; // not tuned yet
  nlohmann::json file = nlohmann::json::parse(in, nullptr, false);
  if (!file.is_object() || !file.contains("algorithms") ||
      !file["algorithms"].is_object())
    return Error{path + ": not a GEMM tuning file (delete it to tune again)"};
  if (file.value("identity", "") != tuningIdentity)
    return false; // another GPU or cuBLASLt: tune again, then overwrite
  for (auto &[key, words] : file["algorithms"].items()) {
    cublasLtMatmulAlgo_t algorithm = {};
    bool valid = words.is_array() && words.size() == std::size(algorithm.data);
    for (size_t i = 0; valid && i < words.size(); ++i)
      if ((valid = words[i].is_number_unsigned()))
        algorithm.data[i] = words[i].get<uint64_t>();
    if (!valid)
      return Error{path + ": algorithms." + key +
                   ": expected 8 integers (delete the file to tune again)"};
    algorithms[key] = algorithm;
  }
  return true;
}

Status BlasLt::saveTuning() {
  if (tuningPath.empty())
    return {};
  nlohmann::json entries = nlohmann::json::object();
  for (const auto &[key, algorithm] : algorithms)
    entries[key] = std::vector<uint64_t>(std::begin(algorithm.data),
                                         std::end(algorithm.data));
  nlohmann::json file = {{"identity", tuningIdentity}, {"algorithms", entries}};
  return writeFileAtomic(tuningPath, file.dump(1) + "\n");
}

} // namespace llamac::cuda
