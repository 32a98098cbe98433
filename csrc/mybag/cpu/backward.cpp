// CPU backward kernels. All are deterministic and free of races without atomics:
// - sum/mean weight gradient: entries are grouped by row (a stable sort), and each group is
//   reduced by one task in input order, in float (or double), then stored once;
// - max weight gradient: tasks own disjoint column ranges and walk the bags in order;
// - per-entry rows (the sparse gradient's values) and the per_sample_weights gradient: tasks own
//   ranges of bags.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "mybag/checks.h"
#include "mybag/kernel_inputs.h"
#include "mybag/reductions.h"
#include "mybag/cpu/backward_avx2.h"
#include "mybag/cpu/isa.h"
#include "mybag/cpu/layout.h"
#include "mybag/cpu/value_checks.h"
#include "mybag/cpu/rows.h"

namespace mybag::cpu {
namespace {

// Entries of input grouped by the row they index, in input order within a group.
struct RowGroups {
  at::Tensor order;             // int64 (N,): entry numbers sorted by row, stably
  at::Tensor sorted_rows;       // (N,): input sorted
  std::vector<int64_t> starts;  // group g is order[starts[g] : starts[g + 1]]
};

// input may be 2-D: entries are numbered as in the flattened input.
template <typename index_t>
RowGroups group_by_row(const at::Tensor& input) {
  RowGroups groups;
  const auto flat_input = input.reshape({-1});
  std::tie(groups.sorted_rows, groups.order) =
      at::sort(flat_input, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const index_t* rows = groups.sorted_rows.const_data_ptr<index_t>();
  const int64_t n = flat_input.numel();
  for (int64_t k = 0; k < n; ++k) {
    if (k == 0 || rows[k] != rows[k - 1]) groups.starts.push_back(k);
  }
  groups.starts.push_back(n);
  return groups;
}

// A weight-gradient op's checked, contiguous arguments (mybag/kernel_inputs.h), grad made
// contiguous, and the index values checked.
struct BackwardInputs : KernelInputs {
  at::Tensor grad;  // contiguous (num_bags, dim)
};

BackwardInputs prepare(const at::Tensor& grad, const at::Tensor& input,
                       const std::optional<at::Tensor>& offsets,
                       const std::optional<at::Tensor>& per_sample_weights, int64_t mode_value,
                       std::optional<int64_t> padding_idx, bool include_last_offset,
                       int64_t num_weights) {
  BackwardInputs in;
  static_cast<KernelInputs&>(in) =
      prepare_weight_grad(grad, in.grad, input, offsets, per_sample_weights, mode_value,
                          padding_idx, include_last_offset, num_weights);
  check_index_values(in.input, in.offsets, num_weights, include_last_offset);
  return in;
}

template <typename scalar_t, typename index_t>
void sum_mean_weight_grad(const BackwardInputs& in, bool mean, bool scale_grad_by_freq,
                          at::Tensor& grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto layout = make_layout<index_t>(in.input, in.offsets, in.include_last_offset);
  const index_t* indices = in.input.const_data_ptr<index_t>();
  const auto bag_of = bag_of_entries(layout);
  const auto counts = mean ? non_padding_counts(layout, indices, in.padding_row)
                           : std::vector<int64_t>();
  const EntryScale<acc_t, scalar_t> entry_scale{
      in.per_sample_weights.defined() ? in.per_sample_weights.const_data_ptr<scalar_t>() : nullptr,
      mean ? counts.data() : nullptr};
  const RowGroups groups = group_by_row<index_t>(in.input);
  const int64_t* order = groups.order.const_data_ptr<int64_t>();
  const index_t* sorted_rows = groups.sorted_rows.const_data_ptr<index_t>();
  const scalar_t* grad = in.grad.const_data_ptr<scalar_t>();
  scalar_t* out = grad_weight.mutable_data_ptr<scalar_t>();
  const int64_t dim = in.dim;
  const int64_t num_groups = static_cast<int64_t>(groups.starts.size()) - 1;

  at::parallel_for(0, num_groups, 16, [&](int64_t first, int64_t last) {
    std::vector<acc_t> acc(dim);
    for (int64_t g = first; g < last; ++g) {
      const int64_t begin = groups.starts[g];
      const int64_t end = groups.starts[g + 1];
      const int64_t row = sorted_rows[begin];
      if (row == in.padding_row) continue;
      const int64_t frequency = scale_grad_by_freq ? end - begin : 0;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t k = begin; k < end; ++k) {
        const int64_t entry = order[k];
        const int64_t bag = bag_of[entry];
        if (bag < 0) continue;
        add_scaled_row(acc.data(), grad + bag * dim, 1, dim, entry_scale(entry, bag, frequency));
      }
      scalar_t* out_row = out + row * dim;
      for (int64_t d = 0; d < dim; ++d) out_row[d] = static_cast<scalar_t>(acc[d]);
    }
  });
}

template <typename scalar_t>
void max_weight_grad(const BackwardInputs& in, const at::Tensor& max_indices,
                     at::Tensor& grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  // Half and bfloat16 gradients add up in a float table, rounded once at the end (a row can
  // win thousands of bags); float and double add up in place.
  constexpr bool in_place = std::is_same_v<acc_t, scalar_t>;
  at::Tensor sums = in_place ? grad_weight
                             : at::zeros(grad_weight.sizes(),
                                         grad_weight.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const int64_t* winners = max_indices.const_data_ptr<int64_t>();
  const scalar_t* grad = in.grad.const_data_ptr<scalar_t>();
  acc_t* out = sums.mutable_data_ptr<acc_t>();
  const int64_t dim = in.dim;
  const int64_t bags = in.num_bags;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, bags));
  at::parallel_for(0, dim, grain, [&](int64_t first, int64_t last) {
    for (int64_t bag = 0; bag < bags; ++bag) {
      for (int64_t d = first; d < last; ++d) {
        const int64_t row = winners[bag * dim + d];
        if (row < 0) continue;
        out[row * dim + d] += static_cast<acc_t>(grad[bag * dim + d]);
      }
    }
  });
  if constexpr (!in_place) {
    grad_weight.copy_(sums);
  }
}

void check_max_indices(const at::Tensor& max_indices, int64_t bags, int64_t dim,
                       int64_t num_weights, const at::Tensor& grad) {
  check_max_indices_shape(max_indices, bags, dim, grad);
  const int64_t* winners = max_indices.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < max_indices.numel(); ++k) {
    if (winners[k] < -1 || winners[k] >= num_weights) {
      fail_max_index_out_of_range(winners[k], num_weights);
    }
  }
}

