// AVX2 (and F16C) kernels (see simd.h). Only the functions marked MYBAG_AVX2(_INLINE) are
// compiled for AVX2; the file as a whole, and every header it includes, stays baseline, so no
// AVX2 code can leak into a shared inline function.
//
// Forward design: a bag's accumulator stays in registers. The columns are cut into tiles of up
// to kSumTile vectors (64 floats, 32 doubles); each tile walks the bag's entries once, adding
// rows straight from the table, and is stored once at the end, converted to weight's dtype. The
// last tile carries the row's remainder (dim % lanes) as one partial vector. Each tile
// prefetches its own columns of the row a few entries ahead, and checks each index it reads.
// GCC's intrinsics are plain vector operators, which it would contract into FMAs.
#pragma GCC optimize("fp-contract=off")

#include "mybag/cpu/simd.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#define MYBAG_AVX2_KERNELS 1
#include <immintrin.h>

#include "mybag/cpu/bag_range.h"
#include "mybag/cpu/bfloat16_rounding.h"
#else
#define MYBAG_AVX2_KERNELS 0
#endif

namespace mybag::cpu {

#if MYBAG_AVX2_KERNELS

// MYBAG_AVX2 (isa.h) has FMA for the weighted sum's explicit fmadd (one rounding, as the
// portable loops' std::fma). Contraction is off (the pragma at the top): a multiply and an add
// written apart stay apart, so no other sum changes bits behind our back.

namespace {

// Lanes<scalar_t>: how scalar_t elements load into, and store from, a vector of their
// accumulation type (float for float, half and bfloat16; double for double), and the lane
// operations the kernels need. load_part/store_part touch only the first n < width elements.

MYBAG_AVX2_INLINE __m256i first_lanes_mask32(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <typename scalar_t>
struct Lanes;

struct FloatLanes {
  using acc_t = float;
  using vec = __m256;
  using pos_vec = __m256i;  // a winner's position in its bag, one int32 per lane
  using pos_t = int32_t;
  static constexpr int kWidth = 8;

  static MYBAG_AVX2_INLINE vec zero() { return _mm256_setzero_ps(); }
  static MYBAG_AVX2_INLINE vec set1(float x) { return _mm256_set1_ps(x); }
  static MYBAG_AVX2_INLINE vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static MYBAG_AVX2_INLINE vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  // a * b + c, rounded once.
  static MYBAG_AVX2_INLINE vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static MYBAG_AVX2_INLINE vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
  // Lanes where max mode's scalar rule `!isnan(best) && (v > best || isnan(v))` holds.
  static MYBAG_AVX2_INLINE vec takes(vec v, vec best) {
    const vec better =
        _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_andnot_ps(_mm256_cmp_ps(best, best, _CMP_UNORD_Q), better);
  }
  static MYBAG_AVX2_INLINE vec blend(vec old_value, vec new_value, vec mask) {
    return _mm256_blendv_ps(old_value, new_value, mask);
  }
  static MYBAG_AVX2_INLINE pos_vec set1_pos(int64_t p) {
    return _mm256_set1_epi32(static_cast<int32_t>(p));
  }
  static MYBAG_AVX2_INLINE pos_vec blend_pos(pos_vec old_pos, pos_vec new_pos, vec mask) {
    return _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(old_pos), _mm256_castsi256_ps(new_pos), mask));
  }
  static MYBAG_AVX2_INLINE void store_pos(pos_t* out, pos_vec p) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), p);
  }
};

template <>
struct Lanes<float> : FloatLanes {
  static MYBAG_AVX2_INLINE vec load(const float* p) { return _mm256_loadu_ps(p); }
  static MYBAG_AVX2_INLINE vec load_part(const float* p, int n) {
    return _mm256_maskload_ps(p, first_lanes_mask32(n));
  }
  static MYBAG_AVX2_INLINE void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static MYBAG_AVX2_INLINE void store_part(float* p, int n, vec v) {
    _mm256_maskstore_ps(p, first_lanes_mask32(n), v);
  }
};

