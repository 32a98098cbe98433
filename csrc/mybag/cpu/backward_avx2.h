// The CPU backward's AVX2 kernel (backward_avx2.cpp).
#pragma once

#include <cstdint>

namespace mybag::cpu {

// out[d] = scalar_t(scale * acc_t(in[d])) for d < dim, both rows contiguous; false (having
// done nothing) where the AVX2 kernels do not run (isa.h).
template <typename scalar_t, typename acc_t>
bool scale_row_avx2(scalar_t* out, const scalar_t* in, acc_t scale, int64_t dim);

}  // namespace mybag::cpu
