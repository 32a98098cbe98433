// The AVX2 kernel of the CPU's per-entry gradient (entry_grads.cpp), in entry_grads_avx2.cpp.
#pragma once

#include <cstdint>

namespace mybag::cpu {

// out[d] = scalar_t(scale * acc_t(in[d])) for d < dim, both rows contiguous; false (having
// done nothing) where the AVX2 kernels do not run (isa.h).
template <typename scalar_t, typename acc_t>
bool scale_row_avx2(scalar_t* out, const scalar_t* in, acc_t scale, int64_t dim);

}  // namespace mybag::cpu