// Half and bfloat16 rows have no masked 16-bit load in AVX2: their partial vectors go through
// a small zeroed buffer.
template <typename scalar_t, typename Self>
struct SixteenBitLanes : FloatLanes {
  static MYBAG_AVX2_INLINE __m128i bits(const scalar_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  static MYBAG_AVX2_INLINE vec load_part(const scalar_t* p, int n) {
    alignas(16) scalar_t buffer[8] = {};
    for (int j = 0; j < n; ++j) buffer[j] = p[j];
    return Self::load(buffer);
  }
  static MYBAG_AVX2_INLINE void store_part(scalar_t* p, int n, vec v) {
    alignas(16) scalar_t buffer[8];
    Self::store(buffer, v);
    for (int j = 0; j < n; ++j) p[j] = buffer[j];
  }
};

template <>
struct Lanes<c10::BFloat16> : SixteenBitLanes<c10::BFloat16, Lanes<c10::BFloat16>> {
  static MYBAG_AVX2_INLINE vec load(const c10::BFloat16* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits(p)), 16));
  }
  // Round to nearest even, NaN to 0x7FC0 (bfloat16_rounding.h); the bits in the low half of
  // each 32-bit lane.
  static MYBAG_AVX2_INLINE __m256i round_bits(vec v) {
    U32x8 rounded;
    round_to_bfloat16(v, rounded);
    return reinterpret_cast<__m256i>(rounded);
  }
  static MYBAG_AVX2_INLINE void store(c10::BFloat16* p, vec v) {
    const __m256i rounded = round_bits(v);
    // Every lane is below 2^16 now: the saturating pack is exact.
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded),
                                            _mm256_extracti128_si256(rounded, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
  // 16 bfloat16 as two float vectors from one load: the even elements (low halves of the 32-bit
  // lanes, shifted up) and the odd ones (high halves, masked). Half the loads and conversions of
  // load() twice; sum_tile keeps such a pair of accumulators in that order.
  static MYBAG_AVX2_INLINE __m256i pair_bits(const c10::BFloat16* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static MYBAG_AVX2_INLINE vec even(__m256i bits) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
  }
  static MYBAG_AVX2_INLINE vec odd(__m256i bits) {
    const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
    return _mm256_castsi256_ps(_mm256_and_si256(bits, high));
  }
  static MYBAG_AVX2_INLINE void store_pair(c10::BFloat16* p, vec even_values, vec odd_values) {
    const __m256i bits = _mm256_or_si256(round_bits(even_values),
                                         _mm256_slli_epi32(round_bits(odd_values), 16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bits);
  }
};

template <>
struct Lanes<c10::Half> : SixteenBitLanes<c10::Half, Lanes<c10::Half>> {
  static MYBAG_AVX2_INLINE vec load(const c10::Half* p) { return _mm256_cvtph_ps(bits(p)); }
  // Round to nearest even, as c10::Half (and torch's own vectorized conversion).
  static MYBAG_AVX2_INLINE void store(c10::Half* p, vec v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

MYBAG_AVX2_INLINE __m256i first_lanes_mask64(int n) {
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}

template <>
struct Lanes<double> {
  using acc_t = double;
  using vec = __m256d;
  using pos_vec = __m256i;  // int64 per lane
  using pos_t = int64_t;
  static constexpr int kWidth = 4;

  static MYBAG_AVX2_INLINE vec zero() { return _mm256_setzero_pd(); }
  static MYBAG_AVX2_INLINE vec set1(double x) { return _mm256_set1_pd(x); }
  static MYBAG_AVX2_INLINE vec add(vec a, vec b) { return _mm256_add_pd(a, b); }
  static MYBAG_AVX2_INLINE vec mul(vec a, vec b) { return _mm256_mul_pd(a, b); }
  static MYBAG_AVX2_INLINE vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_pd(a, b, c); }
  static MYBAG_AVX2_INLINE vec div(vec a, vec b) { return _mm256_div_pd(a, b); }
  static MYBAG_AVX2_INLINE vec takes(vec v, vec best) {
    const vec better =
        _mm256_or_pd(_mm256_cmp_pd(v, best, _CMP_GT_OQ), _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
    return _mm256_andnot_pd(_mm256_cmp_pd(best, best, _CMP_UNORD_Q), better);
  }
  static MYBAG_AVX2_INLINE vec blend(vec old_value, vec new_value, vec mask) {
    return _mm256_blendv_pd(old_value, new_value, mask);
  }
  static MYBAG_AVX2_INLINE pos_vec set1_pos(int64_t p) { return _mm256_set1_epi64x(p); }
  static MYBAG_AVX2_INLINE pos_vec blend_pos(pos_vec old_pos, pos_vec new_pos, vec mask) {
    return _mm256_castpd_si256(
        _mm256_blendv_pd(_mm256_castsi256_pd(old_pos), _mm256_castsi256_pd(new_pos), mask));
  }
  static MYBAG_AVX2_INLINE void store_pos(pos_t* out, pos_vec p) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), p);
  }
  static MYBAG_AVX2_INLINE vec load(const double* p) { return _mm256_loadu_pd(p); }
  static MYBAG_AVX2_INLINE vec load_part(const double* p, int n) {
    return _mm256_maskload_pd(p, first_lanes_mask64(n));
  }
  static MYBAG_AVX2_INLINE void store(double* p, vec v) { _mm256_storeu_pd(p, v); }
  static MYBAG_AVX2_INLINE void store_part(double* p, int n, vec v) {
    _mm256_maskstore_pd(p, first_lanes_mask64(n), v);
  }
};

