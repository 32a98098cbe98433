// Row arithmetic shared by the CPU kernels. The contiguous case (col_stride == 1) is split out so
// the compiler vectorizes it; strided weights (a transposed view, say) take the general loop.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace mybag::cpu {

// acc[d] += scale * row[d * col_stride], accumulating in acc_t.
// The accumulator never aliases the table: __restrict__ lets the compiler vectorize without
// run-time overlap checks.
template <typename acc_t, typename scalar_t>
inline void add_scaled_row(acc_t* __restrict__ acc, const scalar_t* __restrict__ row,
                           int64_t col_stride, int64_t dim, acc_t scale) {
  if (col_stride == 1) {
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) {
      acc[d] += scale * static_cast<acc_t>(row[d]);
    }
  } else {
    for (int64_t d = 0; d < dim; ++d) {
      acc[d] += scale * static_cast<acc_t>(row[d * col_stride]);
    }
  }
}

// acc[d] = fma(weight, row[d * col_stride], acc[d]): the forward's weighted sum, one rounding
// per element, the same bits as the SIMD kernels' fused multiply-add. (On x86 this loop is
// compiled for baseline x86-64 and std::fma is a libm call: it serves only CPUs without AVX2
// and FMA, strided tables, and MYBAG_CPU_SIMD=0; see isa.h.)
template <typename acc_t, typename scalar_t>
inline void fma_row(acc_t* __restrict__ acc, const scalar_t* __restrict__ row,
                    int64_t col_stride, int64_t dim, acc_t weight) {
  for (int64_t d = 0; d < dim; ++d) {
    acc[d] = std::fma(weight, static_cast<acc_t>(row[d * col_stride]), acc[d]);
  }
}

// sum_d a[d] * b[d * b_stride], in acc_t.
template <typename acc_t, typename scalar_t>
inline acc_t dot_row(const scalar_t* a, const scalar_t* b, int64_t b_stride, int64_t dim) {
  acc_t total = 0;
  for (int64_t d = 0; d < dim; ++d) {
    total += static_cast<acc_t>(a[d]) * static_cast<acc_t>(b[d * b_stride]);
  }
  return total;
}

// Bags per parallel task: enough rows that a task is worth scheduling (about 32K elements).
inline int64_t bag_grain_size(int64_t num_indices, int64_t num_bags, int64_t dim) {
  const int64_t per_bag = std::max<int64_t>(1, num_indices / std::max<int64_t>(1, num_bags)) *
                          std::max<int64_t>(1, dim);
  return std::max<int64_t>(1, (int64_t{1} << 15) / per_bag);
}

}  // namespace mybag::cpu
