// The CPU's additions to the shared ForwardArgs (mybag/forward_args.h): prefetching the rows a
// few entries ahead, for the portable loops (forward.cpp).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "mybag/cpu/rows.h"
#include "mybag/forward_args.h"

namespace mybag::cpu {

// Requests the row that entry i + kPrefetchDistance will read. Forced inline: left to the
// compiler it was not inlined into the row loops, which then ran 1.5-2x slower.
template <typename scalar_t, typename index_t>
C10_ALWAYS_INLINE void prefetch_ahead(const ForwardArgs<scalar_t, index_t>& a, int64_t i) {
  if (i + kPrefetchDistance < a.layout.num_indices) {
    prefetch_row(a.weight + a.indices[i + kPrefetchDistance] * a.row_stride, a.col_stride, a.dim);
  }
}

}  // namespace mybag::cpu
