//===- Checkpoint.cpp - Resumable training checkpoints --------------------===//

#include "llamac/Runtime/Checkpoint.h"

#include "IOUtil.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include <fcntl.h>
#include <unistd.h>

using namespace llamac;
using namespace llamac::io;
using json = nlohmann::json;
namespace fs = std::filesystem;

static constexpr const char *kStateFile = "trainer_state.json";
static constexpr const char *kStateFormat = "llamac-trainer-state";
static constexpr int kStateFormatVersion = 1;

static std::string hex64(uint64_t value) {
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", (unsigned long long)value);
  return text;
}

std::string llamac::trainerStateJson(const TrainerState &s) {
  json history = json::array();
  for (const LoggedStep &step : s.logHistory)
    history.push_back({{"step", step.step},
                       {"loss", step.loss},
                       {"lr", step.lr},
                       {"grad_norm", step.gradNorm},
                       {"tokens", step.tokens}});
  json state = {{"format", kStateFormat},
                {"format_version", kStateFormatVersion},
                {"llamac_version", s.llamacVersion},
                {"global_step", s.globalStep},
                {"max_steps", s.maxSteps},
                {"data",
                 {{"path", s.dataPath},
                  {"rows", s.dataRows},
                  {"fingerprint", hex64(s.dataFingerprint)},
                  {"position", s.dataPosition},
                  {"epoch", s.dataRows > 0 ? s.dataPosition / s.dataRows : 0},
                  {"shuffle", s.shuffle},
                  {"seed", s.seed}}},
                {"schedule",
                 {{"type", s.lrSchedule},
                  {"learning_rate", s.learningRate},
                  {"warmup_steps", s.warmupSteps},
                  {"total_steps", s.maxSteps}}},
                {"optimizer",
                 {{"name", "adamw"},
                  {"beta1", s.beta1},
                  {"beta2", s.beta2},
                  {"eps", s.eps},
                  {"weight_decay", s.weightDecay},
                  {"max_grad_norm", s.maxGradNorm}}},
                {"must_match",
                 {{"batch", s.batch},
                  {"seq", s.seq},
                  {"precision", s.precision},
                  {"grad_accum", s.gradAccum},
                  {"pad_to_longest", s.padToLongest},
                  {"pack", s.pack}}},
                {"log_history", std::move(history)}};
  return state.dump(1) + "\n";
}

Result<TrainerState> llamac::parseTrainerState(const std::string &text,
                                               const std::string &path) {
  return guard(path, [&]() -> Result<TrainerState> {
    json state;
    try {
      state = json::parse(text);
    } catch (const json::exception &e) {
      return fail(path, "malformed JSON: " + jsonMessage(e));
    }
    if (!state.is_object() || state.value("format", "") != kStateFormat)
      return fail(path, "not a llamac trainer state (no \"format\": \"" +
                            std::string(kStateFormat) + "\")");
    int version = state.value("format_version", 0);
    if (version != kStateFormatVersion)
      return fail(path, "trainer state format " + std::to_string(version) +
                            " is not supported (this llamac reads " +
                            std::to_string(kStateFormatVersion) + ")");
    TrainerState s;
    try {
      s.llamacVersion = state.at("llamac_version").get<std::string>();
      s.globalStep = state.at("global_step").get<int64_t>();
      s.maxSteps = state.at("max_steps").get<int64_t>();
      const json &data = state.at("data");
      s.dataPath = data.at("path").get<std::string>();
      s.dataRows = data.at("rows").get<int64_t>();
      s.dataFingerprint =
          std::stoull(data.at("fingerprint").get<std::string>(), nullptr, 16);
      s.dataPosition = data.at("position").get<int64_t>();
      s.shuffle = data.at("shuffle").get<bool>();
      s.seed = data.at("seed").get<uint64_t>();
      const json &schedule = state.at("schedule");
      s.lrSchedule = schedule.at("type").get<std::string>();
      s.learningRate = schedule.at("learning_rate").get<double>();
      s.warmupSteps = schedule.at("warmup_steps").get<int64_t>();
      const json &optimizer = state.at("optimizer");
      s.beta1 = optimizer.at("beta1").get<double>();
      s.beta2 = optimizer.at("beta2").get<double>();
      s.eps = optimizer.at("eps").get<double>();
      s.weightDecay = optimizer.at("weight_decay").get<double>();
      s.maxGradNorm = optimizer.at("max_grad_norm").get<double>();
      const json &match = state.at("must_match");
      s.batch = match.at("batch").get<int64_t>();
      s.seq = match.at("seq").get<int64_t>();
      s.precision = match.at("precision").get<std::string>();
      s.gradAccum = match.at("grad_accum").get<int64_t>();
      s.padToLongest = match.at("pad_to_longest").get<bool>();
      // Checkpoints from before --pack existed hold unpacked runs.
      s.pack = match.value("pack", false);
      for (const json &entry : state.at("log_history")) {
        LoggedStep step;
        step.step = entry.at("step").get<int64_t>();
        step.loss =
            entry.at("loss").is_number() ? entry["loss"].get<double>() : NAN;
        step.lr = entry.at("lr").get<double>();
        step.gradNorm = entry.at("grad_norm").is_number()
                            ? entry["grad_norm"].get<double>()
                            : NAN;
        step.tokens = entry.at("tokens").get<int64_t>();
        s.logHistory.push_back(step);
      }
    } catch (const std::exception &e) {
      return fail(path, "incomplete trainer state: " + jsonMessage(e));
    }
    if (s.globalStep < 0 || s.dataPosition < 0)
      return fail(path, "negative global_step or data position");
    return s;
  });
}

