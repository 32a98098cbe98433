// float -> bfloat16 for the SIMD kernels, for any vector width: round to nearest even, NaN to
// 0x7FC0, as c10::BFloat16's conversion. Plain GCC vector arithmetic, no intrinsics and no
// target attribute: inlined into a kernel, it is compiled for that kernel's ISA. Baseline on its
// own.
//
// The AVX-512 kernel uses it (a compare into a mask register and a merge-masked shift, leaner
// than its former intrinsics). The AVX2 Lanes (lanes_avx2.h) write the same recipe in
// intrinsics: with this version GCC rebuilt the constants at every store of the AVX2 sum, which
// showed on cached tables with short bfloat16 rows.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace mybag::cpu {

// 8 and 16 uint32 lanes: the integer view of an AVX2 and an AVX-512 float vector.
typedef uint32_t U32x8 __attribute__((vector_size(32)));
typedef uint32_t U32x16 __attribute__((vector_size(64)));

// bits = the bfloat16 nearest each lane of v, in the low half of each 32-bit lane (the high
// half zero). uint_vec is U32x8 for __m256, U32x16 for __m512. (Vectors go by reference: by
// value, a baseline function taking them has an ABI GCC warns about, though this is always
// inlined.)
template <typename uint_vec, typename float_vec>
C10_ALWAYS_INLINE void round_to_bfloat16(const float_vec& v, uint_vec& bits) {
  const uint_vec u = reinterpret_cast<uint_vec>(v);
  const uint_vec odd = (u >> 16) & 1;
  const uint_vec rounded = (u + odd + 0x7FFF) >> 16;
  bits = v != v ? uint_vec{} + 0x7FC0 : rounded;  // v != v: NaN
}

}  // namespace mybag::cpu
