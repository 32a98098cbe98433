// The AVX2 quantized forward (quantized_kernels.h), compiled for AVX2, F16C and FMA
// (MYBAG_AVX2, isa.h); the file as a whole stays baseline.
//
// As the float AVX2 forward: a bag's accumulators stay in registers, the columns cut into tiles
// of up to kTile vectors of 8 (tiles_avx2.h), each tile walking the bag's entries and storing
// once, rounded to the output's dtype. Values are dequantized in registers: 8 bytes of 8-bit
// values, or 8 bytes of 4-bit ones (split into nibbles, 16 columns), widened to floats. The
// first tile of a bag prefetches whole rows (values, scale and bias) a few entries ahead; later
// tiles find them in cache.
//
// Same bits as the portable loops: per entry and column acc = fma(scale, q, acc + bias) (max:
// fma(scale, q, bias)); GCC would contract the intrinsics' vector operators into FMAs, so
// contraction is off and the only FMAs are the explicit fmadd calls.
#pragma GCC optimize("fp-contract=off")

#include "mybag/cpu/quantized_kernels.h"

#if MYBAG_X86_SIMD

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "mybag/cpu/lanes_avx2.h"
#include "mybag/cpu/tiles_avx2.h"

namespace mybag::cpu {
namespace {

using avx2::Lanes;
using F = Lanes<float>;

// Vectors of 8 columns per tile: the accumulators (plus a partial one) within AVX2's 16
// registers, with room for the row's scale, bias and values.
constexpr int kTile = 8;

// The 8 values from column col (a multiple of 8) as floats.
template <int kBits>
MYBAG_AVX2_INLINE __m256 load_values(const uint8_t* row, int64_t col) {
  __m128i bytes;
  if constexpr (kBits == 8) {
    bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + col));
  } else {
    int32_t packed;
    std::memcpy(&packed, row + col / 2, sizeof(packed));
    const __m128i b = _mm_cvtsi32_si128(packed);
    const __m128i nibble = _mm_set1_epi8(0x0F);
    // Byte j holds column 2j in its low nibble and 2j + 1 in its high one: interleaved, the
    // nibbles come out in column order.
    bytes = _mm_unpacklo_epi8(_mm_and_si128(b, nibble),
                              _mm_and_si128(_mm_srli_epi16(b, 4), nibble));
  }
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
}

// A row's scale and bias, each broadcast to a vector straight from the row (float32: one
// broadcast load each; float16: one load and F16C's conversion), and with a per-sample weight
// (weighted(), quantized_rows.h: the same rounded products, lane by lane). Through general
// registers and c10::Half's conversion, this was a noticeable share of a short row's time.
template <int kBits>
MYBAG_AVX2_INLINE void load_qparams(const uint8_t* row, int64_t dim, const float* weight,
                                    __m256& scale, __m256& bias) {
  if constexpr (kBits == 8) {
    float s, b;
    std::memcpy(&s, row + dim, sizeof(s));
    std::memcpy(&b, row + dim + sizeof(s), sizeof(b));
    scale = _mm256_set1_ps(s);
    bias = _mm256_set1_ps(b);
  } else {
    int32_t halves;
    std::memcpy(&halves, row + dim / 2, sizeof(halves));
    const __m128 both = _mm_cvtph_ps(_mm_cvtsi32_si128(halves));  // scale, bias, 0, 0
    scale = _mm256_broadcastss_ps(both);
    bias = _mm256_broadcastss_ps(_mm_movehdup_ps(both));
  }
  if (weight != nullptr) {
    const __m256 w = _mm256_set1_ps(*weight);
    scale = F::mul(scale, w);
    bias = F::mul(bias, w);
  }
}

// The first n < 8 values from column col, through a zeroed buffer: a full load would read the
// row's scale and bias (or, for the table's last row, past its end).
template <int kBits>
MYBAG_AVX2_INLINE __m256 load_values_part(const uint8_t* row, int64_t col, int n) {
  alignas(8) uint8_t buffer[8] = {};
  std::memcpy(buffer, row + (kBits == 8 ? col : col / 2), kBits == 8 ? n : n / 2);
  return load_values<kBits>(buffer, 0);
}

