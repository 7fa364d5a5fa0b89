//===- KernelPTXTest.cpp - Kernels lower to PTX that ptxas accepts --------===//
//
// Every kernel template is instantiated, lowered to PTX for sm_90a and run
// through `ptxas -arch=sm_90a -v`; the PTX must use 16-byte global loads
// and stores where the kernel vectorizes, and ptxas must report no spills.
// (Numerics are checked on the GPU by test/gpu.)
//
//===----------------------------------------------------------------------===//

#include "llamac/Kernels/Kernels.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/raw_ostream.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <tuple>
#include <vector>

using namespace llamac;

namespace {

/// Runs ptxas on `ptx`; returns its combined output, or fails the test.
std::string assemble(const std::string &ptx) {
  llvm::SmallString<128> input, log;
  EXPECT_FALSE(llvm::sys::fs::createTemporaryFile("kernel", "ptx", input));
  EXPECT_FALSE(llvm::sys::fs::createTemporaryFile("ptxas", "log", log));
  {
    std::error_code error;
    llvm::raw_fd_ostream out(input, error);
    out << ptx;
  }
  std::optional<llvm::StringRef> redirects[] = {std::nullopt, log.str(),
                                                log.str()};
  int code = llvm::sys::ExecuteAndWait(
      PTXAS, {PTXAS, "-arch=sm_90a", "-v", input.str(), "-o", "/dev/null"},
      std::nullopt, redirects);
  auto text = llvm::MemoryBuffer::getFile(log);
  std::string output = text ? (*text)->getBuffer().str() : "";
  EXPECT_EQ(code, 0) << output;
  llvm::sys::fs::remove(input);
  llvm::sys::fs::remove(log);
  return output;
}

TEST(KernelPTX, AdamWVectorizesAndAssembles) {
  llvm::Expected<KernelSpec> kernel = adamwKernel(1 << 20);
  ASSERT_TRUE(bool(kernel)) << llvm::toString(kernel.takeError());
  // Four pieces of 8 elements per thread.
  EXPECT_EQ(kernel->grid.x, (1u << 20) / 8 / 4 / 256);
  llvm::Expected<std::string> ptx = compileKernels({*kernel});
  ASSERT_TRUE(bool(ptx)) << llvm::toString(ptx.takeError());
  EXPECT_NE(ptx->find(".entry " + kernel->name + "("), std::string::npos);
  EXPECT_NE(ptx->find("ld.global.v4.b32"), std::string::npos) << *ptx;
  EXPECT_NE(ptx->find("st.global.v4.b32"), std::string::npos) << *ptx;
  std::string report = assemble(*ptx);
  EXPECT_NE(report.find("0 bytes spill stores"), std::string::npos) << report;
}

/// The ptxas report's "Function properties" paragraph of `kernel`.
std::string propertiesOf(const std::string &report, const std::string &kernel) {
  size_t at = report.find("Function properties for " + kernel + "\n");
  if (at == std::string::npos)
    return "";
  size_t end = report.find("ptxas info", at + 1);
  return report.substr(at, end == std::string::npos ? end : end - at);
}

/// The registers per thread that the ptxas report gives `kernel`, or -1.
int registersOf(const std::string &report, const std::string &kernel) {
  size_t at = report.find("Function properties for " + kernel + "\n");
  if (at == std::string::npos)
    return -1;
  at = report.find("Used ", at);
  return at == std::string::npos ? -1 : std::atoi(report.c_str() + at + 5);
}

/// One train-step kernel at Llama-3-8B-like sizes (4 sequences of 2048
/// tokens, hidden 4096, MLP 14336, vocabulary 128256, 32 query and 8 kv heads
/// of 128), and which 16-byte global accesses its PTX must contain.
struct StepKernel {
  const char *label;
  std::function<llvm::Expected<KernelSpec>()> make;
  bool load16, store16;
};

constexpr int64_t kRows = 4 * 2048, kSeq = 2048, kHidden = 4096;
constexpr int64_t kMlp = 14336, kVocab = 128256, kHeads = 32, kKvHeads = 8;
constexpr int64_t kHeadDim = 128;

/// The fused QKV output of a Llama 3 8B layer; with `positions`, of a
/// packed step (RoPE positions from position_ids).
HeadsLayout stepHeads(bool positions = false) {
  HeadsLayout layout;
  layout.positions = positions;
  layout.rows = kRows;
  layout.seqLen = kSeq;
  layout.headDim = kHeadDim;
  layout.numQueryHeads = kHeads;
  layout.numKeyHeads = kKvHeads;
  layout.numValueHeads = kKvHeads;
  layout.rowStride = (kHeads + 2 * kKvHeads) * kHeadDim;
  return layout;
}

/// The attention output (query heads only).
HeadsLayout stepOutputHeads() {
  HeadsLayout layout = stepHeads();
  layout.numKeyHeads = layout.numValueHeads = 0;
  layout.rowStride = kHeads * kHeadDim;
  return layout;
}

std::vector<StepKernel> stepKernels() {
  return {
      {"embedding_fwd",
       [] { return embeddingForwardKernel(kRows, kVocab, kHidden); }, true,
       true},
      {"embedding_bwd",
       [] { return embeddingBackwardKernel(kRows, kVocab, kHidden); }, true,
       true},
      {"embedding_bwd_acc",
       [] {
         return embeddingBackwardKernel(kRows, kVocab, kHidden,
                                        /*accumulate=*/true);
       },
       true, true},
      // The most rows the shared row mask allows.
      {"embedding_bwd_max_rows",
       [] { return embeddingBackwardKernel(392448, kVocab, kHidden); }, true,
       true},
      {"rms_norm_fwd",
       [] { return rmsNormForwardKernel(kRows, kHidden, 1e-5); }, true, true},
      // The FP8 forward's norm, straight into the FP8 copy (8-byte stores).
      {"rms_norm_fwd_e4m3",
       [] {
         return rmsNormFP8ForwardKernel(kRows, kHidden, 1e-5, FP8Format::E4M3);
       },
       true, false},
      {"rms_norm_fwd_h64_e4m3",
       [] { return rmsNormFP8ForwardKernel(kRows, 64, 1e-5, FP8Format::E4M3); },
       true, false},
      {"rms_norm_bwd",
       [] { return rmsNormBackwardKernel(kRows, kHidden, false); }, true, true},
      {"rms_norm_bwd_acc",
       [] { return rmsNormBackwardKernel(kRows, kHidden, true); }, true, true},
      {"rms_norm_bwd_h8192",
       [] { return rmsNormBackwardKernel(kRows, 8192, true); }, true, true},
      {"column_sum", [] { return columnSumKernel(512, kHidden); }, false,
       false},
      {"swiglu_fwd", [] { return swigluForwardKernel(kRows, kMlp); }, true,
       true},
      {"swiglu_bwd", [] { return swigluBackwardKernel(kRows, kMlp); }, true,
       true},
      {"rope_to_heads",
       [] {
         return ropeHeadsKernel(stepHeads(), HeadsDirection::ToHeads,
                                Rotation::Forward);
       },
       true, true},
      {"rope_inverse_to_tokens",
       [] {
         return ropeHeadsKernel(stepHeads(), HeadsDirection::ToTokens,
                                Rotation::Inverse);
       },
       true, true},
      {"heads_to_tokens",
       [] {
         return ropeHeadsKernel(stepOutputHeads(), HeadsDirection::ToTokens,
                                Rotation::None);
       },
       true, true},
      {"rope_to_heads_packed",
       [] {
         return ropeHeadsKernel(stepHeads(true), HeadsDirection::ToHeads,
                                Rotation::Forward);
       },
       true, true},
      {"rope_inverse_to_tokens_packed",
       [] {
         return ropeHeadsKernel(stepHeads(true), HeadsDirection::ToTokens,
                                Rotation::Inverse);
       },
       true, true},
      {"rope_in_place",
       [] {
         return ropeHeadsKernel(stepHeads(), HeadsDirection::InPlace,
                                Rotation::Forward);
       },
       true, true},
      {"rope_in_place_packed",
       [] {
         return ropeHeadsKernel(stepHeads(true), HeadsDirection::InPlace,
                                Rotation::Forward);
       },
       true, true},
      // A 4-byte (cos, sin) pair a thread.
      {"rope_table", [] { return ropeTableKernel(stepHeads()); }, false, false},
      {"rope_table_packed", [] { return ropeTableKernel(stepHeads(true)); },
       false, false},
      {"causal_softmax_fwd_f32",
       [] {
         return causalSoftmaxForwardKernel(4 * kHeads, kSeq, ScoreType::F32);
       },
       true, true},
      {"causal_softmax_fwd_bf16",
       [] {
         return causalSoftmaxForwardKernel(4 * kHeads, kSeq, ScoreType::BF16);
       },
       true, true},
      {"causal_softmax_fwd_rows_per_block",
       [] {
         return causalSoftmaxForwardKernel(8 * kHeads, 256, ScoreType::F32);
       },
       true, true},
      {"attention_softmax_bwd_f32",
       [] {
         return attentionSoftmaxBackwardKernel(4 * kHeads, kSeq,
                                               ScoreType::F32);
       },
       true, true},
      {"attention_softmax_bwd_bf16",
       [] {
         return attentionSoftmaxBackwardKernel(4 * kHeads, kSeq,
                                               ScoreType::BF16);
       },
       true, true},
      {"attention_softmax_bwd_rows_per_block",
       [] {
         return attentionSoftmaxBackwardKernel(8 * kHeads, 256, ScoreType::F32);
       },
       true, true},
      {"causal_softmax_fwd_packed",
       [] {
         return causalSoftmaxForwardKernel(4 * kHeads, kSeq, ScoreType::F32,
                                           kHeads);
       },
       true, true},
      {"attention_softmax_bwd_packed",
       [] {
         return attentionSoftmaxBackwardKernel(4 * kHeads, kSeq, ScoreType::F32,
                                               kHeads);
       },
       true, true},
      {"count_targets", [] { return countTargetsKernel(kRows, kSeq, kVocab); },
       false, false},
      {"cross_entropy", [] { return crossEntropyKernel(kRows, kSeq, kVocab); },
       true, true},
      {"global_norm_sq", [] { return globalNormSqKernel(int64_t(8) << 30); },
       true, false},
      {"scale_bf16", [] { return scaleBF16Kernel(int64_t(8) << 30); }, true,
       true},
      {"add_bf16", [] { return addBF16Kernel(kRows * kHidden); }, true, true},
      {"fp8_cast_e4m3",
       [] { return fp8CastKernel(kRows * kHidden, FP8Format::E4M3); }, true,
       false},
      {"fp8_cast_e5m2",
       [] { return fp8CastKernel(kRows * kMlp, FP8Format::E5M2); }, true,
       false},
      // A column slice (a gradient half of the gate/up GEMM's output).
      {"fp8_cast_slice_e5m2",
       [] {
         return fp8CastKernel(kRows * kMlp, FP8Format::E5M2, kMlp, 2 * kMlp);
       },
       true, false},
      {"fp8_cast_transpose_slice_e5m2",
       [] {
         return fp8CastTransposeKernel(kRows, kMlp, FP8Format::E5M2, 2 * kMlp);
       },
       true, true},
      {"fp8_cast_transpose_e4m3",
       [] { return fp8CastTransposeKernel(kRows, kHidden, FP8Format::E4M3); },
       true, true},
      {"fp8_cast_transpose_e5m2",
       [] { return fp8CastTransposeKernel(kRows, kMlp, FP8Format::E5M2); },
       true, true},
      // Current scaling's amax pass (a whole tensor, a gradient half of the
      // gate/up output) and its scale from that amax.
      {"fp8_amax", [] { return fp8AmaxKernel(kRows * kHidden); }, true, false},
      {"fp8_amax_slice",
       [] { return fp8AmaxKernel(kRows * kMlp, kMlp, 2 * kMlp); }, true, false},
      {"fp8_current_scale_e5m2",
       [] { return fp8CurrentScaleKernel(FP8Format::E5M2, 1); }, false, false},
      // Both copies from one read: a weight, and a gradient half of the
      // gate/up GEMM's output.
      {"fp8_cast_transpose_both_e4m3",
       [] {
         return fp8CastTransposeKernel(kMlp, kHidden, FP8Format::E4M3, 0,
                                       /*direct=*/true);
       },
       true, true},
      {"fp8_cast_transpose_both_slice_e5m2",
       [] {
         return fp8CastTransposeKernel(kRows, kMlp, FP8Format::E5M2, 2 * kMlp,
                                       /*direct=*/true);
       },
       true, true},
      // Edge tiles in both directions (176 = 128 + 48 rows, 1008 = 7 x 128 +
      // 112 columns), as the tiny model's gate/up weights have.
      {"fp8_cast_transpose_edges_both_e5m2",
       [] {
         return fp8CastTransposeKernel(176, 1008, FP8Format::E5M2, 1024,
                                       /*direct=*/true);
       },
       true, true},
      // The FP8 forward's SwiGLU output cast as it is computed from the
      // gate/up GEMM's output.
      // The FP8 backward's casts of SwiGLU's input gradient halves as they
      // are computed from dy and the gate/up output.
      {"swiglu_dgate_fp8_cast_transpose_e5m2",
       [] {
         return swigluGradFP8CastTransposeKernel(kRows, kMlp, FP8Format::E5M2,
                                                 /*gateHalf=*/true);
       },
       true, true},
      {"swiglu_dup_fp8_cast_transpose_e5m2",
       [] {
         return swigluGradFP8CastTransposeKernel(kRows, kMlp, FP8Format::E5M2,
                                                 /*gateHalf=*/false);
       },
       true, true},
      {"swiglu_fp8_cast_transpose_e4m3",
       [] {
         return swigluFP8CastTransposeKernel(kRows, kMlp, FP8Format::E4M3);
       },
       true, true},
      // @optimizer_step's AdamW of an FP8 weight fused with its casts: a
      // down_proj weight, and the tiny model's gate weight (edge tiles).
      {"adamw_fp8_cast_transpose_e4m3",
       [] {
         return adamwFP8CastTransposeKernel(kHidden, kMlp, FP8Format::E4M3);
       },
       true, true},
      {"adamw_fp8_cast_transpose_edges_e4m3",
       [] { return adamwFP8CastTransposeKernel(176, 64, FP8Format::E4M3); },
       true, true},
      {"fp8_scale_update",
       [] { return fp8ScaleUpdateKernel(224, 1024, FP8Format::E4M3, 0); },
       false, false},
      {"fp8_scale_update_recent",
       [] { return fp8ScaleUpdateKernel(224, 16, FP8Format::E5M2, 2, true); },
       false, false},
  };
}

class StepKernelPTX : public ::testing::TestWithParam<StepKernel> {};

TEST_P(StepKernelPTX, VectorizesAndAssemblesWithoutSpills) {
  llvm::Expected<KernelSpec> kernel = GetParam().make();
  ASSERT_TRUE(bool(kernel)) << llvm::toString(kernel.takeError());
  EXPECT_GE(kernel->block.x, 32u);
  EXPECT_LE(kernel->block.x, 1024u);
  EXPECT_EQ(kernel->block.x % 32, 0u);
  EXPECT_GE(kernel->grid.x, 1u);
  llvm::Expected<std::string> ptx = compileKernels({*kernel});
  ASSERT_TRUE(bool(ptx)) << llvm::toString(ptx.takeError());
  EXPECT_NE(ptx->find(".entry " + kernel->name + "("), std::string::npos);
  // The template's known_block_size matches the launch (and caps registers).
  EXPECT_NE(ptx->find(".maxntid " + std::to_string(kernel->block.x) + ", 1, 1"),
            std::string::npos);
  if (GetParam().load16) {
    EXPECT_NE(ptx->find("ld.global.v4.b32"), std::string::npos) << *ptx;
  }
  if (GetParam().store16) {
    EXPECT_NE(ptx->find("st.global.v4.b32"), std::string::npos) << *ptx;
  }
  std::string report = assemble(*ptx);
  std::string properties = propertiesOf(report, kernel->name);
  EXPECT_NE(properties.find("0 bytes spill stores"), std::string::npos)
      << report;
  EXPECT_NE(properties.find("0 bytes spill loads"), std::string::npos)
      << report;
}

INSTANTIATE_TEST_SUITE_P(TrainStep, StepKernelPTX,
                         ::testing::ValuesIn(stepKernels()),
                         [](const ::testing::TestParamInfo<StepKernel> &info) {
                           return std::string(info.param.label);
                         });

TEST(KernelPTX, AllStepKernelsShareOneModule) {
  std::vector<KernelSpec> specs;
  for (const StepKernel &kernel : stepKernels()) {
    llvm::Expected<KernelSpec> spec = kernel.make();
    ASSERT_TRUE(bool(spec)) << llvm::toString(spec.takeError());
    specs.push_back(*spec);
  }
  specs.push_back(specs.front()); // a repeat is emitted once
  llvm::Expected<std::string> ptx = compileKernels(specs);
  ASSERT_TRUE(bool(ptx)) << llvm::toString(ptx.takeError());
  std::string report = assemble(*ptx);
  for (size_t i = 0; i + 1 < specs.size(); ++i)
    EXPECT_NE(propertiesOf(report, specs[i].name).find("0 bytes spill"),
              std::string::npos)
        << specs[i].name << "\n"
        << report;
}

TEST(KernelPTX, LaunchShapesFollowTheSizes) {
  auto norm = rmsNormForwardKernel(10, 2400, 1e-6);
  ASSERT_TRUE(bool(norm)) << llvm::toString(norm.takeError());
  EXPECT_EQ(norm->grid.x, 10u);
  EXPECT_EQ(norm->block.x, 256u); // 300 chunks
  auto small = rmsNormForwardKernel(10, 64, 1e-6);
  ASSERT_TRUE(bool(small));
  EXPECT_EQ(small->block.x, 32u);
  EXPECT_NE(norm->name, rmsNormForwardKernel(10, 2400, 1e-5)->name);

  auto backward = rmsNormBackwardKernel(1000, 2400, true);
  ASSERT_TRUE(bool(backward));
  EXPECT_EQ(backward->grid.x, 512u);
  EXPECT_NE(backward->name, rmsNormBackwardKernel(1000, 2400, false)->name);
  EXPECT_EQ(rmsNormBackwardKernel(7, 2400, true)->grid.x, 7u);

  auto sum = columnSumKernel(512, 100);
  ASSERT_TRUE(bool(sum));
  EXPECT_EQ(sum->grid.x, 4u);
  EXPECT_EQ(sum->block.x, 1024u);
  EXPECT_EQ(columnSumKernel(5, 100)->block.x, 64u);

  auto rope =
      ropeHeadsKernel(stepHeads(), HeadsDirection::ToHeads, Rotation::Forward);
  ASSERT_TRUE(bool(rope));
  EXPECT_EQ(rope->grid.x, unsigned(kRows));
  EXPECT_EQ(rope->block.x, 256u); // 48 heads * 8 chunks = 384 items
  // Direction, rotation and layout each make a different kernel.
  EXPECT_NE(rope->name, ropeHeadsKernel(stepHeads(), HeadsDirection::ToTokens,
                                        Rotation::Forward)
                            ->name);
  EXPECT_NE(rope->name, ropeHeadsKernel(stepHeads(), HeadsDirection::ToHeads,
                                        Rotation::Inverse)
                            ->name);
  EXPECT_NE(rope->name,
            ropeHeadsKernel(stepOutputHeads(), HeadsDirection::ToHeads,
                            Rotation::Forward)
                ->name);
  EXPECT_NE(rope->name,
            ropeHeadsKernel(stepHeads(true), HeadsDirection::ToHeads,
                            Rotation::Forward)
                ->name);
  EXPECT_EQ(ropeHeadsKernel(stepOutputHeads(), HeadsDirection::ToTokens,
                            Rotation::None)
                ->block.x,
            256u); // 32 heads * 8 chunks
  // In place, only the 40 query and key heads are items: 320.
  auto inPlace =
      ropeHeadsKernel(stepHeads(), HeadsDirection::InPlace, Rotation::Forward);
  ASSERT_TRUE(bool(inPlace));
  EXPECT_EQ(inPlace->block.x, 256u);
  EXPECT_NE(inPlace->name, rope->name);
  EXPECT_EQ(inPlace->source.find("%heads: memref"), std::string::npos);
  // The table: a block per row, a thread per frequency.
  auto table = ropeTableKernel(stepHeads());
  ASSERT_TRUE(bool(table));
  EXPECT_EQ(table->grid.x, unsigned(kRows));
  EXPECT_EQ(table->block.x, unsigned(kHeadDim / 2));
  EXPECT_NE(table->name, ropeTableKernel(stepHeads(true))->name);

  // A row gets min(256, seq / 8 rounded up to a warp) threads, a block as
  // many rows as fit in 256 threads.
  auto softmax = causalSoftmaxForwardKernel(6, 136, ScoreType::F32);
  ASSERT_TRUE(bool(softmax));
  EXPECT_EQ(softmax->grid.x, 6u * 136u / 8u); // 17 chunks: 32 threads a row
  EXPECT_EQ(softmax->block.x, 256u);
  EXPECT_NE(softmax->name,
            causalSoftmaxForwardKernel(6, 136, ScoreType::BF16)->name);
  auto packed = causalSoftmaxForwardKernel(6, 136, ScoreType::F32,
                                           /*packedHeads=*/3);
  ASSERT_TRUE(bool(packed));
  EXPECT_EQ(packed->grid.x, softmax->grid.x);
  EXPECT_NE(packed->name, softmax->name);
  EXPECT_NE(packed->name,
            causalSoftmaxForwardKernel(6, 136, ScoreType::F32, 2)->name);
  struct SoftmaxShape {
    int64_t seq;
    unsigned rowsPerBlock, block;
  };
  for (SoftmaxShape shape : {SoftmaxShape{8, 8, 256},
                             {264, 4, 256},
                             {520, 2, 192},
                             {776, 2, 256},
                             {1040, 1, 160},
                             {2048, 1, 256},
                             {4096, 1, 256}}) {
    for (bool forward : {true, false}) {
      llvm::Expected<KernelSpec> spec =
          forward
              ? causalSoftmaxForwardKernel(6, shape.seq, ScoreType::F32)
              : attentionSoftmaxBackwardKernel(6, shape.seq, ScoreType::F32);
      ASSERT_TRUE(bool(spec)) << llvm::toString(spec.takeError());
      EXPECT_EQ(spec->grid.x, unsigned(6 * shape.seq) / shape.rowsPerBlock)
          << shape.seq;
      EXPECT_EQ(spec->block.x, shape.block) << shape.seq;
    }
  }

  auto loss = crossEntropyKernel(kRows, kSeq, kVocab);
  ASSERT_TRUE(bool(loss));
  EXPECT_EQ(loss->grid.x, unsigned(kRows));
  EXPECT_EQ(loss->block.x, 1024u);
  auto count = countTargetsKernel(kRows, kSeq, kVocab);
  ASSERT_TRUE(bool(count));
  EXPECT_EQ(count->grid.x, 1u);
  EXPECT_EQ(count->block.x, 1024u);

  auto norm2 = globalNormSqKernel(8 * 100);
  ASSERT_TRUE(bool(norm2));
  EXPECT_EQ(norm2->grid.x, 1u);
  EXPECT_EQ(globalNormSqKernel(int64_t(1) << 30)->grid.x, 1024u);
  EXPECT_EQ(addBF16Kernel(8 * 257)->grid.x, 2u);

  auto embedding = embeddingBackwardKernel(kRows, kVocab, kHidden);
  ASSERT_TRUE(bool(embedding));
  EXPECT_EQ(embedding->grid.x, unsigned(kRows));
  EXPECT_EQ(embedding->block.x, 256u);
  EXPECT_NE(embedding->name,
            embeddingBackwardKernel(kRows, kVocab, kHidden, true)->name);
}

TEST(KernelPTX, RejectsBadStepShapes) {
  auto message = [](llvm::Expected<KernelSpec> spec) {
    EXPECT_FALSE(bool(spec));
    return spec ? std::string() : llvm::toString(spec.takeError());
  };
  EXPECT_NE(message(rmsNormForwardKernel(4, 100, 1e-5)).find("multiple of 8"),
            std::string::npos);
  EXPECT_NE(message(rmsNormBackwardKernel(4, 16384, false)).find("8192"),
            std::string::npos);
  EXPECT_NE(message(crossEntropyKernel(100, 64, 32000)).find("row count"),
            std::string::npos);
  EXPECT_NE(message(crossEntropyKernel(128, 64, 32001)).find("vocabulary"),
            std::string::npos);
  EXPECT_NE(message(causalSoftmaxForwardKernel(4, 100, ScoreType::F32))
                .find("sequence length"),
            std::string::npos);
  EXPECT_NE(message(attentionSoftmaxBackwardKernel(6, 64, ScoreType::F32, 4))
                .find("not a multiple of the heads"),
            std::string::npos);
  EXPECT_NE(message(swigluForwardKernel(4, 0)).find("width"),
            std::string::npos);
  EXPECT_NE(message(embeddingForwardKernel(4, 0, 64)).find("vocabulary"),
            std::string::npos);
  EXPECT_NE(message(embeddingBackwardKernel(392449, kVocab, 64))
                .find("row count must be at most 392448"),
            std::string::npos);
  auto heads = [&](const HeadsLayout &layout) {
    return message(
        ropeHeadsKernel(layout, HeadsDirection::ToHeads, Rotation::Forward));
  };
  HeadsLayout layout = stepHeads();
  layout.rowStride = kHeads * kHeadDim; // no room for the keys
  EXPECT_NE(heads(layout).find("beyond"), std::string::npos);
  layout = stepHeads();
  layout.headDim = 72; // half 36: not whole 8-element chunks
  EXPECT_NE(heads(layout).find("head dim"), std::string::npos);
  layout = stepHeads();
  layout.rows = kSeq + 8; // a partial sequence
  EXPECT_NE(heads(layout).find("multiple of the sequence length"),
            std::string::npos);
  layout = stepOutputHeads();
  layout.positions = true; // positions are for rotations
  EXPECT_NE(
      message(ropeHeadsKernel(layout, HeadsDirection::ToTokens, Rotation::None))
          .find("positions without a rotation"),
      std::string::npos);
  EXPECT_NE(message(ropeHeadsKernel(stepHeads(), HeadsDirection::InPlace,
                                    Rotation::None))
                .find("in place without a rotation"),
            std::string::npos);
}

TEST(KernelPTX, FP8CastsUseSaturatingHardwareConversions) {
  for (FP8Format format : {FP8Format::E4M3, FP8Format::E5M2}) {
    const char *cvt = format == FP8Format::E4M3 ? "cvt.rn.satfinite.e4m3x2.f32"
                                                : "cvt.rn.satfinite.e5m2x2.f32";
    llvm::Expected<KernelSpec> cast = fp8CastKernel(1 << 16, format);
    llvm::Expected<KernelSpec> transpose =
        fp8CastTransposeKernel(64, 256, format);
    ASSERT_TRUE(bool(cast)) << llvm::toString(cast.takeError());
    ASSERT_TRUE(bool(transpose)) << llvm::toString(transpose.takeError());
    EXPECT_EQ(cast->grid.x, 32u); // 2^16 / 8 per thread / 256
    // Tiles of 128 x 128: 2 along the columns, 1 (cut at 64) along the rows.
    EXPECT_EQ(transpose->grid.x, 2u);
    EXPECT_EQ(transpose->grid.y, 1u);
    llvm::Expected<std::string> ptx = compileKernels({*cast, *transpose});
    ASSERT_TRUE(bool(ptx)) << llvm::toString(ptx.takeError());
    EXPECT_NE(ptx->find(cvt), std::string::npos) << *ptx;
    EXPECT_NE(ptx->find("atom.global.max.s32"), std::string::npos) << *ptx;
  }
  llvm::Expected<KernelSpec> update =
      fp8ScaleUpdateKernel(3, 40, FP8Format::E4M3, 1);
  ASSERT_TRUE(bool(update)) << llvm::toString(update.takeError());
  EXPECT_EQ(update->grid.x, 3u);
  EXPECT_EQ(update->block.x, 64u);
}

/// How often `what` occurs in `text`.
size_t countOf(const std::string &text, const std::string &what) {
  size_t count = 0;
  for (size_t at = text.find(what); at != std::string::npos;
       at = text.find(what, at + 1))
    ++count;
  return count;
}

TEST(KernelPTX, FP8CastTransposeWritesBothCopiesFromOneRead) {
  // Per thread of a 128 x 128 tile: 8 loads of 16 bytes (x is read once),
  // each converted into 8 bytes of the workgroup tile; after the barrier 4
  // stores of 16 bytes into the transposed copy (from 16 words of the tile,
  // transposed with 32 byte permutes) and, with the direct output, 4 of 16
  // bytes copied from the tile into the direct one. No global store is
  // narrower than 16 bytes.
  for (bool direct : {false, true}) {
    for (int64_t rows : {64, 256}) { // an edge tile, whole tiles
      llvm::Expected<KernelSpec> kernel =
          fp8CastTransposeKernel(rows, 256, FP8Format::E4M3, 512, direct);
      ASSERT_TRUE(bool(kernel)) << llvm::toString(kernel.takeError());
      EXPECT_EQ(kernel->name, "fp8_cast_transpose_r" + std::to_string(rows) +
                                  "_c256_ld512" + (direct ? "_both" : "") +
                                  "_e4m3");
      EXPECT_EQ(kernel->grid.x, 2u);
      EXPECT_EQ(kernel->grid.y, rows == 64 ? 1u : 2u);
      EXPECT_EQ(kernel->block.x, 256u);
      llvm::Expected<std::string> ptx = compileKernels({*kernel});
      ASSERT_TRUE(bool(ptx)) << llvm::toString(ptx.takeError());
      EXPECT_EQ(countOf(*ptx, "st.global.v4.b16") +
                    countOf(*ptx, "st.global.v2") +
                    countOf(*ptx, "st.global.b"),
                0u)
          << *ptx;
      EXPECT_EQ(countOf(*ptx, "prmt.b32"), 32u) << *ptx;
      EXPECT_EQ(countOf(*ptx, "ld.shared.b32"), 16u) << *ptx;
      EXPECT_EQ(countOf(*ptx, "bar.sync"), 2u) << *ptx; // the tile, the amax
      EXPECT_EQ(countOf(*ptx, "atom.global.max.s32"), 1u) << *ptx;
      // (The edge tile's rows 64.. are known to lie outside, so their loads
      // and stores fold away there.)
      unsigned pieces = rows == 64 ? 4 : 8;
      EXPECT_EQ(countOf(*ptx, "ld.global.v4.b32"), pieces) << *ptx;
      // (8 bytes as 4 x 16 bits: the converted pairs.)
      EXPECT_EQ(countOf(*ptx, "st.shared.v4.b16"), pieces) << *ptx;
      EXPECT_EQ(countOf(*ptx, "st.global.v4.b32"),
                4u + (direct ? pieces / 2 : 0u))
          << *ptx;
      // Arguments x, scale, [direct,] out, amax.
      EXPECT_EQ(countOf(*ptx, ".param .u64"), direct ? 5u : 4u) << *ptx;
    }
  }
}

TEST(KernelPTX, ShortSoftmaxRowsStayInRegisters) {
  // Rows of at most 256 columns: one warp per row reads each of its 16-byte
  // (bf16) or 32-byte (f32) chunks of S (backward: of the bf16 P and of dP)
  // once, with no shared memory or barrier; longer rows keep the general
  // kernels (shared memory, the inputs read twice).
  for (bool forward : {true, false}) {
    auto make = [&](int64_t seq, ScoreType type) {
      return forward ? causalSoftmaxForwardKernel(8, seq, type)
                     : attentionSoftmaxBackwardKernel(8, seq, type);
    };
    for (auto [seq, type, chunkLoads] : {std::tuple{256, ScoreType::BF16, 1u},
                                         {256, ScoreType::F32, 2u},
                                         {32, ScoreType::F32, 2u}}) {
      llvm::Expected<KernelSpec> kernel = make(seq, type);
      ASSERT_TRUE(bool(kernel)) << llvm::toString(kernel.takeError());
      EXPECT_EQ(kernel->block.x, 256u);
      llvm::Expected<std::string> ptx = compileKernels({*kernel});
      ASSERT_TRUE(bool(ptx)) << llvm::toString(ptx.takeError());
      EXPECT_EQ(countOf(*ptx, "ld.global.v4.b32"),
                chunkLoads + (forward ? 0u : 1u))
          << *ptx;
      EXPECT_EQ(countOf(*ptx, "st.global.v4.b32"), 1u) << *ptx;
      EXPECT_EQ(countOf(*ptx, "bar.sync"), 0u) << *ptx;
      EXPECT_EQ(countOf(*ptx, ".shared"), 0u) << *ptx;
    }
    llvm::Expected<KernelSpec> longer = make(264, ScoreType::F32);
    ASSERT_TRUE(bool(longer));
    llvm::Expected<std::string> ptx = compileKernels({*longer});
    ASSERT_TRUE(bool(ptx)) << llvm::toString(ptx.takeError());
    EXPECT_GT(countOf(*ptx, "bar.sync"), 0u);
  }
}

TEST(KernelPTX, AdamWFP8CastTransposeUpdatesAndCastsFromOneRead) {
  // fp8_cast_transpose_both's tile structure, each piece of the weight read
  // with its gradient and moments (4 loads of 16 bytes), updated and stored
  // back (3 stores of 16 bytes; AdamW's math as the flat kernel's: the same
  // square roots and divisions per element), then cast.
  for (int64_t rows : {64, 256}) { // an edge tile, whole tiles
    llvm::Expected<KernelSpec> kernel =
        adamwFP8CastTransposeKernel(rows, 256, FP8Format::E4M3);
    ASSERT_TRUE(bool(kernel)) << llvm::toString(kernel.takeError());
    EXPECT_EQ(kernel->name, "adamw_fp8_cast_transpose_r" +
                                std::to_string(rows) + "_c256_e4m3");
    EXPECT_EQ(kernel->grid.x, 2u);
    EXPECT_EQ(kernel->grid.y, rows == 64 ? 1u : 2u);
    EXPECT_EQ(kernel->block.x, 256u);
    llvm::Expected<std::string> ptx = compileKernels({*kernel});
    ASSERT_TRUE(bool(ptx)) << llvm::toString(ptx.takeError());
    unsigned pieces = rows == 64 ? 4 : 8;
    EXPECT_EQ(countOf(*ptx, "ld.global.v4.b32"), 4 * pieces) << *ptx;
    EXPECT_EQ(countOf(*ptx, "st.global.v4.b32"), 3 * pieces + 4 + pieces / 2)
        << *ptx;
    EXPECT_EQ(countOf(*ptx, "st.global.v4.b16") +
                  countOf(*ptx, "st.global.v2") + countOf(*ptx, "st.global.b"),
              0u)
        << *ptx;
    EXPECT_EQ(countOf(*ptx, "prmt.b32"), 32u) << *ptx;
    EXPECT_EQ(countOf(*ptx, "bar.sync"), 2u) << *ptx;
    EXPECT_EQ(countOf(*ptx, "atom.global.max.s32"), 1u) << *ptx;
    // Arguments x, grad, exp_avg, exp_avg_sq, hyper, norm_sq, scale,
    // direct, out, amax.
    EXPECT_EQ(countOf(*ptx, ".param .u64"), 10u) << *ptx;
    // A piece at a time, so that three blocks of 256 threads fit an SM's
    // 65536 registers (at most 85 each; ptxas allots them in 8s): with all
    // 32 loads in flight at once it took 202, and on an H200 ran 17% slower.
    std::string report = assemble(*ptx);
    int registers = registersOf(report, kernel->name);
    EXPECT_GT(registers, 0) << report;
    EXPECT_LE(registers, 80) << report;
    EXPECT_NE(propertiesOf(report, kernel->name).find("0 bytes spill stores"),
              std::string::npos)
        << report;
  }
  // The flat AdamW's math, from the same generated lines: per element one
  // square root of v, a product with 1 / sqrt(1 - beta2^t) and one
  // division (of m by the denominator).
  llvm::Expected<KernelSpec> flat = adamwKernel(1 << 20);
  llvm::Expected<KernelSpec> fused =
      adamwFP8CastTransposeKernel(128, 128, FP8Format::E4M3);
  ASSERT_TRUE(flat && fused);
  for (const char *op : {"math.sqrt %aw_v1", "arith.mulf %aw_sq",
                         "arith.divf %aw_m1", "arith.truncf %aw_p1"}) {
    EXPECT_EQ(countOf(flat->source, op), 1u) << op;
    EXPECT_EQ(countOf(fused->source, op), 8u) << op;
  }
}

TEST(KernelPTX, RejectsBadFP8Shapes) {
  auto message = [](llvm::Expected<KernelSpec> spec) {
    EXPECT_FALSE(bool(spec));
    return spec ? std::string() : llvm::toString(spec.takeError());
  };
  EXPECT_NE(message(fp8CastKernel(100, FP8Format::E4M3)).find("multiple of 8"),
            std::string::npos);
  EXPECT_NE(message(fp8CastTransposeKernel(24, 64, FP8Format::E4M3))
                .find("fp8_cast_transpose kernel: row count must be a "
                      "positive multiple of 16"),
            std::string::npos);
  EXPECT_NE(message(fp8CastTransposeKernel(32, 12, FP8Format::E5M2))
                .find("column count"),
            std::string::npos);
  EXPECT_NE(message(fp8CastTransposeKernel(32, 24, FP8Format::E5M2))
                .find("fp8_cast_transpose kernel: column count must be a "
                      "positive multiple of 16, got 24"),
            std::string::npos);
  EXPECT_NE(message(fp8CastTransposeKernel(32, 64, FP8Format::E5M2, 60))
                .find("row stride 60 for 64 columns"),
            std::string::npos);
  EXPECT_NE(message(fp8CastTransposeKernel(32, 64, FP8Format::E5M2, 68))
                .find("multiple of 8"),
            std::string::npos);
  EXPECT_NE(
      message(fp8CastTransposeKernel(int64_t(1) << 24, 64, FP8Format::E4M3))
          .find("row count must be at most 8388480"),
      std::string::npos);
  EXPECT_NE(message(adamwFP8CastTransposeKernel(32, 24, FP8Format::E4M3))
                .find("adamw_fp8_cast_transpose kernel: column count must be "
                      "a positive multiple of 16, got 24"),
            std::string::npos);
  EXPECT_NE(message(fp8ScaleUpdateKernel(4, 2048, FP8Format::E4M3, 0))
                .find("at most 1024"),
            std::string::npos);
  EXPECT_NE(
      message(fp8ScaleUpdateKernel(4, 16, FP8Format::E4M3, -1)).find("margin"),
      std::string::npos);
}

TEST(KernelPTX, RejectsBadShapesAndUnknownTemplates) {
  llvm::Expected<KernelSpec> odd = adamwKernel(12);
  ASSERT_FALSE(bool(odd));
  EXPECT_NE(llvm::toString(odd.takeError()).find("multiple of 8"),
            std::string::npos);
  llvm::Expected<std::string> unknown = instantiateKernel("nope", {});
  ASSERT_FALSE(bool(unknown));
  llvm::consumeError(unknown.takeError());
  llvm::Expected<std::string> unset =
      instantiateKernel("adamw", {{"KERNEL", "adamw"}});
  ASSERT_FALSE(bool(unset));
  EXPECT_NE(llvm::toString(unset.takeError()).find("@N@ not set"),
            std::string::npos);
}

/// Llama 2 7B's attention at batch 2: 32 heads of 128 in the fused q, k, v
/// projection's rows.
FlashShape llama2Attention(int64_t seq, bool packed = false) {
  FlashShape s;
  s.batch = 2, s.heads = 32, s.kvHeads = 32, s.seq = seq, s.dim = 128;
  s.scale = 0.08838835f;
  s.packed = packed;
  // O alone; dO a slice of the gradient of the fused q, k, v projection.
  s.qkvStride = 12288, s.qkvGradStride = 12288;
  s.outStride = 4096, s.gradStride = 12288;
  return s;
}

TEST(KernelPTX, FlashAttentionRunsOnTensorCores) {
  FlashShape shape = llama2Attention(256);
  auto forward = flashAttentionForwardKernel(shape);
  auto backward = flashAttentionBackwardKernel(shape);
  auto delta = attentionRowDotKernel(shape);
  auto dq = flashAttentionDqKernel(shape);
  ASSERT_TRUE(forward && backward && delta && dq);
  // One block of 4 warps per 64-row tile: query tiles of every (sequence,
  // head) forward, key tiles of every (sequence, KV head) backward; the
  // tiles in y, so that the blocks with the most work start first.
  EXPECT_EQ(forward->grid.x, 64u);
  EXPECT_EQ(forward->grid.y, 4u);
  EXPECT_EQ(backward->grid.x, 64u);
  EXPECT_EQ(backward->grid.y, 4u);
  EXPECT_EQ(forward->block.x, 128u);
  EXPECT_EQ(backward->block.x, 128u);
  // Rows of 128 bf16 padded by 16 bytes: two K, V pairs forward; K, V and
  // two slots of Q, dO and 3 x 64 f32 statistics backward.
  EXPECT_EQ(forward->sharedBytes, 4u * 64 * 272);
  EXPECT_EQ(backward->sharedBytes, 6u * 64 * 272 + 2 * 3 * 64 * 4);
  // dQ per query tile, from two slots of a dSᵀ tile (64 + 8 bf16 a row) and
  // a K tile.
  EXPECT_EQ(dq->grid.x, 64u);
  EXPECT_EQ(dq->grid.y, 4u);
  EXPECT_EQ(dq->sharedBytes, 2u * (64 * 144 + 64 * 272));
  // Two rows of 128 (16 lanes each) a warp, 8 a block.
  EXPECT_EQ(delta->grid.x, 2u * 256 * 32 / 8);

  llvm::Expected<std::string> ptx =
      compileKernels({*forward, *backward, *delta, *dq});
  ASSERT_TRUE(bool(ptx)) << llvm::toString(ptx.takeError());
  for (const char *instruction :
       {"mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
        "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
        "cp.async.cg.shared.global", "ex2.approx.ftz.f32"})
    EXPECT_NE(ptx->find(instruction), std::string::npos) << instruction;
  // bf16 pairs leave in 4-byte stores; the row dot reads 16-byte chunks.
  EXPECT_EQ(ptx->find("st.global.b16"), std::string::npos);
  EXPECT_EQ(ptx->find("ld.global.b16"), std::string::npos);
  EXPECT_NE(ptx->find("ld.global.v4.b32"), std::string::npos);
  std::string report = assemble(*ptx);
  // Three forward or dQ blocks fit an SM's 64K registers.
  EXPECT_LE(registersOf(report, forward->name), 168) << report;
  EXPECT_LE(registersOf(report, dq->name), 168) << report;
  for (const KernelSpec *kernel : {&*forward, &*dq})
    EXPECT_NE(propertiesOf(report, kernel->name).find("0 bytes spill stores"),
              std::string::npos)
        << report;
  // The backward holds dK and dV (128 f32 a thread) beside a tile's S, P,
  // dP and dS in 255 registers; ptxas spills at most a few words.
  std::string properties = propertiesOf(report, backward->name);
  size_t spills = properties.find(" bytes spill stores");
  ASSERT_NE(spills, std::string::npos) << report;
  size_t digits = properties.find_last_not_of("0123456789", spills - 1) + 1;
  EXPECT_LE(std::atoi(properties.c_str() + digits), 16) << report;
}

TEST(KernelPTX, FlashAttentionNeedsTilesThatFit) {
  EXPECT_TRUE(flashAttentionSupports(128, 256, "sm_90a"));
  EXPECT_TRUE(flashAttentionSupports(128, 4096, "sm_80"));
  EXPECT_TRUE(flashAttentionSupports(64, 256, "sm_86"));
  // The backward's 105 KiB of shared memory at head_dim 128 is more than a
  // block of sm_86 or sm_89 has.
  EXPECT_FALSE(flashAttentionSupports(128, 256, "sm_86"));
  EXPECT_FALSE(flashAttentionSupports(128, 256, "sm_89"));
  EXPECT_FALSE(flashAttentionSupports(96, 256, "sm_90a"));
  EXPECT_FALSE(flashAttentionSupports(128, 100, "sm_90a"));

  auto message = [](llvm::Expected<KernelSpec> spec) {
    EXPECT_FALSE(bool(spec));
    return spec ? std::string() : llvm::toString(spec.takeError());
  };
  FlashShape shape = llama2Attention(100);
  EXPECT_NE(message(flashAttentionForwardKernel(shape))
                .find("flash_attention_fwd kernel: head_dim 128 and seq_len "
                      "100 need head_dim 16, 32, 64 or 128 and seq_len a "
                      "multiple of 64"),
            std::string::npos);
  shape = llama2Attention(256);
  shape.kvHeads = 5;
  EXPECT_NE(message(flashAttentionBackwardKernel(shape)).find("kv heads 5"),
            std::string::npos);
  // (sequence, head) pairs go in x (up to 2^31 - 1), 64-row tiles in y.
  shape = llama2Attention(256);
  shape.batch = 4096;
  EXPECT_TRUE(bool(flashAttentionForwardKernel(shape)));
  shape = llama2Attention(64 * 65536);
  EXPECT_NE(message(flashAttentionForwardKernel(shape))
                .find("seq_len / 64 65536 exceeds the grid's"),
            std::string::npos);
  shape = llama2Attention(256);
  shape.outStride = 4000;
  EXPECT_NE(message(attentionRowDotKernel(shape))
                .find("attention_row_dot kernel: O row stride 4000 must be a "
                      "multiple of 8 of at least 4096"),
            std::string::npos);
  // The backward reads no O, the forward no dO.
  EXPECT_TRUE(bool(flashAttentionBackwardKernel(shape)));
  shape = llama2Attention(256);
  shape.gradStride = 4100;
  EXPECT_NE(message(flashAttentionBackwardKernel(shape)).find("dO row stride"),
            std::string::npos);
  EXPECT_TRUE(bool(flashAttentionForwardKernel(shape)));
  // q, k and v (3 x 32 heads of 128) need rows of at least 12288.
  shape = llama2Attention(256);
  shape.qkvStride = 8192;
  EXPECT_NE(message(flashAttentionForwardKernel(shape))
                .find("flash_attention_fwd kernel: qkv row stride 8192 must "
                      "be a multiple of 8 of at least 12288"),
            std::string::npos);
  EXPECT_TRUE(bool(attentionRowDotKernel(shape)));
  shape = llama2Attention(256);
  shape.qkvGradStride = 12292;
  EXPECT_NE(message(flashAttentionDqKernel(shape)).find("qkv gradient row"),
            std::string::npos);
  EXPECT_NE(message(flashAttentionBackwardKernel(shape)).find("qkv gradient"),
            std::string::npos);
  EXPECT_TRUE(bool(flashAttentionForwardKernel(shape)));
}

} // namespace