Result<TrainerState> llamac::readTrainerState(const std::string &dir) {
  std::string path = (fs::path(dir) / kStateFile).string();
  Result<std::string> text = readWholeFile(path);
  if (!text)
    return text.error();
  return parseTrainerState(*text, path);
}

namespace {
template <typename T> std::string show(const T &value) {
  std::ostringstream out;
  out << std::boolalpha << value;
  return out.str();
}

template <typename T>
Status expectSame(const char *field, const T &saved, const T &current) {
  if (saved == current)
    return {};
  return Error{"cannot resume: " + std::string(field) +
               " differs (checkpoint " + show(saved) + ", this run " +
               show(current) + ")"};
}
} // namespace

Status llamac::checkResumable(const TrainerState &saved,
                              const TrainerState &current) {
  for (Status status : {
           expectSame("batch", saved.batch, current.batch),
           expectSame("seq", saved.seq, current.seq),
           expectSame("precision", saved.precision, current.precision),
           expectSame("grad_accum", saved.gradAccum, current.gradAccum),
           expectSame("pad_to_longest", saved.padToLongest,
                      current.padToLongest),
           expectSame("pack", saved.pack, current.pack),
           expectSame("shuffle", saved.shuffle, current.shuffle),
       })
    if (!status)
      return status;
  if (saved.dataRows != current.dataRows ||
      saved.dataFingerprint != current.dataFingerprint)
    return Error{"cannot resume: data differs (checkpoint: " +
                 std::to_string(saved.dataRows) + " rows from '" +
                 saved.dataPath + "', fingerprint " +
                 hex64(saved.dataFingerprint) +
                 "; this run: " + std::to_string(current.dataRows) +
                 " rows from '" + current.dataPath + "', fingerprint " +
                 hex64(current.dataFingerprint) + ")"};
  if (saved.shuffle)
    return expectSame("seed", saved.seed, current.seed);
  return {};
}

