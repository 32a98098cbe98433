// Facts about input's bags that the CUDA backward kernels share, as device tensors: which bag
// each entry belongs to and each bag's non-padding count (cpu/entries.h is the CPU's twin; the
// grouping by row, which both devices do alike, is mybag/row_groups.h).
#pragma once

#include <ATen/core/Tensor.h>

#include "mybag/bag_layout.h"
#include "mybag/row_groups.h"

namespace mybag::cuda {

// int64 (N,): the bag of every entry of the flattened input; -1 for an entry in no bag.
template <typename index_t>
at::Tensor bag_of_entries(const BagLayout<index_t>& layout, const at::Tensor& like);

// int64 (B,): every bag's count of entries that are neither padding nor (with value checks off)
// out of range: mean mode's divisor.
template <typename index_t>
at::Tensor non_padding_counts(const BagLayout<index_t>& layout, const index_t* indices,
                              int64_t num_weights, int64_t padding_row, const at::Tensor& like);

}  // namespace mybag::cuda
