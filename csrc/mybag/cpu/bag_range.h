// A bag's entries as the SIMD kernels (simd_avx2.cpp, simd_avx512.cpp) read them: the fields
// their row loops need, copied out of ForwardArgs, one indirection closer to the loops. (Passed
// by value instead, the copies waited behind the output stores of the previous bag: 2.5x slower
// for bags of one row.) x86 only; no target attribute, so both kernels' files inline it.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)

#include <c10/macros/Macros.h>
#include <immintrin.h>

#include <cstdint>

#include "mybag/forward_args.h"

namespace mybag::cpu {

// Entries to look ahead: rows are requested about 8 KiB of row data before their use, 4 to 32
// entries ahead. Measured in a standalone harness against FBGEMM's JIT kernel (torch's sum), same
// data, interleaved: 4 KiB ahead left float rows of 512 bytes at 0.91-0.95x of it on cached and
// Zipf tables, 8 KiB (16 entries, FBGEMM's fixed distance) at 0.97-1.01x; rows of 2 KiB do best
// at 4 entries (FBGEMM's 16 is 5-9% slower there), rows of 64 bytes at 32 (16: 0.94x on a 1M
// table). Before that, 2 KiB -> 4 KiB took a 2M x 128 float table from 0.75x to 0.9x of torch.
inline int64_t prefetch_distance(int64_t row_bytes) {
  const int64_t entries = 8192 / (row_bytes > 0 ? row_bytes : 1);
  return entries < 4 ? 4 : (entries > 32 ? 32 : entries);
}

template <typename scalar_t, typename index_t>
struct BagRange {
  const scalar_t* weight;
  const index_t* indices;
  const scalar_t* per_sample_weights;
  int64_t row_stride;
  int64_t num_weights;
  int64_t padding_idx;
  int64_t begin;
  int64_t end;
  int64_t prefetch_last;  // entries i < prefetch_last prefetch entry i + distance
  int64_t distance;

  C10_ALWAYS_INLINE bool out_of_range(int64_t row) const {
    return static_cast<uint64_t>(row) >= static_cast<uint64_t>(num_weights);
  }

  // Requests the columns [col, col + kBytes) of the row entry i + distance reads, one prefetch
  // per 64-byte line. That index is not checked yet and may be out of range: the address is
  // computed in unsigned integers (wrapping is defined) and a prefetch never faults, so a bad
  // index costs at most a useless request. (Clamping it to row 0 first cost up to 5% on cached
  // tables: the compare and select sit on the path to every prefetch.)
  template <int kBytes>
  C10_ALWAYS_INLINE void prefetch(int64_t i, int64_t col) const {
    if (i < prefetch_last) {
      const uintptr_t row = static_cast<uintptr_t>(indices[i + distance]);
      const uintptr_t address = reinterpret_cast<uintptr_t>(weight + col) +
                                row * static_cast<uintptr_t>(row_stride) * sizeof(scalar_t);
      const char* bytes = reinterpret_cast<const char*>(address);
#pragma GCC unroll 32
      for (int offset = 0; offset < kBytes; offset += 64) _mm_prefetch(bytes + offset, _MM_HINT_T0);
    }
  }

  // The row entry i + distance reads (entry i's own near the end of the input, where the
  // request is wasted but harmless), for a kernel that places its prefetches among its loads.
  // Not checked, as in prefetch(): the caller computes the address in unsigned integers.
  C10_ALWAYS_INLINE uintptr_t row_ahead(int64_t i) const {
    return static_cast<uintptr_t>(indices[i < prefetch_last ? i + distance : i]);
  }
};

template <typename scalar_t, typename index_t>
C10_ALWAYS_INLINE BagRange<scalar_t, index_t> bag_range(const ForwardArgs<scalar_t, index_t>& a,
                                                        int64_t bag, int64_t distance) {
  const int64_t begin = a.layout.begin(bag);
  const int64_t end = a.layout.end(bag);
  const int64_t last = a.layout.num_indices - distance;
  return {a.weight,     a.indices, a.per_sample_weights, a.row_stride, a.num_weights,
          a.padding_idx, begin,    end,                  end < last ? end : last, distance};
}

}  // namespace mybag::cpu

#endif
