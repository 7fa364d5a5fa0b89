//===- main.cpp - The llamac command line -----------------------*- C++ -*-===//
//
//   llamac compile --config PATH [--batch B] [--seq S] [--precision P] --emit
//   mlir llamac train [--config PATH] [--weights PATH] [--data FILE.jsonl] ...
//   llamac report METRICS.jsonl -o report.html|report.svg
//   llamac tokenize --tokenizer DIR FILE.jsonl [--add-special-tokens] [-o OUT]
//
//===----------------------------------------------------------------------===//

#include "Commands.h"

#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"

using namespace llvm;
using namespace llamac;

static cl::SubCommand compileCommand("compile",
                                     "Build the train step of a model as MLIR");
static cl::SubCommand trainCommand("train", "Fine-tune a model");
static cl::SubCommand
    reportCommand("report",
                  "Draw a run's --metrics file as charts (HTML or SVG)");
static cl::SubCommand
    tokenizeCommand("tokenize",
                    "Turn text rows of a JSON Lines file into token ids");

static cl::OptionCategory modelCategory("Model and step");
static cl::opt<std::string>
    configPath("config",
               cl::desc("config.json of a Hugging Face Llama model, or its "
                        "directory (default: a built-in tiny model)"),
               cl::sub(compileCommand), cl::sub(trainCommand),
               cl::cat(modelCategory));
static cl::opt<int64_t> batch("batch", cl::desc("Sequences per step"),
                              cl::init(8), cl::sub(compileCommand),
                              cl::sub(trainCommand), cl::cat(modelCategory));
static cl::opt<int64_t> seqLen("seq", cl::desc("Tokens per sequence"),
                               cl::init(256), cl::sub(compileCommand),
                               cl::sub(trainCommand), cl::cat(modelCategory));
static cl::opt<std::string> precision("precision",
                                      cl::desc("fp32, bf16 or fp8 (bf16 "
                                               "storage, FP8 GEMMs) (default "
                                               "fp32)"),
                                      cl::init("fp32"), cl::sub(compileCommand),
                                      cl::sub(trainCommand),
                                      cl::cat(modelCategory));
static cl::opt<std::string>
    fp8Scaling("fp8-scaling",
               cl::desc("--precision fp8: delayed (amax history, the "
                        "default) or current (just-in-time) scaling"),
               cl::init("delayed"), cl::sub(compileCommand),
               cl::sub(trainCommand), cl::cat(modelCategory));
static cl::opt<int64_t>
    fp8Margin("fp8-margin",
              cl::desc("--precision fp8: scales are divided by 2^margin "
                       "(default 0)"),
              cl::init(0), cl::sub(compileCommand), cl::sub(trainCommand),
              cl::cat(modelCategory));
static cl::opt<int64_t>
    fp8AmaxHistory("fp8-amax-history",
                   cl::desc("--precision fp8: amax history length (default "
                            "1024)"),
                   cl::init(1024), cl::sub(compileCommand),
                   cl::sub(trainCommand), cl::cat(modelCategory));
static cl::opt<std::string>
    fp8AmaxAlgo("fp8-amax-algo",
                cl::desc("--precision fp8: max (over the history, the "
                         "default) or most_recent"),
                cl::init("max"), cl::sub(compileCommand), cl::sub(trainCommand),
                cl::cat(modelCategory));
static cl::opt<bool>
    fp8LmHead("fp8-lm-head",
              cl::desc("--precision fp8: the lm_head GEMMs in FP8 too (by "
                       "default they stay bf16, as in Transformer Engine)"),
              cl::init(false), cl::sub(compileCommand), cl::sub(trainCommand),
              cl::cat(modelCategory));
static cl::opt<bool>
    pack("pack",
         cl::desc("Pack data rows end to end into each sequence; attention "
                  "stays within a row and positions restart at 0 (the step "
                  "takes position_ids)"),
         cl::sub(compileCommand), cl::sub(trainCommand),
         cl::cat(modelCategory));