// Vectors per column tile: the sum tile's accumulators (plus a partial one) and the max tile's
// values and winners (twice as many registers) stay within AVX2's 16.
constexpr int kSumTile = 8;
constexpr int kMaxTile = 4;

// One column tile of one bag in sum/mean mode: NV full vectors from column `col`, plus a partial
// vector of `part` columns when Part.
template <int NV, bool Part, typename scalar_t, typename index_t>
MYBAG_AVX2_INLINE bool sum_tile(const BagRange<scalar_t, index_t>& r, int64_t col, int part,
                                bool mean, scalar_t* out) {
  using L = Lanes<scalar_t>;
  using vec = typename L::vec;
  using acc_t = typename L::acc_t;
  constexpr int W = L::kWidth;
  constexpr int kAcc = NV + (Part ? 1 : 0);
  constexpr int kTileBytes = kAcc * W * static_cast<int>(sizeof(scalar_t));
  // bfloat16 columns in pairs of vectors (even and odd elements of 16), see Lanes.
  constexpr bool kPairs = std::is_same_v<scalar_t, c10::BFloat16>;
  vec acc[kAcc];
#pragma GCC unroll 16
  for (int k = 0; k < kAcc; ++k) acc[k] = L::zero();
  int64_t count = 0;
  const scalar_t* base = r.weight + col;
  for (int64_t i = r.begin; i < r.end; ++i) {
    r.template prefetch<kTileBytes>(i, col);
    const int64_t row = r.indices[i];
    // Range first: padding_idx is -1 when there is none, and a -1 index must not pass for it.
    if (r.out_of_range(row)) return false;
    if (row == r.padding_idx) continue;
    ++count;
    const scalar_t* values = base + row * r.row_stride;
    if (r.per_sample_weights != nullptr) {
      const vec scale = L::set1(static_cast<acc_t>(r.per_sample_weights[i]));
      if constexpr (kPairs) {
#pragma GCC unroll 16
        for (int k = 0; k + 1 < NV; k += 2) {
          const __m256i bits = L::pair_bits(values + k * W);
          acc[k] = L::fmadd(scale, L::even(bits), acc[k]);
          acc[k + 1] = L::fmadd(scale, L::odd(bits), acc[k + 1]);
        }
        if constexpr (NV % 2 == 1) {
          acc[NV - 1] = L::fmadd(scale, L::load(values + (NV - 1) * W), acc[NV - 1]);
        }
      } else {
#pragma GCC unroll 16
        for (int k = 0; k < NV; ++k) {
          acc[k] = L::fmadd(scale, L::load(values + k * W), acc[k]);
        }
      }
      if constexpr (Part) {
        acc[NV] = L::fmadd(scale, L::load_part(values + NV * W, part), acc[NV]);
      }
    } else {
      if constexpr (kPairs) {
#pragma GCC unroll 16
        for (int k = 0; k + 1 < NV; k += 2) {
          const __m256i bits = L::pair_bits(values + k * W);
          acc[k] = L::add(acc[k], L::even(bits));
          acc[k + 1] = L::add(acc[k + 1], L::odd(bits));
        }
        if constexpr (NV % 2 == 1) {
          acc[NV - 1] = L::add(acc[NV - 1], L::load(values + (NV - 1) * W));
        }
      } else {
#pragma GCC unroll 16
        for (int k = 0; k < NV; ++k) acc[k] = L::add(acc[k], L::load(values + k * W));
      }
      if constexpr (Part) acc[NV] = L::add(acc[NV], L::load_part(values + NV * W, part));
    }
  }
  if (mean && count > 0) {
    const vec divisor = L::set1(static_cast<acc_t>(count));
#pragma GCC unroll 16
    for (int k = 0; k < kAcc; ++k) acc[k] = L::div(acc[k], divisor);
  }
  if constexpr (kPairs) {
#pragma GCC unroll 16
    for (int k = 0; k + 1 < NV; k += 2) L::store_pair(out + col + k * W, acc[k], acc[k + 1]);
    if constexpr (NV % 2 == 1) L::store(out + col + (NV - 1) * W, acc[NV - 1]);
  } else {
#pragma GCC unroll 16
    for (int k = 0; k < NV; ++k) L::store(out + col + k * W, acc[k]);
  }
  if constexpr (Part) L::store_part(out + col + NV * W, part, acc[NV]);
  return true;
}

