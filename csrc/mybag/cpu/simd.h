// Run-time dispatched SIMD kernels for the CPU forward.
//
// The library is compiled for baseline x86-64 (SSE2), so that it loads on any x86-64 CPU: the AVX2
// kernels live in simd_avx2.cpp as functions compiled for AVX2 and F16C through GCC's target
// attribute, and run only when cpu_isa() (isa.h) allows. Callers ask first whether a kernel
// applies (not on another CPU or architecture, nor for strided rows), and run their portable
// loops otherwise.
//
// The kernels add in the same order as the portable loops (entry order, per feature) with the
// same operations (a plain add, or for per_sample_weights one fused multiply-add, as FBGEMM's
// weighted sum: std::fma in the portable loops), so both give the same bits.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "mybag/cpu/forward_args.h"
#include "mybag/cpu/isa.h"

namespace mybag::cpu {

// The AVX-512 kernels (simd_avx512.cpp) cover the sum and mean forward; the rest stays AVX2.
// Which run is decided once, in isa.h.

// Whether the forward kernels below apply: AVX2 on this CPU and contiguous rows (and, in max
// mode, bags short enough for an int32 position).
bool avx2_forward_applies(int64_t col_stride, int64_t num_indices, bool max_mode);

// Reduce bags [first, last) into a.output (and a.max_indices in max mode), as sum_or_mean and
// max_reduce in forward.cpp do, checking every index on the way (the caller has checked only the
// offsets). Return false as soon as an index is out of range (having read nothing through it):
// the caller then runs the full check, which names the first bad entry.
template <typename scalar_t, typename index_t>
bool sum_bags_avx2(const ForwardArgs<scalar_t, index_t>& a, bool mean, int64_t first,
                   int64_t last);
// sum_bags_avx2 with AVX-512 (which sum_bags_avx2 calls when cpu_isa() is Avx512).
template <typename scalar_t, typename index_t>
bool sum_bags_avx512(const ForwardArgs<scalar_t, index_t>& a, bool mean, int64_t first,
                     int64_t last);
template <typename scalar_t, typename index_t>
bool max_bags_avx2(const ForwardArgs<scalar_t, index_t>& a, int64_t first, int64_t last);

}  // namespace mybag::cpu