Status llamac::compareConfigs(const std::string &savedJson,
                              const std::string &currentJson) {
  json saved, current;
  try {
    saved = json::parse(savedJson);
    current = json::parse(currentJson);
  } catch (const json::exception &e) {
    return Error{"cannot compare configs: " + jsonMessage(e)};
  }
  if (!saved.is_object() || !current.is_object())
    return Error{"cannot compare configs: not JSON objects"};
  // Sorted keys of both, so the first difference is well defined.
  std::vector<std::string> keys;
  for (auto it = saved.begin(); it != saved.end(); ++it)
    keys.push_back(it.key());
  for (auto it = current.begin(); it != current.end(); ++it)
    if (!saved.contains(it.key()))
      keys.push_back(it.key());
  std::sort(keys.begin(), keys.end());
  for (const std::string &key : keys) {
    json a = saved.contains(key) ? saved[key] : json();
    json b = current.contains(key) ? current[key] : json();
    if (a != b)
      return Error{"cannot resume: config field '" + key +
                   "' differs (checkpoint " + brief(a) + ", this run " +
                   brief(b) + ")"};
  }
  return {};
}

std::string llamac::fp8StateTensorName(FP8StateKind kind,
                                       const std::string &id) {
  return (kind == FP8StateKind::AmaxHistory ? "amax_history." : "scale.") + id;
}

Result<SafetensorsFile> llamac::openFP8State(const std::string &dir) {
  const std::string path = (fs::path(dir) / kFP8StateFile).string();
  std::error_code error;
  if (!fs::exists(path, error))
    return fail(path, "missing: a --precision fp8 run with delayed scaling "
                      "resumes its FP8 amax histories and scales from it");
  return SafetensorsFile::open(path);
}

Result<std::vector<double>> llamac::readFP8StateTensor(
    const SafetensorsFile &file, FP8StateKind kind, const std::string &id,
    const std::vector<int64_t> &shape, const std::string &lengthSetting) {
  const std::string name = fp8StateTensorName(kind, id);
  const TensorInfo *info = file.find(name);
  if (!info)
    return fail(file.path(), "missing FP8 state for this run: '" + name + "'");
  if (info->shape != shape)
    return fail(file.path(), "'" + name + "' has shape " +
                                 formatShape(info->shape) +
                                 ", this run needs " + formatShape(shape) +
                                 (kind == FP8StateKind::AmaxHistory
                                      ? " (" + lengthSetting + ")"
                                      : std::string()));
  Result<HostTensor> tensor = file.read(name);
  if (!tensor)
    return tensor.error();
  return tensor->toDouble();
}

