// The CPU kernels of the quantized forward (quantized_forward.cpp chooses one per call): the
// portable loops and the AVX2 kernels, for 8- and 4-bit rows. Each reduces bags [first, last)
// of a into a.output with the arithmetic of mybag/quantized_rows.h, in entry order per column,
// in float, rounded once to the output's dtype; so every kernel gives the same bits.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "mybag/cpu/bag_range.h"
#include "mybag/cpu/isa.h"
#include "mybag/mode.h"
#include "mybag/quantized_rows.h"

namespace mybag::cpu {

// Returns false as soon as it meets an out-of-range index (having read nothing through it).
template <int kBits, typename index_t, typename out_t>
using QuantizedBagsKernel = bool (*)(const QuantizedForwardArgs<index_t, out_t>& a, Mode mode,
                                     int64_t first, int64_t last);

// quantized_portable.cpp: any CPU. They read indices unchecked (the caller checks them all
// first): always true.
template <int kBits, typename index_t, typename out_t>
bool quantized_bags_portable(const QuantizedForwardArgs<index_t, out_t>& a, Mode mode,
                             int64_t first, int64_t last);

#if MYBAG_X86_SIMD
// quantized_avx2.cpp: AVX2, F16C and FMA. They check each index as they read it.
template <int kBits, typename index_t, typename out_t>
bool quantized_bags_avx2(const QuantizedForwardArgs<index_t, out_t>& a, Mode mode,
                         int64_t first, int64_t last);
#endif

// X(kBits, index_t, out_t) for every combination the quantized forward is instantiated for.
#define MYBAG_FOR_QUANTIZED_TYPES_OF(X, bits)                                           \
  X(bits, int32_t, float) X(bits, int64_t, float) X(bits, int32_t, c10::Half)           \
  X(bits, int64_t, c10::Half) X(bits, int32_t, c10::BFloat16) X(bits, int64_t, c10::BFloat16)
#define MYBAG_FOR_QUANTIZED_TYPES(X) \
  MYBAG_FOR_QUANTIZED_TYPES_OF(X, 8) MYBAG_FOR_QUANTIZED_TYPES_OF(X, 4)

// The bag walk and prefetch policy of the float kernels (bag_range.h), over packed rows: a row
// of row_bytes, prefetched whole (its scale and bias included).
template <typename index_t, typename out_t>
C10_ALWAYS_INLINE BagRange<uint8_t, index_t> quantized_bag_range(
    const QuantizedForwardArgs<index_t, out_t>& a) {
  const int64_t distance = prefetch_distance(a.row_bytes);
  return {a.packed,       a.indices, /*per_sample_weights=*/nullptr, a.row_bytes,
          a.num_weights,  a.padding_idx, 0, 0, a.layout.num_indices - distance, distance};
}

}  // namespace mybag::cpu
