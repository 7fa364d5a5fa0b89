//===- Executor.cpp - Runs a compiled package on the GPU ------------------===//

#include "llamac/Runtime/Executor.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>

namespace llamac {

/// Fails unless a GPU of compute capability `capability` (major * 10 +
/// minor) runs PTX for `arch`: sm_XY runs on XY and later; the
/// architecture-specific sm_XYa only on XY.
static Status checkArch(const std::string &arch, int capability,
                        const std::string &deviceName) {
  int target = 0;
  bool specific = !arch.empty() && arch.back() == 'a';
  std::string digits = arch.substr(0, arch.size() - (specific ? 1 : 0));
  if (digits.rfind("sm_", 0) == 0 && digits.size() > 3)
    target = std::atoi(digits.c_str() + 3);
  if (target <= 0)
    return Error{"the package's arch '" + arch + "' is not an sm_XY target"};
  if (specific ? capability != target : capability < target)
    return Error{"the package was compiled for " + arch + " but " + deviceName +
                 " is sm_" + std::to_string(capability) +
                 " (compile with --arch sm_" + std::to_string(capability) +
                 ")"};
  return {};
}

Result<std::unique_ptr<Executor>>
Executor::create(std::shared_ptr<cuda::Device> device,
                 package::Package package) {
  if (Status s =
          checkArch(package.arch, device->computeCapability(), device->name());
      !s)
    return s.error();
  std::unique_ptr<Executor> executor(new Executor());
  executor->device = device;
  Result<CUdeviceptr> arena =
      device->allocate(package.arenaBytes, "the train step's arena");
  if (!arena)
    return arena.error();
  executor->arena = *arena;
  // Zeroed once: the padding between parameters must add nothing to the
  // gradient norm, and nothing else may be read before it is written. The
  // fill runs on the stream and uploads do not, so wait for it.
  if (Status s = device->fill(*arena, 0, package.arenaBytes); !s)
    return s.error();
  if (Status s = device->synchronize("zeroing the arena"); !s)
    return s.error();
  Result<cuda::Module> module =
      cuda::Module::load(device, package.ptx, "kernels.ptx");
  if (!module)
    return module.error();
  executor->module = std::make_unique<cuda::Module>(std::move(*module));
  Result<std::unique_ptr<cuda::BlasLt>> blas = cuda::BlasLt::create(device);
  if (!blas)
    return blas.error();
  executor->blas = std::move(*blas);
  executor->plan = std::move(package);
  for (size_t i = 0; i < executor->plan.buffers.size(); ++i) {
    const package::Buffer &buffer = executor->plan.buffers[i];
    if (buffer.initF32.empty())
      continue;
    if (Status s = device->copyToDevice(executor->address(int(i)),
                                        buffer.initF32.data(), buffer.bytes);
        !s)
      return s.error();
  }
  return executor;
}

Executor::~Executor() {
  releaseGraphs();
  if (arena)
    (void)device->free(arena);
}

CUdeviceptr Executor::address(int index) const {
  return arena + plan.buffers[index].offset;
}

Result<CUdeviceptr> Executor::resolve(const package::Operand &operand) const {
  return address(operand.buffer) + operand.offset;
}

Status Executor::upload(const std::string &name, const void *data,
                        size_t bytes) {
  int index = plan.bufferIndex(name);
  if (index < 0 || plan.buffers[index].bytes != bytes)
    return Error{"upload: no buffer '" + name + "' of " +
                 std::to_string(bytes) + " bytes in the package"};
  const std::string &role = plan.buffers[index].role;
  if (role == "param" || role.rfind("fp8_", 0) == 0)
    weightCopiesCurrent = false;
  return device->copyToDevice(address(index), data, bytes);
}

Status Executor::download(const std::string &name, void *data, size_t bytes) {
  int index = plan.bufferIndex(name);
  if (index < 0 || plan.buffers[index].bytes != bytes)
    return Error{"download: no buffer '" + name + "' of " +
                 std::to_string(bytes) + " bytes in the package"};
  return device->copyToHost(data, address(index), bytes);
}

Status Executor::enqueue(const package::Function &function) {
  for (const package::Step &step : function.steps)
    if (Status status = enqueue(function, step); !status)
      return status;
  return {};
}

Status Executor::enqueue(const package::Function &function,
                         const package::Step &step) {
  Status status;
  switch (step.kind) {
  case package::Step::Kind::Launch: {
    const package::Launch &launch = step.launch;
    std::vector<CUdeviceptr> pointers;
    for (const package::Operand &arg : launch.args)
      pointers.push_back(*resolve(arg));
    std::vector<void *> args;
    for (CUdeviceptr &pointer : pointers)
      args.push_back(&pointer);
    status = module->launch(launch.kernel, launch.grid[0], launch.block[0],
                            launch.sharedBytes, args, launch.grid[1]);
    break;
  }
  case package::Step::Kind::Gemm: {
    const package::Gemm &g = step.gemm;
    cuda::Gemm gemm;
    gemm.m = g.m, gemm.n = g.n, gemm.k = g.k;
    gemm.transposeA = g.transposeA, gemm.transposeB = g.transposeB;
    auto gemmType = [](package::ElementType type) {
      switch (type) {
      case package::ElementType::F32:
        return cuda::GemmType::F32;
      case package::ElementType::F8E4M3:
        return cuda::GemmType::F8E4M3;
      case package::ElementType::F8E5M2:
        return cuda::GemmType::F8E5M2;
      default:
        return cuda::GemmType::BF16;
      }
    };
    gemm.type = gemmType(g.type);
    if (g.typeB)
      gemm.typeB = gemmType(*g.typeB);
    gemm.outType = gemmType(g.outType);
    gemm.alpha = g.alpha, gemm.beta = g.beta;
    gemm.a = *resolve(g.a), gemm.b = *resolve(g.b), gemm.d = *resolve(g.d);
    // The optional operands: the addend and the FP8 scale inverses.
    for (auto [operand, pointer] :
         {std::pair{&g.c, &gemm.c}, std::pair{&g.scaleInvA, &gemm.scaleInvA},
          std::pair{&g.scaleInvB, &gemm.scaleInvB}})
      if (operand->buffer >= 0)
        *pointer = *resolve(*operand);
    gemm.lda = g.a.ld, gemm.ldb = g.b.ld, gemm.ldd = g.d.ld;
    gemm.batch = g.batch;
    gemm.strideA = g.strideA, gemm.strideB = g.strideB,
    gemm.strideD = g.strideD;
    status = blas->run(gemm, step.label);
    break;
  }
  case package::Step::Kind::Memset:
    status = device->fill(*resolve(step.memset.dst), step.memset.value,
                          step.memset.bytes);
    break;
  }
  if (!status)
    return Error{function.name + ": " + step.label + ": " +
                 status.error().message};
  return {};
}

Result<bool> Executor::useTuningFile(const std::string &path) {
  return blas->useTuningFile(path);
}

Result<std::vector<float>> Executor::profile(const std::string &name) {
  return timeSteps(name, nullptr);
}

Result<std::vector<float>>
Executor::timeSteps(const std::string &name,
                    std::vector<cuda::BlasLt::LastRun> *gemms) {
  const package::Function *function = plan.function(name);
  if (!function)
    return Error{"the package has no function '" + name + "'"};
  if (Status status = checkWeightCopies(name); !status)
    return status.error();
  if (gemms)
    gemms->assign(function->steps.size(), {});
  std::vector<CUevent> events;
  auto release = [&] {
    for (CUevent event : events)
      device->destroyEvent(event);
  };
  std::vector<float> milliseconds;
  Status status;
  for (size_t i = 0; status && i <= function->steps.size(); ++i) {
    Result<CUevent> event = device->createEvent();
    if (!event) {
      status = event.error();
      break;
    }
    events.push_back(*event);
    status = device->record(*event);
    if (!status || i == function->steps.size())
      continue;
    const package::Step &step = function->steps[i];
    status = enqueue(*function, step);
    if (status && gemms && step.kind == package::Step::Kind::Gemm)
      (*gemms)[i] = blas->lastRun();
  }
  for (size_t i = 1; status && i < events.size(); ++i) {
    Result<float> ms = device->elapsedMs(events[i - 1], events[i]);
    if (!ms)
      status = ms.error();
    else
      milliseconds.push_back(*ms);
  }
  release();
  if (!status)
    return status.error();
  return milliseconds;
}

void Executor::releaseGraphs() {
  for (auto &[name, graph] : graphs)
    device->destroyGraph(graph);
  graphs.clear();
}

Result<GemmTuningResult>
Executor::tuneGemms(const std::vector<std::string> &functions, int replays) {
  if (!graphs.empty())
    return Error{"GEMM tuning: " + graphs.begin()->first +
                 " already runs as a CUDA graph with its GEMM algorithms "
                 "fixed in it (tune before any function's first graph run)"};
  if (replays < 1)
    return Error{"GEMM tuning: replays must be at least 1, got " +
                 std::to_string(replays)};
  for (const std::string &name : functions)
    if (!plan.function(name))
      return Error{"the package has no function '" + name + "'"};

  // The candidates: one eager run of the functions per round, every GEMM
  // with that round's candidate; one the GPU refuses runs candidate 0
  // instead (lastRun) and is not tried.
  std::vector<GemmChoice> keys;
  std::map<std::string, std::set<int>> ran;
  for (int round = 0; round < kGemmTuningCandidates; ++round) {
    blas->setTuningRound(round);
    for (const std::string &name : functions) {
      std::vector<cuda::BlasLt::LastRun> gemms;
      Result<std::vector<float>> ms = timeSteps(name, &gemms);
      if (!ms) {
        blas->setTuningRound(std::nullopt);
        return Error{"GEMM tuning: " + ms.error().message};
      }
      const package::Function &function = *plan.function(name);
      for (size_t i = 0; i < gemms.size(); ++i) {
        if (function.steps[i].kind != package::Step::Kind::Gemm)
          continue;
        auto [at, fresh] = ran.try_emplace(gemms[i].key);
        if (fresh) {
          keys.emplace_back();
          keys.back().key = gemms[i].key;
          keys.back().label = function.steps[i].label;
        }
        at->second.insert(gemms[i].candidate);
      }
    }
  }
  blas->setTuningRound(std::nullopt);
  for (GemmChoice &key : keys)
    key.candidates.assign(ran[key.key].begin(), ran[key.key].end());

  // The step with given candidates: captured afresh, replayed `replays`
  // times after one untimed replay, the median.
  StepTimer time =
      [&](const std::map<std::string, int> &choices) -> Result<double> {
    for (const GemmChoice &key : keys) {
      auto chosen = choices.find(key.key);
      if (Status s = blas->choose(key.key,
                                  chosen == choices.end() ? 0 : chosen->second);
          !s)
        return s.error();
    }
    releaseGraphs();
    for (const std::string &name : functions)
      if (Status s = run(name); !s)
        return s.error();
    std::vector<float> ms;
    for (int replay = 0; replay <= replays; ++replay) {
      Result<CUevent> start = device->createEvent();
      Result<CUevent> end = device->createEvent();
      Status s = start && end ? device->record(*start)
                              : Status(Error{"cannot create timing events"});
      for (const std::string &name : functions)
        if (s)
          s = device->launchGraph(graphs[name]);
      if (s)
        s = device->record(*end);
      if (s)
        s = device->synchronize("GEMM tuning");
      Result<float> elapsed =
          s ? device->elapsedMs(*start, *end) : Result<float>(s.error());
      for (Result<CUevent> *event : {&start, &end})
        if (*event)
          device->destroyEvent(**event);
      if (!elapsed)
        return elapsed.error();
      if (replay > 0)
        ms.push_back(*elapsed);
    }
    std::sort(ms.begin(), ms.end());
    return double(ms[ms.size() / 2]);
  };
  Result<GemmTuningResult> tuned =
      tuneGemmsByReplay(std::move(keys), time, kGemmTuningMargin);
  releaseGraphs();
  if (!tuned)
    return Error{"GEMM tuning: " + tuned.error().message};
  for (const GemmChoice &choice : tuned->choices)
    if (Status status = blas->choose(choice.key, choice.chosen); !status)
      return status.error();
  if (Status saved = blas->saveTuning(); !saved)
    return saved.error();
  return tuned;
}

Status Executor::castFP8Weights() {
  if (!plan.function(package::kFP8WeightCopiesFunction))
    return {};
  return run(package::kFP8WeightCopiesFunction, /*useGraph=*/false);
}

/// In a package with kFP8WeightCopiesFunction, the FP8 weight copies are
/// current after it or @optimizer_step and not after @forward_backward
/// (whose dead copies the memory plan lends to activations) or an upload
/// of weights or FP8 state; @forward_backward reads them.
Status Executor::checkWeightCopies(const std::string &function) {
  if (!plan.function(package::kFP8WeightCopiesFunction))
    return {};
  if (function == package::kForwardBackwardFunction) {
    if (!weightCopiesCurrent)
      return Error{function + ": the FP8 weight copies are not current (run " +
                   package::kFP8WeightCopiesFunction +
                   " after uploading weights or FP8 state, and " +
                   package::kOptimizerStepFunction + " after each " +
                   package::kForwardBackwardFunction + ")"};
    weightCopiesCurrent = false;
  } else if (function == package::kFP8WeightCopiesFunction ||
             function == package::kOptimizerStepFunction) {
    weightCopiesCurrent = true;
  }
  return {};
}

Status Executor::run(const std::string &name, bool useGraph) {
  const package::Function *function = plan.function(name);
  if (!function)
    return Error{"the package has no function '" + name + "'"};
  if (Status status = checkWeightCopies(name); !status)
    return status;
  if (!useGraph) {
    if (Status status = enqueue(*function); !status)
      return status;
    return device->synchronize(name);
  }
  auto graph = graphs.find(name);
  if (graph == graphs.end()) {
    // Eager first run: it chooses GEMM algorithms (outside any capture) and
    // reports errors where they happen; then the same work is recorded.
    if (Status status = enqueue(*function); !status)
      return status;
    if (Status status = device->synchronize(name); !status)
      return status;
    if (Status status = device->beginCapture(); !status)
      return status;
    Status recorded = enqueue(*function);
    Result<CUgraphExec> exec = device->endCapture();
    if (!recorded)
      return recorded;
    if (!exec)
      return exec.error();
    graphs[name] = *exec;
    return {};
  }
  if (Status status = device->launchGraph(graph->second); !status)
    return status;
  return device->synchronize(name);
}

} // namespace llamac
