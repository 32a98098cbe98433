// Run-time dispatched SIMD kernels for the CPU forward and backward.
//
// The library is compiled for baseline x86-64 (SSE2), so that it loads on any x86-64 CPU: the AVX2
// kernels live in simd_avx2.cpp as functions compiled for AVX2 and F16C through GCC's target
// attribute, and run only when the CPU (and the OS) support them, which is checked once per
// process. Every kernel returns false, having done nothing, when it has no code for its arguments
// (another CPU, another architecture, strided rows); the caller then runs its portable loop.
//
// The kernels add in the same order as the portable loops (entry order, per feature) with the
// same operations (multiply, then add: no FMA), so both give the same bits.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "mybag/cpu/forward_args.h"

namespace mybag::cpu {

// Whether the AVX2 kernels run on this CPU. MYBAG_CPU_SIMD=0 in the environment turns them off
// (to compare with the portable loops, or to rule them out).
bool use_avx2();

// Reduces bags [first, last) into a.output (and a.max_indices in max mode), as sum_or_mean and
// max_reduce in forward.cpp do.
template <typename scalar_t, typename index_t>
bool sum_bags_avx2(const ForwardArgs<scalar_t, index_t>& a, bool mean, int64_t first,
                   int64_t last);
template <typename scalar_t, typename index_t>
bool max_bags_avx2(const ForwardArgs<scalar_t, index_t>& a, int64_t first, int64_t last);

// out[d] = scalar_t(scale * acc_t(in[d])) for d < dim, both rows contiguous.
template <typename scalar_t, typename acc_t>
bool scale_row_avx2(scalar_t* out, const scalar_t* in, acc_t scale, int64_t dim);

}  // namespace mybag::cpu
