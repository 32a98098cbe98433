// CUDA dense weight gradient, deterministic and free of float atomics.
//
// sum and mean: entries are grouped by row with a stable sort and cut into chunks
// (cuda/row_chunks.cuh). One warp reduces a chunk in input order (lanes over features), and writes
// the row directly when the group has a single chunk, else a float partial that a second pass
// adds up in chunk order. Hot rows (one row in much of the input) thus spread over many warps,
// and the sums are the same bits every run.
//
// max: each (bag, feature) sends its gradient to the row that won it. The pairs are keyed by
// (row, feature), sorted stably and each key's gradients summed in bag order by one thread.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mybag/checks.h"
#include "mybag/cuda/entries.cuh"
#include "mybag/cuda/launch.cuh"
#include "mybag/cuda/row_chunks.cuh"
#include "mybag/cuda/value_checks.cuh"
#include "mybag/kernel_inputs.h"
#include "mybag/reductions.h"
#include "mybag/tensor_layout.h"

namespace mybag::cuda {
namespace {

template <typename scalar_t, typename index_t>
struct GroupSumParams {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad;  // (num_bags, dim)
  int64_t dim;
  int64_t num_weights;
  int64_t padding_row;
  const index_t* sorted_rows;
  const int64_t* order;
  ChunkIndex chunks;
  const int64_t* bag_of;
  EntryScale<acc_t, scalar_t> entry_scale;
  bool scale_grad_by_freq;
  scalar_t* grad_weight;  // (num_weights, dim), zero-filled
  acc_t* partials;        // one row per chunk of a multi-chunk group

  __device__ bool row_skipped(int64_t g) const {
    return !row_used(sorted_rows[chunks.starts[g]], num_weights, padding_row);
  }
};

template <typename scalar_t, typename index_t>
__global__ void chunk_sum_kernel(GroupSumParams<scalar_t, index_t> p, int64_t total_chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t w = warp_item(); w < total_chunks; w += warp_stride()) {
    const int64_t g = group_of_chunk(p.chunks.chunk_ends, p.chunks.groups, w);
    if (p.row_skipped(g)) continue;
    const int64_t chunk = w - p.chunks.first_chunk(g);
    const bool single = p.chunks.chunks(g) == 1;
    const int64_t begin = p.chunks.starts[g] + chunk * kChunk;
    const int64_t group_end = p.chunks.starts[g + 1];
    const int64_t end = begin + kChunk < group_end ? begin + kChunk : group_end;
    const int64_t frequency = p.scale_grad_by_freq ? group_end - p.chunks.starts[g] : 0;
    const int64_t row = p.sorted_rows[p.chunks.starts[g]];
    for (int64_t d = threadIdx.x; d < p.dim; d += kWarpSize) {
      acc_t acc = 0;
      for (int64_t k = begin; k < end; ++k) {
        const int64_t entry = p.order[k];
        const int64_t bag = p.bag_of[entry];
        if (bag < 0) continue;
        acc += p.entry_scale(entry, bag, frequency) * static_cast<acc_t>(p.grad[bag * p.dim + d]);
      }
      if (single) {
        p.grad_weight[row * p.dim + d] = static_cast<scalar_t>(acc);
      } else {
        p.partials[(p.chunks.first_partial(g) + chunk) * p.dim + d] = acc;
      }
    }
  }
}

template <typename scalar_t, typename index_t>
__global__ void partial_sum_kernel(GroupSumParams<scalar_t, index_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t g = warp_item(); g < p.chunks.groups; g += warp_stride()) {
    const int64_t chunks = p.chunks.chunks(g);
    if (chunks <= 1 || p.row_skipped(g)) continue;
    const int64_t row = p.sorted_rows[p.chunks.starts[g]];
    const acc_t* first = p.partials + p.chunks.first_partial(g) * p.dim;
    for (int64_t d = threadIdx.x; d < p.dim; d += kWarpSize) {
      acc_t acc = 0;
      for (int64_t c = 0; c < chunks; ++c) acc += first[c * p.dim + d];
      p.grad_weight[row * p.dim + d] = static_cast<scalar_t>(acc);
    }
  }
}

