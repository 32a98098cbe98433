// The BagLayout of contiguous input and offsets tensors, on any device: the layout holds their
// data pointers, so it is built on the host and read wherever the data lives.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "mybag/bag_layout.h"

namespace mybag {

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
    layout.offsets = offsets->const_data_ptr<index_t>();
    layout.num_bags = offsets->numel() - (include_last_offset ? 1 : 0);
    layout.bag_length = 0;
  }
  return layout;
}

}  // namespace mybag
