#include "mybag/row_groups.h"

#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/unique_consecutive.h>
#include <ATen/ops/zeros.h>

#include <tuple>

namespace mybag {

RowGroups group_by_row(const at::Tensor& flat_input) {
  RowGroups groups;
  std::tie(groups.sorted_rows, groups.order) =
      at::sort(flat_input, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto sizes = std::get<2>(at::unique_consecutive(groups.sorted_rows,
                                                        /*return_inverse=*/false,
                                                        /*return_counts=*/true));
  groups.count = sizes.numel();
  groups.starts = at::zeros({groups.count + 1}, sizes.options());
  if (groups.count > 0) {
    groups.starts.slice(0, 1).copy_(at::cumsum(sizes, 0));
  }
  return groups;
}

at::Tensor row_frequency_of_entries(const RowGroups& groups) {
  const int64_t n = groups.order.numel();
  auto frequency = at::empty_like(groups.order);
  if (n == 0) return frequency;
  const auto sizes = groups.starts.slice(0, 1).sub(groups.starts.slice(0, 0, -1));
  // Each sorted position gets its group's size (output_size spares CUDA a synchronization),
  // then goes back to its entry: order is a permutation, so every entry is written once.
  const auto per_position = at::repeat_interleave(sizes, sizes, /*dim=*/0, /*output_size=*/n);
  frequency.index_copy_(0, groups.order, per_position);
  return frequency;
}

at::Tensor distinct_rows(const at::Tensor& flat_input) {
  const auto sorted = std::get<0>(at::sort(flat_input, /*stable=*/false, /*dim=*/0,
                                           /*descending=*/false));
  return std::get<0>(at::unique_consecutive(sorted));
}

}  // namespace mybag
