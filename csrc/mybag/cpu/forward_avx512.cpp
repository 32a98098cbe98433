// The AVX-512 forward kernels, for sum and mean (forward_kernels.h; max runs the AVX2 kernel),
// compiled for AVX-512F/BW/VL (MYBAG_AVX512, isa.h); the file as a whole stays baseline.
//
// Why: on a CPU with AVX-512, torch's sum (FBGEMM's JIT kernel) adds 16 floats per instruction,
// and the AVX2 kernel, doing twice the instructions per row, falls behind it.
//
// Design: as the AVX2 sum tile. A bag's accumulators stay in zmm registers: the row is cut into
// tiles of up to kSumTile vectors (256 floats, 128 doubles), each tile walks the bag's entries
// once and is stored once, converted to weight's dtype. The row's last vector is a masked load
// (and masked store) whose mask covers the columns left (all of them when dim is a multiple of
// the width), so a tile is specialized only on its number of vectors, and the shape of the last
// tile is chosen once per call. Each tile prefetches its own columns of the row a few entries
// ahead (bag_range.h), one prefetch per 64-byte line, placed among the row's loads.
//
// Not one source compiled once per ISA with the AVX2 sum (PyTorch's way): the two differ where
// their speed comes from. AVX-512 has 32 registers and masked loads and stores of 16-bit lanes, so
// its tiles are twice as long, its last vector is masked, and each last-tile shape gets a bag
// loop of its own, specialized on per_sample_weights and padding; AVX2 has 16 registers and no
// masked 16-bit loads, so its partial vectors go through a buffer and bfloat16 is read in
// even/odd pairs. Each was tuned against FBGEMM on its own ISA. What they have in common is
// written once: the ISA choice (isa.h), BagRange and the prefetch policy (bag_range.h). (The
// bfloat16 rounding is shared only in its recipe: see bfloat16_rounding.h.)
//
// Same bits as the portable loops and the AVX2 kernels: entry order, per column; a plain sum
// adds, a weighted sum does one fused multiply-add per element (the portable loops' std::fma).
// GCC's intrinsics are plain vector operators that it would otherwise contract on its own,
// wherever a multiply meets an add: contraction is off, and the only FMAs are the explicit fmadd
// calls.
#pragma GCC optimize("fp-contract=off")
// GCC 12's own _mm512_undefined_* (in its cvtph and cvtepi32_epi16 intrinsics) trips
// -Wmaybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "mybag/cpu/forward_kernels.h"

#if MYBAG_X86_SIMD

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdint>

#include "mybag/cpu/bag_range.h"
#include "mybag/cpu/bfloat16_rounding.h"

