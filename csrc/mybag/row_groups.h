// Facts about input that need a sort, written once in ATen operations so they run on input's
// device. The CUDA kernels group entries by row with them; the CPU kernels fill the same
// RowGroups with their own radix sort (cpu/row_sort.h), which gives the same groups in the same
// order. Row frequencies and distinct rows are computed here for both devices. Grouping by row (a stable sort) is what makes both
// devices' weight gradients deterministic without atomics.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace mybag {

// The entries of a flattened input grouped by the row they index, in input order within each
// group: group g holds sorted positions starts[g] .. starts[g + 1] - 1.
struct RowGroups {
  at::Tensor sorted_rows;  // input's dtype (N,): the flattened input, sorted
  at::Tensor order;        // int64 (N,): the entry at each sorted position
  at::Tensor starts;       // int64 (count + 1,)
  int64_t count = 0;       // number of groups (distinct rows)
};

// flat_input: 1-D (a 2-D input viewed flat numbers its entries row by row).
RowGroups group_by_row(const at::Tensor& flat_input);

// int64 (N,): how often entry i's row occurs in the input (scale_grad_by_freq's divisor).
at::Tensor row_frequency_of_entries(const RowGroups& groups);

// The distinct rows of a flattened input, ascending, in its dtype (max_norm's rows).
at::Tensor distinct_rows(const at::Tensor& flat_input);

}  // namespace mybag
