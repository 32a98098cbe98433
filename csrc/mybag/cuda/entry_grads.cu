// CUDA per-entry gradients: the rows of the sparse weight gradient (one per entry of input) and
// the per_sample_weights gradient. Each output element is written by exactly one thread (or one
// warp, for a dot product reduced in a fixed tree), so neither needs atomics and every run gives
// the same bits.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mybag/checks.h"
#include "mybag/cuda/entries.cuh"
#include "mybag/cuda/launch.cuh"
#include "mybag/cuda/value_checks.cuh"
#include "mybag/kernel_inputs.h"
#include "mybag/reductions.h"
#include "mybag/tensor_layout.h"

namespace mybag::cuda {
namespace {

template <typename scalar_t, typename index_t>
__global__ void per_entry_kernel(const scalar_t* grad, const index_t* indices,
                                 const int64_t* bag_of, const int64_t* frequency,
                                 EntryScale<at::opmath_type<scalar_t>, scalar_t> entry_scale,
                                 int64_t num_indices, int64_t dim, int64_t num_weights,
                                 int64_t padding_row, scalar_t* values) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = num_indices * dim;
  for (int64_t j = thread_item(); j < total; j += thread_stride()) {
    const int64_t entry = j / dim;
    const int64_t bag = bag_of[entry];
    // Padding rows (and with value checks off, rows out of range) keep their zeros.
    if (bag < 0 || !row_used(indices[entry], num_weights, padding_row)) continue;
    const acc_t scale = entry_scale(entry, bag, frequency ? frequency[entry] : 0);
    values[j] = static_cast<scalar_t>(scale * static_cast<acc_t>(grad[bag * dim + j % dim]));
  }
}

at::Tensor per_entry_grad(const at::Tensor& grad, const at::Tensor& input,
                          const std::optional<at::Tensor>& offsets,
                          const std::optional<at::Tensor>& per_sample_weights,
                          c10::SymInt num_weights_sym, int64_t mode_value,
                          std::optional<int64_t> padding_idx, bool include_last_offset,
                          bool scale_grad_by_freq) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  check_per_entry_grad_mode(mode_from_int(mode_value));
  at::Tensor flat_grad;
  const auto in = prepare_weight_grad(grad, flat_grad, input, offsets, per_sample_weights,
                                      mode_value, padding_idx, include_last_offset,
                                      num_weights_sym.expect_int());
  check_index_values(in.input, in.offsets, in.num_weights);
  auto values = at::zeros({in.input.numel(), in.dim}, grad.options());
  if (in.num_bags == 0 || in.dim == 0 || in.input.numel() == 0) {
    return values;
  }
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "mybag_embedding_bag_per_entry_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    AT_DISPATCH_INDEX_TYPES(in.input.scalar_type(), "mybag_embedding_bag_per_entry_grad_cuda",
                            [&] {
      const auto layout = make_layout<index_t>(in.input, in.offsets, in.include_last_offset);
      const index_t* indices = in.input.const_data_ptr<index_t>();
      const at::Tensor bag_of = bag_of_entries(layout, in.input);
      const bool mean = in.mode == Mode::Mean;
      const at::Tensor counts = mean ? non_padding_counts(layout, indices, in.num_weights,
                                                    in.padding_row, in.input)
                               : at::Tensor();
      const at::Tensor frequency = scale_grad_by_freq
                                 ? row_frequency_of_entries(group_by_row(in.input.view({-1})))
                                 : at::Tensor();
      const EntryScale<acc_t, scalar_t> entry_scale{
          in.per_sample_weights.defined() ? in.per_sample_weights.const_data_ptr<scalar_t>()
                                          : nullptr,
          mean ? counts.const_data_ptr<int64_t>() : nullptr};
      const int64_t total = in.input.numel() * in.dim;
      per_entry_kernel<<<thread_grid(total), kThreadsPerBlock, 0, stream>>>(
          flat_grad.const_data_ptr<scalar_t>(), indices, bag_of.const_data_ptr<int64_t>(),
          frequency.defined() ? frequency.const_data_ptr<int64_t>() : nullptr, entry_scale,
          in.input.numel(), in.dim, in.num_weights, in.padding_row,
          values.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return values;
}

// One warp per entry: the dot product of its bag's gradient with its weight row.
template <typename scalar_t, typename index_t>
__global__ void per_sample_weights_kernel(const scalar_t* grad, const scalar_t* weight,
                                          int64_t row_stride, int64_t col_stride,
                                          const index_t* indices, const int64_t* bag_of,
                                          int64_t num_indices, int64_t dim, int64_t num_weights,
                                          int64_t padding_row, scalar_t* result) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t entry = warp_item(); entry < num_indices; entry += warp_stride()) {
    const int64_t row = indices[entry];
    const int64_t bag = bag_of[entry];
    // Uniform across the warp: every lane reads the same entry.
    if (bag < 0 || !row_used(row, num_weights, padding_row)) continue;
    acc_t dot = 0;
    for (int64_t d = threadIdx.x; d < dim; d += kWarpSize) {
      dot += static_cast<acc_t>(grad[bag * dim + d]) *
             static_cast<acc_t>(weight[row * row_stride + d * col_stride]);
    }
    dot = warp_sum(dot);
    if (threadIdx.x == 0) result[entry] = static_cast<scalar_t>(dot);
  }
}

at::Tensor per_sample_weights_backward(const at::Tensor& grad, const at::Tensor& weight,
                                       const at::Tensor& input,
                                       const std::optional<at::Tensor>& offsets,
                                       int64_t mode_value, std::optional<int64_t> padding_idx,
                                       bool include_last_offset) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  at::Tensor flat_grad;
  const auto in = prepare_per_sample_weights_grad(grad, flat_grad, weight, input, offsets,
                                                  mode_value, padding_idx, include_last_offset);
  check_index_values(in.input, in.offsets, in.num_weights);
  auto result = at::zeros(input.sizes(), grad.options());
  const int64_t n = in.input.numel();
  if (in.num_bags == 0 || n == 0) {
    return result;
  }
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "mybag_embedding_bag_psw_backward_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(in.input.scalar_type(), "mybag_embedding_bag_psw_backward_cuda", [&] {
      const auto layout = make_layout<index_t>(in.input, in.offsets, in.include_last_offset);
      const at::Tensor bag_of = bag_of_entries(layout, in.input);
      per_sample_weights_kernel<<<warp_grid(n), warp_block(), 0, stream>>>(
          flat_grad.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
          weight.stride(0), weight.stride(1), in.input.const_data_ptr<index_t>(),
          bag_of.const_data_ptr<int64_t>(), n, in.dim, in.num_weights, in.padding_row,
          result.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CUDA, m) {
  m.impl("_embedding_bag_per_entry_grad", &per_entry_grad);
  m.impl("_embedding_bag_per_sample_weights_backward", &per_sample_weights_backward);
}

}  // namespace mybag::cuda
