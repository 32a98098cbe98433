// Host helpers shared by the CPU kernels: the bag layout of contiguous host tensors, the
// per-entry bag number and the non-padding count of every bag.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "mybag/bag_layout.h"

namespace mybag::cpu {

// input and offsets must be contiguous and live as long as the layout.
template <typename index_t>
BagLayout<index_t> make_layout(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                               bool include_last_offset) {
  BagLayout<index_t> layout{};
  layout.num_indices = input.numel();
  if (input.dim() == 2) {
    layout.offsets = nullptr;
    layout.num_bags = input.size(0);
    layout.bag_length = input.size(1);
  } else {
    layout.offsets = offsets->data_ptr<index_t>();
    layout.num_bags = offsets->numel() - (include_last_offset ? 1 : 0);
    layout.bag_length = 0;
  }
  return layout;
}

// bag_of[i]: the bag that entry i belongs to; -1 for entries in no bag (possible only when
// include_last_offset leaves a tail after an empty offsets list, i.e. never for valid input).
template <typename index_t>
std::vector<int64_t> bag_of_entries(const BagLayout<index_t>& layout);

// Non-padding entries of every bag: mean mode's divisor.
template <typename index_t>
std::vector<int64_t> non_padding_counts(const BagLayout<index_t>& layout, const index_t* indices,
                                        int64_t padding_idx);

}  // namespace mybag::cpu
