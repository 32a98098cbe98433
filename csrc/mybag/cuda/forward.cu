// CUDA forward: one warp per bag. The lanes take 32 features at a time and walk the bag's
// entries in order, accumulating in float (double for double) and rounding once, so every run
// gives the same bits and the order per feature is the CPU's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mybag/cuda/launch.cuh"
#include "mybag/cuda/value_checks.cuh"
#include "mybag/forward_args.h"
#include "mybag/kernel_inputs.h"
#include "mybag/reductions.h"
#include "mybag/tensor_layout.h"

namespace mybag::cuda {
namespace {

template <typename scalar_t, typename index_t>
__global__ void sum_mean_kernel(ForwardArgs<scalar_t, index_t> p, bool mean) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t bag = warp_item(); bag < p.layout.num_bags; bag += warp_stride()) {
    const int64_t begin = p.layout.bounded_begin(bag);
    const int64_t end = p.layout.bounded_end(bag);
    for (int64_t d0 = 0; d0 < p.dim; d0 += kWarpSize) {
      const int64_t d = d0 + threadIdx.x;
      const bool active = d < p.dim;
      acc_t acc = 0;
      int64_t count = 0;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t row = p.indices[i];
        if (!row_used(row, p.num_weights, p.padding_idx)) continue;
        ++count;
        if (active) {
          const acc_t scale =
              p.per_sample_weights ? static_cast<acc_t>(p.per_sample_weights[i]) : acc_t(1);
          acc += scale * static_cast<acc_t>(p.value(row, d));
        }
      }
      if (active) {
        const acc_t divisor = (mean && count > 0) ? static_cast<acc_t>(count) : acc_t(1);
        p.output[bag * p.dim + d] = static_cast<scalar_t>(acc / divisor);
      }
    }
  }
}

template <typename scalar_t, typename index_t>
__global__ void max_kernel(ForwardArgs<scalar_t, index_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t bag = warp_item(); bag < p.layout.num_bags; bag += warp_stride()) {
    const int64_t begin = p.layout.bounded_begin(bag);
    const int64_t end = p.layout.bounded_end(bag);
    for (int64_t d0 = 0; d0 < p.dim; d0 += kWarpSize) {
      const int64_t d = d0 + threadIdx.x;
      if (d >= p.dim) continue;  // no warp-wide operation below
      acc_t best = 0;
      int64_t winner = -1;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t row = p.indices[i];
        if (!row_used(row, p.num_weights, p.padding_idx)) continue;
        const acc_t v = static_cast<acc_t>(p.value(row, d));
        if (max_replaces(best, v, winner < 0)) {
          best = v;
          winner = row;
        }
      }
      p.output[bag * p.dim + d] = winner < 0 ? scalar_t(0) : static_cast<scalar_t>(best);
      p.max_indices[bag * p.dim + d] = winner;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& weight, const at::Tensor& input,
                                           const std::optional<at::Tensor>& offsets,
                                           const std::optional<at::Tensor>& per_sample_weights,
                                           int64_t mode_value, std::optional<int64_t> padding_idx,
                                           bool include_last_offset, bool scale_grad_by_freq,
                                           bool sparse) {
  const c10::cuda::CUDAGuard device_guard(weight.device());
  const auto in = prepare_forward(weight, input, offsets, per_sample_weights, mode_value,
                                  padding_idx, include_last_offset, scale_grad_by_freq, sparse);
  check_index_values(in.input, in.offsets, in.num_weights);
  auto [output, max_indices] = allocate_forward_outputs(in, weight);
  if (in.num_bags == 0 || in.dim == 0) {
    return {output, max_indices};
  }
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "mybag_embedding_bag_forward_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(in.input.scalar_type(), "mybag_embedding_bag_forward_cuda", [&] {
      const ForwardArgs<scalar_t, index_t> p{
          weight.const_data_ptr<scalar_t>(),
          weight.stride(0),
          weight.stride(1),
          in.dim,
          in.input.const_data_ptr<index_t>(),
          make_layout<index_t>(in.input, in.offsets, include_last_offset),
          in.per_sample_weights.defined() ? in.per_sample_weights.const_data_ptr<scalar_t>()
                                          : nullptr,
          in.padding_row,
          output.mutable_data_ptr<scalar_t>(),
          in.mode == Mode::Max ? max_indices.mutable_data_ptr<int64_t>() : nullptr,
          in.num_weights,
      };
      const auto grid = warp_grid(in.num_bags);
      if (in.mode == Mode::Max) {
        max_kernel<<<grid, warp_block(), 0, stream>>>(p);
      } else {
        sum_mean_kernel<<<grid, warp_block(), 0, stream>>>(p, in.mode == Mode::Mean);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {output, max_indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CUDA, m) {
  m.impl("_embedding_bag_forward", &forward);
}

}  // namespace mybag::cuda
