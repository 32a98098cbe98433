#include "mybag/cpu/value_checks.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "mybag/checks.h"
#include "mybag/cpu/isa.h"

#if MYBAG_X86_SIMD
#include <immintrin.h>
#endif

namespace mybag::cpu {

namespace {

#if MYBAG_X86_SIMD
// Out-of-range indices, counted 4 (int64) or 8 (int32) at a time: below 0 or above max.
MYBAG_AVX2 int64_t count_out_of_range_avx2(const int64_t* indices, int64_t n,
                                           int64_t num_weights) {
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

MYBAG_AVX2 int64_t count_out_of_range_avx2(const int32_t* indices, int64_t n,
                                           int64_t num_weights) {
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
#endif

// Number of indices outside [0, num_weights), with AVX2 where the CPU has it.
template <typename index_t>
int64_t count_out_of_range(const index_t* indices, int64_t n, int64_t num_weights,
                           bool avx2) {
#if MYBAG_X86_SIMD
  if (avx2) return count_out_of_range_avx2(indices, n, num_weights);
#endif
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += indices[i] < 0 || indices[i] >= num_weights;
  return count;
}

template <typename index_t>
void check_indices(const index_t* indices, int64_t n, int64_t num_weights) {
  // The common case is all-valid: establish that with one parallel pass, and only then look
  // for the first bad entry to name it.
  const bool avx2 = use_avx2();
  const int64_t bad = at::parallel_reduce(
      0, n, int64_t{1} << 15, int64_t{0},
      [&](int64_t first, int64_t last, int64_t count) {
        return count + count_out_of_range(indices + first, last - first, num_weights, avx2);
      },
      [](int64_t a, int64_t b) { return a + b; });
  if (bad == 0) {
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (indices[i] < 0 || indices[i] >= num_weights) {
      fail_index_out_of_range(i, indices[i], num_weights);
    }
  }
}

template <typename index_t>
void check_offsets(const index_t* offsets, int64_t count, int64_t num_indices) {
  if (count == 0) {
    return;
  }
  if (offsets[0] != 0) {
    fail_first_offset(offsets[0]);
  }
  for (int64_t b = 1; b < count; ++b) {
    if (offsets[b] < offsets[b - 1]) {
      fail_decreasing_offsets(b, offsets[b], offsets[b - 1]);
    }
  }
  // Offsets are non-decreasing now, so the last one bounds them all.
  if (offsets[count - 1] > num_indices) {
    int64_t b = 0;
    while (offsets[b] <= num_indices) ++b;
    fail_offset_past_end(b, offsets[b], num_indices);
  }
}

}  // namespace

void check_offset_values(const at::Tensor& input, const std::optional<at::Tensor>& offsets) {
  if (input.dim() == 1 && offsets.has_value()) {
    const auto flat_offsets = offsets->contiguous();
    AT_DISPATCH_INDEX_TYPES(flat_offsets.scalar_type(), "mybag_check_offsets", [&] {
      check_offsets(flat_offsets.const_data_ptr<index_t>(), flat_offsets.numel(), input.numel());
    });
  }
}

void check_index_values(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                        int64_t num_weights) {
  const auto flat_input = input.contiguous();
  AT_DISPATCH_INDEX_TYPES(flat_input.scalar_type(), "mybag_check_indices", [&] {
    check_indices(flat_input.const_data_ptr<index_t>(), flat_input.numel(), num_weights);
  });
  check_offset_values(input, offsets);
}

void check_max_index_values(const at::Tensor& max_indices, int64_t bags, int64_t dim,
                            int64_t num_weights, const at::Tensor& grad) {
  check_max_indices_shape(max_indices, bags, dim, grad);
  const int64_t* winners = max_indices.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < max_indices.numel(); ++k) {
    if (winners[k] < -1 || winners[k] >= num_weights) {
      fail_max_index_out_of_range(winners[k], num_weights);
    }
  }
}

}  // namespace mybag::cpu