static cl::opt<bool> noFuseGatedMLP(
    "no-fuse-gated-mlp",
    cl::desc("Keep the gate and up projections and SwiGLU apart"),
    cl::sub(compileCommand), cl::sub(trainCommand), cl::cat(modelCategory));
static cl::opt<bool> noFuseNormLinear(
    "no-fuse-norm-linear",
    cl::desc("Keep each RMSNorm apart from the projections that read it"),
    cl::sub(compileCommand), cl::sub(trainCommand), cl::cat(modelCategory));
static cl::opt<bool> noFuseRopeAttention(
    "no-fuse-rope-attention", cl::desc("Keep RoPE apart from attention"),
    cl::sub(compileCommand), cl::sub(trainCommand), cl::cat(modelCategory));

static cl::opt<std::string>
    arch("arch",
         cl::desc("GPU target of the package: sm_90a (default), sm_90, "
                  "sm_89, sm_86, sm_80"),
         cl::init("sm_90a"), cl::sub(compileCommand), cl::sub(trainCommand),
         cl::cat(modelCategory));

static cl::opt<double> gpuMemory(
    "gpu-memory",
    cl::desc("--emit package: GiB of device memory the step must fit in "
             "(default 80, an H100)"),
    cl::init(80), cl::sub(compileCommand));

static cl::opt<std::string> emit("emit",
                                 cl::desc("What to print: mlir, or "
                                          "fusion-report (what the fusions "
                                          "did, GEMM and op counts, saved "
                                          "activations)"),
                                 cl::init("mlir"), cl::sub(compileCommand));
static cl::opt<bool>
    noAutodiff("no-autodiff",
               cl::desc("Stop at the forward function (debugging)"),
               cl::sub(compileCommand));
static cl::opt<bool>
    noOptimizer("no-optimizer",
                cl::desc("Stop after autodiff: return the gradients"),
                cl::sub(compileCommand));
static cl::opt<bool> accumulateGrads(
    "accumulate-grads",
    cl::desc("--emit package: sum gradients over micro-batches (for "
             "llamac-run --grad-accum N)"),
    cl::sub(compileCommand));
static cl::opt<std::string> outputPath("o", cl::desc("Output file"),
                                       cl::init("-"), cl::sub(compileCommand));

