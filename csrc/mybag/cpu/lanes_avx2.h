// Lanes<scalar_t> for AVX2: how scalar_t elements load into, and store from, a vector of their
// accumulation type (float for float, half and bfloat16; double for double), and the lane
// operations the AVX2 kernels need (forward_avx2.cpp, entry_grads_avx2.cpp). load_part/store_part
// touch only the first n < width elements.
//
// Every function here is compiled for AVX2 (MYBAG_AVX2_INLINE) and always inlined; include this
// only from a file whose AVX2 functions call it, after that file's
// `#pragma GCC optimize("fp-contract=off")` (the including files share these inline
// definitions, so they must see them under the same options).
#pragma once

#include "mybag/cpu/isa.h"

#if MYBAG_X86_SIMD

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdint>

namespace mybag::cpu::avx2 {

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
  // Round to nearest even, NaN to 0x7FC0: c10::BFloat16's conversion, lane by lane (the bits
  // in the low half of each 32-bit lane). The recipe of bfloat16_rounding.h, in intrinsics: the
  // shared vector-arithmetic version made GCC build its constants anew at every store of the
  // AVX2 sum, which showed on cached tables with short bfloat16 rows.
  static MYBAG_AVX2_INLINE __m256i round_bits(vec v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
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

}  // namespace mybag::cpu::avx2

#endif  // MYBAG_X86_SIMD
