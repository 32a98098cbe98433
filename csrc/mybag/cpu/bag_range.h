// How the CPU forward kernels walk a bag's entries, and the one prefetch policy they share: the
// portable loops (forward_portable.cpp) and the AVX2 and AVX-512 kernels (forward_avx2.cpp,
// forward_avx512.cpp). ISA-neutral and baseline, so every kernel's file inlines it.
#pragma once

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>

#include "mybag/forward_args.h"

namespace mybag::cpu {

// Rows are gathered at random from tables far larger than the caches, so the time goes to memory
// latency unless the rows some entries ahead are already on their way.
//
// Entries to look ahead, for rows of row_bytes: 8 KiB of rows ahead up to 16 entries, and at
// least 2 KiB up to 32, never fewer than 4 (so 32 entries for rows of 64 bytes, 16 for 128 to
// 512 bytes, 4 for 2 KiB). Tuned against torch's FBGEMM kernel (16 entries whatever the row) on
// the same data (docs/benchmarks.md): a fixed number of bytes ahead left mid-size rows behind
// it, 16 entries is too far for rows of 2 KiB, and small rows on a large table want more
// entries in flight.
inline int64_t prefetch_distance(int64_t row_bytes) {
  const int64_t bytes = row_bytes > 0 ? row_bytes : 1;
  const int64_t far = std::min<int64_t>(8192 / bytes, 16);
  const int64_t near = std::min<int64_t>(2048 / bytes, 32);
  return std::max<int64_t>(4, std::max(far, near));
}

// Requests the kBytes from address, one request per 64-byte line, into every cache level (the
// SIMD kernels, whose accumulators are registers). A prefetch never faults, whatever the address.
template <int kBytes>
C10_ALWAYS_INLINE void prefetch_lines(const char* address) {
#pragma GCC unroll 32
  for (int offset = 0; offset < kBytes; offset += 64) {
    __builtin_prefetch(address + offset, /*rw=*/0, /*locality=*/3);
  }
}

// The same for `bytes` known at run time, into the outer cache levels only: for the portable
// loops, whose accumulator is an array that L1 must keep (requested into L1 as well, the rows
// ahead evicted it, which showed on cached tables).
C10_ALWAYS_INLINE void prefetch_lines_outer(const char* address, int64_t bytes) {
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(address + offset, /*rw=*/0, /*locality=*/1);
  }
}

// The same for memory about to be written (the backward's rows and optimizer state): requested
// with intent to write, into every level.
C10_ALWAYS_INLINE void prefetch_lines_for_write(const void* start, int64_t bytes) {
  const char* address = static_cast<const char*>(start);
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(address + offset, /*rw=*/1, /*locality=*/3);
  }
}

// A bag's entries as the kernels read them: the fields their row loops need, copied out of
// ForwardArgs, one indirection closer to the loops. Held by reference (passed by value, the
// copies waited behind the previous bag's output stores, which costs most on bags of one row).
// Everything here is forced inline: left to the compiler, a prefetch helper was once not inlined
// into the portable row loops, which then ran far slower.
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

  // The row entry i + distance reads (entry i's own near the end of the input, where the
  // request is wasted but harmless). That index is not checked yet and may be out of range: the
  // caller computes the address in unsigned integers (wrapping is defined), and a prefetch never
  // faults, so a bad index costs at most a useless request. (Clamping it to row 0 instead puts a
  // compare and select on the path to every prefetch, which shows on cached tables.)
  C10_ALWAYS_INLINE uintptr_t row_ahead(int64_t i) const {
    return static_cast<uintptr_t>(indices[i < prefetch_last ? i + distance : i]);
  }

  // Column col of the row entry i + distance reads, as row_ahead says.
  C10_ALWAYS_INLINE const char* address_ahead(int64_t i, int64_t col) const {
    const uintptr_t address = reinterpret_cast<uintptr_t>(weight + col) +
                              row_ahead(i) * static_cast<uintptr_t>(row_stride) * sizeof(scalar_t);
    return reinterpret_cast<const char*>(address);
  }

  // Requests the columns [col, col + kBytes) of the row entry i + distance reads.
  template <int kBytes>
  C10_ALWAYS_INLINE void prefetch(int64_t i, int64_t col) const {
    if (i < prefetch_last) prefetch_lines<kBytes>(address_ahead(i, col));
  }

  // The whole row, `bytes` long, that entry i + distance reads, into every level: for SIMD
  // kernels whose rows' length is known at run time only (the quantized rows). Its first and
  // last bytes are requested first, since a row need not start on a line: for rows of up to 65
  // bytes (two lines at most) that is all, and no loop runs.
  C10_ALWAYS_INLINE void prefetch_row_near(int64_t i, int64_t bytes) const {
    if (i < prefetch_last) {
      const char* address = address_ahead(i, 0);
      __builtin_prefetch(address, /*rw=*/0, /*locality=*/3);
      __builtin_prefetch(address + bytes - 1, /*rw=*/0, /*locality=*/3);
      for (int64_t offset = 64; offset < bytes - 1; offset += 64) {
        __builtin_prefetch(address + offset, /*rw=*/0, /*locality=*/3);
      }
    }
  }

  // The whole row, `bytes` long, that entry i + distance reads, into the outer caches
  // (prefetch_lines_outer).
  C10_ALWAYS_INLINE void prefetch_row(int64_t i, int64_t bytes) const {
    if (i < prefetch_last) prefetch_lines_outer(address_ahead(i, 0), bytes);
  }
};

// The call's fields, made once per call; a kernel then sets begin and end per bag with
// select(). (Rebuilt per bag, the struct costs a noticeable share of a bag of a few cached
// rows.)
template <typename scalar_t, typename index_t>
C10_ALWAYS_INLINE BagRange<scalar_t, index_t> bag_range(const ForwardArgs<scalar_t, index_t>& a,
                                                        int64_t distance) {
  return {a.weight,      a.indices, a.per_sample_weights, a.row_stride, a.num_weights,
          a.padding_idx, 0,         0,                    a.layout.num_indices - distance,
          distance};
}

}  // namespace mybag::cpu
