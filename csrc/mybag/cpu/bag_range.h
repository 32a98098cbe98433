// A bag's entries as the SIMD kernels (simd_avx2.cpp, simd_avx512.cpp) read them: the fields
// their row loops need, copied out of ForwardArgs, one indirection closer to the loops. (Passed
// by value instead, the copies waited behind the output stores of the previous bag: 2.5x slower
// for bags of one row.) x86 only; no target attribute, so both kernels' files inline it.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)

#include <c10/macros/Macros.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "mybag/forward_args.h"

namespace mybag::cpu {

// Entries to look ahead: 8 KiB of rows ahead up to 16 entries, and at least 2 KiB up to 32 (so
// 32 entries for rows of 64 bytes, 16 for 128 to 512 bytes, 4 for 2 KiB). Measured in a
// standalone harness calling torch's own FBGEMM kernel (fixed at 16 entries) on the same data,
// interleaved: 4 KiB ahead left rows of 512 bytes at 0.91-0.95x of it on cached and Zipf
// tables, 16 entries 0.97-1.0x; rows of 256 bytes went from 0.85-0.94x at 32 entries to 0.98x
// at 16; rows of 2 KiB do best at 4 (16 is 5-9% slower); rows of 64 bytes on a 1M-row table
// want 32 (16: 0.94x). Before that, 2 KiB -> 4 KiB ahead took a 2M x 128 float table from 0.75x
// to 0.9x of torch.
inline int64_t prefetch_distance(int64_t row_bytes) {
  const int64_t bytes = row_bytes > 0 ? row_bytes : 1;
  const int64_t far = std::min<int64_t>(8192 / bytes, 16);
  const int64_t near = std::min<int64_t>(2048 / bytes, 32);
  return std::max<int64_t>(4, std::max(far, near));
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
  int64_t prefetch_last;  // entries i < prefetch_last prefetch entry i + distance (< N)
  int64_t distance;

  template <typename layout_t>
  C10_ALWAYS_INLINE void select(const layout_t& layout, int64_t bag) {
    begin = layout.begin(bag);
    end = layout.end(bag);
  }

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

// The call's fields, made once per call; a kernel then sets begin and end per bag with
// select(). (Rebuilt per bag, the struct cost about 10% of a bag of 20 cached rows against
// FBGEMM's kernel, 25% for bags of 5.)
template <typename scalar_t, typename index_t>
C10_ALWAYS_INLINE BagRange<scalar_t, index_t> bag_range(const ForwardArgs<scalar_t, index_t>& a,
                                                        int64_t distance) {
  return {a.weight,      a.indices, a.per_sample_weights, a.row_stride, a.num_weights,
          a.padding_idx, 0,         0,                    a.layout.num_indices - distance,
          distance};
}

}  // namespace mybag::cpu

#endif
