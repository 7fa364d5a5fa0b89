//===- FlashAttentionKernelTest.cpp - Fused causal attention --------------===//
//
// flash_attention_fwd, attention_row_dot, flash_attention_bwd and
// flash_attention_dq on the kFlashCases shapes (MHA, GQA, MQA, packed data
// rows; head_dim 16 to 128) against a double reference from the same bf16
// inputs. Outputs start as 0xFF bytes (NaN), so an element left unwritten
// fails. The backward's dS must be exact zeros outside the windows in the
// tiles it writes (those on and below the diagonal, which
// flash_attention_dq reads), and the backward must leave the gradient's
// query columns alone for dQ, which must write nothing else. q, k, v and
// their gradient, O and dO are token rows wider than their heads, as a
// step's fused projections are: the extra columns must stay unwritten, and
// where they are read from they are NaN. dK and dQ leave rotated back by
// RoPE with a rope_table made here (Llama's frequencies; positions in the
// sequence, or packed the position ids). The backward runs on the forward's
// lse and the row-dot kernel's delta, as in a train step.
//
// Bounds, with u = 2^-8 (bf16) and the reference exact: the kernels round P
// and dS to bf16 as GEMM operands (u each, relative) and every output to
// bf16 (u); f32 sums, exp2 and log2 add relative errors near 2^-22, covered
// by the 5% slack on the rounding terms and the absolute 1e-6 floors. The
// inverse rotation y1 = x1 c + x2 s of outputs x within b1, b2 of the
// reference (c, s the table's) adds |c| b1 + |s| b2, the rounding of its
// two products (u |x1 c| + u |x2 s|) and its own (u |y1|).
//
//===----------------------------------------------------------------------===//

#include "GpuKernelShapes.h"
#include "KernelTestUtil.h"

#include <algorithm>
#include <cmath>
#include <functional>

using namespace llamac;
using namespace llamac::test;

namespace {

/// Everything a case's reference needs, in double from the bf16 inputs.
struct Problem {
  FlashCase c;
  int64_t tokens, group, width, ld, ldGrad;
  double scale;
  std::vector<uint16_t> qkv;      // token rows of ld, NaN past the heads
  std::vector<uint16_t> dOut;     // head-major
  std::vector<uint16_t> rope;     // rope_table: [tokens, dim / 2, (c, s)]
  std::vector<int32_t> positions; // empty unless packed

  explicit Problem(const FlashCase &c, std::mt19937 &rng)
      : c(c), tokens(c.batch * c.seq), group(c.heads / c.kvHeads),
        width((c.heads + 2 * c.kvHeads) * c.dim), ld(width + kFlashQkvPad),
        ldGrad(width + kFlashQkvGradPad) {
    scale = double(float(1.0 / std::sqrt(double(c.dim))));
    // Queries at twice the keys' spread: scores of standard deviation 2,
    // peaked enough that the running max changes across key blocks.
    int64_t queryWidth = c.heads * c.dim;
    std::vector<uint16_t> queries = randomBF16(tokens * queryWidth, rng, 2.0f);
    std::vector<uint16_t> keysValues =
        randomBF16(tokens * (width - queryWidth), rng);
    qkv.assign(tokens * ld, 0xFFFF);
    for (int64_t t = 0; t < tokens; ++t) {
      std::copy_n(queries.begin() + t * queryWidth, queryWidth,
                  qkv.begin() + t * ld);
      std::copy_n(keysValues.begin() + t * (width - queryWidth),
                  width - queryWidth, qkv.begin() + t * ld + queryWidth);
    }
    dOut = randomBF16(tokens * c.heads * c.dim, rng);
    if (c.packed)
      // Data rows of seq / 3 + 5, 1, 70 tokens, then the rest, per
      // sequence: boundaries inside 64-row tiles and a one-token row.
      for (int64_t b = 0; b < c.batch; ++b) {
        const int64_t lengths[] = {c.seq / 3 + 5, 1, 70};
        int64_t used = 0;
        for (int64_t length : lengths)
          for (int64_t p = 0; p < length && used < c.seq; ++p, ++used)
            positions.push_back(int32_t(p));
        for (int64_t p = 0; used < c.seq; ++p, ++used)
          positions.push_back(int32_t(p));
      }
    // transformers' inv_freq for theta 10000, and the angles, in f32.
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t i = 0; i < c.seq; ++i)
        for (int64_t d = 0; d < c.dim / 2; ++d) {
          float freq =
              float(1.0 / std::pow(10000.0, double(2 * d) / double(c.dim)));
          double angle = double(float(ropePosition(b, i)) * freq);
          rope.push_back(doubleToBF16(std::cos(angle)));
          rope.push_back(doubleToBF16(std::sin(angle)));
        }
  }

