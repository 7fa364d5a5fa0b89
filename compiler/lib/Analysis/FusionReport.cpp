//===- FusionReport.cpp - What the fusions did to the train step ----------===//
//
// The model builder locates every op at the name of the Hugging Face module
// it stands for, and a fusion pass locates a fused op at the fused locations
// of the ops it replaced; the per-layer listing reads those names back. The
// counts come from running the pipeline stage by stage: the forward (with
// the fusions), then autodiff (whose new ops are the backward), then the
// optimizer (on a copy, whatever shape the optimizer pass gives the step).
//
//===----------------------------------------------------------------------===//

#include "llamac/Analysis/FusionReport.h"

#include "llamac/Dialect/Llama/LlamaAttrNames.h"
#include "llamac/Dialect/Llama/LlamaOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Location.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

using namespace mlir;
using namespace mlir::llama;

namespace {

bool isLlamaOp(Operation *op) { return isa<LlamaDialect>(op->getDialect()); }

/// Matrix products inside one op.
int64_t gemmsIn(Operation *op) {
  return llvm::TypeSwitch<Operation *, int64_t>(op)
      .Case<MatmulOp, NormMatmulOp, GatedMLPOp>([](auto) { return 1; })
      .Case<NormMatmulGradOp, GatedMLPGradOp>([](auto) { return 2; })
      .Default([](Operation *) { return 0; });
}

void add(StageCounts &counts, Operation *op) {
  int64_t gemms = gemmsIn(op);
  counts.gemms += gemms;
  counts.otherOps += gemms == 0;
}

StageCounts countAll(ModuleOp module) {
  StageCounts counts;
  module.walk([&](Operation *op) {
    if (isLlamaOp(op))
      add(counts, op);
  });
  return counts;
}

/// The NameLoc names within `loc`, in order.
void collectNames(Location loc, std::vector<std::string> &names) {
  if (auto name = dyn_cast<NameLoc>(loc)) {
    names.push_back(name.getName().str());
    return;
  }
  if (auto fused = dyn_cast<FusedLoc>(loc))
    for (Location inner : fused.getLocations())
      collectNames(inner, names);
}

/// "name [rows, cols]" of a parameter argument, or "".
std::string describeParam(Value value) {
  auto arg = dyn_cast<BlockArgument>(value);
  if (!arg)
    return "";
  auto func = dyn_cast<func::FuncOp>(arg.getOwner()->getParentOp());
  if (!func)
    return "";
  auto name = func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), kParamAttr);
  if (!name)
    return "";
  auto type = cast<RankedTensorType>(arg.getType());
  std::string shape;
  llvm::raw_string_ostream os(shape);
  llvm::interleaveComma(type.getShape(), os);
  return name.str() + " [" + shape + "]";
}

ForwardOpInfo describe(Operation *op) {
  ForwardOpInfo info;
  info.opName = op->getName().getStringRef().str();
  collectNames(op->getLoc(), info.from);
  if (info.from.empty())
    info.from.push_back(info.opName);
  if (auto fused = dyn_cast<NormMatmulOp>(op))
    info.weight = describeParam(fused.getWeight());
  else if (auto fused = dyn_cast<GatedMLPOp>(op))
    info.weight = describeParam(fused.getWeight());
  return info;
}

int64_t bytesOf(Value value) {
  auto type = cast<ShapedType>(value.getType());
  return type.getNumElements() *
         int64_t(llvm::divideCeil(type.getElementTypeBitWidth(), 8));
}

} // namespace

