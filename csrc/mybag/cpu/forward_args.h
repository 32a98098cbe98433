// What a CPU forward task needs to reduce its bags: shared by the portable loops (forward.cpp)
// and the SIMD kernels (simd_avx2.cpp).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "mybag/bag_layout.h"
#include "mybag/cpu/rows.h"

namespace mybag::cpu {

template <typename scalar_t, typename index_t>
struct ForwardArgs {
  const scalar_t* weight;
  int64_t row_stride;
  int64_t col_stride;
  int64_t dim;
  const index_t* indices;
  BagLayout<index_t> layout;
  const scalar_t* per_sample_weights;  // nullptr when absent
  int64_t padding_idx;                 // -1 when absent
  scalar_t* output;                    // (num_bags, dim), contiguous
  int64_t* max_indices;                // (num_bags, dim) in max mode, else nullptr
  int64_t num_weights;                 // rows in the table: the SIMD kernels check indices

  // Requests the row that entry i + kPrefetchDistance will read. Forced inline: left to the
  // compiler it was not inlined into the row loops, which then ran 1.5-2x slower.
  C10_ALWAYS_INLINE void prefetch_ahead(int64_t i) const {
    if (i + kPrefetchDistance < layout.num_indices) {
      prefetch_row(weight + indices[i + kPrefetchDistance] * row_stride, col_stride, dim);
    }
  }
};

}  // namespace mybag::cpu