// One column tile of one bag in max mode; the rule of max_reduce in forward.cpp, lane by lane.
template <int NV, bool Part, typename scalar_t, typename index_t>
MYBAG_AVX2_INLINE bool max_tile(const BagRange<scalar_t, index_t>& r, int64_t col, int part,
                                scalar_t* out, int64_t* out_winner) {
  using L = Lanes<scalar_t>;
  using vec = typename L::vec;
  using pos_vec = typename L::pos_vec;
  constexpr int W = L::kWidth;
  constexpr int kAcc = NV + (Part ? 1 : 0);
  constexpr int kTileBytes = kAcc * W * static_cast<int>(sizeof(scalar_t));
  const int64_t width = NV * W + (Part ? part : 0);
  const scalar_t* base = r.weight + col;
  int64_t i = r.begin;
  // Leading padding (an out-of-range index stops here and fails below: padding_idx is -1 when
  // there is none, and a -1 index must not pass for it).
  for (; i < r.end && !r.out_of_range(r.indices[i]) && r.indices[i] == r.padding_idx; ++i) {
    r.template prefetch<kTileBytes>(i, col);
  }
  if (i == r.end) {  // empty, or padding only
    for (int64_t j = 0; j < width; ++j) {
      out[col + j] = scalar_t(0);
      out_winner[col + j] = -1;
    }
    return true;
  }
  vec best[kAcc];
  pos_vec pos[kAcc];
  {
    r.template prefetch<kTileBytes>(i, col);
    if (r.out_of_range(r.indices[i])) return false;
    const scalar_t* values = base + r.indices[i] * r.row_stride;
    const pos_vec here = L::set1_pos(i - r.begin);
#pragma GCC unroll 16
    for (int k = 0; k < NV; ++k) {
      best[k] = L::load(values + k * W);
      pos[k] = here;
    }
    if constexpr (Part) {
      best[NV] = L::load_part(values + NV * W, part);
      pos[NV] = here;
    }
  }
  for (++i; i < r.end; ++i) {
    r.template prefetch<kTileBytes>(i, col);
    const int64_t row = r.indices[i];
    // Range first: padding_idx is -1 when there is none, and a -1 index must not pass for it.
    if (r.out_of_range(row)) return false;
    if (row == r.padding_idx) continue;
    const scalar_t* values = base + row * r.row_stride;
    const pos_vec here = L::set1_pos(i - r.begin);
#pragma GCC unroll 16
    for (int k = 0; k < kAcc; ++k) {
      const vec v =
          (Part && k == NV) ? L::load_part(values + k * W, part) : L::load(values + k * W);
      const vec mask = L::takes(v, best[k]);
      best[k] = L::blend(best[k], v, mask);
      pos[k] = L::blend_pos(pos[k], here, mask);
    }
  }
  typename L::pos_t winner_pos[kAcc * W];
#pragma GCC unroll 16
  for (int k = 0; k < NV; ++k) L::store(out + col + k * W, best[k]);
  if constexpr (Part) L::store_part(out + col + NV * W, part, best[NV]);
#pragma GCC unroll 16
  for (int k = 0; k < kAcc; ++k) L::store_pos(winner_pos + k * W, pos[k]);
  for (int64_t j = 0; j < width; ++j) {
    out_winner[col + j] = static_cast<int64_t>(r.indices[r.begin + winner_pos[j]]);
  }
  return true;
}

