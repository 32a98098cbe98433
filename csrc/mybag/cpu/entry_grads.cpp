// CPU per-entry gradients (as cuda/entry_grads.cu): the rows of the sparse weight gradient (one
// per entry of input) and the per_sample_weights gradient. Tasks own ranges of bags and each
// output element is written once, so every run gives the same bits.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "mybag/checks.h"
#include "mybag/kernel_inputs.h"
#include "mybag/reductions.h"
#include "mybag/row_groups.h"
#include "mybag/cpu/entries.h"
#include "mybag/cpu/entry_grads_avx2.h"
#include "mybag/cpu/isa.h"
#include "mybag/cpu/row_sort.h"
#include "mybag/cpu/rows.h"
#include "mybag/cpu/value_checks.h"

namespace mybag::cpu {
namespace {

template <typename scalar_t, typename index_t>
void fill_per_entry_grad(const KernelInputs& in, const at::Tensor& grad_tensor,
                         bool scale_grad_by_freq, at::Tensor& values) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto layout = make_layout<index_t>(in.input, in.offsets, in.include_last_offset);
  const index_t* indices = in.input.const_data_ptr<index_t>();
  const EntryScales<scalar_t, index_t> scales(in, layout);
  const auto& entry_scale = scales.scale;
  const at::Tensor frequency_tensor =
      scale_grad_by_freq
          ? row_frequency_of_entries(group_by_row_cpu(in.input.view({-1}), in.num_weights))
          : at::Tensor();
  const int64_t* frequency =
      scale_grad_by_freq ? frequency_tensor.const_data_ptr<int64_t>() : nullptr;
  const scalar_t* grad = grad_tensor.const_data_ptr<scalar_t>();
  scalar_t* out = values.mutable_data_ptr<scalar_t>();
  const int64_t dim = in.dim;
  const bool simd = use_avx2();
  at::parallel_for(0, layout.num_bags, bag_grain_size(layout.num_indices, layout.num_bags, dim),
                   [&](int64_t first, int64_t last) {
    for (int64_t bag = first; bag < last; ++bag) {
      for (int64_t i = layout.begin(bag); i < layout.end(bag); ++i) {
        scalar_t* v = out + i * dim;
        if (indices[i] == in.padding_row) {
          std::fill(v, v + dim, scalar_t(0));
          continue;
        }
        const acc_t scale = entry_scale(i, bag, scale_grad_by_freq ? frequency[i] : 0);
        const scalar_t* g = grad + bag * dim;
        if (simd && scale_row_avx2(v, g, scale, dim)) continue;
        for (int64_t d = 0; d < dim; ++d) {
          v[d] = static_cast<scalar_t>(scale * static_cast<acc_t>(g[d]));
        }
      }
    }
  });
}

at::Tensor per_entry_grad(const at::Tensor& grad, const at::Tensor& input,
                          const std::optional<at::Tensor>& offsets,
                          const std::optional<at::Tensor>& per_sample_weights,
                          c10::SymInt num_weights_sym, int64_t mode_value,
                          std::optional<int64_t> padding_idx, bool include_last_offset,
                          bool scale_grad_by_freq) {
  check_per_entry_grad_mode(mode_from_int(mode_value));
  const int64_t num_weights = num_weights_sym.expect_int();
  at::Tensor flat_grad;
  const auto in = prepare_weight_grad(grad, flat_grad, input, offsets, per_sample_weights,
                                      mode_value, padding_idx, include_last_offset, num_weights);
  check_index_values(in.input, in.offsets, num_weights);
  if (in.num_bags == 0 || in.dim == 0) {
    return at::zeros({input.numel(), in.dim}, grad.options());
  }
  // Every entry lies in a bag once there is one (offsets start at 0, the last bag ends at N), so
  // the kernel writes every row, padding rows as zeros: no zero-fill first.
  auto values = at::empty({input.numel(), in.dim}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "mybag_embedding_bag_per_entry_grad_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(in.input.scalar_type(), "mybag_embedding_bag_per_entry_grad_cpu", [&] {
      fill_per_entry_grad<scalar_t, index_t>(in, flat_grad, scale_grad_by_freq, values);
    });
  });
  return values;
}

at::Tensor per_sample_weights_backward(const at::Tensor& grad, const at::Tensor& weight,
                                       const at::Tensor& input,
                                       const std::optional<at::Tensor>& offsets,
                                       int64_t mode_value, std::optional<int64_t> padding_idx,
                                       bool include_last_offset) {
  at::Tensor flat_grad;
  const auto in = prepare_per_sample_weights_grad(grad, flat_grad, weight, input, offsets,
                                                  mode_value, padding_idx, include_last_offset);
  check_index_values(in.input, in.offsets, in.num_weights);
  auto result = at::zeros(input.sizes(), grad.options());
  const int64_t dim = in.dim;
  const int64_t padding_row = in.padding_row;
  if (in.num_bags == 0 || input.numel() == 0) {
    return result;
  }
  const auto& flat_input = in.input;
  const auto& flat_offsets = in.offsets;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "mybag_embedding_bag_psw_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    AT_DISPATCH_INDEX_TYPES(flat_input.scalar_type(), "mybag_embedding_bag_psw_backward_cpu", [&] {
      const auto layout = make_layout<index_t>(flat_input, flat_offsets, include_last_offset);
      const index_t* indices = flat_input.const_data_ptr<index_t>();
      const scalar_t* table = weight.const_data_ptr<scalar_t>();
      const scalar_t* g = flat_grad.const_data_ptr<scalar_t>();
      scalar_t* out = result.mutable_data_ptr<scalar_t>();
      const int64_t row_stride = weight.stride(0);
      const int64_t col_stride = weight.stride(1);
      at::parallel_for(0, layout.num_bags, bag_grain_size(layout.num_indices, layout.num_bags, dim),
                       [&](int64_t first, int64_t last) {
        for (int64_t bag = first; bag < last; ++bag) {
          for (int64_t i = layout.begin(bag); i < layout.end(bag); ++i) {
            const int64_t row = indices[i];
            if (row == padding_row) continue;
            out[i] = static_cast<scalar_t>(
                dot_row<acc_t>(g + bag * dim, table + row * row_stride, col_stride, dim));
          }
        }
      });
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CPU, m) {
  m.impl("_embedding_bag_per_entry_grad", &per_entry_grad);
  m.impl("_embedding_bag_per_sample_weights_backward", &per_sample_weights_backward);
}

}  // namespace mybag::cpu
