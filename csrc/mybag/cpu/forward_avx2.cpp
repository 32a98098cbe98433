// The AVX2 forward kernels (sum, mean and max; forward_kernels.h), compiled for AVX2, F16C and
// FMA (MYBAG_AVX2, isa.h); the file as a whole stays baseline.
//
// Design: a bag's accumulator stays in registers. The columns are cut into tiles of up to
// kSumTile vectors (64 floats, 32 doubles); each tile walks the bag's entries once, adding rows
// straight from the table, and is stored once at the end, converted to weight's dtype. The last
// tile carries the row's remainder (dim % lanes) as one partial vector. Each tile prefetches its
// own columns of the row a few entries ahead (bag_range.h), and checks each index it reads.
//
// Same bits as the portable loops: entry order, per column; a plain sum adds, a weighted sum does
// one fused multiply-add per element. GCC's intrinsics are plain vector operators, which it would
// contract into FMAs: contraction is off, and the only FMAs are the explicit fmadd calls.
#pragma GCC optimize("fp-contract=off")

#include "mybag/cpu/forward_kernels.h"

#if MYBAG_X86_SIMD

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "mybag/cpu/bag_range.h"
#include "mybag/cpu/lanes_avx2.h"
#include "mybag/cpu/tiles_avx2.h"

namespace mybag::cpu {
namespace {

using avx2::Lanes;

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

// One column tile of one bag in max mode; the rule of max_bags_portable, lane by lane.
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

}  // namespace

template <typename scalar_t, typename index_t>
bool sum_bags_avx2(const ForwardArgs<scalar_t, index_t>& a, Mode mode, int64_t first,
                   int64_t last) {
  return sum_bags(a, mode == Mode::Mean, first, last);
}

template <typename scalar_t, typename index_t>
bool max_bags_avx2(const ForwardArgs<scalar_t, index_t>& a, Mode /*mode*/, int64_t first,
                   int64_t last) {
  return max_bags(a, first, last);
}

#define MYBAG_INSTANTIATE(scalar_t, index_t)                                                     \
  template bool sum_bags_avx2(const ForwardArgs<scalar_t, index_t>&, Mode, int64_t, int64_t); \
  template bool max_bags_avx2(const ForwardArgs<scalar_t, index_t>&, Mode, int64_t, int64_t);
MYBAG_FOR_FORWARD_TYPES(MYBAG_INSTANTIATE)

}  // namespace mybag::cpu

#endif  // MYBAG_X86_SIMD
