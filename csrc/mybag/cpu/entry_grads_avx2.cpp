// The AVX2 kernel of the per-entry gradient (entry_grads.cpp), compiled for AVX2, F16C and FMA (MYBAG_AVX2, isa.h); the file
// as a whole stays baseline.
// A multiply and a store: nothing to contract, but lanes_avx2.h is read under the same options
// as in forward_avx2.cpp.
#pragma GCC optimize("fp-contract=off")

#include "mybag/cpu/entry_grads_avx2.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "mybag/cpu/isa.h"
#include "mybag/cpu/lanes_avx2.h"

namespace mybag::cpu {

#if MYBAG_X86_SIMD

namespace {

template <typename scalar_t, typename acc_t>
MYBAG_AVX2 void scale_row(scalar_t* out, const scalar_t* in, acc_t scale, int64_t dim) {
  using L = avx2::Lanes<scalar_t>;
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

template <typename scalar_t, typename acc_t>
bool scale_row_avx2(scalar_t* out, const scalar_t* in, acc_t scale, int64_t dim) {
  if (!use_avx2()) return false;
  scale_row(out, in, scale, dim);
  return true;
}

#else  // no AVX2 kernels on this architecture

template <typename scalar_t, typename acc_t>
bool scale_row_avx2(scalar_t*, const scalar_t*, acc_t, int64_t) {
  return false;
}

#endif

template bool scale_row_avx2(float*, const float*, float, int64_t);
template bool scale_row_avx2(double*, const double*, double, int64_t);
template bool scale_row_avx2(c10::Half*, const c10::Half*, float, int64_t);
template bool scale_row_avx2(c10::BFloat16*, const c10::BFloat16*, float, int64_t);

}  // namespace mybag::cpu
