// Facts about input's bags that the CPU backward kernels share: which bag each entry belongs to
// and each bag's non-padding count (cuda/entries.cuh is the CUDA twin; the grouping by row,
// which both devices do alike, is mybag/row_groups.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "mybag/tensor_layout.h"

namespace mybag::cpu {

// bag_of[i]: the bag that entry i belongs to; -1 for entries in no bag (possible only when
// include_last_offset leaves a tail after an empty offsets list, i.e. never for valid input).
template <typename index_t>
std::vector<int64_t> bag_of_entries(const BagLayout<index_t>& layout);

// Non-padding entries of every bag: mean mode's divisor.
template <typename index_t>
std::vector<int64_t> non_padding_counts(const BagLayout<index_t>& layout, const index_t* indices,
                                        int64_t padding_idx);

}  // namespace mybag::cpu
