#include "mybag/cpu/value_checks.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "mybag/checks.h"
#include "mybag/cpu/simd.h"

namespace mybag::cpu {

namespace {

template <typename index_t>
void check_indices(const index_t* indices, int64_t n, int64_t num_weights) {
  // The common case is all-valid: establish that with one parallel pass, and only then look
  // for the first bad entry to name it.
  const int64_t bad = at::parallel_reduce(
      0, n, int64_t{1} << 15, int64_t{0},
      [&](int64_t first, int64_t last, int64_t count) {
        const int64_t simd = count_out_of_range_avx2(indices + first, last - first, num_weights);
        if (simd >= 0) return count + simd;
        for (int64_t i = first; i < last; ++i) {
          count += indices[i] < 0 || indices[i] >= num_weights;
        }
        return count;
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

// With include_last_offset the final offset is checked like the others, though no bag reads it.
void check_index_values(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                        int64_t num_weights, bool /*include_last_offset*/) {
  const auto flat_input = input.contiguous();
  AT_DISPATCH_INDEX_TYPES(flat_input.scalar_type(), "mybag_check_indices", [&] {
    check_indices(flat_input.const_data_ptr<index_t>(), flat_input.numel(), num_weights);
  });
  check_offset_values(input, offsets);
}

}  // namespace mybag::cpu
