// Facts about input that the CUDA backward kernels share, as device tensors: which bag each
// entry belongs to, each bag's non-padding count, and the entries grouped by row (sorted, which
// is what makes the weight gradient deterministic without atomics).
#pragma once

#include <ATen/core/Tensor.h>

#include "mybag/bag_layout.h"

namespace mybag::cuda {

// int64 (N,): the bag of every entry of the flattened input; -1 for an entry in no bag.
template <typename index_t>
at::Tensor bag_of_entries(const BagLayout<index_t>& layout, const at::Tensor& like);

// int64 (B,): every bag's count of entries that are neither padding nor (with value checks off)
// out of range: mean mode's divisor.
template <typename index_t>
at::Tensor non_padding_counts(const BagLayout<index_t>& layout, const index_t* indices,
                              int64_t num_weights, int64_t padding_row, const at::Tensor& like);

// The entries of a flattened input grouped by the row they index, in input order within each
// group (a stable sort): group g holds sorted positions starts[g] .. starts[g + 1] - 1.
struct RowGroups {
  at::Tensor sorted_rows;  // input's dtype (N,)
  at::Tensor order;        // int64 (N,): the entry at each sorted position
  at::Tensor starts;       // int64 (count + 1,)
  int64_t count = 0;       // number of distinct rows
};
RowGroups group_by_row(const at::Tensor& flat_input);

// int64 (N,): how often each entry's row occurs in the whole input (scale_grad_by_freq).
at::Tensor row_frequency_of_entries(const RowGroups& groups);

// The group holding sorted position k: the last g with starts[g] <= k.
__device__ inline int64_t group_of_position(const int64_t* starts, int64_t count, int64_t k) {
  int64_t lo = 0;
  int64_t hi = count;  // find the first group starting after k
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (starts[mid] <= k) lo = mid + 1; else hi = mid;
  }
  return lo - 1;
}

}  // namespace mybag::cuda