namespace mybag::cpu {
namespace {

// Lanes<scalar_t>: scalar_t elements in a zmm vector of their accumulation type (float for
// float, half and bfloat16; double for double). load/store touch only the lanes in mask.
template <typename scalar_t>
struct Lanes;

struct FloatLanes {
  using acc_t = float;
  using vec = __m512;
  using mask_t = __mmask16;
  static constexpr int kWidth = 16;
  static MYBAG_AVX512_INLINE vec zero() { return _mm512_setzero_ps(); }
  static MYBAG_AVX512_INLINE vec set1(float x) { return _mm512_set1_ps(x); }
  static MYBAG_AVX512_INLINE vec add(vec a, vec b) {
    return _mm512_add_ps(a, b);
  }
  // a * b + c, rounded once.
  static MYBAG_AVX512_INLINE vec fmadd(vec a, vec b, vec c) {
    return _mm512_fmadd_ps(a, b, c);
  }
  static MYBAG_AVX512_INLINE vec div(vec a, vec b) {
    return _mm512_div_ps(a, b);
  }
  static MYBAG_AVX512_INLINE mask_t first(int n) {
    return static_cast<mask_t>(n >= 16 ? 0xFFFFu : (1u << n) - 1u);
  }
};

template <>
struct Lanes<float> : FloatLanes {
  static MYBAG_AVX512_INLINE vec broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static MYBAG_AVX512_INLINE vec load(const float* p) { return _mm512_loadu_ps(p); }
  static MYBAG_AVX512_INLINE vec load(const float* p, mask_t m) {
    return _mm512_maskz_loadu_ps(m, p);
  }
  static MYBAG_AVX512_INLINE void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static MYBAG_AVX512_INLINE void store(float* p, vec v, mask_t m) {
    _mm512_mask_storeu_ps(p, m, v);
  }
};

template <>
struct Lanes<c10::BFloat16> : FloatLanes {
  static MYBAG_AVX512_INLINE vec widen(__m256i bits) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  // *p in every lane (c10's conversion is this shift, done here without leaving the vectors).
  static MYBAG_AVX512_INLINE vec broadcast(const c10::BFloat16* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_set1_epi32(p->x), 16));
  }
  static MYBAG_AVX512_INLINE vec load(const c10::BFloat16* p) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static MYBAG_AVX512_INLINE vec load(const c10::BFloat16* p, mask_t m) {
    return widen(_mm256_maskz_loadu_epi16(m, p));
  }
  // Round to nearest even, NaN to 0x7FC0: c10::BFloat16's conversion (bfloat16_rounding.h).
  static MYBAG_AVX512_INLINE __m256i narrow(vec v) {
    U32x16 rounded;
    round_to_bfloat16(v, rounded);
    return _mm512_cvtepi32_epi16(reinterpret_cast<__m512i>(rounded));
  }
  static MYBAG_AVX512_INLINE void store(c10::BFloat16* p, vec v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(v));
  }
  static MYBAG_AVX512_INLINE void store(c10::BFloat16* p, vec v, mask_t m) {
    _mm256_mask_storeu_epi16(p, m, narrow(v));
  }
};