  /// Element `d` of head column block `head` (q heads, then k, then v) of
  /// token row (b, i), in rows of `stride`.
  int64_t at(int64_t stride, int64_t b, int64_t i, int64_t head,
             int64_t d) const {
    return (b * c.seq + i) * stride + head * c.dim + d;
  }
  double q(int64_t b, int64_t h, int64_t i, int64_t d) const {
    return bf16(qkv[at(ld, b, i, h, d)]);
  }
  double k(int64_t b, int64_t g, int64_t j, int64_t d) const {
    return bf16(qkv[at(ld, b, j, c.heads + g, d)]);
  }
  double v(int64_t b, int64_t g, int64_t j, int64_t d) const {
    return bf16(qkv[at(ld, b, j, c.heads + c.kvHeads + g, d)]);
  }
  double dO(int64_t b, int64_t h, int64_t i, int64_t d) const {
    return bf16(dOut[((b * c.heads + h) * c.seq + i) * c.dim + d]);
  }
  int64_t start(int64_t b, int64_t i) const {
    if (positions.empty())
      return 0;
    return i - std::clamp<int64_t>(positions[b * c.seq + i], 0, i);
  }
  /// The RoPE position of token row (b, i).
  int64_t ropePosition(int64_t b, int64_t i) const {
    return positions.empty() ? i : positions[b * c.seq + i];
  }

  /// Checks `got(d)`, a gradient row at token row (b, i) rotated back by
  /// the kernel, against `want` (the reference before the rotation, within
  /// `bound` a column, its bf16 rounding included).
  void checkRotated(Checker &check, int64_t b, int64_t i,
                    const std::vector<double> &want,
                    const std::vector<double> &bound,
                    const std::function<double(int64_t)> &got,
                    int64_t where) const {
    const double products = 1.05 * kBF16Unit;
    int64_t half = c.dim / 2, row = (b * c.seq + i) * half;
    for (int64_t d = 0; d < half; ++d) {
      double cs = bf16(rope[(row + d) * 2]), sn = bf16(rope[(row + d) * 2 + 1]);
      double x1 = want[d], x2 = want[d + half];
      double y1 = x1 * cs + x2 * sn, y2 = x2 * cs - x1 * sn;
      double mixed = std::abs(cs) + std::abs(sn);
      check.near(got(d), y1,
                 kBF16Unit * std::abs(y1) +
                     products * (std::abs(x1 * cs) + std::abs(x2 * sn)) +
                     mixed * std::max(bound[d], bound[d + half]),
                 where + d);
      check.near(got(d + half), y2,
                 kBF16Unit * std::abs(y2) +
                     products * (std::abs(x2 * cs) + std::abs(x1 * sn)) +
                     mixed * std::max(bound[d], bound[d + half]),
                 where + d + half);
    }
  }
};

/// The reference softmax row of query i of head h: P over the window.
std::vector<double> probabilities(const Problem &p, int64_t b, int64_t h,
                                  int64_t i, double *lse2) {
  int64_t g = h / p.group, first = p.start(b, i);
  std::vector<double> x(p.c.seq, 0.0), probs(p.c.seq, 0.0);
  double m = -INFINITY;
  for (int64_t j = first; j <= i; ++j) {
    double dot = 0;
    for (int64_t d = 0; d < p.c.dim; ++d)
      dot += p.q(b, h, i, d) * p.k(b, g, j, d);
    x[j] = p.scale * dot;
    m = std::max(m, x[j]);
  }
  double sum = 0;
  for (int64_t j = first; j <= i; ++j)
    sum += std::exp(x[j] - m);
  for (int64_t j = first; j <= i; ++j)
    probs[j] = std::exp(x[j] - m) / sum;
  *lse2 = (m + std::log(sum)) / std::log(2.0);
  return probs;
}

} // namespace

