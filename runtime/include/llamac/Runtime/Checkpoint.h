//===- Checkpoint.h - Resumable training checkpoints ------------*- C++ -*-===//
//
// A training checkpoint is a directory `OUT/checkpoint-<step>/` holding
//   config.json            the model config (Hugging Face spelling)
//   model.safetensors      the weights under their Hugging Face names
//   optimizer.safetensors  AdamW's moments: `exp_avg.<name>`,
//                          `exp_avg_sq.<name>`
//   fp8_state.safetensors  only for `--precision fp8` with delayed scaling:
//                          per quantized tensor id (`<name>.weight` of a
//                          Hugging Face weight, `<layer>.input`,
//                          `<layer>.grad_output`; the same with and without
//                          the fusions), `amax_history.<id>` (F32 [L],
//                          newest first) and `scale.<id>` (F32 [], the
//                          scale the next step uses)
//   trainer_state.json     step, data position, schedule, the settings that
//                          must match on resume, llamac version, log history
// so the first two make it a model Hugging Face loads as is. Each is written
// into `checkpoint-<step>.tmp-<pid>/`, fsynced, and the directory renamed into
// place: a crash never leaves a `checkpoint-<step>` that looks complete.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_CHECKPOINT_H
#define LLAMAC_RUNTIME_CHECKPOINT_H

#include "llamac/Runtime/Result.h"
#include "llamac/Runtime/Safetensors.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace llamac {

/// One optimizer step as logged (the metrics file holds the same and more).
struct LoggedStep {
  int64_t step = 0;
  double loss = 0, lr = 0, gradNorm = 0;
  int64_t tokens = 0;
};

/// Everything of a run that is not a tensor (trainer_state.json).
struct TrainerState {
  /// Optimizer steps done, and the run's total (--steps, HF's max_steps).
  int64_t globalStep = 0, maxSteps = 0;

  // Data: rows handed out so far, over all epochs; with the row count,
  // shuffle and seed this fixes every later batch.
  std::string dataPath;
  int64_t dataRows = 0, dataPosition = 0;
  uint64_t dataFingerprint = 0;
  bool shuffle = false;
  uint64_t seed = 0;

  // Schedule and optimizer settings (informative: a resumed run uses the
  // flags it is given, as the Hugging Face Trainer does).
  std::string lrSchedule;
  double learningRate = 0;
  int64_t warmupSteps = 0;
  double beta1 = 0, beta2 = 0, eps = 0, weightDecay = 0, maxGradNorm = 0;

  // Settings that must match on resume.
  int64_t batch = 0, seq = 0, gradAccum = 1;
  std::string precision;
  bool padToLongest = false;
  /// Rows packed into sequences (--pack): the data position then counts
  /// the rows packed so far.
  bool pack = false;

  /// The llamac release that wrote the checkpoint (set by the driver).
  std::string llamacVersion = "unknown";
  std::vector<LoggedStep> logHistory;
};

/// trainer_state.json text of \p state (doubles round-trip exactly).
std::string trainerStateJson(const TrainerState &state);
/// Parses trainer_state.json text; errors are prefixed by \p path.
Result<TrainerState> parseTrainerState(const std::string &text,
                                       const std::string &path);
/// Reads `<checkpointDir>/trainer_state.json`.
Result<TrainerState> readTrainerState(const std::string &checkpointDir);

/// Fails with a one-line message naming the first setting that differs
/// between a checkpoint's state and this run's: batch, seq, precision,
/// grad_accum, pad_to_longest, pack, data, shuffle, seed (when shuffling).
Status checkResumable(const TrainerState &saved, const TrainerState &current);

/// Compares two config.json texts key by key; fails naming the first field
/// that differs ("config field 'hidden_size' differs: checkpoint 64, this
/// run 32").
Status compareConfigs(const std::string &savedJson,
                      const std::string &currentJson);

/// The tensors and config of one checkpoint; `fp8State` (written as
/// fp8_state.safetensors when not empty) holds the FP8 delayed-scaling
/// state.
struct CheckpointContents {
  std::string configJson;
  std::vector<HostTensor> model, optimizer, fp8State;
};

/// The file of a checkpoint that holds the FP8 delayed-scaling state.
constexpr const char *kFP8StateFile = "fp8_state.safetensors";

/// What fp8_state.safetensors holds per quantized tensor id: its amax
/// history (F32 [L], newest first) and its scale (F32 []).
enum class FP8StateKind { AmaxHistory, Scale };

/// The name of a tensor's state in fp8_state.safetensors:
/// `amax_history.<id>` or `scale.<id>`.
std::string fp8StateTensorName(FP8StateKind kind, const std::string &id);

/// Opens `<checkpointDir>/fp8_state.safetensors`; a missing file is an
/// error naming it (a run with delayed scaling cannot resume without it).
Result<SafetensorsFile> openFP8State(const std::string &checkpointDir);

/// The values of quantized tensor \p id's state of \p kind in \p file,
/// which must have \p shape. A missing tensor or another shape is a
/// one-line error naming the file and the tensor; for a history it adds
/// \p lengthSetting, what sets this run's history length.
Result<std::vector<double>>
readFP8StateTensor(const SafetensorsFile &file, FP8StateKind kind,
                   const std::string &id, const std::vector<int64_t> &shape,
                   const std::string &lengthSetting);

/// Writes `<dir>/checkpoint-<state.globalStep>/` atomically (see above),
/// replacing an older one of the same step. Returns its path.
Result<std::string> writeTrainingCheckpoint(const std::string &dir,
                                            const TrainerState &state,
                                            const CheckpointContents &contents);

/// Writes a Hugging Face model directory: model.safetensors, then
/// config.json (each atomically), creating \p dir if needed.
Status writeModelDirectory(const std::string &dir,
                           const std::string &configJson,
                           const std::vector<HostTensor> &tensors);

/// A complete checkpoint found in a directory.
struct CheckpointEntry {
  int64_t step = 0;
  std::string path;
};

/// The `checkpoint-<step>` directories under \p dir that hold a
/// trainer_state.json, by increasing step (empty when \p dir does not exist).
std::vector<CheckpointEntry> listCheckpoints(const std::string &dir);

/// Deletes all but the \p keep newest checkpoints under \p dir (keep <= 0:
/// none), never \p protectedPath. A deleted directory is first renamed so
/// that a crash midway leaves nothing that looks like a checkpoint.
Status rotateCheckpoints(const std::string &dir, int64_t keep,
                         const std::string &protectedPath);

/// The checkpoint a --resume argument names: \p path itself when it holds
/// trainer_state.json, else its newest complete `checkpoint-<step>`.
Result<std::string> resolveResumePath(const std::string &path);

} // namespace llamac

#endif // LLAMAC_RUNTIME_CHECKPOINT_H
