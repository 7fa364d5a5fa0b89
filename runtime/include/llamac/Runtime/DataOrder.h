//===- DataOrder.h - Rows of each batch and their padding -------*- C++ -*-===//
//
// The order of training rows is a pure function of (number of rows, shuffle,
// seed, rows consumed so far): file order, or a fresh permutation per epoch
// drawn from --seed. A run therefore resumes its data exactly from one
// integer, the position, which checkpoints record. Packed batches (--pack)
// take whole rows from the sampler too, so the same holds for them.
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_DATAORDER_H
#define LLAMAC_RUNTIME_DATAORDER_H

#include "llamac/Runtime/Data.h"

#include <cstdint>
#include <vector>

namespace llamac {

/// Hands out row indices batch after batch. Batches run across epoch
/// boundaries (the last rows of one epoch and the first of the next), as
/// llamac has always read its data; with shuffle each epoch has its own
/// permutation (Fisher-Yates over Random(seed, "shuffle/epoch-<e>")).
class RowSampler {
public:
  /// A sampler over \p numRows (> 0) rows that has already handed out
  /// \p position rows.
  RowSampler(int64_t numRows, bool shuffle, uint64_t seed,
             int64_t position = 0);

  /// The next \p count row indices; advances the position by \p count.
  std::vector<int64_t> take(int64_t count);
  /// The next row index, without advancing.
  int64_t peek();

  /// Rows handed out so far (over all epochs).
  int64_t position() const { return consumed; }
  /// The epoch of the next row (0-based).
  int64_t epoch() const { return consumed / numRows; }

private:
  /// The permutation of epoch \p e (identity without shuffle).
  void preparePermutation(int64_t e);

  int64_t numRows;
  bool shuffle;
  uint64_t seed;
  int64_t consumed;
  int64_t permutationEpoch = -1;
  std::vector<int64_t> permutation;
};

/// A [batch, seq] batch of rows packed end to end (--pack), as Hugging
/// Face's DataCollatorWithFlattening lays rows out, taken from \p sampler
/// in its order. Each row is truncated to \p seq tokens. A row joins the
/// current sequence when it fits in the room left; otherwise padding fills
/// that room and the row starts the next sequence. The row that does not
/// fit in the batch's last sequence is left in the sampler for the next
/// batch, so the sampler's position alone says where the data resumes.
/// Within a sequence each row's tokens get positionIds 0, 1, ... and the
/// label of its first token becomes -100 (no token learns to predict the
/// start of the next row). The padding at the end of a sequence (ids
/// \p padId, labels -100) counts positions from 0 too, as a row of its own.
/// Requires a sampler over \p rows and positive \p batch and \p seq.
Batch packBatch(const std::vector<TokenRow> &rows, RowSampler &sampler,
                int64_t batch, int64_t seq, int32_t padId = 0);

/// The sequence length of a --pad-to-longest batch: its longest row (at most
/// \p maxSeq) rounded up to a multiple of \p multiple, and at most \p maxSeq.
int64_t paddedLength(const std::vector<TokenRow> &rows,
                     const std::vector<int64_t> &indices, int64_t maxSeq,
                     int64_t multiple = 16);

/// Positions the shifted causal-LM loss counts: within each row, p < seq - 1
/// with labels[p + 1] != -100 (the count the loss divides by).
int64_t countLossTokens(const Batch &batch);

/// The micro-batches of one optimizer step: \p gradAccum batches of
/// \p batch rows from \p sampler, packed end to end (\p packed: packBatch)
/// or one row each, padded to \p seq, or with \p padToLongest to their
/// longest row (paddedLength). With the tokens the step's loss counts (the
/// sum of countLossTokens: HF's num_items_in_batch) and the real tokens.
struct StepBatches {
  std::vector<Batch> microBatches;
  int64_t counted = 0, tokens = 0;
};
StepBatches takeStepBatches(const std::vector<TokenRow> &rows,
                            RowSampler &sampler, int64_t gradAccum,
                            int64_t batch, int64_t seq, bool packed,
                            bool padToLongest);

/// A 64-bit fingerprint (FNV-1a) of the rows' ids and labels, to tell on
/// resume whether the data is the same.
uint64_t fingerprintRows(const std::vector<TokenRow> &rows);

} // namespace llamac

#endif // LLAMAC_RUNTIME_DATAORDER_H
