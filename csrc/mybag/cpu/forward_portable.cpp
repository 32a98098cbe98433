// The portable forward kernels (forward_kernels.h): plain C++ for any CPU, strided rows, and
// MYBAG_CPU_SIMD=0. The SIMD kernels give the same bits, lane by lane.
#include <ATen/OpMathType.h>

#include <algorithm>
#include <vector>

#include "mybag/cpu/bag_range.h"
#include "mybag/cpu/forward_kernels.h"
#include "mybag/cpu/rows.h"
#include "mybag/reductions.h"

namespace mybag::cpu {
namespace {

// The bytes of a row to prefetch ahead (bag_range.h): all of a contiguous row, none of a strided
// one (its elements lie on lines of their own, not worth guessing).
template <typename scalar_t, typename index_t>
int64_t prefetch_bytes(const ForwardArgs<scalar_t, index_t>& a) {
  return a.col_stride == 1 ? a.dim * static_cast<int64_t>(sizeof(scalar_t)) : 0;
}

}  // namespace

template <typename scalar_t, typename index_t>
bool sum_bags_portable(const ForwardArgs<scalar_t, index_t>& a, Mode mode, int64_t first,
                       int64_t last) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool mean = mode == Mode::Mean;
  const int64_t ahead_bytes = prefetch_bytes(a);
  const auto r = bag_range(a, prefetch_distance(a.dim * static_cast<int64_t>(sizeof(scalar_t))));
  std::vector<acc_t> acc(a.dim);
  for (int64_t bag = first; bag < last; ++bag) {
    std::fill(acc.begin(), acc.end(), acc_t(0));
    int64_t count = 0;
    for (int64_t i = a.layout.begin(bag); i < a.layout.end(bag); ++i) {
      r.prefetch_row(i, ahead_bytes);
      const int64_t row = a.indices[i];
      if (row == a.padding_idx) continue;
      ++count;
      const scalar_t* values = a.weight + row * a.row_stride;
      if (a.per_sample_weights != nullptr) {
        fma_row(acc.data(), values, a.col_stride, a.dim, acc_t(a.per_sample_weights[i]));
      } else {
        add_scaled_row(acc.data(), values, a.col_stride, a.dim, acc_t(1));
      }
    }
    const acc_t divisor = (mean && count > 0) ? acc_t(count) : acc_t(1);
    scalar_t* out = a.output + bag * a.dim;
    for (int64_t d = 0; d < a.dim; ++d) {
      out[d] = static_cast<scalar_t>(acc[d] / divisor);
    }
  }
  return true;
}

template <typename scalar_t, typename index_t>
bool max_bags_portable(const ForwardArgs<scalar_t, index_t>& a, Mode /*mode*/, int64_t first,
                       int64_t last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t ahead_bytes = prefetch_bytes(a);
  const auto r = bag_range(a, prefetch_distance(a.dim * static_cast<int64_t>(sizeof(scalar_t))));
  std::vector<acc_t> best(a.dim);
  std::vector<int64_t> winner(a.dim);
  for (int64_t bag = first; bag < last; ++bag) {
    int64_t count = 0;
    for (int64_t i = a.layout.begin(bag); i < a.layout.end(bag); ++i) {
      r.prefetch_row(i, ahead_bytes);
      const int64_t row = a.indices[i];
      if (row == a.padding_idx) continue;
      const scalar_t* values = a.weight + row * a.row_stride;
      for (int64_t d = 0; d < a.dim; ++d) {
        const acc_t v = static_cast<acc_t>(values[d * a.col_stride]);
        if (max_replaces(best[d], v, count == 0)) {
          best[d] = v;
          winner[d] = row;
        }
      }
      ++count;
    }
    scalar_t* out = a.output + bag * a.dim;
    int64_t* out_winner = a.max_indices + bag * a.dim;
    for (int64_t d = 0; d < a.dim; ++d) {
      out[d] = count > 0 ? static_cast<scalar_t>(best[d]) : scalar_t(0);
      out_winner[d] = count > 0 ? winner[d] : -1;
    }
  }
  return true;
}

#define MYBAG_INSTANTIATE(scalar_t, index_t)                                                  \
  template bool sum_bags_portable(const ForwardArgs<scalar_t, index_t>&, Mode, int64_t,     \
                                  int64_t);                                                 \
  template bool max_bags_portable(const ForwardArgs<scalar_t, index_t>&, Mode, int64_t,     \
                                  int64_t);
MYBAG_FOR_FORWARD_TYPES(MYBAG_INSTANTIATE)

}  // namespace mybag::cpu