// Calls use(k, values of vector k) for the NV full vectors of a tile from column col, in
// order. 4-bit rows go two vectors (16 columns, 8 bytes) per load: one load, one nibble split
// and interleave for both, each half then widened.
template <int kBits, int NV, typename Use>
MYBAG_AVX2_INLINE void for_each_vector(const uint8_t* row, int64_t col, Use&& use) {
  if constexpr (kBits == 8) {
#pragma GCC unroll 16
    for (int k = 0; k < NV; ++k) use(k, load_values<8>(row, col + k * 8));
  } else {
    const __m128i nibble = _mm_set1_epi8(0x0F);
#pragma GCC unroll 16
    for (int k = 0; k + 1 < NV; k += 2) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + (col + k * 8) / 2));
      const __m128i bytes = _mm_unpacklo_epi8(_mm_and_si128(b, nibble),
                                              _mm_and_si128(_mm_srli_epi16(b, 4), nibble));
      use(k, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)));
      use(k + 1, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8))));
    }
    if constexpr (NV % 2 == 1) use(NV - 1, load_values<4>(row, col + (NV - 1) * 8));
  }
}

template <typename out_t, int NV, bool Part>
MYBAG_AVX2_INLINE void store_tile(out_t* out, int part, const __m256* acc) {
#pragma GCC unroll 16
  for (int k = 0; k < NV; ++k) Lanes<out_t>::store(out + k * 8, acc[k]);
  if constexpr (Part) Lanes<out_t>::store_part(out + NV * 8, part, acc[NV]);
}

// One column tile of one bag in sum or mean mode: NV full vectors from column col, plus a
// partial vector of `part` columns when Part. out is the bag's output row.
template <int kBits, int NV, bool Part, bool kFirst, bool kWeighted, typename index_t,
          typename out_t>
MYBAG_AVX2_INLINE bool sum_tile(const BagRange<uint8_t, index_t>& r,
                                const QuantizedForwardArgs<index_t, out_t>& a, int64_t col,
                                int part, bool mean, out_t* out) {
  constexpr int kAcc = NV + (Part ? 1 : 0);
  __m256 acc[kAcc];
#pragma GCC unroll 16
  for (int k = 0; k < kAcc; ++k) acc[k] = F::zero();
  int64_t count = 0;
  for (int64_t i = r.begin; i < r.end; ++i) {
    if constexpr (kFirst) r.prefetch_row_near(i, a.row_bytes);
    const int64_t row = r.indices[i];
    // Range first: padding_idx is -1 when there is none, and a -1 index must not pass for it.
    if (r.out_of_range(row)) return false;
    if (row == r.padding_idx) continue;
    ++count;
    const uint8_t* values = r.weight + row * r.row_stride;
    __m256 scale, bias;
    load_qparams<kBits>(values, a.dim, kWeighted ? a.per_sample_weights + i : nullptr, scale,
                        bias);
    for_each_vector<kBits, NV>(values, col, [&](int k, __m256 q) {
      acc[k] = F::fmadd(scale, q, F::add(acc[k], bias));
    });
    if constexpr (Part) {
      acc[NV] = F::fmadd(scale, load_values_part<kBits>(values, col + NV * 8, part),
                         F::add(acc[NV], bias));
    }
  }
  if (mean && count > 0) {
    const __m256 divisor = F::set1(static_cast<float>(count));
#pragma GCC unroll 16
    for (int k = 0; k < kAcc; ++k) acc[k] = F::div(acc[k], divisor);
  }
  store_tile<out_t, NV, Part>(out + col, part, acc);
  return true;
}

