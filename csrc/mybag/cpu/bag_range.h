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

// Entries to look ahead: rows are requested about 4 KiB of row data before their use, 4 to 32
// entries ahead. (Measured against 2 KiB / 16 entries, interleaved with torch: the same on
// cached tables, 0.75x -> 0.9x of torch on a 2M x 128 float table; the T1 and NTA hints and
// prefetching after the row's loads made no clear difference.)
inline int64_t prefetch_distance(int64_t row_bytes) {
  const int64_t entries = 4096 / (row_bytes > 0 ? row_bytes : 1);
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
  // per 64-byte line. An index not checked yet may be out of range: it prefetches row 0 instead.
  template <int kBytes>
  C10_ALWAYS_INLINE void prefetch(int64_t i, int64_t col) const {
    if (i < prefetch_last) {
      int64_t row = indices[i + distance];
      row = out_of_range(row) ? 0 : row;
      const char* bytes = reinterpret_cast<const char*>(weight + row * row_stride + col);
#pragma GCC unroll 32
      for (int offset = 0; offset < kBytes; offset += 64) _mm_prefetch(bytes + offset, _MM_HINT_T0);
    }
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
