//===- CheckpointTest.cpp - Atomic checkpoints, rotation, resume checks ---===//

#include "llamac/Runtime/Checkpoint.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

using namespace llamac;
namespace fs = std::filesystem;

namespace {

class CheckpointTest : public ::testing::Test {
protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "llamac-ckpt-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir = pattern;
  }
  void TearDown() override { fs::remove_all(dir); }

  TrainerState state(int64_t step) {
    TrainerState s;
    s.globalStep = step;
    s.maxSteps = 10;
    s.dataPath = "data.jsonl";
    s.dataRows = 12;
    s.dataPosition = step * 4;
    s.dataFingerprint = 0xfedcba9876543210ULL;
    s.shuffle = true;
    s.seed = 42;
    s.lrSchedule = "cosine";
    s.learningRate = 1.0 / 3.0; // not a short decimal: must round-trip
    s.warmupSteps = 2;
    s.beta1 = 0.9;
    s.beta2 = 0.999;
    s.eps = 1e-8;
    s.weightDecay = 0.01;
    s.maxGradNorm = 1.0;
    s.batch = 4;
    s.seq = 16;
    s.gradAccum = 2;
    s.pack = true;
    s.precision = "fp32";
    s.logHistory = {{1, 2.5, 0.1, NAN, 60}, {2, 2.25, 0.2, 1.5, 64}};
    s.llamacVersion = "9.8.7";
    return s;
  }

  CheckpointContents contents() {
    CheckpointContents c;
    c.configJson = "{\"hidden_size\": 8}\n";
    c.model = {HostTensor::fromDouble("w", DType::F32, {2}, {1.5, -2})};
    c.optimizer = {
        HostTensor::fromDouble("exp_avg.w", DType::F32, {2}, {0.1, 0.2}),
        HostTensor::fromDouble("exp_avg_sq.w", DType::F32, {2}, {0.3, 0.4})};
    return c;
  }

  std::vector<std::string> entries() {
    std::vector<std::string> names;
    for (const auto &entry : fs::directory_iterator(dir))
      names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dir;
};

TEST_F(CheckpointTest, StateRoundTripsExactly) {
  TrainerState s = state(3);
  Result<TrainerState> parsed =
      parseTrainerState(trainerStateJson(s), "trainer_state.json");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(parsed->globalStep, 3);
  EXPECT_EQ(parsed->dataPosition, 12);
  EXPECT_EQ(parsed->dataFingerprint, s.dataFingerprint);
  EXPECT_EQ(parsed->learningRate, s.learningRate);
  EXPECT_EQ(parsed->lrSchedule, "cosine");
  EXPECT_EQ(parsed->gradAccum, 2);
  EXPECT_TRUE(parsed->pack);
  EXPECT_EQ(parsed->llamacVersion, "9.8.7");
  ASSERT_EQ(parsed->logHistory.size(), 2u);
  EXPECT_TRUE(std::isnan(parsed->logHistory[0].gradNorm));
  EXPECT_EQ(parsed->logHistory[1].loss, 2.25);
  EXPECT_EQ(trainerStateJson(*parsed), trainerStateJson(s));
}

TEST_F(CheckpointTest, RejectsForeignOrIncompleteState) {
  Result<TrainerState> foreign =
      parseTrainerState("{\"global_step\": 3}", "x/trainer_state.json");
  ASSERT_FALSE(foreign.ok());
  EXPECT_NE(foreign.error().message.find("x/trainer_state.json: not a llamac "
                                         "trainer state"),
            std::string::npos);
  std::string text = trainerStateJson(state(1));
  text.replace(text.find("\"must_match\""), 12, "\"must_matcx\"");
  Result<TrainerState> incomplete = parseTrainerState(text, "t.json");
  ASSERT_FALSE(incomplete.ok());
  EXPECT_NE(incomplete.error().message.find("incomplete trainer state"),
            std::string::npos);
}

TEST_F(CheckpointTest, StateWithoutPackIsUnpacked) {
  // Checkpoints written before --pack existed have no "pack" field.
  std::string text = trainerStateJson(state(1));
  size_t at = text.find("\"pack\": true,");
  ASSERT_NE(at, std::string::npos) << text;
  text.erase(at, std::string("\"pack\": true,").size());
  Result<TrainerState> parsed = parseTrainerState(text, "t.json");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_FALSE(parsed->pack);
}

TEST_F(CheckpointTest, WritesTheLayoutAtomically) {
  Result<std::string> path = writeTrainingCheckpoint(dir, state(4), contents());
  ASSERT_TRUE(path.ok()) << path.error().message;
  EXPECT_EQ(*path, dir + "/checkpoint-4");
  EXPECT_EQ(entries(), std::vector<std::string>{"checkpoint-4"});
  std::vector<std::string> files;
  for (const auto &entry : fs::directory_iterator(*path))
    files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"config.json", "model.safetensors",
                                             "optimizer.safetensors",
                                             "trainer_state.json"}));
  Result<SafetensorsFile> optimizer =
      SafetensorsFile::open(*path + "/optimizer.safetensors");
  ASSERT_TRUE(optimizer.ok());
  EXPECT_TRUE(optimizer->find("exp_avg.w"));
  EXPECT_TRUE(optimizer->find("exp_avg_sq.w"));
  Result<TrainerState> read = readTrainerState(*path);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->globalStep, 4);

  // Writing the same step again replaces it, leaving nothing else behind.
  Result<std::string> again =
      writeTrainingCheckpoint(dir, state(4), contents());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(entries(), std::vector<std::string>{"checkpoint-4"});
}