template <>
struct Lanes<c10::Half> : FloatLanes {
  // *p in every lane, through F16C as the rows (c10::Half's scalar conversion is a software
  // routine in this baseline-compiled file, many instructions per entry).
  static MYBAG_AVX512_INLINE vec broadcast(const c10::Half* p) {
    return _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(p->x)));
  }
  static MYBAG_AVX512_INLINE vec load(const c10::Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static MYBAG_AVX512_INLINE vec load(const c10::Half* p, mask_t m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
  // Round to nearest even, as c10::Half (and the AVX2 kernel).
  static MYBAG_AVX512_INLINE __m256i narrow(vec v) {
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static MYBAG_AVX512_INLINE void store(c10::Half* p, vec v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(v));
  }
  static MYBAG_AVX512_INLINE void store(c10::Half* p, vec v, mask_t m) {
    _mm256_mask_storeu_epi16(p, m, narrow(v));
  }
};

template <>
struct Lanes<double> {
  using acc_t = double;
  using vec = __m512d;
  using mask_t = __mmask8;
  static constexpr int kWidth = 8;
  static MYBAG_AVX512_INLINE vec zero() { return _mm512_setzero_pd(); }
  static MYBAG_AVX512_INLINE vec set1(double x) { return _mm512_set1_pd(x); }
  static MYBAG_AVX512_INLINE vec add(vec a, vec b) {
    return _mm512_add_pd(a, b);
  }
  static MYBAG_AVX512_INLINE vec fmadd(vec a, vec b, vec c) {
    return _mm512_fmadd_pd(a, b, c);
  }
  static MYBAG_AVX512_INLINE vec div(vec a, vec b) {
    return _mm512_div_pd(a, b);
  }
  static MYBAG_AVX512_INLINE mask_t first(int n) {
    return static_cast<mask_t>(n >= 8 ? 0xFFu : (1u << n) - 1u);
  }
  static MYBAG_AVX512_INLINE vec broadcast(const double* p) { return _mm512_set1_pd(*p); }
  static MYBAG_AVX512_INLINE vec load(const double* p) { return _mm512_loadu_pd(p); }
  static MYBAG_AVX512_INLINE vec load(const double* p, mask_t m) {
    return _mm512_maskz_loadu_pd(m, p);
  }
  static MYBAG_AVX512_INLINE void store(double* p, vec v) { _mm512_storeu_pd(p, v); }
  static MYBAG_AVX512_INLINE void store(double* p, vec v, mask_t m) {
    _mm512_mask_storeu_pd(p, m, v);
  }
};

// Vectors per column tile: its accumulators stay within AVX-512's 32 registers with room for
// the loaded values.
constexpr int kSumTile = 16;

// One column tile of one bag: NV vectors from column `col`, the last one masked by `last`.
// kPadding: whether the call has a padding_idx to skip (without one, the loop holds neither it
// nor a count in a register: GCC had run out of general registers and parked pointers in xmm).
template <int NV, bool kScaled, bool kPadding, typename scalar_t, typename index_t>
MYBAG_AVX512_INLINE bool sum_tile(const BagRange<scalar_t, index_t>& r, int64_t col,
                                  typename Lanes<scalar_t>::mask_t last, bool mean,
                                  scalar_t* out) {
  using L = Lanes<scalar_t>;
  using vec = typename L::vec;
  using acc_t = typename L::acc_t;
  constexpr int W = L::kWidth;
  constexpr int kVectorBytes = W * static_cast<int>(sizeof(scalar_t));
  vec acc[NV];
#pragma GCC unroll 32
  for (int k = 0; k < NV; ++k) acc[k] = L::zero();
  int64_t count = kPadding ? 0 : r.end - r.begin;
  // Rows are addressed in bytes from one base, the row read and the row prefetched alike.
  const uintptr_t base = reinterpret_cast<uintptr_t>(r.weight + col);
  const uintptr_t row_bytes = static_cast<uintptr_t>(r.row_stride) * sizeof(scalar_t);
  for (int64_t i = r.begin; i < r.end; ++i) {
    const int64_t row = r.indices[i];
    // Range first: padding_idx is -1 when there is none, and a -1 index must not pass for it.
    if (r.out_of_range(row)) return false;
    if constexpr (kPadding) {
      if (row == r.padding_idx) continue;
      ++count;
    }
    const auto* values = reinterpret_cast<const scalar_t*>(base + row * row_bytes);
    const char* next = reinterpret_cast<const char*>(base + r.row_ahead(i) * row_bytes);
    const vec scale = kScaled ? L::broadcast(r.per_sample_weights + i) : L::zero();
    // Vector k, then the k-th 64-byte line of the row `distance` entries on: FBGEMM's order,
    // which keeps each request off the path to this row's loads.
#pragma GCC unroll 32
    for (int k = 0; k < NV; ++k) {
      const vec v = k + 1 < NV ? L::load(values + k * W) : L::load(values + k * W, last);
      acc[k] = kScaled ? L::fmadd(scale, v, acc[k]) : L::add(acc[k], v);
      if ((k * kVectorBytes) % 64 == 0) prefetch_lines<64>(next + k * kVectorBytes);
    }
  }
  if (mean && count > 0) {
    const vec divisor = L::set1(static_cast<acc_t>(count));
#pragma GCC unroll 32
    for (int k = 0; k < NV; ++k) acc[k] = L::div(acc[k], divisor);
  }
#pragma GCC unroll 32
  for (int k = 0; k + 1 < NV; ++k) L::store(out + col + k * W, acc[k]);
  L::store(out + col + (NV - 1) * W, acc[NV - 1], last);
  return true;
}

// Bags [first, last) whose rows end in a tile of NV vectors (after any full tiles of kSumTile).
// One function per NV, chosen once per call (dim is the same for every bag): kept out of line,
// each bag loop has the registers to itself (all tile shapes inlined into one function, GCC
// spilled the loop's invariants to the stack and to vector registers).
template <int NV, bool kScaled, bool kPadding, typename scalar_t, typename index_t>
MYBAG_AVX512 __attribute__((noinline)) bool sum_bags_ending_in(
    const ForwardArgs<scalar_t, index_t>& a, bool mean, int64_t first, int64_t last) {
  using L = Lanes<scalar_t>;
  constexpr int W = L::kWidth;
  const int64_t distance = prefetch_distance(a.dim * static_cast<int64_t>(sizeof(scalar_t)));
  const int64_t full_tiles = (a.dim - 1) / (W * kSumTile);
  const auto all = L::first(W);
  const auto tail = L::first(static_cast<int>(a.dim - (full_tiles * kSumTile + NV - 1) * W));
  auto r = bag_range(a, distance);
  if (full_tiles == 0) {  // rows of one tile (up to 256 floats): a loop of its own, lighter
    for (int64_t bag = first; bag < last; ++bag) {
      r.select(a.layout, bag);
      if (!sum_tile<NV, kScaled, kPadding>(r, 0, tail, mean, a.output + bag * a.dim)) {
        return false;
      }
    }
    return true;
  }
  for (int64_t bag = first; bag < last; ++bag) {
    r.select(a.layout, bag);
    scalar_t* out = a.output + bag * a.dim;
    for (int64_t t = 0; t < full_tiles; ++t) {
      if (!sum_tile<kSumTile, kScaled, kPadding>(r, t * kSumTile * W, all, mean, out)) return false;
    }
    if (!sum_tile<NV, kScaled, kPadding>(r, full_tiles * kSumTile * W, tail, mean, out)) return false;
  }
  return true;
}

// Runs sum_bags_ending_in<NV> for NV = n (1..kSumTile).
template <int NV, bool kScaled, bool kPadding, typename scalar_t, typename index_t>
MYBAG_AVX512_INLINE bool sum_bags_ending(int n, const ForwardArgs<scalar_t, index_t>& a,
                                         bool mean, int64_t first, int64_t last) {
  if constexpr (NV > 1) {
    if (n < NV) return sum_bags_ending<NV - 1, kScaled, kPadding>(n, a, mean, first, last);
  }
  return sum_bags_ending_in<NV, kScaled, kPadding>(a, mean, first, last);
}

template <bool kScaled, typename scalar_t, typename index_t>
MYBAG_AVX512 bool sum_bags(const ForwardArgs<scalar_t, index_t>& a, bool mean, int64_t first,
                           int64_t last) {
  constexpr int W = Lanes<scalar_t>::kWidth;
  const int64_t vectors = (a.dim + W - 1) / W;
  const int64_t last_tile = vectors - (vectors - 1) / kSumTile * kSumTile;  // 1..kSumTile
  const int n = static_cast<int>(last_tile);
  return a.padding_idx >= 0 ? sum_bags_ending<kSumTile, kScaled, true>(n, a, mean, first, last)
                            : sum_bags_ending<kSumTile, kScaled, false>(n, a, mean, first, last);
}

}  // namespace

template <typename scalar_t, typename index_t>
bool sum_bags_avx512(const ForwardArgs<scalar_t, index_t>& a, Mode mode, int64_t first,
                     int64_t last) {
  const bool mean = mode == Mode::Mean;
  return a.per_sample_weights != nullptr ? sum_bags<true>(a, mean, first, last)
                                         : sum_bags<false>(a, mean, first, last);
}

#define MYBAG_INSTANTIATE(scalar_t, index_t) \
  template bool sum_bags_avx512(const ForwardArgs<scalar_t, index_t>&, Mode, int64_t, int64_t);
MYBAG_FOR_FORWARD_TYPES(MYBAG_INSTANTIATE)

}  // namespace mybag::cpu

#endif  // MYBAG_X86_SIMD