// Runs Tile<NV, Part> for the last tile of a row: NV = full vectors left (0..kTile).
template <int kTile, template <int, bool> class Tile, typename... Args>
MYBAG_AVX2_INLINE bool last_tile(int full, bool part, Args&&... args) {
  if constexpr (kTile > 0) {
    if (full == kTile) {
      return part ? Tile<kTile, true>::run(args...) : Tile<kTile, false>::run(args...);
    }
    return last_tile<kTile - 1, Tile>(full, part, args...);
  } else {
    return part ? Tile<0, true>::run(args...) : true;
  }
}

template <typename scalar_t, typename index_t>
struct SumTiles {
  template <int NV, bool Part>
  struct Tile {
    static MYBAG_AVX2_INLINE bool run(const BagRange<scalar_t, index_t>& r, int64_t col, int part,
                                      bool mean, scalar_t* out) {
      return sum_tile<NV, Part>(r, col, part, mean, out);
    }
  };
};

template <typename scalar_t, typename index_t>
struct MaxTiles {
  template <int NV, bool Part>
  struct Tile {
    static MYBAG_AVX2_INLINE bool run(const BagRange<scalar_t, index_t>& r, int64_t col, int part,
                                      scalar_t* out, int64_t* out_winner) {
      return max_tile<NV, Part>(r, col, part, out, out_winner);
    }
  };
};

template <typename scalar_t, typename index_t>
MYBAG_AVX2 bool sum_bags(const ForwardArgs<scalar_t, index_t>& a, bool mean, int64_t first,
                         int64_t last) {
  constexpr int W = Lanes<scalar_t>::kWidth;
  const int64_t distance = prefetch_distance(a.dim * static_cast<int64_t>(sizeof(scalar_t)));
  const int64_t full = a.dim / W;
  const int part = static_cast<int>(a.dim % W);
  auto r = bag_range(a, distance);
  for (int64_t bag = first; bag < last; ++bag) {
    r.select(a.layout, bag);
    scalar_t* out = a.output + bag * a.dim;
    int64_t done = 0;  // full vectors
    while (full - done > kSumTile || (full - done == kSumTile && part == 0)) {
      if (!sum_tile<kSumTile, false>(r, done * W, 0, mean, out)) return false;
      done += kSumTile;
    }
    if (!last_tile<kSumTile, SumTiles<scalar_t, index_t>::template Tile>(
            static_cast<int>(full - done), part != 0, r, done * W, part, mean, out)) {
      return false;
    }
  }
  return true;
}