TEST_F(CheckpointTest, HalfWrittenDirectoriesAreNotCheckpoints) {
  ASSERT_TRUE(writeTrainingCheckpoint(dir, state(2), contents()).ok());
  // What a crash leaves: a temporary directory (even one holding every
  // file), and a checkpoint-<step> without its state.
  ASSERT_TRUE(writeTrainingCheckpoint(dir, state(6), contents()).ok());
  fs::rename(dir + "/checkpoint-6", dir + "/checkpoint-6.tmp-12345");
  fs::create_directory(dir + "/checkpoint-8");
  std::ofstream(dir + "/checkpoint-8/model.safetensors") << "partial";
  std::vector<CheckpointEntry> found = listCheckpoints(dir);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].step, 2);
  Result<std::string> resumed = resolveResumePath(dir);
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ(*resumed, dir + "/checkpoint-2");
}

TEST_F(CheckpointTest, ResolvesTheNewestByStepNumber) {
  for (int64_t step : {9, 10, 100})
    ASSERT_TRUE(writeTrainingCheckpoint(dir, state(step), contents()).ok());
  std::vector<CheckpointEntry> found = listCheckpoints(dir);
  ASSERT_EQ(found.size(), 3u);
  EXPECT_EQ(found[0].step, 9);
  EXPECT_EQ(found[2].step, 100);
  EXPECT_EQ(*resolveResumePath(dir), dir + "/checkpoint-100");
  EXPECT_EQ(*resolveResumePath(dir + "/checkpoint-10"), dir + "/checkpoint-10");
  Result<std::string> none = resolveResumePath(dir + "/checkpoint-10/..x");
  EXPECT_FALSE(none.ok());
  fs::create_directory(dir + "/empty");
  Result<std::string> empty = resolveResumePath(dir + "/empty");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.error().message.find("no complete checkpoint"),
            std::string::npos);
}

TEST_F(CheckpointTest, RotationKeepsTheNewestAndTheProtectedOne) {
  for (int64_t step : {2, 4, 6, 8})
    ASSERT_TRUE(writeTrainingCheckpoint(dir, state(step), contents()).ok());
  ASSERT_TRUE(rotateCheckpoints(dir, 0, "").ok()); // 0 keeps all
  EXPECT_EQ(listCheckpoints(dir).size(), 4u);
  // A run resumed from checkpoint-2 just wrote checkpoint-3: it survives.
  ASSERT_TRUE(writeTrainingCheckpoint(dir, state(3), contents()).ok());
  ASSERT_TRUE(rotateCheckpoints(dir, 2, dir + "/checkpoint-3").ok());
  EXPECT_EQ(entries(),
            (std::vector<std::string>{"checkpoint-3", "checkpoint-8"}));
}

TEST_F(CheckpointTest, ResumeChecksNameTheField) {
  TrainerState saved = state(2);
  EXPECT_TRUE(checkResumable(saved, state(0)).ok());
  auto message = [&](auto change) {
    TrainerState current = state(0);
    change(current);
    Status status = checkResumable(saved, current);
    return status.ok() ? std::string("ok") : status.error().message;
  };
  EXPECT_EQ(message([](TrainerState &s) { s.batch = 8; }),
            "cannot resume: batch differs (checkpoint 4, this run 8)");
  EXPECT_EQ(message([](TrainerState &s) { s.seq = 32; }),
            "cannot resume: seq differs (checkpoint 16, this run 32)");
  EXPECT_EQ(message([](TrainerState &s) { s.precision = "bf16"; }),
            "cannot resume: precision differs (checkpoint fp32, this run "
            "bf16)");
  EXPECT_EQ(message([](TrainerState &s) { s.gradAccum = 1; }),
            "cannot resume: grad_accum differs (checkpoint 2, this run 1)");
  EXPECT_EQ(message([](TrainerState &s) { s.pack = false; }),
            "cannot resume: pack differs (checkpoint true, this run false)");
  EXPECT_EQ(message([](TrainerState &s) { s.seed = 1; }),
            "cannot resume: seed differs (checkpoint 42, this run 1)");
  EXPECT_NE(message([](TrainerState &s) {
              s.dataFingerprint = 1;
            }).find("cannot resume: data differs"),
            std::string::npos);
  // Schedule, learning rate and --steps may change, as with the Trainer.
  EXPECT_EQ(message([](TrainerState &s) {
              s.learningRate = 1;
              s.lrSchedule = "linear";
              s.maxSteps = 100;
            }),
            "ok");
}

TEST_F(CheckpointTest, ConfigComparisonNamesTheField) {
  EXPECT_TRUE(
      compareConfigs("{\"a\": 1, \"b\": [1, 2]}", "{\"b\": [1, 2], \"a\": 1}")
          .ok());
  Status status = compareConfigs("{\"hidden_size\": 64, \"vocab_size\": 9}",
                                 "{\"hidden_size\": 32, \"vocab_size\": 9}");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().message,
            "cannot resume: config field 'hidden_size' differs (checkpoint "
            "64, this run 32)");
  Status added = compareConfigs("{}", "{\"rope_scaling\": null}");
  EXPECT_TRUE(added.ok()); // null on one side, absent on the other
  Status extra = compareConfigs("{}", "{\"head_dim\": 8}");
  ASSERT_FALSE(extra.ok());
  EXPECT_NE(extra.error().message.find("'head_dim'"), std::string::npos);
}

} // namespace