FailureOr<StepStatistics>
mlir::llama::analyzeTrainStep(ModuleOp module,
                              const TrainStepPipelineOptions &options) {
  MLIRContext *context = module.getContext();
  auto runPipeline = [&](ModuleOp target,
                         const TrainStepPipelineOptions &stage) {
    PassManager pm(context);
    buildTrainStepPipeline(pm, stage);
    return pm.run(target);
  };
  StepStatistics stats;

  // The forward, fused as `options` says.
  TrainStepPipelineOptions forwardOnly = options;
  forwardOnly.autodiff = forwardOnly.optimizer = false;
  if (failed(runPipeline(module, forwardOnly)))
    return failure();
  llvm::DenseSet<Operation *> forwardOps;
  module.walk([&](Operation *op) {
    if (!isLlamaOp(op))
      return;
    forwardOps.insert(op);
    add(stats.forward, op);
    stats.forwardOps.push_back(describe(op));
  });
  if (!options.autodiff)
    return stats;

  TrainStepPipelineOptions rest = options;
  rest.fuseGatedMLP = rest.fuseNormLinear = rest.fuseRopeAttention = false;

  // The whole step, on a copy: the FP8 ops are FP8's, and whatever else the
  // optimizer adds beside the backward is the optimizer's.
  OwningOpRef<ModuleOp> whole = module.clone();
  if (failed(runPipeline(*whole, rest)))
    return failure();
  StageCounts total = countAll(*whole);
  whole->walk([&](Operation *op) {
    if (isa<FP8QuantizeOp, FP8ScaleUpdateOp>(op))
      add(stats.fp8, op);
  });

  // The backward: what autodiff adds, and the forward values it reads.
  rest.optimizer = rest.fp8 = false;
  if (failed(runPipeline(module, rest)))
    return failure();
  llvm::SetVector<Value> saved;
  module.walk([&](Operation *op) {
    if (!isLlamaOp(op) || forwardOps.contains(op))
      return;
    add(stats.backward, op);
    for (Value operand : op->getOperands())
      if (Operation *def = operand.getDefiningOp())
        if (forwardOps.contains(def))
          saved.insert(operand);
  });
  for (Value value : saved) {
    std::string type;
    llvm::raw_string_ostream os(type);
    os << cast<ShapedType>(value.getType()).getElementType();
    stats.savedActivationBytes[type] += bytesOf(value);
  }
  stats.optimizer.gemms = total.gemms - stats.forward.gemms -
                          stats.backward.gemms - stats.fp8.gemms;
  stats.optimizer.otherOps = total.otherOps - stats.forward.otherOps -
                             stats.backward.otherOps - stats.fp8.otherOps;
  return stats;
}

//===----------------------------------------------------------------------===//
// Printing
//===----------------------------------------------------------------------===//

namespace {

constexpr llvm::StringLiteral kLayerPrefix = "model.layers.";

/// The layer number of a module name, or -1 outside the layers.
int64_t layerOf(llvm::StringRef name) {
  if (!name.consume_front(kLayerPrefix))
    return -1;
  int64_t layer;
  if (name.consumeInteger(10, layer) || !name.starts_with("."))
    return -1;
  return layer;
}

std::string withoutLayer(llvm::StringRef name) {
  if (layerOf(name) < 0)
    return name.str();
  return name.drop_front(kLayerPrefix.size()).split('.').second.str();
}

/// The lines describing one layer's (or the rest of the model's) ops.
std::vector<std::string> describeScope(const std::vector<ForwardOpInfo> &ops) {
  std::vector<std::string> lines, unfused;
  for (const ForwardOpInfo &op : ops) {
    std::vector<std::string> names;
    for (const std::string &name : op.from)
      names.push_back(withoutLayer(name));
    if (names.size() == 1) {
      unfused.push_back(names.front());
      continue;
    }
    lines.push_back(
        llvm::formatv("{0,-21} <- {1}", op.opName, llvm::join(names, " + "))
            .str());
    if (!op.weight.empty())
      lines.push_back(std::string(25, ' ') + "weight " +
                      withoutLayer(op.weight));
  }
  if (lines.empty())
    lines.push_back("nothing fused");
  if (!unfused.empty())
    lines.push_back("not fused: " + llvm::join(unfused, ", "));
  return lines;
}

std::string humanBytes(int64_t bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = double(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  return llvm::formatv("{0:F2} {1}", value, units[unit]).str();
}

std::string withThousands(int64_t value) {
  std::string digits = std::to_string(value), text;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0)
      text += ',';
    text += digits[i];
  }
  return text;
}

} // namespace