template <typename scalar_t, typename index_t>
MYBAG_AVX2 bool max_bags(const ForwardArgs<scalar_t, index_t>& a, int64_t first, int64_t last) {
  constexpr int W = Lanes<scalar_t>::kWidth;
  const int64_t distance = prefetch_distance(a.dim * static_cast<int64_t>(sizeof(scalar_t)));
  const int64_t full = a.dim / W;
  const int part = static_cast<int>(a.dim % W);
  auto r = bag_range(a, distance);
  for (int64_t bag = first; bag < last; ++bag) {
    r.select(a.layout, bag);
    scalar_t* out = a.output + bag * a.dim;
    int64_t* out_winner = a.max_indices + bag * a.dim;
    int64_t done = 0;
    while (full - done > kMaxTile || (full - done == kMaxTile && part == 0)) {
      if (!max_tile<kMaxTile, false>(r, done * W, 0, out, out_winner)) return false;
      done += kMaxTile;
    }
    if (!last_tile<kMaxTile, MaxTiles<scalar_t, index_t>::template Tile>(
            static_cast<int>(full - done), part != 0, r, done * W, part, out, out_winner)) {
      return false;
    }
  }
  return true;
}

// Out-of-range indices, counted 4 (int64) or 8 (int32) at a time: below 0 or above max.
MYBAG_AVX2 int64_t count_out_of_range(const int64_t* indices, int64_t n, int64_t num_weights) {
  const __m256i max = _mm256_set1_epi64x(num_weights - 1);
  const __m256i zero = _mm256_setzero_si256();
  __m256i bad = zero;  // -1 per bad lane, summed
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + i));
    const __m256i out = _mm256_or_si256(_mm256_cmpgt_epi64(v, max), _mm256_cmpgt_epi64(zero, v));
    bad = _mm256_sub_epi64(bad, out);
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), bad);
  int64_t count = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < n; ++i) count += indices[i] < 0 || indices[i] >= num_weights;
  return count;
}

MYBAG_AVX2 int64_t count_out_of_range(const int32_t* indices, int64_t n, int64_t num_weights) {
  if (num_weights > std::numeric_limits<int32_t>::max()) {  // only negatives are out of range
    num_weights = int64_t{std::numeric_limits<int32_t>::max()} + 1;
  }
  const __m256i max = _mm256_set1_epi32(static_cast<int32_t>(num_weights - 1));
  const __m256i zero = _mm256_setzero_si256();
  int64_t count = 0;
  int64_t i = 0;
  while (i + 8 <= n) {
    // Per-lane int32 counters, emptied before they could overflow.
    __m256i bad = zero;
    const int64_t stop = std::min<int64_t>(n - 7, i + (int64_t{1} << 30));
    for (; i < stop; i += 8) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + i));
      const __m256i out = _mm256_or_si256(_mm256_cmpgt_epi32(v, max), _mm256_cmpgt_epi32(zero, v));
      bad = _mm256_sub_epi32(bad, out);
    }
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), bad);
    for (int j = 0; j < 8; ++j) count += lanes[j];
  }
  for (; i < n; ++i) count += indices[i] < 0 || indices[i] >= num_weights;
  return count;
}