// One column tile of one bag in max mode: the rule of max_replaces (reductions.h), lane by lane,
// on values dequantized as fma(scale, q, bias); a bag of padding only (or none) gives zeros.
template <int kBits, int NV, bool Part, bool kFirst, typename index_t, typename out_t>
MYBAG_AVX2_INLINE bool max_tile(const BagRange<uint8_t, index_t>& r,
                                const QuantizedForwardArgs<index_t, out_t>& a, int64_t col,
                                int part, out_t* out) {
  constexpr int kAcc = NV + (Part ? 1 : 0);
  __m256 best[kAcc];
#pragma GCC unroll 16
  for (int k = 0; k < kAcc; ++k) best[k] = F::zero();
  bool any = false;
  for (int64_t i = r.begin; i < r.end; ++i) {
    if constexpr (kFirst) r.prefetch_row_near(i, a.row_bytes);
    const int64_t row = r.indices[i];
    if (r.out_of_range(row)) return false;
    if (row == r.padding_idx) continue;
    const uint8_t* values = r.weight + row * r.row_stride;
    __m256 scale, bias;
    load_qparams<kBits>(values, a.dim, nullptr, scale, bias);
    const auto take = [&](int k, __m256 q) {
      const __m256 v = F::fmadd(scale, q, bias);
      best[k] = any ? F::blend(best[k], v, F::takes(v, best[k])) : v;
    };
    for_each_vector<kBits, NV>(values, col, take);
    if constexpr (Part) take(NV, load_values_part<kBits>(values, col + NV * 8, part));
    any = true;
  }
  store_tile<out_t, NV, Part>(out + col, part, best);
  return true;
}

// The last tile of a row wider than one tile (never the bag's first).
template <int kBits, bool kWeighted, typename index_t, typename out_t>
struct LastSumTile {
  template <int NV, bool Part>
  struct Tile {
    static MYBAG_AVX2_INLINE bool run(const BagRange<uint8_t, index_t>& r,
                                      const QuantizedForwardArgs<index_t, out_t>& a, int64_t col,
                                      int part, bool mean, out_t* out) {
      return sum_tile<kBits, NV, Part, false, kWeighted>(r, a, col, part, mean, out);
    }
  };
};

template <int kBits, typename index_t, typename out_t>
struct LastMaxTile {
  template <int NV, bool Part>
  struct Tile {
    static MYBAG_AVX2_INLINE bool run(const BagRange<uint8_t, index_t>& r,
                                      const QuantizedForwardArgs<index_t, out_t>& a, int64_t col,
                                      int part, out_t* out) {
      return max_tile<kBits, NV, Part, false>(r, a, col, part, out);
    }
  };
};

// Rows of one tile (up to kTile full vectors and a partial one): the tile is chosen once per
// call and its bag loop runs alone (chosen per bag, it cost a noticeable share of a bag of one
// row).
template <int kBits, bool kWeighted, typename index_t, typename out_t>
struct SumBagsOfOneTile {
  template <int NV, bool Part>
  struct Tile {
    static MYBAG_AVX2_INLINE bool run(const QuantizedForwardArgs<index_t, out_t>& a, int part,
                                      bool mean, int64_t first, int64_t last) {
      auto r = quantized_bag_range(a);
      for (int64_t bag = first; bag < last; ++bag) {
        r.select(a.layout, bag);
        out_t* out = a.output + bag * a.dim;
        if (!sum_tile<kBits, NV, Part, true, kWeighted>(r, a, 0, part, mean, out)) return false;
      }
      return true;
    }
  };
};

template <int kBits, typename index_t, typename out_t>
struct MaxBagsOfOneTile {
  template <int NV, bool Part>
  struct Tile {
    static MYBAG_AVX2_INLINE bool run(const QuantizedForwardArgs<index_t, out_t>& a, int part,
                                      int64_t first, int64_t last) {
      auto r = quantized_bag_range(a);
      for (int64_t bag = first; bag < last; ++bag) {
        r.select(a.layout, bag);
        if (!max_tile<kBits, NV, Part, true>(r, a, 0, part, a.output + bag * a.dim)) return false;
      }
      return true;
    }
  };
};

