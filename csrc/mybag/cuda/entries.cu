#include "mybag/cuda/entries.cuh"

#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/unique_consecutive.h>
#include <ATen/ops/zeros.h>

#include "mybag/cuda/launch.cuh"

namespace mybag::cuda {
namespace {

template <typename index_t>
__global__ void bag_of_kernel(BagLayout<index_t> layout, int64_t* bag_of) {
  for (int64_t i = thread_item(); i < layout.num_indices; i += thread_stride()) {
    if (!layout.offsets) {
      bag_of[i] = i / layout.bag_length;  // N > 0 implies L > 0
      continue;
    }
    // The last bag that begins at or before i (bags may be empty: several begin at one place).
    int64_t lo = 0;
    int64_t hi = layout.num_bags;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (layout.begin(mid) <= i) lo = mid + 1; else hi = mid;
    }
    bag_of[i] = lo - 1;
  }
}

template <typename index_t>
__global__ void count_kernel(BagLayout<index_t> layout, const index_t* indices,
                             int64_t num_weights, int64_t padding_row, int64_t* counts) {
  const int lane = threadIdx.x;
  for (int64_t bag = warp_item(); bag < layout.num_bags; bag += warp_stride()) {
    const int64_t end = layout.bounded_end(bag);
    int64_t count = 0;
    for (int64_t i = layout.bounded_begin(bag) + lane; i < end; i += kWarpSize) {
      count += row_used(indices[i], num_weights, padding_row);
    }
    count = warp_sum(count);
    if (lane == 0) counts[bag] = count;
  }
}

__global__ void frequency_kernel(const int64_t* order, const int64_t* starts, int64_t groups,
                                 int64_t n, int64_t* frequency) {
  for (int64_t k = thread_item(); k < n; k += thread_stride()) {
    const int64_t g = group_of_position(starts, groups, k);
    frequency[order[k]] = starts[g + 1] - starts[g];
  }
}

}  // namespace

template <typename index_t>
at::Tensor bag_of_entries(const BagLayout<index_t>& layout, const at::Tensor& like) {
  at::Tensor bag_of = at::empty({layout.num_indices}, like.options().dtype(at::kLong));
  if (layout.num_indices == 0) return bag_of;
  bag_of_kernel<<<thread_grid(layout.num_indices), kThreadsPerBlock, 0,
                  current_stream()>>>(layout,
                                                      bag_of.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return bag_of;
}

template <typename index_t>
at::Tensor non_padding_counts(const BagLayout<index_t>& layout, const index_t* indices,
                              int64_t num_weights, int64_t padding_row, const at::Tensor& like) {
  at::Tensor counts = at::empty({layout.num_bags}, like.options().dtype(at::kLong));
  if (layout.num_bags == 0) return counts;
  count_kernel<<<warp_grid(layout.num_bags), warp_block(), 0, current_stream()>>>(
      layout, indices, num_weights, padding_row, counts.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return counts;
}

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
  at::Tensor frequency = at::empty({n}, groups.order.options());
  if (n == 0) return frequency;
  frequency_kernel<<<thread_grid(n), kThreadsPerBlock, 0, current_stream()>>>(
      groups.order.const_data_ptr<int64_t>(), groups.starts.const_data_ptr<int64_t>(),
      groups.count, n, frequency.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return frequency;
}

template at::Tensor bag_of_entries(const BagLayout<int32_t>&, const at::Tensor&);
template at::Tensor bag_of_entries(const BagLayout<int64_t>&, const at::Tensor&);
template at::Tensor non_padding_counts(const BagLayout<int32_t>&, const int32_t*, int64_t, int64_t,
                                       const at::Tensor&);
template at::Tensor non_padding_counts(const BagLayout<int64_t>&, const int64_t*, int64_t, int64_t,
                                       const at::Tensor&);

}  // namespace mybag::cuda