template <typename scalar_t, typename acc_t>
MYBAG_AVX2 void scale_row(scalar_t* out, const scalar_t* in, acc_t scale, int64_t dim) {
  using L = Lanes<scalar_t>;
  constexpr int W = L::kWidth;
  const auto s = L::set1(scale);
  int64_t d = 0;
  for (; d + W <= dim; d += W) L::store(out + d, L::mul(s, L::load(in + d)));
  if (d < dim) {
    const int n = static_cast<int>(dim - d);
    L::store_part(out + d, n, L::mul(s, L::load_part(in + d, n)));
  }
}

}  // namespace

bool avx2_forward_applies(int64_t col_stride, int64_t num_indices, bool max_mode) {
  // Max mode keeps a winner's position in its bag in an int32 lane for float-wide types.
  return use_avx2() && col_stride == 1 &&
         (!max_mode || num_indices <= std::numeric_limits<int32_t>::max());
}

template <typename scalar_t, typename index_t>
bool sum_bags_avx2(const ForwardArgs<scalar_t, index_t>& a, bool mean, int64_t first,
                   int64_t last) {
  if (cpu_isa() == CpuIsa::Avx512) return sum_bags_avx512(a, mean, first, last);
  return sum_bags(a, mean, first, last);
}

template <typename scalar_t, typename index_t>
bool max_bags_avx2(const ForwardArgs<scalar_t, index_t>& a, int64_t first, int64_t last) {
  return max_bags(a, first, last);
}

template <typename index_t>
int64_t count_out_of_range_avx2(const index_t* indices, int64_t n, int64_t num_weights) {
  return use_avx2() ? count_out_of_range(indices, n, num_weights) : -1;
}

template <typename scalar_t, typename acc_t>
bool scale_row_avx2(scalar_t* out, const scalar_t* in, acc_t scale, int64_t dim) {
  if (!use_avx2()) return false;
  scale_row(out, in, scale, dim);
  return true;
}

#else  // no AVX2 kernels on this architecture

bool avx2_forward_applies(int64_t, int64_t, bool) { return false; }

template <typename scalar_t, typename index_t>
bool sum_bags_avx2(const ForwardArgs<scalar_t, index_t>&, bool, int64_t, int64_t) {
  TORCH_INTERNAL_ASSERT(false, "mybag: no AVX2 kernels in this build");
  return false;
}

template <typename scalar_t, typename index_t>
bool max_bags_avx2(const ForwardArgs<scalar_t, index_t>&, int64_t, int64_t) {
  TORCH_INTERNAL_ASSERT(false, "mybag: no AVX2 kernels in this build");
  return false;
}

template <typename index_t>
int64_t count_out_of_range_avx2(const index_t*, int64_t, int64_t) {
  return -1;
}

template <typename scalar_t, typename acc_t>
bool scale_row_avx2(scalar_t*, const scalar_t*, acc_t, int64_t) {
  return false;
}

#endif

#define MYBAG_INSTANTIATE_FORWARD(scalar_t, index_t)                                      \
  template bool sum_bags_avx2(const ForwardArgs<scalar_t, index_t>&, bool, int64_t, int64_t); \
  template bool max_bags_avx2(const ForwardArgs<scalar_t, index_t>&, int64_t, int64_t);
#define MYBAG_INSTANTIATE(scalar_t, acc_t)                                            \
  MYBAG_INSTANTIATE_FORWARD(scalar_t, int32_t)                                        \
  MYBAG_INSTANTIATE_FORWARD(scalar_t, int64_t)                                        \
  template bool scale_row_avx2(scalar_t*, const scalar_t*, acc_t, int64_t);

template int64_t count_out_of_range_avx2(const int32_t*, int64_t, int64_t);
template int64_t count_out_of_range_avx2(const int64_t*, int64_t, int64_t);
MYBAG_INSTANTIATE(float, float)
MYBAG_INSTANTIATE(double, double)
MYBAG_INSTANTIATE(c10::Half, float)
MYBAG_INSTANTIATE(c10::BFloat16, float)

}  // namespace mybag::cpu