// A bag's tiles in column order: full ones, then the last. Only the first prefetches (whole
// rows, which the later tiles then find in cache). Which tile is first, and whether there are
// per-sample weights, are template arguments, so the entry loops test neither.
template <int kBits, bool kWeighted, typename index_t, typename out_t>
MYBAG_AVX2 bool sum_bags(const QuantizedForwardArgs<index_t, out_t>& a, bool mean,
                         int64_t first, int64_t last) {
  const int64_t full = a.dim / 8;
  const int part = static_cast<int>(a.dim % 8);
  if (full <= kTile) {
    return last_tile<kTile, SumBagsOfOneTile<kBits, kWeighted, index_t, out_t>::template Tile>(
        static_cast<int>(full), part != 0, a, part, mean, first, last);
  }
  auto r = quantized_bag_range(a);
  for (int64_t bag = first; bag < last; ++bag) {
    r.select(a.layout, bag);
    out_t* out = a.output + bag * a.dim;
    if (!sum_tile<kBits, kTile, false, true, kWeighted>(r, a, 0, 0, mean, out)) return false;
    int64_t done = kTile;  // full vectors
    while (full - done > kTile || (full - done == kTile && part == 0)) {
      if (!sum_tile<kBits, kTile, false, false, kWeighted>(r, a, done * 8, 0, mean, out)) {
        return false;
      }
      done += kTile;
    }
    if (!last_tile<kTile, LastSumTile<kBits, kWeighted, index_t, out_t>::template Tile>(
            static_cast<int>(full - done), part != 0, r, a, done * 8, part, mean, out)) {
      return false;
    }
  }
  return true;
}

template <int kBits, typename index_t, typename out_t>
MYBAG_AVX2 bool max_bags(const QuantizedForwardArgs<index_t, out_t>& a, int64_t first,
                         int64_t last) {
  const int64_t full = a.dim / 8;
  const int part = static_cast<int>(a.dim % 8);
  if (full <= kTile) {
    return last_tile<kTile, MaxBagsOfOneTile<kBits, index_t, out_t>::template Tile>(
        static_cast<int>(full), part != 0, a, part, first, last);
  }
  auto r = quantized_bag_range(a);
  for (int64_t bag = first; bag < last; ++bag) {
    r.select(a.layout, bag);
    out_t* out = a.output + bag * a.dim;
    if (!max_tile<kBits, kTile, false, true>(r, a, 0, 0, out)) return false;
    int64_t done = kTile;
    while (full - done > kTile || (full - done == kTile && part == 0)) {
      if (!max_tile<kBits, kTile, false, false>(r, a, done * 8, 0, out)) return false;
      done += kTile;
    }
    if (!last_tile<kTile, LastMaxTile<kBits, index_t, out_t>::template Tile>(
            static_cast<int>(full - done), part != 0, r, a, done * 8, part, out)) {
      return false;
    }
  }
  return true;
}

}  // namespace

template <int kBits, typename index_t, typename out_t>
bool quantized_bags_avx2(const QuantizedForwardArgs<index_t, out_t>& a, Mode mode,
                         int64_t first, int64_t last) {
  if (mode == Mode::Max) return max_bags<kBits>(a, first, last);
  const bool mean = mode == Mode::Mean;
  if (a.per_sample_weights != nullptr) return sum_bags<kBits, true>(a, mean, first, last);
  return sum_bags<kBits, false>(a, mean, first, last);
}

#define MYBAG_INSTANTIATE(bits, index_t, out_t)                                      \
  template bool quantized_bags_avx2<bits>(const QuantizedForwardArgs<index_t, out_t>&, \
                                          Mode, int64_t, int64_t);
MYBAG_FOR_QUANTIZED_TYPES(MYBAG_INSTANTIATE)

}  // namespace mybag::cpu

#endif  // MYBAG_X86_SIMD
