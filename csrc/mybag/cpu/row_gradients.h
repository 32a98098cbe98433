// Every touched row's whole gradient, one row at a time: what the dense weight gradient stores
// and what the fused optimizers apply (weight_grad.cpp, fused_update.cpp). The rows are the
// groups of cpu/row_sort.h (the distinct rows of input, ascending); each group is handled by
// one task, so the result does not depend on the thread count.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mybag/kernel_inputs.h"
#include "mybag/row_groups.h"
#include "mybag/cpu/bag_range.h"
#include "mybag/cpu/entries.h"
#include "mybag/cpu/rows.h"

namespace mybag::cpu {

// Groups per task of at::parallel_for: enough rows to amortize a task.
constexpr int64_t kRowGroupGrain = 16;

// A Sink receives the rows' gradients: sink(row, const acc_t* gradient), once per touched row,
// and sink.prefetch(row), some rows ahead, to request the memory it will write for that row.
// The rows of a large table are far apart even in ascending order, so without the requests
// ahead every row would wait for memory (the forward's reasoning, cpu/bag_range.h), and
// sink.row_bytes() says how many bytes a row costs it, for the distance.

// sum and mean: for each group but padding's, sums the entries' scaled bag gradients in input
// order into an acc_t row and hands it to the sink. Empty-bag tails (entries
// in no bag) add nothing.
template <typename scalar_t, typename index_t, typename Sink>
void for_each_row_gradient(const KernelInputs& in, const at::Tensor& grad_tensor,
                           bool scale_grad_by_freq, const RowGroups& groups, const Sink& sink) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto layout = make_layout<index_t>(in.input, in.offsets, in.include_last_offset);
  const EntryScales<scalar_t, index_t> scales(in, layout);
  const auto& entry_scale = scales.scale;
  const int64_t* order = groups.order.const_data_ptr<int64_t>();
  const index_t* sorted_rows = groups.sorted_rows.const_data_ptr<index_t>();
  const int64_t* starts = groups.starts.const_data_ptr<int64_t>();
  const scalar_t* grad = grad_tensor.const_data_ptr<scalar_t>();
  const int64_t dim = in.dim;
  const int64_t grad_row_bytes = dim * static_cast<int64_t>(sizeof(scalar_t));

  // The bag of each sorted position, gathered in one pass of independent loads: walking the
  // groups, the bag of entry order[k] would be a dependent random load before every bag
  // gradient, and the positions ahead are then known without it.
  std::vector<int64_t> sorted_bags;
  {
    const auto bag_of = bag_of_entries(layout);
    sorted_bags.resize(bag_of.size());
    at::parallel_for(0, static_cast<int64_t>(bag_of.size()), 4096, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) sorted_bags[k] = bag_of[order[k]];
    });
  }
  const int64_t* bag_at = sorted_bags.data();

  const int64_t row_distance = prefetch_distance(sink.row_bytes());
  const int64_t entry_distance = prefetch_distance(grad_row_bytes);
  at::parallel_for(0, groups.count, kRowGroupGrain, [&](int64_t first, int64_t last) {
    std::vector<acc_t> acc(dim);
    const int64_t task_end = starts[last];
    for (int64_t g = first; g < last; ++g) {
      // The sink's row some groups ahead.
      if (g + row_distance < last) sink.prefetch(sorted_rows[starts[g + row_distance]]);
      const int64_t begin = starts[g];
      const int64_t end = starts[g + 1];
      const int64_t row = sorted_rows[begin];
      if (row == in.padding_row) continue;
      const int64_t frequency = scale_grad_by_freq ? end - begin : 0;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t k = begin; k < end; ++k) {
        // The bag gradient some entries ahead (bags are far apart in the gradient).
        if (k + entry_distance < task_end && bag_at[k + entry_distance] >= 0) {
          prefetch_lines_outer(reinterpret_cast<const char*>(grad + bag_at[k + entry_distance] * dim),
                               grad_row_bytes);
        }
        const int64_t bag = bag_at[k];
        if (bag < 0) continue;
        add_scaled_row(acc.data(), grad + bag * dim, 1, dim, entry_scale(order[k], bag, frequency));
      }
      sink(row, static_cast<const acc_t*>(acc.data()));
    }
  });
}

// max: the gradient of (bag, feature) goes to its winning row (max_indices, -1 for an empty
// bag). The touched rows' gradients are gathered into a (groups, D) acc_t table, tasks owning
// disjoint column ranges and walking the bags in order, then handed to the sink like the sum's.
template <typename scalar_t, typename index_t, typename Sink>
void for_each_max_row_gradient(const KernelInputs& in, const at::Tensor& grad_tensor,
                               const at::Tensor& max_indices, const RowGroups& groups,
                               const Sink& sink) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t dim = in.dim;
  const int64_t bags = in.num_bags;
  const index_t* sorted_rows = groups.sorted_rows.const_data_ptr<index_t>();
  const int64_t* starts = groups.starts.const_data_ptr<int64_t>();
  std::vector<index_t> group_rows(groups.count);
  for (int64_t g = 0; g < groups.count; ++g) group_rows[g] = sorted_rows[starts[g]];
  std::vector<acc_t> table(groups.count * dim, acc_t(0));
  const int64_t* winners = max_indices.const_data_ptr<int64_t>();
  const scalar_t* grad = grad_tensor.const_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, bags));
  at::parallel_for(0, dim, grain, [&](int64_t first, int64_t last) {
    for (int64_t bag = 0; bag < bags; ++bag) {
      for (int64_t d = first; d < last; ++d) {
        const int64_t row = winners[bag * dim + d];
        if (row < 0) continue;
        // A winner from the forward is an entry of its bag, so its row is one of the groups; a
        // hand-made max_indices naming a row no entry names is dropped (as on CUDA, whose
        // kernel walks each touched row's bags) rather than credited to another row.
        const auto found =
            std::lower_bound(group_rows.begin(), group_rows.end(), static_cast<index_t>(row));
        if (found == group_rows.end() || *found != row) continue;
        table[(found - group_rows.begin()) * dim + d] += static_cast<acc_t>(grad[bag * dim + d]);
      }
    }
  });
  const int64_t distance = prefetch_distance(sink.row_bytes());
  at::parallel_for(0, groups.count, kRowGroupGrain, [&](int64_t first, int64_t last) {
    for (int64_t g = first; g < last; ++g) {
      if (g + distance < last) sink.prefetch(group_rows[g + distance]);
      const int64_t row = group_rows[g];
      if (row == in.padding_row) continue;
      sink(row, static_cast<const acc_t*>(table.data() + g * dim));
    }
  });
}

}  // namespace mybag::cpu