template <typename scalar_t, typename index_t>
void sum_mean_weight_grad(const KernelInputs& in, const at::Tensor& grad, bool scale_grad_by_freq,
                          at::Tensor& grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto stream = current_stream();
  const auto layout = make_layout<index_t>(in.input, in.offsets, in.include_last_offset);
  const index_t* indices = in.input.const_data_ptr<index_t>();
  const at::Tensor bag_of = bag_of_entries(layout, in.input);
  const bool mean = in.mode == Mode::Mean;
  const at::Tensor counts =
      mean ? non_padding_counts(layout, indices, in.num_weights, in.padding_row, in.input)
           : at::Tensor();
  const auto groups = group_by_row(in.input.view({-1}));
  if (groups.count == 0) return;

  const auto chunks = cut_into_chunks(groups);
  const int64_t total_chunks = chunks.total_chunks;
  const int64_t total_partials = chunks.total_partials;
  at::Tensor partials = at::empty(
      {total_partials, in.dim}, grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value));

  GroupSumParams<scalar_t, index_t> p{
      grad.const_data_ptr<scalar_t>(),
      in.dim,
      in.num_weights,
      in.padding_row,
      groups.sorted_rows.const_data_ptr<index_t>(),
      groups.order.const_data_ptr<int64_t>(),
      chunk_index(groups, chunks),
      bag_of.const_data_ptr<int64_t>(),
      {in.per_sample_weights.defined() ? in.per_sample_weights.const_data_ptr<scalar_t>()
                                       : nullptr,
       mean ? counts.const_data_ptr<int64_t>() : nullptr},
      scale_grad_by_freq,
      grad_weight.mutable_data_ptr<scalar_t>(),
      total_partials > 0 ? partials.mutable_data_ptr<acc_t>() : nullptr,
  };
  chunk_sum_kernel<<<warp_grid(total_chunks), warp_block(), 0, stream>>>(p, total_chunks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (total_partials > 0) {
    partial_sum_kernel<<<warp_grid(groups.count), warp_block(), 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Key of every (bag, feature): winner row * dim + feature, or -1 for an empty bag.
__global__ void max_keys_kernel(const int64_t* winners, int64_t count, int64_t dim,
                                int64_t num_weights, int64_t* keys) {
  for (int64_t j = thread_item(); j < count; j += thread_stride()) {
    const int64_t row = winners[j];
    keys[j] = (row >= 0 && row < num_weights) ? row * dim + j % dim : -1;
  }
}

template <typename scalar_t>
__global__ void max_group_sum_kernel(const scalar_t* grad, const int64_t* sorted_keys,
                                     const int64_t* order, const int64_t* starts, int64_t groups,
                                     scalar_t* grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t g = thread_item(); g < groups; g += thread_stride()) {
    const int64_t key = sorted_keys[starts[g]];
    if (key < 0) continue;
    acc_t acc = 0;
    for (int64_t k = starts[g]; k < starts[g + 1]; ++k) {
      acc += static_cast<acc_t>(grad[order[k]]);
    }
    grad_weight[key] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
void max_weight_grad(const KernelInputs& in, const at::Tensor& grad,
                     const at::Tensor& max_indices, at::Tensor& grad_weight) {
  const auto stream = current_stream();
  const auto winners = max_indices.contiguous();
  const int64_t count = winners.numel();
  auto keys = at::empty({count}, winners.options());
  max_keys_kernel<<<thread_grid(count), kThreadsPerBlock, 0, stream>>>(
      winners.const_data_ptr<int64_t>(), count, in.dim, in.num_weights,
      keys.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto groups = group_by_row(keys);
  if (groups.count == 0) return;
  max_group_sum_kernel<<<thread_grid(groups.count), kThreadsPerBlock, 0, stream>>>(
      grad.const_data_ptr<scalar_t>(), groups.sorted_rows.const_data_ptr<int64_t>(),
      groups.order.const_data_ptr<int64_t>(), groups.starts.const_data_ptr<int64_t>(),
      groups.count, grad_weight.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor dense_backward(const at::Tensor& grad, const at::Tensor& input,
                          const std::optional<at::Tensor>& offsets,
                          const std::optional<at::Tensor>& per_sample_weights,
                          const at::Tensor& max_indices, c10::SymInt num_weights_sym,
                          int64_t mode_value, std::optional<int64_t> padding_idx,
                          bool include_last_offset, bool scale_grad_by_freq) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  at::Tensor flat_grad;
  const auto in = prepare_weight_grad(grad, flat_grad, input, offsets, per_sample_weights,
                                      mode_value, padding_idx, include_last_offset,
                                      num_weights_sym.expect_int());
  check_index_values(in.input, in.offsets, in.num_weights);
  if (in.mode == Mode::Max) {
    check_max_indices_shape(max_indices, in.num_bags, in.dim, grad);
    check_max_indices_values(max_indices, in.num_weights);
  }
  auto grad_weight = at::zeros({in.num_weights, in.dim}, grad.options());
  if (in.num_bags == 0 || in.dim == 0 || in.num_weights == 0) {
    return grad_weight;
  }
  if (in.mode == Mode::Max) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                    "mybag_embedding_bag_max_backward_cuda", [&] {
      max_weight_grad<scalar_t>(in, flat_grad, max_indices, grad_weight);
    });
    return grad_weight;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "mybag_embedding_bag_backward_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(in.input.scalar_type(), "mybag_embedding_bag_backward_cuda", [&] {
      sum_mean_weight_grad<scalar_t, index_t>(in, flat_grad, scale_grad_by_freq, grad_weight);
    });
  });
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CUDA, m) {
  m.impl("_embedding_bag_dense_backward", &dense_backward);
}

}  // namespace mybag::cuda
