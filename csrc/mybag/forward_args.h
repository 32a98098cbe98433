// What a forward kernel needs to reduce its bags, on any device: the CPU's portable loops and
// SIMD kernels and the CUDA kernels all read this one struct.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "mybag/bag_layout.h"

namespace mybag {

template <typename scalar_t, typename index_t>
struct ForwardArgs {
  const scalar_t* weight;
  int64_t row_stride;
  int64_t col_stride;
  int64_t dim;
  const index_t* indices;
  BagLayout<index_t> layout;
  const scalar_t* per_sample_weights;  // nullptr when absent
  int64_t padding_idx;                 // the padding row, -1 when absent
  scalar_t* output;                    // (num_bags, dim), contiguous
  int64_t* max_indices;                // (num_bags, dim) in max mode, else nullptr
  int64_t num_weights;                 // rows in the table

  C10_HOST_DEVICE scalar_t value(int64_t row, int64_t d) const {
    return weight[row * row_stride + d * col_stride];
  }
};

}  // namespace mybag
