//===- DataOrder.cpp - Which rows each batch holds, and how it is padded --===//

#include "llamac/Runtime/DataOrder.h"

#include "llamac/Runtime/Random.h"

#include <algorithm>
#include <cassert>
#include <numeric>

using namespace llamac;

RowSampler::RowSampler(int64_t numRows, bool shuffle, uint64_t seed,
                       int64_t position)
    : numRows(numRows), shuffle(shuffle), seed(seed), consumed(position) {
  assert(numRows > 0 && position >= 0 && "invalid sampler");
}

void RowSampler::preparePermutation(int64_t e) {
  if (permutationEpoch == e)
    return;
  permutation.resize(size_t(numRows));
  std::iota(permutation.begin(), permutation.end(), int64_t(0));
  if (shuffle) {
    Random random(seed, "shuffle/epoch-" + std::to_string(e));
    for (int64_t i = numRows - 1; i > 0; --i) {
      // Unbiased j in [0, i]: the high half of a 64 x 64-bit product.
      uint64_t j = uint64_t(
          (static_cast<unsigned __int128>(random.next()) * uint64_t(i + 1)) >>
          64);
      std::swap(permutation[size_t(i)], permutation[size_t(j)]);
    }
  }
  permutationEpoch = e;
}

std::vector<int64_t> RowSampler::take(int64_t count) {
  std::vector<int64_t> indices;
  indices.reserve(size_t(std::max<int64_t>(count, 0)));
  for (int64_t i = 0; i < count; ++i, ++consumed) {
    preparePermutation(consumed / numRows);
    indices.push_back(permutation[size_t(consumed % numRows)]);
  }
  return indices;
}

int64_t RowSampler::peek() {
  preparePermutation(consumed / numRows);
  return permutation[size_t(consumed % numRows)];
}

Batch llamac::packBatch(const std::vector<TokenRow> &rows, RowSampler &sampler,
                        int64_t batch, int64_t seq, int32_t padId) {
  assert(batch > 0 && seq > 0 && "invalid batch request");
  Batch out;
  out.batch = batch;
  out.seq = seq;
  out.inputIds.assign(size_t(batch * seq), padId);
  out.labels.assign(size_t(batch * seq), kIgnoreLabel);
  out.positionIds.assign(size_t(batch * seq), 0);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t begin = b * seq;
    int64_t used = 0;
    while (used < seq) {
      const TokenRow &row = rows.at(size_t(sampler.peek()));
      assert(row.labels.size() == row.inputIds.size() && "ragged row");
      const int64_t length =
          std::min<int64_t>(seq, int64_t(row.inputIds.size()));
      if (used > 0 && used + length > seq)
        break;
      sampler.take(1);
      std::copy_n(row.inputIds.begin(), length,
                  out.inputIds.begin() + begin + used);
      std::copy_n(row.labels.begin(), length,
                  out.labels.begin() + begin + used);
      out.labels[size_t(begin + used)] = kIgnoreLabel;
      std::iota(out.positionIds.begin() + begin + used,
                out.positionIds.begin() + begin + used + length, 0);
      used += length;
      out.tokens += length;
    }
    std::iota(out.positionIds.begin() + begin + used,
              out.positionIds.begin() + begin + seq, 0);
  }
  return out;
}

int64_t llamac::paddedLength(const std::vector<TokenRow> &rows,
                             const std::vector<int64_t> &indices,
                             int64_t maxSeq, int64_t multiple) {
  int64_t longest = 1;
  for (int64_t index : indices)
    longest = std::max<int64_t>(
        longest, int64_t(rows.at(size_t(index)).inputIds.size()));
  longest = std::min(longest, maxSeq);
  int64_t rounded = (longest + multiple - 1) / multiple * multiple;
  return std::min(rounded, maxSeq);
}

int64_t llamac::countLossTokens(const Batch &batch) {
  int64_t count = 0;
  for (int64_t b = 0; b < batch.batch; ++b)
    for (int64_t p = 0; p + 1 < batch.seq; ++p)
      count += batch.labels[size_t(b * batch.seq + p + 1)] != kIgnoreLabel;
  return count;
}

uint64_t llamac::fingerprintRows(const std::vector<TokenRow> &rows) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  auto mix = [&](uint64_t value) {
    for (int i = 0; i < 8; ++i)
      hash = (hash ^ ((value >> (8 * i)) & 0xFF)) * 0x100000001b3ULL;
  };
  mix(rows.size());
  for (const TokenRow &row : rows) {
    mix(row.inputIds.size());
    for (int32_t id : row.inputIds)
      mix(uint64_t(uint32_t(id)));
    for (int32_t label : row.labels)
      mix(uint64_t(uint32_t(label)));
  }
  return hash;
}

StepBatches llamac::takeStepBatches(const std::vector<TokenRow> &rows,
                                    RowSampler &sampler, int64_t gradAccum,
                                    int64_t batch, int64_t seq, bool packed,
                                    bool padToLongest) {
  StepBatches out;
  for (int64_t i = 0; i < gradAccum; ++i) {
    if (packed) {
      out.microBatches.push_back(packBatch(rows, sampler, batch, seq));
    } else {
      std::vector<int64_t> indices = sampler.take(batch);
      int64_t length = padToLongest ? paddedLength(rows, indices, seq) : seq;
      out.microBatches.push_back(gatherBatch(rows, indices, length));
    }
    out.counted += countLossTokens(out.microBatches.back());
    out.tokens += out.microBatches.back().tokens;
  }
  return out;
}