at::Tensor dense_backward(const at::Tensor& grad, const at::Tensor& input,
                          const std::optional<at::Tensor>& offsets,
                          const std::optional<at::Tensor>& per_sample_weights,
                          const at::Tensor& max_indices, c10::SymInt num_weights_sym,
                          int64_t mode_value, std::optional<int64_t> padding_idx,
                          bool include_last_offset, bool scale_grad_by_freq) {
  const int64_t num_weights = num_weights_sym.expect_int();
  const auto in = prepare(grad, input, offsets, per_sample_weights, mode_value, padding_idx,
                          include_last_offset, num_weights);
  const Mode mode = in.mode;
  auto grad_weight = at::zeros({num_weights, in.dim}, grad.options());
  if (in.num_bags == 0 || in.dim == 0 || num_weights == 0) {
    return grad_weight;
  }
  if (mode == Mode::Max) {
    const auto winners = max_indices.contiguous();
    check_max_indices(winners, in.num_bags, in.dim, num_weights, grad);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                    "mybag_embedding_bag_max_backward_cpu",
                                    [&] { max_weight_grad<scalar_t>(in, winners, grad_weight); });
    return grad_weight;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "mybag_embedding_bag_backward_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(in.input.scalar_type(), "mybag_embedding_bag_backward_cpu", [&] {
      sum_mean_weight_grad<scalar_t, index_t>(in, mode == Mode::Mean, scale_grad_by_freq,
                                              grad_weight);
    });
  });
  return grad_weight;
}

template <typename scalar_t, typename index_t>
void fill_per_entry_grad(const BackwardInputs& in, bool mean, bool scale_grad_by_freq,
                         at::Tensor& values) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto layout = make_layout<index_t>(in.input, in.offsets, in.include_last_offset);
  const index_t* indices = in.input.const_data_ptr<index_t>();
  const auto counts = mean ? non_padding_counts(layout, indices, in.padding_row)
                           : std::vector<int64_t>();
  const EntryScale<acc_t, scalar_t> entry_scale{
      in.per_sample_weights.defined() ? in.per_sample_weights.const_data_ptr<scalar_t>() : nullptr,
      mean ? counts.data() : nullptr};
  std::vector<int64_t> frequency;
  if (scale_grad_by_freq) {
    frequency.assign(layout.num_indices, 0);
    const RowGroups groups = group_by_row<index_t>(in.input);
    const int64_t* order = groups.order.const_data_ptr<int64_t>();
    for (size_t g = 0; g + 1 < groups.starts.size(); ++g) {
      for (int64_t k = groups.starts[g]; k < groups.starts[g + 1]; ++k) {
        frequency[order[k]] = groups.starts[g + 1] - groups.starts[g];
      }
    }
  }
  const scalar_t* grad = in.grad.const_data_ptr<scalar_t>();
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
  const auto in = prepare(grad, input, offsets, per_sample_weights, mode_value, padding_idx,
                          include_last_offset, num_weights);
  const Mode mode = in.mode;
  if (in.num_bags == 0 || in.dim == 0) {
    return at::zeros({input.numel(), in.dim}, grad.options());
  }
  // Every entry lies in a bag once there is one (offsets start at 0, the last bag ends at N), so
  // the kernel writes every row, padding rows as zeros: no zero-fill first.
  auto values = at::empty({input.numel(), in.dim}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "mybag_embedding_bag_per_entry_grad_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(in.input.scalar_type(), "mybag_embedding_bag_per_entry_grad_cpu", [&] {
      fill_per_entry_grad<scalar_t, index_t>(in, mode == Mode::Mean, scale_grad_by_freq, values);
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
  check_index_values(in.input, in.offsets, in.num_weights, include_last_offset);
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
  m.impl("_embedding_bag_dense_backward", &dense_backward);
  m.impl("_embedding_bag_per_entry_grad", &per_entry_grad);
  m.impl("_embedding_bag_per_sample_weights_backward", &per_sample_weights_backward);
}

}  // namespace mybag::cpu
