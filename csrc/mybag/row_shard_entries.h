// A row-wise shard of a table (python/mybag/distributed/): one rank holds the rows
// [first_row, first_row + shard rows) of a table of num_weights rows, and every rank sees the
// whole batch. The shard's ops (row_shard_ops.cpp) hand the existing kernels the entries that
// read the shard's rows, renumbered from 0, with each bag's boundaries kept: so every kernel,
// on every device and instruction set, serves shards unchanged.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace mybag {

// The entries of the batch whose rows this shard holds.
struct ShardEntries {
  at::Tensor input;    // (K,) their rows, less first_row; input's dtype
  at::Tensor offsets;  // (B,) where each bag's entries start in `input`; input's dtype
  at::Tensor kept;     // (K,) int64: their positions in the flattened input
  at::Tensor counts;   // (B,) int64: each bag's non-padding entries on all shards, when asked
};

// Checks what the shard's layout adds to the forward's own checks: the shard has to fit in the
// table. num_weights is the whole table's row count.
void check_shard_layout(int64_t shard_rows, int64_t first_row, int64_t num_weights);

// The index and offset values, checked against the whole table with the messages of the
// unsharded ops (mybag/checks.h), on any device.
void check_values_on_any_device(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                                int64_t num_weights);

// The shard's entries. Entries equal to padding_row (-1: none) are left out (they add nothing
// in any mode) and, as everywhere, not counted in `counts` (formed with_counts: "mean" needs
// them). input and offsets have to be checked first.
ShardEntries shard_entries(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                           int64_t padding_row, bool include_last_offset, int64_t first_row,
                           int64_t shard_rows, bool with_counts);

}  // namespace mybag
