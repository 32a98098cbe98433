// Per-entry arithmetic of the bag reductions and their gradients, written once for the CPU and
// CUDA kernels so both devices follow docs/spec.md §3 and §5 to the same rules.
#pragma once

#include <ATen/NumericUtils.h>
#include <c10/macros/Macros.h>

#include <cstdint>

namespace mybag {

// A row index the CUDA kernels may touch: in the table and not padding. Out-of-range rows reach
// them only with value checks off, and are then skipped like padding.
C10_HOST_DEVICE inline bool row_used(int64_t row, int64_t num_weights, int64_t padding_row) {
  return row >= 0 && row < num_weights && row != padding_row;
}

// max mode: whether `candidate` replaces `best` as the bag's maximum of one feature. Strictly
// greater keeps the first of equal values (the gradient goes to it); a NaN wins and then stays,
// wherever it stands in the bag (torch keeps it only when it comes first).
template <typename acc_t>
C10_HOST_DEVICE inline bool max_replaces(acc_t best, acc_t candidate, bool first) {
  return first || (!at::_isnan(best) && (candidate > best || at::_isnan(candidate)));
}

// What entry `entry` of bag `bag` contributes per unit of the bag's gradient: its per-sample
// weight, over the bag's non-padding count in mean mode, over its row's frequency in the whole
// input with scale_grad_by_freq (row_frequency 0 when that is off). The dense gradient, the
// sparse gradient's rows, on every device, use it.
template <typename acc_t, typename scalar_t>
struct EntryScale {
  const scalar_t* per_sample_weights;  // nullptr when absent
  const int64_t* bag_counts;           // non-padding counts in mean mode, else nullptr

  C10_HOST_DEVICE acc_t operator()(int64_t entry, int64_t bag, int64_t row_frequency) const {
    acc_t scale = per_sample_weights ? static_cast<acc_t>(per_sample_weights[entry]) : acc_t(1);
    if (bag_counts) scale /= static_cast<acc_t>(bag_counts[bag]);
    if (row_frequency > 0) scale /= static_cast<acc_t>(row_frequency);
    return scale;
  }
};

}  // namespace mybag