/// fsyncs a directory so that renames inside it are durable; best effort.
static void syncDirectory(const fs::path &dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

static Status renamePath(const fs::path &from, const fs::path &to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    return fail(to.string(), "cannot rename " + from.string() +
                                 " to it: " + std::strerror(errno));
  return {};
}

Status llamac::writeModelDirectory(const std::string &dir,
                                   const std::string &configJson,
                                   const std::vector<HostTensor> &tensors) {
  return guard(dir, [&]() -> Status {
    std::error_code error;
    fs::create_directories(dir, error);
    if (error)
      return fail(dir, "cannot create directory: " + error.message());
    // Weights first: a config.json beside them marks a complete model.
    if (Status status =
            writeSafetensors((fs::path(dir) / "model.safetensors").string(),
                             tensors, {{"format", "pt"}});
        !status)
      return status;
    return writeFileAtomic((fs::path(dir) / "config.json").string(),
                           configJson);
  });
}

Result<std::string>
llamac::writeTrainingCheckpoint(const std::string &dir,
                                const TrainerState &state,
                                const CheckpointContents &contents) {
  const std::string name = "checkpoint-" + std::to_string(state.globalStep);
  const fs::path target = fs::path(dir) / name;
  const std::string pid = std::to_string(::getpid());
  const fs::path temp = fs::path(dir) / (name + ".tmp-" + pid);
  return guard(target.string(), [&]() -> Result<std::string> {
    std::error_code error;
    fs::create_directories(dir, error);
    if (error)
      return fail(dir, "cannot create directory: " + error.message());
    fs::remove_all(temp, error);
    if (!fs::create_directory(temp, error) || error)
      return fail(temp.string(), "cannot create directory: " +
                                     (error ? error.message() : "exists"));
    auto written = [&]() -> Status {
      if (Status s = writeSafetensors((temp / "model.safetensors").string(),
                                      contents.model, {{"format", "pt"}});
          !s)
        return s;
      if (Status s = writeSafetensors(
              (temp / "optimizer.safetensors").string(), contents.optimizer,
              {{"format", "llamac-adamw"},
               {"step", std::to_string(state.globalStep)}});
          !s)
        return s;
      if (!contents.fp8State.empty())
        if (Status s = writeSafetensors(
                (temp / kFP8StateFile).string(), contents.fp8State,
                {{"format", "llamac-fp8"},
                 {"step", std::to_string(state.globalStep)}});
            !s)
          return s;
      if (Status s = writeFileAtomic((temp / "config.json").string(),
                                     contents.configJson);
          !s)
        return s;
      // The state last: only a directory holding it is a checkpoint.
      if (Status s = writeFileAtomic((temp / kStateFile).string(),
                                     trainerStateJson(state));
          !s)
        return s;
      syncDirectory(temp);
      // rename(2) does not replace a non-empty directory: move an older
      // checkpoint of this step aside first, and drop it afterwards.
      const fs::path old = fs::path(dir) / (name + ".old-" + pid);
      bool replaced = fs::exists(target);
      if (replaced)
        if (Status s = renamePath(target, old); !s)
          return s;
      if (Status s = renamePath(temp, target); !s)
        return s;
      syncDirectory(dir);
      if (replaced)
        fs::remove_all(old, error);
      return {};
    }();
    if (!written) {
      fs::remove_all(temp, error);
      return written.error();
    }
    return target.string();
  });
}

/// The step of a directory named `checkpoint-<digits>`, or -1.
static int64_t checkpointStep(const std::string &name) {
  static const std::string prefix = "checkpoint-";
  if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size() ||
      name.size() > prefix.size() + 18)
    return -1;
  int64_t step = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9')
      return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

std::vector<CheckpointEntry> llamac::listCheckpoints(const std::string &dir) {
  std::vector<CheckpointEntry> found;
  std::error_code error;
  for (fs::directory_iterator it(dir, error), end; !error && it != end;
       it.increment(error)) {
    int64_t step = checkpointStep(it->path().filename().string());
    if (step < 0 || !it->is_directory(error))
      continue;
    if (fs::is_regular_file(it->path() / kStateFile, error))
      found.push_back({step, it->path().string()});
  }
  std::sort(found.begin(), found.end(),
            [](const CheckpointEntry &a, const CheckpointEntry &b) {
              return a.step < b.step;
            });
  return found;
}

Status llamac::rotateCheckpoints(const std::string &dir, int64_t keep,
                                 const std::string &protectedPath) {
  if (keep <= 0)
    return {};
  std::vector<CheckpointEntry> entries = listCheckpoints(dir);
  std::error_code error;
  int64_t excess = int64_t(entries.size()) - keep;
  for (const CheckpointEntry &entry : entries) {
    if (excess <= 0)
      break;
    if (fs::equivalent(entry.path, protectedPath, error))
      continue;
    const std::string doomed =
        entry.path + ".deleting-" + std::to_string(::getpid());
    if (Status status = renamePath(entry.path, doomed); !status)
      return status;
    fs::remove_all(doomed, error);
    if (error)
      return fail(doomed, "cannot delete: " + error.message());
    --excess;
  }
  return {};
}

Result<std::string> llamac::resolveResumePath(const std::string &path) {
  std::error_code error;
  if (!fs::is_directory(path, error))
    return fail(path, "not a directory (--resume takes a checkpoint-<step> "
                      "directory or the directory holding them)");
  if (fs::is_regular_file(fs::path(path) / kStateFile, error))
    return path;
  std::vector<CheckpointEntry> entries = listCheckpoints(path);
  // The newest one whose state parses.
  for (auto it = entries.rbegin(); it != entries.rend(); ++it)
    if (readTrainerState(it->path))
      return it->path;
  return fail(path, "no complete checkpoint: neither a trainer_state.json "
                    "nor a checkpoint-<step> directory holding one");
}