void mlir::llama::printFusionReport(llvm::raw_ostream &os,
                                    llvm::StringRef title,
                                    const StepStatistics &unfused,
                                    const StepStatistics &fused) {
  os << title << "\n\n";

  // Fusions, per layer; consecutive layers alike are shown once.
  std::map<int64_t, std::vector<ForwardOpInfo>> scopes;
  for (const ForwardOpInfo &op : fused.forwardOps) {
    int64_t layer = layerOf(op.from.front());
    for (const std::string &name : op.from)
      if (layerOf(name) != layer)
        layer = -1;
    scopes[layer].push_back(op);
  }
  os << "Fusions in the forward (the backward of each fused op is one fused "
        "op too):\n";
  std::vector<std::pair<std::string, std::vector<std::string>>> groups;
  int64_t first = -1, last = -1;
  std::vector<std::string> previous;
  auto flush = [&] {
    if (first < 0)
      return;
    groups.push_back(
        {first == last
             ? llvm::formatv("layer {0}:", first).str()
             : llvm::formatv("layers {0}-{1}, each:", first, last).str(),
         previous});
  };
  for (auto &[layer, ops] : scopes) {
    if (layer < 0)
      continue;
    std::vector<std::string> lines = describeScope(ops);
    if (first >= 0 && lines == previous && layer == last + 1) {
      last = layer;
      continue;
    }
    flush();
    first = last = layer;
    previous = lines;
  }
  flush();
  if (scopes.count(-1))
    groups.push_back({"outside the layers:", describeScope(scopes[-1])});
  for (auto &[heading, lines] : groups) {
    os << "  " << heading << "\n";
    for (const std::string &line : lines)
      os << "    " << line << "\n";
  }

  // Op counts.
  os << "\nOps of the train step     GEMMs             non-GEMM ops\n"
     << "                        unfused     fused     unfused     fused\n";
  auto row = [&](llvm::StringRef name, const StageCounts &a,
                 const StageCounts &b) {
    os << llvm::formatv("  {0,-20}{1,7}{2,10}{3,12}{4,10}\n", name, a.gemms,
                        b.gemms, a.otherOps, b.otherOps);
  };
  auto sum = [](const StepStatistics &s) {
    return StageCounts{s.forward.gemms + s.backward.gemms + s.optimizer.gemms +
                           s.fp8.gemms,
                       s.forward.otherOps + s.backward.otherOps +
                           s.optimizer.otherOps + s.fp8.otherOps};
  };
  bool fp8 = unfused.fp8.otherOps || fused.fp8.otherOps;
  row("forward", unfused.forward, fused.forward);
  row("backward", unfused.backward, fused.backward);
  row("optimizer", unfused.optimizer, fused.optimizer);
  if (fp8)
    row("fp8 casts, scaling", unfused.fp8, fused.fp8);
  row("whole step", sum(unfused), sum(fused));
  os << "  (a GEMM is a llama.matmul or one inside a fused op: norm_matmul "
        "and gated_mlp\n"
     << "  hold one, their backward ops two; a fused op's norm or SwiGLU is "
        "part of its\n"
     << "  GEMM's kernel and not counted as an op; attention is one non-GEMM "
        "op)\n";
  if (fp8)
    os << "  (fp8: one llama.fp8_quantize per quantized tensor outside a "
          "fused op, a fused\n"
       << "  weight's blocks in one; a fused op quantizes its internal GEMM "
          "inputs itself;\n"
       << "  one llama.fp8_scale_update per tensor with delayed-scaling "
          "state)\n";

  // Saved activations.
  os << "\nActivations saved for the backward (forward values that backward "
        "ops read):\n";
  std::set<std::string> types;
  for (auto &entry : unfused.savedActivationBytes)
    types.insert(entry.first);
  for (auto &entry : fused.savedActivationBytes)
    types.insert(entry.first);
  auto lookup = [](const std::map<std::string, int64_t> &bytes,
                   const std::string &type) -> int64_t {
    auto it = bytes.find(type);
    return it == bytes.end() ? 0 : it->second;
  };
  for (const std::string &type : types) {
    int64_t a = lookup(unfused.savedActivationBytes, type);
    int64_t b = lookup(fused.savedActivationBytes, type);
    os << llvm::formatv("  {0,-6} unfused {1} B ({2})\n", type,
                        withThousands(a), humanBytes(a));
    os << llvm::formatv("  {0,-6} fused   {1} B ({2}), {3} B less\n", type,
                        withThousands(b), humanBytes(b), withThousands(a - b));
  }
  if (types.empty())
    os << "  none (no backward)\n";
}
