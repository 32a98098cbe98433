// The CPU forward's kernels, one family per instruction set; forward.cpp chooses one per call
// (isa.h) and runs it over ranges of bags.
//
// Each reduces bags [first, last) of a into a.output (and a.max_indices in max mode), adding in
// entry order, per column, into a float (double for double) accumulator that is rounded to
// weight's dtype once, at the end: a plain sum adds, a weighted sum does one fused multiply-add
// per element (as FBGEMM's). So every kernel gives the same bits (tests/test_cpu_simd.py).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "mybag/cpu/isa.h"
#include "mybag/forward_args.h"
#include "mybag/mode.h"

namespace mybag::cpu {

// A kernel for one mode (sum_bags_* for Sum and Mean, max_bags_* for Max). It returns false as
// soon as it meets an out-of-range index (having read nothing through it), true otherwise.
template <typename scalar_t, typename index_t>
using BagsKernel = bool (*)(const ForwardArgs<scalar_t, index_t>& a, Mode mode, int64_t first,
                            int64_t last);

// Portable C++ (forward_portable.cpp), for any CPU and strided rows. They read indices unchecked:
// the caller checks them all first. Always true.
template <typename scalar_t, typename index_t>
bool sum_bags_portable(const ForwardArgs<scalar_t, index_t>& a, Mode mode, int64_t first,
                       int64_t last);
template <typename scalar_t, typename index_t>
bool max_bags_portable(const ForwardArgs<scalar_t, index_t>& a, Mode mode, int64_t first,
                       int64_t last);

#if MYBAG_X86_SIMD
// The SIMD kernels check each index as they read it (the caller checks only the offsets). They
// read contiguous rows only (col_stride 1); max_bags_avx2 keeps a winner's position in its bag
// in an int32 lane, so no more than 2^31 - 1 indices. There is no AVX-512 max kernel.

// forward_avx2.cpp: AVX2, F16C and FMA.
template <typename scalar_t, typename index_t>
bool sum_bags_avx2(const ForwardArgs<scalar_t, index_t>& a, Mode mode, int64_t first,
                   int64_t last);
template <typename scalar_t, typename index_t>
bool max_bags_avx2(const ForwardArgs<scalar_t, index_t>& a, Mode mode, int64_t first,
                   int64_t last);

// forward_avx512.cpp: AVX-512F/BW/VL.
template <typename scalar_t, typename index_t>
bool sum_bags_avx512(const ForwardArgs<scalar_t, index_t>& a, Mode mode, int64_t first,
                     int64_t last);
#endif

// X(scalar_t, index_t) for every pair the forward is instantiated for.
#define MYBAG_FOR_FORWARD_TYPES(X)                                          \
  X(float, int32_t) X(float, int64_t) X(double, int32_t) X(double, int64_t) \
  X(c10::Half, int32_t) X(c10::Half, int64_t)                               \
  X(c10::BFloat16, int32_t) X(c10::BFloat16, int64_t)

}  // namespace mybag::cpu
