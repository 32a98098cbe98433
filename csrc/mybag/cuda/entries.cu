#include "mybag/cuda/entries.cuh"

#include <ATen/ops/empty.h>

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

}  // namespace

template <typename index_t>
at::Tensor bag_of_entries(const BagLayout<index_t>& layout, const at::Tensor& like) {
  at::Tensor bag_of = at::empty({layout.num_indices}, like.options().dtype(at::kLong));
  if (layout.num_indices == 0) return bag_of;
  bag_of_kernel<<<thread_grid(layout.num_indices), kThreadsPerBlock, 0, current_stream()>>>(
      layout, bag_of.mutable_data_ptr<int64_t>());
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

template at::Tensor bag_of_entries(const BagLayout<int32_t>&, const at::Tensor&);
template at::Tensor bag_of_entries(const BagLayout<int64_t>&, const at::Tensor&);
template at::Tensor non_padding_counts(const BagLayout<int32_t>&, const int32_t*, int64_t, int64_t,
                                       const at::Tensor&);
template at::Tensor non_padding_counts(const BagLayout<int64_t>&, const int64_t*, int64_t, int64_t,
                                       const at::Tensor&);

}  // namespace mybag::cuda