static cl::OptionCategory trainCategory("Training");
static cl::opt<std::string>
    weightsPath("weights",
                cl::desc("safetensors file, sharded index or model directory "
                         "(default: Hugging Face's random init)"),
                cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<std::string>
    dataPath("data",
             cl::desc("JSON Lines with input_ids and optional labels "
                      "(default: built-in synthetic sequences)"),
             cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<int64_t> steps("steps", cl::desc("Optimizer steps"),
                              cl::init(10), cl::sub(trainCommand),
                              cl::cat(trainCategory));
static cl::opt<double> lr("lr", cl::desc("Learning rate"), cl::init(1.41e-5),
                          cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<double> weightDecay("weight-decay",
                                   cl::desc("AdamW decoupled weight decay"),
                                   cl::init(0.01), cl::sub(trainCommand),
                                   cl::cat(trainCategory));
static cl::opt<std::string> adamBetas("adam-betas",
                                      cl::desc("AdamW beta1,beta2"),
                                      cl::init("0.9,0.999"),
                                      cl::sub(trainCommand),
                                      cl::cat(trainCategory));
static cl::opt<double> adamEps("adam-eps", cl::desc("AdamW epsilon"),
                               cl::init(1e-8), cl::sub(trainCommand),
                               cl::cat(trainCategory));
static cl::opt<std::string> device("device", cl::desc("cpu"), cl::init("cpu"),
                                   cl::sub(trainCommand),
                                   cl::cat(trainCategory));
static cl::opt<uint64_t> seed("seed", cl::desc("Seed of the random init"),
                              cl::init(0), cl::sub(trainCommand),
                              cl::cat(trainCategory));
static cl::opt<int64_t> fp8CalibrationPasses(
    "fp8-calibration-passes",
    cl::desc("--precision fp8, delayed scaling: before step 1 of a fresh "
             "run, forward and backward over its batch this many times, "
             "keeping only the amaxes, so that step 1 is scaled from them "
             "(default 0: scales start at 1, as Transformer Engine's)"),
    cl::init(0), cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<std::string>
    savePath("save",
             cl::desc("Write a Hugging Face checkpoint to this directory"),
             cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<std::string>
    dumpGradsPath("dump-grads",
                  cl::desc("Write step 1's gradients as safetensors"),
                  cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<std::string>
    metricsPath("metrics", cl::desc("Write per-step metrics as JSON Lines"),
                cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<int64_t>
    gradAccum("grad-accum",
              cl::desc("Micro-batches of --batch rows per optimizer step"),
              cl::init(1), cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<double>
    maxGradNorm("max-grad-norm",
                cl::desc("Clip the gradients' global norm to this (0: off)"),
                cl::init(1.0), cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<std::string> lrSchedule(
    "lr-schedule", cl::desc("constant, linear or cosine (Hugging Face's)"),
    cl::init("linear"), cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<int64_t>
    warmupSteps("warmup-steps",
                cl::desc("Steps of linear learning-rate warmup from 0"),
                cl::init(0), cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<int64_t>
    saveEvery("save-every",
              cl::desc("Write a resumable DIR/checkpoint-<step> every N steps "
                       "(needs --save DIR)"),
              cl::init(0), cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<int64_t>
    keepCheckpoints("keep",
                    cl::desc("Keep only the N newest checkpoints (0: all)"),
                    cl::init(0), cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<std::string> resumePath(
    "resume",
    cl::desc("Continue from a checkpoint-<step> directory, or the newest "
             "one in a directory"),
    cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<bool> noSaveOnInterrupt(
    "no-save-on-interrupt",
    cl::desc("On SIGINT/SIGTERM, stop without writing a checkpoint"),
    cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<bool>
    shuffleRows("shuffle",
                cl::desc("Shuffle the rows every epoch (with --seed)"),
                cl::sub(trainCommand), cl::cat(trainCategory));
static cl::opt<bool> padToLongest(
    "pad-to-longest",
    cl::desc("Pad each batch to its longest row, rounded up to a multiple "
             "of 16 (at most --seq)"),
    cl::sub(trainCommand), cl::cat(trainCategory));

static cl::OptionCategory reportCategory("Report");
static cl::opt<std::string> reportInput(cl::Positional,
                                        cl::desc("<metrics.jsonl>"),
                                        cl::sub(reportCommand),
                                        cl::cat(reportCategory));
static cl::opt<std::string>
    reportOutput("o", cl::desc("Output: .html (default) or .svg"),
                 cl::init("report.html"), cl::sub(reportCommand),
                 cl::cat(reportCategory));
static cl::opt<std::string> reportTitle("title",
                                        cl::desc("Title of the report"),
                                        cl::sub(reportCommand),
                                        cl::cat(reportCategory));

static cl::OptionCategory tokenizeCategory("Tokenize");
static cl::opt<std::string>
    tokenizerPath("tokenizer",
                  cl::desc("Hugging Face tokenizer.json, or its directory "
                           "(train: for rows with text; default: the model "
                           "directory given to --config, if it has one)"),
                  cl::sub(tokenizeCommand), cl::sub(trainCommand),
                  cl::cat(tokenizeCategory));
static cl::opt<std::string> tokenizeInput(cl::Positional,
                                          cl::desc("<data.jsonl>"),
                                          cl::sub(tokenizeCommand),
                                          cl::cat(tokenizeCategory));
static cl::opt<bool> addSpecialTokens(
    "add-special-tokens",
    cl::desc("Add BOS/EOS as training does (default: plain encodings)"),
    cl::sub(tokenizeCommand), cl::cat(tokenizeCategory));
static cl::opt<std::string> tokenizeOutput("o",
                                           cl::desc("Output file (default: "
                                                    "standard output)"),
                                           cl::init("-"),
                                           cl::sub(tokenizeCommand),
                                           cl::cat(tokenizeCategory));

/// Checks the flags both commands share; returns an exit code or 0.
static int readStepShape(StepShape &shape, FP8Options &fp8) {
  if (batch <= 0)
    return reportError("--batch: must be positive, got " + Twine(batch));
  if (seqLen <= 1)
    return reportError("--seq: must be at least 2, got " + Twine(seqLen));
  // fp8 stores weights and activations in bf16; only the GEMMs differ.
  fp8.enabled = precision == "fp8";
  if (fp8.enabled)
    shape.precision = Precision::BF16;
  else if (!parsePrecision(precision, shape.precision) ||
           shape.precision == Precision::FP64)
    return reportError("--precision: unknown precision '" + precision +
                       "' (supported: fp32, bf16, fp8)");
  for (cl::Option *option : std::initializer_list<cl::Option *>{
           &fp8Scaling, &fp8Margin, &fp8AmaxHistory, &fp8AmaxAlgo, &fp8LmHead})
    if (option->getNumOccurrences() && !fp8.enabled)
      return reportError("--" + option->ArgStr + ": needs --precision fp8");
  if (fp8Scaling != "delayed" && fp8Scaling != "current")
    return reportError("--fp8-scaling: expected delayed or current, got '" +
                       fp8Scaling + "'");
  if (fp8AmaxAlgo != "max" && fp8AmaxAlgo != "most_recent")
    return reportError("--fp8-amax-algo: expected max or most_recent, got '" +
                       fp8AmaxAlgo + "'");
  if (fp8AmaxHistory < 1)
    return reportError("--fp8-amax-history: must be at least 1, got " +
                       Twine(fp8AmaxHistory));
  if (fp8Margin < 0 || fp8Margin > 64)
    return reportError("--fp8-margin: must be in [0, 64], got " +
                       Twine(fp8Margin));
  fp8.scaling = fp8Scaling;
  fp8.margin = fp8Margin;
  fp8.amaxHistory = fp8AmaxHistory;
  fp8.amaxComputeAlgo = fp8AmaxAlgo;
  fp8.lmHead = fp8LmHead;
  shape.batch = batch;
  shape.seq = seqLen;
  shape.packed = pack;
  return 0;
}

/// --arch.
static int readGpuPackageOptions(GpuPackageOptions &target) {
  if (llvm::Error error = checkArch(arch))
    return reportError(toString(std::move(error)));
  target.arch = arch;
  return 0;
}

static int compileMain() {
  CompileOptions options;
  if (int code = readStepShape(options.shape, options.fp8))
    return code;
  if (int code = readGpuPackageOptions(options.target))
    return code;
  options.configPath = configPath;
  options.emit = emit;
  options.autodiff = !noAutodiff;
  options.optimizer = !noOptimizer;
  options.fuseGatedMLP = !noFuseGatedMLP;
  options.fuseNormLinear = !noFuseNormLinear;
  options.fuseRopeAttention = !noFuseRopeAttention;
  options.accumulateGradients = accumulateGrads;
  options.outputPath = outputPath;
  if (!(gpuMemory > 0))
    return reportError("--gpu-memory: must be positive");
  options.gpuMemoryGiB = gpuMemory;
  return runCompile(options);
}

static int trainMain() {
  TrainOptions options;
  if (int code = readStepShape(options.shape, options.fp8))
    return code;
  if (int code = readGpuPackageOptions(options.target))
    return code;
  SmallVector<StringRef, 2> betas;
  StringRef(adamBetas).split(betas, ',');
  if (betas.size() != 2 || !to_float(betas[0].trim(), options.beta1) ||
      !to_float(betas[1].trim(), options.beta2) || options.beta1 < 0 ||
      options.beta1 >= 1 || options.beta2 < 0 || options.beta2 >= 1)
    return reportError("--adam-betas: expected two numbers in [0, 1) as "
                       "'beta1,beta2', got '" +
                       adamBetas + "'");
  if (steps < 0)
    return reportError("--steps: must not be negative, got " + Twine(steps));
  if (!(lr >= 0))
    return reportError("--lr: must not be negative");
  if (!(weightDecay >= 0))
    return reportError("--weight-decay: must not be negative");
  if (!(adamEps > 0))
    return reportError("--adam-eps: must be positive");
  options.configPath = configPath;
  options.weightsPath = weightsPath;
  options.dataPath = dataPath;
  options.tokenizerPath = tokenizerPath;
  options.savePath = savePath;
  options.dumpGradsPath = dumpGradsPath;
  options.metricsPath = metricsPath;
  if (fp8CalibrationPasses.getNumOccurrences() &&
      (!options.fp8.enabled || options.fp8.scaling != "delayed"))
    return reportError("--fp8-calibration-passes: needs --precision fp8 with "
                       "delayed scaling");
  if (fp8CalibrationPasses < 0 || fp8CalibrationPasses > 8)
    return reportError("--fp8-calibration-passes: must be in [0, 8], got " +
                       Twine(fp8CalibrationPasses));
  options.fp8CalibrationPasses = fp8CalibrationPasses;
  options.steps = steps;
  options.lr = lr;
  options.weightDecay = weightDecay;
  options.eps = adamEps;
  options.device = device;
  options.seed = seed;
  options.fuseGatedMLP = !noFuseGatedMLP;
  options.fuseNormLinear = !noFuseNormLinear;
  options.fuseRopeAttention = !noFuseRopeAttention;
  if (gradAccum < 1)
    return reportError("--grad-accum: must be at least 1, got " +
                       Twine(gradAccum));
  if (!(maxGradNorm >= 0))
    return reportError("--max-grad-norm: must not be negative (0 turns "
                       "clipping off)");
  Result<LRScheduleKind> schedule = parseLRSchedule(lrSchedule);
  if (!schedule)
    return reportError("--lr-schedule: " + schedule.error().message);
  if (warmupSteps < 0)
    return reportError("--warmup-steps: must not be negative, got " +
                       Twine(warmupSteps));
  if (saveEvery < 0)
    return reportError("--save-every: must not be negative, got " +
                       Twine(saveEvery));
  if (saveEvery > 0 && savePath.empty())
    return reportError("--save-every: needs --save DIR, where the "
                       "checkpoint-<step> directories go");
  if (keepCheckpoints < 0)
    return reportError("--keep: must not be negative, got " +
                       Twine(keepCheckpoints));
  options.gradAccum = gradAccum;
  options.maxGradNorm = maxGradNorm;
  options.lrSchedule = *schedule;
  options.warmupSteps = warmupSteps;
  options.saveEvery = saveEvery;
  options.keep = keepCheckpoints;
  options.resumePath = resumePath;
  options.saveOnInterrupt = !noSaveOnInterrupt;
  if (pack && padToLongest)
    return reportError("--pack: cannot be combined with --pad-to-longest "
                       "(packed sequences are always --seq long)");
  options.shuffle = shuffleRows;
  options.padToLongest = padToLongest;
  return runTrain(options);
}

static int reportMain() {
  if (reportInput.empty())
    return reportError("report: expected a metrics file (llamac report "
                       "METRICS.jsonl -o report.html)");
  ReportOptions options;
  options.metricsPath = reportInput;
  options.outputPath = reportOutput;
  options.title = reportTitle;
  return runReport(options);
}

static int tokenizeMain() {
  TokenizeOptions options;
  options.tokenizerPath = tokenizerPath;
  options.inputPath = tokenizeInput;
  options.addSpecialTokens = addSpecialTokens;
  options.outputPath = tokenizeOutput;
  return runTokenize(options);
}

int main(int argc, char **argv) {
  InitLLVM init(argc, argv);
  cl::HideUnrelatedOptions(
      {&modelCategory, &trainCategory, &reportCategory, &tokenizeCategory});
  cl::ParseCommandLineOptions(argc, argv,
                              "llamac: a compiler for Llama fine-tuning\n");
  if (compileCommand)
    return compileMain();
  if (trainCommand)
    return trainMain();
  if (reportCommand)
    return reportMain();
  if (tokenizeCommand)
    return tokenizeMain();
  return reportError(
      "expected a command: compile, train, report or tokenize (see --help)");
}