namespace llamac::test {
/// Names a case in gtest's messages.
void PrintTo(const FlashCase &c, std::ostream *os) { *os << c.name; }
} // namespace llamac::test

namespace {

class FlashAttentionKernelTest : public ::testing::TestWithParam<FlashCase> {};

TEST_P(FlashAttentionKernelTest, MatchesReference) {
  LLAMAC_REQUIRE_GPU(device);
  KernelGroup kernels(device, "flash");
  ASSERT_TRUE(kernels.ok());
  const FlashCase &c = GetParam();
  std::mt19937 rng(std::random_device{}());
  Problem p(c, rng);
  const int64_t rows = c.batch * c.heads * c.seq, width = c.heads * c.dim;
  // O and dO are token rows with columns past the heads that no kernel may
  // touch.
  const int64_t ldOut = width + kFlashOutPad, ldGrad = width + kFlashGradPad;
  const int64_t tokens = c.batch * c.seq;
  auto tokenRow = [&](int64_t ld, int64_t b, int64_t h, int64_t i) {
    return (b * c.seq + i) * ld + h * c.dim;
  };
  const int64_t dsCount = c.batch * c.heads * c.seq * c.seq;
  const std::string fwd = std::string("fwd_") + c.name,
                    bwd = std::string("bwd_") + c.name,
                    dot = std::string("dot_") + c.name,
                    dq = std::string("dq_") + c.name;

  DeviceBuffer qkv(device, p.qkv.size() * 2, "qkv rows");
  DeviceBuffer out(device, tokens * ldOut * 2, "O rows");
  DeviceBuffer lse(device, rows * 4, "lse");
  DeviceBuffer positions(device, std::max<size_t>(p.positions.size(), 1) * 4,
                         "positions");
  qkv.upload(p.qkv);
  out.fill(0xFF);
  lse.fill(0xFF);
  auto withPositions = [&](std::vector<CUdeviceptr> args) {
    if (c.packed) {
      positions.upload(p.positions);
      args.push_back(positions.address());
    }
    return args;
  };
  kernels.run(fwd,
              withPositions({qkv.address(), out.address(), lse.address()}));
  // The kernel's O, head-major ([batch, heads, seq, dim]) for the checks.
  std::vector<uint16_t> outRows = out.download<uint16_t>(tokens * ldOut);
  std::vector<uint16_t> gotOut(rows * c.dim);
  int64_t padWritten = 0;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t col = width; col < ldOut; ++col)
      padWritten += outRows[t * ldOut + col] != 0xFFFF;
  EXPECT_EQ(padWritten, 0) << "O written past the heads";
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.seq; ++i)
        for (int64_t d = 0; d < c.dim; ++d)
          gotOut[((b * c.heads + h) * c.seq + i) * c.dim + d] =
              outRows[tokenRow(ldOut, b, h, i) + d];
  std::vector<float> gotLse = lse.download<float>(rows);

  // Forward, and the reference P, O and dP kept for the backward.
  Checker outCheck("O"), lseCheck("lse");
  std::vector<std::vector<double>> refP(rows);
  std::vector<double> refOut(rows * c.dim);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.seq; ++i) {
        int64_t row = (b * c.heads + h) * c.seq + i, g = h / p.group;
        double lse2;
        refP[row] = probabilities(p, b, h, i, &lse2);
        lseCheck.near(gotLse[row], lse2,
                      1e-5 * (1 + std::abs(lse2)) + 4 * c.seq * kF32Unit, row);
        for (int64_t d = 0; d < c.dim; ++d) {
          double o = 0, spread = 0;
          for (int64_t j = 0; j <= i; ++j) {
            o += refP[row][j] * p.v(b, g, j, d);
            spread += refP[row][j] * std::abs(p.v(b, g, j, d));
          }
          refOut[row * c.dim + d] = o;
          outCheck.near(bf16(gotOut[row * c.dim + d]), o,
                        kBF16Unit * (std::abs(o) + 1.05 * spread) + 1e-6,
                        row * c.dim + d);
        }
      }
  outCheck.expectExactFraction(0.0);
  lseCheck.expectExactFraction(0.0);

  // delta from the kernel's O and dO, both token rows; dO's columns past
  // the heads are NaN.
  std::vector<uint16_t> gradRows(tokens * ldGrad, 0xFFFF);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.seq; ++i)
        for (int64_t d = 0; d < c.dim; ++d)
          gradRows[tokenRow(ldGrad, b, h, i) + d] =
              p.dOut[((b * c.heads + h) * c.seq + i) * c.dim + d];
  DeviceBuffer dOut(device, gradRows.size() * 2, "dO rows");
  DeviceBuffer delta(device, rows * 4, "delta");
  dOut.upload(gradRows);
  delta.fill(0xFF);
  kernels.run(dot, {out.address(), dOut.address(), delta.address()});
  std::vector<float> gotDelta = delta.download<float>(rows);
  Checker deltaCheck("delta");
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.seq; ++i) {
        int64_t row = (b * c.heads + h) * c.seq + i;
        double want = 0, magnitude = 0;
        for (int64_t d = 0; d < c.dim; ++d) {
          double term = bf16(gotOut[row * c.dim + d]) * p.dO(b, h, i, d);
          want += term;
          magnitude += std::abs(term);
        }
        deltaCheck.near(gotDelta[row], want,
                        (c.dim + 8) * kF32Unit * magnitude + 1e-30, row);
      }
  deltaCheck.expectExactFraction(0.0);

  // Backward on the kernels' lse and delta.
  const int64_t gradCount = tokens * p.ldGrad;
  DeviceBuffer grad(device, gradCount * 2, "qkv gradient rows");
  DeviceBuffer ds(device, dsCount * 2, "dS");
  DeviceBuffer rope(device, p.rope.size() * 2, "rope table");
  grad.fill(0xFF);
  ds.fill(0xFF);
  rope.upload(p.rope);
  kernels.run(bwd, withPositions({qkv.address(), dOut.address(), lse.address(),
                                  delta.address(), grad.address(), ds.address(),
                                  rope.address()}));
  std::vector<uint16_t> gotGrad = grad.download<uint16_t>(gradCount);
  std::vector<uint16_t> gotDs = ds.download<uint16_t>(dsCount);

  // Per query row: the reference dS, and the bound on the kernel's dS
  // before its bf16 rounding, from delta's error (O was rounded to bf16:
  // |O' - O| <= u |O| + the forward's bound) and P's (lse's error, 1e-5).
  std::vector<std::vector<double>> refDs(rows), dsError(rows);
  Checker dsCheck("dS");
  int64_t maskedWrong = 0;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.seq; ++i) {
        int64_t row = (b * c.heads + h) * c.seq + i, g = h / p.group;
        int64_t member = h % p.group;
        std::vector<double> dP(c.seq, 0.0);
        double d = 0, deltaError = 0;
        for (int64_t j = p.start(b, i); j <= i; ++j) {
          for (int64_t e = 0; e < c.dim; ++e)
            dP[j] += p.dO(b, h, i, e) * p.v(b, g, j, e);
          d += refP[row][j] * dP[j];
        }
        for (int64_t e = 0; e < c.dim; ++e)
          deltaError += 3 * kBF16Unit * std::abs(refOut[row * c.dim + e]) *
                        std::abs(p.dO(b, h, i, e));
        refDs[row].assign(c.seq, 0.0);
        dsError[row].assign(c.seq, 0.0);
        for (int64_t j = 0; j < c.seq; ++j) {
          int64_t at =
              (((b * c.kvHeads + g) * c.seq + j) * p.group + member) * c.seq +
              i;
          double got = bf16(gotDs[at]);
          // The backward writes the tiles on and below the diagonal.
          if (j / 64 > i / 64)
            continue;
          if (j < p.start(b, i) || j > i) {
            maskedWrong += gotDs[at] != 0;
            continue;
          }
          double pj = refP[row][j], want = pj * (dP[j] - d);
          refDs[row][j] = want;
          dsError[row][j] =
              pj * (deltaError + 1e-5 * std::abs(dP[j] - d)) + 1e-30;
          dsCheck.near(got, want,
                       kBF16Unit * std::abs(want) + 1.05 * dsError[row][j], at);
        }
      }
  dsCheck.expectExactFraction(0.0);
  EXPECT_EQ(maskedWrong, 0) << "dS outside the windows not exactly +0";

  // dV[j] = sum_i P[i, j] dO[i] and dK[j] = scale sum_i dS[i, j] q[i] over
  // the group's query heads, dK rotated back, in the key and value columns.
  Checker dvCheck("dV"), dkCheck("dK");
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t g = 0; g < c.kvHeads; ++g)
      for (int64_t j = 0; j < c.seq; ++j) {
        std::vector<double> dk(c.dim, 0.0), dkBound(c.dim);
        for (int64_t e = 0; e < c.dim; ++e) {
          double dv = 0, dvSpread = 0, dkSpread = 0;
          for (int64_t h = g * p.group; h < (g + 1) * p.group; ++h)
            for (int64_t i = j; i < c.seq; ++i) {
              int64_t row = (b * c.heads + h) * c.seq + i;
              dv += refP[row][j] * p.dO(b, h, i, e);
              dvSpread += refP[row][j] * std::abs(p.dO(b, h, i, e));
              dk[e] += refDs[row][j] * p.q(b, h, i, e);
              dkSpread +=
                  (kBF16Unit * std::abs(refDs[row][j]) + dsError[row][j]) *
                  std::abs(p.q(b, h, i, e));
            }
          dk[e] *= p.scale;
          dkBound[e] =
              kBF16Unit * std::abs(dk[e]) + 1.05 * p.scale * dkSpread + 1e-6;
          int64_t at = p.at(p.ldGrad, b, j, c.heads + c.kvHeads + g, e);
          dvCheck.near(bf16(gotGrad[at]), dv,
                       kBF16Unit * (std::abs(dv) + 1.05 * dvSpread) + 1e-6, at);
        }
        int64_t first = p.at(p.ldGrad, b, j, c.heads + g, 0);
        p.checkRotated(
            dkCheck, b, j, dk, dkBound,
            [&](int64_t e) { return bf16(gotGrad[first + e]); }, first);
      }
  dvCheck.expectExactFraction(0.0);
  dkCheck.expectExactFraction(0.0);
  // Token t's columns [0, heads dim) are the query heads', [width, ldGrad)
  // padding.
  auto isKeyOrValue = [&](int64_t i) {
    int64_t column = i % p.ldGrad;
    return column >= c.heads * c.dim && column < p.width;
  };
  int64_t othersTouched = 0;
  for (int64_t i = 0; i < gradCount; ++i)
    othersTouched += !isKeyOrValue(i) && gotGrad[i] != 0xFFFF;
  EXPECT_EQ(othersTouched, 0) << "the backward wrote a query or pad column";

  // dQ[i] = scale sum_j dS[i, j] k[j] from the backward's dSᵀ tiles, rotated
  // back, into the query columns alone.
  kernels.run(dq,
              {qkv.address(), ds.address(), grad.address(), rope.address()});
  std::vector<uint16_t> withDq = grad.download<uint16_t>(gradCount);
  Checker dqCheck("dQ");
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.seq; ++i) {
        int64_t row = (b * c.heads + h) * c.seq + i, g = h / p.group;
        std::vector<double> want(c.dim, 0.0), bound(c.dim);
        for (int64_t e = 0; e < c.dim; ++e) {
          double spread = 0;
          for (int64_t j = 0; j <= i; ++j) {
            want[e] += refDs[row][j] * p.k(b, g, j, e);
            spread += (kBF16Unit * std::abs(refDs[row][j]) + dsError[row][j]) *
                      std::abs(p.k(b, g, j, e));
          }
          want[e] *= p.scale;
          bound[e] =
              kBF16Unit * std::abs(want[e]) + 1.05 * p.scale * spread + 1e-6;
        }
        int64_t first = p.at(p.ldGrad, b, i, h, 0);
        p.checkRotated(
            dqCheck, b, i, want, bound,
            [&](int64_t e) { return bf16(withDq[first + e]); }, first);
      }
  dqCheck.expectExactFraction(0.0);
  int64_t beyondQuery = 0;
  for (int64_t i = 0; i < gradCount; ++i)
    beyondQuery += i % p.ldGrad >= c.heads * c.dim && withDq[i] != gotGrad[i];
  EXPECT_EQ(beyondQuery, 0) << "dQ wrote past the query columns";
}

INSTANTIATE_TEST_SUITE_P(Cases, FlashAttentionKernelTest,
                         ::testing::ValuesIn(kFlashCases),
                         [](const ::testing::TestParamInfo<FlashCase> &info) {
                           return std::string(info.param.name);
                         });

} // namespace
