//===- Package.cpp - The compiled train step, as data ---------------------===//

#include "llamac/Package/Package.h"

#include "llamac/Runtime/Safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <fstream>
#include <sstream>

using json = nlohmann::json;

namespace llamac::package {

namespace {

struct TypeName {
  ElementType type;
  const char *name;
  int64_t bytes;
};
constexpr TypeName kTypes[] = {{ElementType::BF16, "bf16", 2},
                               {ElementType::F32, "f32", 4},
                               {ElementType::I32, "i32", 4},
                               {ElementType::F8E4M3, "f8e4m3", 1},
                               {ElementType::F8E5M2, "f8e5m2", 1}};

/// Thrown inside this file only; readPackage turns it into an Error.
struct FormatError {
  std::string message;
};

[[noreturn]] void fail(const std::string &message) {
  throw FormatError{message};
}

ElementType parseType(const std::string &name, const std::string &field) {
  for (const TypeName &entry : kTypes)
    if (name == entry.name)
      return entry.type;
  fail(field + ": unknown element type '" + name + "'");
}

/// `object[key]` converted to T, or a FormatError naming `field.key`.
template <typename T>
T get(const json &object, const char *key, const std::string &field) {
  if (!object.is_object() || !object.contains(key))
    fail(field + "." + key + ": missing");
  try {
    return object.at(key).get<T>();
  } catch (const json::exception &) {
    fail(field + "." + key + ": wrong type");
  }
}

json operandToJson(const Operand &operand) {
  return {{"buffer", operand.buffer},
          {"offset", operand.offset},
          {"ld", operand.ld}};
}

Operand operandFromJson(const json &value, const std::string &field) {
  return {get<int>(value, "buffer", field),
          get<uint64_t>(value, "offset", field),
          get<int64_t>(value, "ld", field)};
}

/// The optional FP8 operands of a GEMM with their manifest keys.
template <typename G> auto fp8Operands(G &g) {
  return std::array{std::pair{"scale_inv_a", &g.scaleInvA},
                    std::pair{"scale_inv_b", &g.scaleInvB}};
}

bool isFP8(ElementType type) {
  return type == ElementType::F8E4M3 || type == ElementType::F8E5M2;
}

/// Why FP8 GEMM `g` cannot run, or "" (cuda::Gemm's FP8 rules).
std::string fp8GemmError(const Gemm &g) {
  ElementType typeB = g.typeB.value_or(g.type);
  bool fp8 = isFP8(g.type) || isFP8(typeB);
  if (!fp8)
    return typeB != g.type ? "mixed operand types need FP8 operands"
           : g.scaleInvA.buffer != -1 || g.scaleInvB.buffer != -1
               ? "scale_inv operands need FP8 operands"
               : "";
  if (!isFP8(g.type) || !isFP8(typeB))
    return "FP8 GEMM: both operands must be FP8";
  if (g.type == ElementType::F8E5M2 && typeB == ElementType::F8E5M2)
    return "FP8 GEMM: E5M2 x E5M2 is not supported";
  if (g.transposeA || !g.transposeB)
    return "FP8 GEMM: both operands must be K-major (transpose_a false, "
           "transpose_b true)";
  if (g.outType != ElementType::BF16)
    return "FP8 GEMM: out_type must be bf16";
  if (g.batch != 1)
    return "FP8 GEMM: batch must be 1";
  return "";
}

json stepToJson(const Step &step) {
  json out = {{"label", step.label}};
  switch (step.kind) {
  case Step::Kind::Launch: {
    const Launch &l = step.launch;
    json args = json::array();
    for (const Operand &arg : l.args)
      args.push_back(operandToJson(arg));
    out.update({{"kind", "launch"},
                {"kernel", l.kernel},
                {"grid", {l.grid[0], l.grid[1], l.grid[2]}},
                {"block", {l.block[0], l.block[1], l.block[2]}},
                {"shared_bytes", l.sharedBytes},
                {"args", args}});
    break;
  }
  case Step::Kind::Gemm: {
    const Gemm &g = step.gemm;
    out.update({{"kind", "gemm"},
                {"m", g.m},
                {"n", g.n},
                {"k", g.k},
                {"transpose_a", g.transposeA},
                {"transpose_b", g.transposeB},
                {"type", elementTypeName(g.type)},
                {"out_type", elementTypeName(g.outType)},
                {"alpha", g.alpha},
                {"beta", g.beta},
                {"a", operandToJson(g.a)},
                {"b", operandToJson(g.b)},
                {"d", operandToJson(g.d)},
                {"c", operandToJson(g.c)},
                {"batch", g.batch},
                {"stride_a", g.strideA},
                {"stride_b", g.strideB},
                {"stride_d", g.strideD}});
    if (g.typeB)
      out["type_b"] = elementTypeName(*g.typeB);
    for (auto [key, operand] : fp8Operands(g))
      if (operand->buffer != -1)
        out[key] = operandToJson(*operand);
    break;
  }
  case Step::Kind::Memset:
    out.update({{"kind", "memset"},
                {"dst", operandToJson(step.memset.dst)},
                {"bytes", step.memset.bytes},
                {"value", step.memset.value}});
    break;
  }
  return out;
}

Step stepFromJson(const json &value, const std::string &field) {
  Step step;
  step.label = get<std::string>(value, "label", field);
  std::string kind = get<std::string>(value, "kind", field);
  if (kind == "launch") {
    step.kind = Step::Kind::Launch;
    Launch &l = step.launch;
    l.kernel = get<std::string>(value, "kernel", field);
    auto grid = get<std::vector<unsigned>>(value, "grid", field);
    auto block = get<std::vector<unsigned>>(value, "block", field);
    if (grid.size() != 3 || block.size() != 3)
      fail(field + ": grid and block need three dimensions");
    std::copy(grid.begin(), grid.end(), l.grid);
    std::copy(block.begin(), block.end(), l.block);
    l.sharedBytes = get<unsigned>(value, "shared_bytes", field);
    const json &args = value.at("args");
    for (size_t i = 0; i < args.size(); ++i)
      l.args.push_back(
          operandFromJson(args[i], field + ".args[" + std::to_string(i) + "]"));
  } else if (kind == "gemm") {
    step.kind = Step::Kind::Gemm;
    Gemm &g = step.gemm;
    g.m = get<int64_t>(value, "m", field);
    g.n = get<int64_t>(value, "n", field);
    g.k = get<int64_t>(value, "k", field);
    g.transposeA = get<bool>(value, "transpose_a", field);
    g.transposeB = get<bool>(value, "transpose_b", field);
    g.type = parseType(get<std::string>(value, "type", field), field + ".type");
    g.outType = parseType(get<std::string>(value, "out_type", field),
                          field + ".out_type");
    g.alpha = get<float>(value, "alpha", field);
    g.beta = get<float>(value, "beta", field);
    g.a = operandFromJson(value.at("a"), field + ".a");
    g.b = operandFromJson(value.at("b"), field + ".b");
    g.d = operandFromJson(value.at("d"), field + ".d");
    g.c = operandFromJson(value.at("c"), field + ".c");
    g.batch = get<int64_t>(value, "batch", field);
    g.strideA = get<int64_t>(value, "stride_a", field);
    g.strideB = get<int64_t>(value, "stride_b", field);
    g.strideD = get<int64_t>(value, "stride_d", field);
    if (value.contains("type_b"))
      g.typeB = parseType(get<std::string>(value, "type_b", field),
                          field + ".type_b");
    for (auto [key, operand] : fp8Operands(g))
      if (value.contains(key))
        *operand = operandFromJson(value.at(key), field + "." + key);
  } else if (kind == "memset") {
    step.kind = Step::Kind::Memset;
    step.memset.dst = operandFromJson(value.at("dst"), field + ".dst");
    step.memset.bytes = get<uint64_t>(value, "bytes", field);
    step.memset.value = get<uint8_t>(value, "value", field);
  } else {
    fail(field + ".kind: unknown step kind '" + kind + "'");
  }
  return step;
}

std::string readText(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail(path + ": cannot read");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

} // namespace

const char *elementTypeName(ElementType type) {
  for (const TypeName &entry : kTypes)
    if (entry.type == type)
      return entry.name;
  return "?";
}

int64_t elementBytes(ElementType type) {
  for (const TypeName &entry : kTypes)
    if (entry.type == type)
      return entry.bytes;
  return 0;
}

std::array<float, kHyperparameterCount>
packHyperparameters(const Hyperparameters &values) {
  std::array<float, kHyperparameterCount> slots{};
  slots[kLrSlot] = float(values.lr);
  slots[kBeta1Slot] = float(values.beta1);
  slots[kBeta2Slot] = float(values.beta2);
  slots[kEpsSlot] = float(values.eps);
  slots[kWeightDecaySlot] = float(values.weightDecay);
  slots[kStepSlot] = float(values.step);
  slots[kMaxGradNormSlot] = float(values.maxGradNorm);
  slots[kLossTokensSlot] = float(values.lossTokens);
  return slots;
}

const Function *Package::function(const std::string &name) const {
  for (const Function &f : functions)
    if (f.name == name)
      return &f;
  return nullptr;
}

int Package::bufferIndex(const std::string &name) const {
  for (size_t i = 0; i < buffers.size(); ++i)
    if (buffers[i].name == name)
      return int(i);
  return -1;
}

MemoryUse memoryUse(const Package &package) {
  MemoryUse use;
  for (const Buffer &b : package.buffers) {
    if (b.role == "param")
      use.weights += b.bytes;
    else if (b.role == "grad")
      use.gradients += b.bytes;
    else if (b.role == "exp_avg" || b.role == "exp_avg_sq")
      use.optimizerState += b.bytes;
    else if (b.role == "fp8_weight_copy")
      use.fp8WeightCopies += b.bytes;
  }
  uint64_t persistent = use.weights + use.gradients + use.optimizerState;
  use.activations =
      package.arenaBytes > persistent ? package.arenaBytes - persistent : 0;
  use.workspace = kGemmWorkspaceBytes;
  return use;
}

/// The runtime checkpoints and restores FP8 state buffers row by row
/// (llamac/Runtime/FusedParams.h): each must be f32 of the rank its role
/// has, one part (a quantized tensor) per row.
static Status validateFP8State(const Buffer &b, const std::string &field) {
  size_t rank = b.role == "fp8_history" || b.role == "fp8_scale_inv" ? 2
                : b.role == "fp8_scale" || b.role == "fp8_amax"      ? 1
                                                                     : 0;
  if (rank == 0)
    return {};
  int64_t numel = 1;
  for (int64_t d : b.shape)
    numel *= d;
  bool oneRowEach = !b.shape.empty() && !b.parts.empty() &&
                    b.parts.size() == size_t(b.shape[0]) &&
                    std::all_of(b.partRows.begin(), b.partRows.end(),
                                [](int64_t rows) { return rows == 1; });
  if (b.type != ElementType::F32 || b.shape.size() != rank || !oneRowEach ||
      b.bytes != uint64_t(numel) * 4)
    return Error{field + ": " + b.role + " must be f32 of rank " +
                 std::to_string(rank) +
                 " with one part (a quantized tensor) per row"};
  return {};
}

Status validate(const Package &package, const std::string &where) {
  if (package.accumulatesGradients && !package.function(kZeroGradsFunction))
    return Error{where + ": accumulates_gradients: no function '" +
                 std::string(kZeroGradsFunction) + "' to zero them"};
  for (size_t i = 0; i < package.buffers.size(); ++i) {
    const Buffer &b = package.buffers[i];
    std::string field =
        where + ": buffers[" + std::to_string(i) + "] '" + b.name + "'";
    if (!b.parts.empty()) {
      int64_t rows = 0;
      for (int64_t r : b.partRows)
        rows += r;
      if (b.partRows.size() != b.parts.size() || b.shape.empty() ||
          rows != b.shape[0])
        return Error{field + ": part_rows do not split its " +
                     std::to_string(b.shape.empty() ? 0 : b.shape[0]) +
                     " rows into its " + std::to_string(b.parts.size()) +
                     " parts"};
    }
    if (Status s = validateFP8State(b, field); !s)
      return s;
    if (b.offset % 16 != 0)
      return Error{field + ": offset " + std::to_string(b.offset) +
                   " is not 16-byte aligned"};
    if (b.offset + b.bytes > package.arenaBytes)
      return Error{field + ": ends at byte " +
                   std::to_string(b.offset + b.bytes) + ", past the arena (" +
                   std::to_string(package.arenaBytes) + " bytes)"};
  }
  auto checkOperand = [&](const Operand &operand, uint64_t bytes,
                          const std::string &field) -> Status {
    if (operand.buffer < 0 || size_t(operand.buffer) >= package.buffers.size())
      return Error{field + ": no buffer " + std::to_string(operand.buffer)};
    const Buffer &b = package.buffers[operand.buffer];
    if (operand.offset + bytes > b.bytes)
      return Error{field + ": reads or writes past the end of buffer '" +
                   b.name + "'"};
    return {};
  };
  for (const Function &f : package.functions)
    for (size_t i = 0; i < f.steps.size(); ++i) {
      const Step &step = f.steps[i];
      std::string field = where + ": " + f.name + "[" + std::to_string(i) +
                          "] (" + step.label + ")";
      Status status;
      switch (step.kind) {
      case Step::Kind::Launch:
        for (const Operand &arg : step.launch.args)
          if (!(status = checkOperand(arg, 0, field)))
            return status;
        break;
      case Step::Kind::Memset:
        if (!(status = checkOperand(step.memset.dst, step.memset.bytes, field)))
          return status;
        break;
      case Step::Kind::Gemm:
        for (const Operand *op : {&step.gemm.a, &step.gemm.b, &step.gemm.d})
          if (!(status = checkOperand(*op, 0, field)))
            return status;
        if (std::string error = fp8GemmError(step.gemm); !error.empty())
          return Error{field + ": " + error};
        for (auto [key, op] : fp8Operands(step.gemm)) {
          if (op->buffer == -1)
            continue;
          if (!(status = checkOperand(*op, 4, field + "." + key)))
            return status;
          // Buffers start 16-byte aligned; cuBLASLt needs the scales so.
          if (op->offset % 16 != 0)
            return Error{field + "." + key + ": offset " +
                         std::to_string(op->offset) +
                         " is not 16-byte aligned"};
        }
        if (step.gemm.c.buffer != -1 &&
            !(status = checkOperand(step.gemm.c, 0, field)))
          return status;
        break;
      }
    }
  return {};
}

Status writePackage(const std::string &dir, const Package &package) {
  if (Status status = validate(package, dir); !status)
    return status;
  json buffers = json::array();
  for (const Buffer &b : package.buffers)
    buffers.push_back({{"name", b.name},
                       {"role", b.role},
                       {"param", b.param},
                       {"parts", b.parts},
                       {"part_rows", b.partRows},
                       {"type", elementTypeName(b.type)},
                       {"shape", b.shape},
                       {"offset", b.offset},
                       {"bytes", b.bytes},
                       {"init_f32", b.initF32}});
  json functions = json::array();
  for (const Function &f : package.functions) {
    json steps = json::array();
    for (const Step &step : f.steps)
      steps.push_back(stepToJson(step));
    functions.push_back({{"name", f.name}, {"steps", steps}});
  }
  json manifest = {{"format", "llamac-package"},
                   {"version", kFormatVersion},
                   {"arch", package.arch},
                   {"compiler", package.compiler},
                   {"config", json::parse(package.configJson, nullptr, false)},
                   {"batch", package.batch},
                   {"seq", package.seq},
                   {"precision", package.precision},
                   {"accumulates_gradients", package.accumulatesGradients},
                   {"arena_bytes", package.arenaBytes},
                   {"buffers", buffers},
                   {"functions", functions}};
  if (Status status = writeFileAtomic(dir + "/kernels.ptx", package.ptx);
      !status)
    return status;
  return writeFileAtomic(dir + "/manifest.json", manifest.dump(1) + "\n");
}

Result<Package> readPackage(const std::string &dir) {
  std::string path = dir + "/manifest.json";
  try {
    json manifest = json::parse(readText(path), nullptr, false);
    if (manifest.is_discarded() || !manifest.is_object())
      fail(path + ": not a JSON object");
    if (manifest.value("format", "") != "llamac-package")
      fail(path + ": format: not a llamac package");
    int version = get<int>(manifest, "version", path);
    if (version != kFormatVersion)
      fail(path + ": version: " + std::to_string(version) +
           " (this runtime reads version " + std::to_string(kFormatVersion) +
           ")");
    Package package;
    package.arch = get<std::string>(manifest, "arch", path);
    package.compiler = get<std::string>(manifest, "compiler", path);
    package.configJson = manifest.at("config").dump();
    package.batch = get<int64_t>(manifest, "batch", path);
    package.seq = get<int64_t>(manifest, "seq", path);
    package.precision = get<std::string>(manifest, "precision", path);
    if (manifest.contains("accumulates_gradients"))
      package.accumulatesGradients =
          get<bool>(manifest, "accumulates_gradients", path);
    package.arenaBytes = get<uint64_t>(manifest, "arena_bytes", path);
    const json &buffers = manifest.at("buffers");
    for (size_t i = 0; i < buffers.size(); ++i) {
      std::string field = path + ": buffers[" + std::to_string(i) + "]";
      const json &b = buffers[i];
      Buffer buffer;
      buffer.name = get<std::string>(b, "name", field);
      buffer.role = get<std::string>(b, "role", field);
      buffer.param = get<std::string>(b, "param", field);
      buffer.parts = get<std::vector<std::string>>(b, "parts", field);
      buffer.partRows = get<std::vector<int64_t>>(b, "part_rows", field);
      buffer.type =
          parseType(get<std::string>(b, "type", field), field + ".type");
      buffer.shape = get<std::vector<int64_t>>(b, "shape", field);
      buffer.offset = get<uint64_t>(b, "offset", field);
      buffer.bytes = get<uint64_t>(b, "bytes", field);
      buffer.initF32 = get<std::vector<float>>(b, "init_f32", field);
      if (!buffer.initF32.empty() && buffer.initF32.size() * 4 != buffer.bytes)
        fail(field + ".init_f32: " + std::to_string(buffer.initF32.size()) +
             " values for " + std::to_string(buffer.bytes) + " bytes");
      package.buffers.push_back(std::move(buffer));
    }
    const json &functions = manifest.at("functions");
    for (size_t i = 0; i < functions.size(); ++i) {
      std::string field = path + ": functions[" + std::to_string(i) + "]";
      Function function;
      function.name = get<std::string>(functions[i], "name", field);
      const json &steps = functions[i].at("steps");
      for (size_t j = 0; j < steps.size(); ++j)
        function.steps.push_back(stepFromJson(
            steps[j], field + ".steps[" + std::to_string(j) + "]"));
      package.functions.push_back(std::move(function));
    }
    package.ptx = readText(dir + "/kernels.ptx");
    if (Status status = validate(package, path); !status)
      return status.error();
    return package;
  } catch (const FormatError &error) {
    return Error{error.message};
  } catch (const json::exception &error) {
    return Error{path + ": " + error.what()};
  }
}

} // namespace llamac::package
