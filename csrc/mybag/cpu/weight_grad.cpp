// CPU dense weight gradient, deterministic and free of races without atomics (as
// cuda/weight_grad.cu, with the same groups by row: cpu/row_sort.h).
// - sum and mean: entries are grouped by row (a stable sort), and each group is reduced by one
//   task in input order, in float (or double), then stored once (cpu/row_gradients.h);
// - max: tasks own disjoint column ranges and walk the bags in order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "mybag/checks.h"
#include "mybag/kernel_inputs.h"
#include "mybag/reductions.h"
#include "mybag/cpu/row_gradients.h"
#include "mybag/cpu/row_sort.h"
#include "mybag/cpu/value_checks.h"

namespace mybag::cpu {
namespace {

// Stores each row's gradient into the dense gradient table.
template <typename scalar_t>
struct StoreRows {
  scalar_t* out;
  int64_t dim;

  int64_t row_bytes() const { return dim * static_cast<int64_t>(sizeof(scalar_t)); }
  void prefetch(int64_t row) const { prefetch_lines_for_write(out + row * dim, row_bytes()); }
  void operator()(int64_t row, const at::opmath_type<scalar_t>* gradient) const {
    scalar_t* out_row = out + row * dim;
    for (int64_t d = 0; d < dim; ++d) out_row[d] = static_cast<scalar_t>(gradient[d]);
  }
};

template <typename scalar_t, typename index_t>
void sum_mean_weight_grad(const KernelInputs& in, const at::Tensor& grad_tensor,
                          bool scale_grad_by_freq, at::Tensor& grad_weight) {
  for_each_row_gradient<scalar_t, index_t>(
      in, grad_tensor, scale_grad_by_freq, group_by_row_cpu(in.input.view({-1}), in.num_weights),
      StoreRows<scalar_t>{grad_weight.mutable_data_ptr<scalar_t>(), in.dim});
}

template <typename scalar_t>
void max_weight_grad(const KernelInputs& in, const at::Tensor& grad_tensor,
                     const at::Tensor& max_indices, at::Tensor& grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  // Half and bfloat16 gradients add up in a float table, rounded once at the end (a row can
  // win thousands of bags); float and double add up in place.
  constexpr bool in_place = std::is_same_v<acc_t, scalar_t>;
  at::Tensor sums = in_place ? grad_weight
                             : at::zeros(grad_weight.sizes(),
                                         grad_weight.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const int64_t* winners = max_indices.const_data_ptr<int64_t>();
  const scalar_t* grad = grad_tensor.const_data_ptr<scalar_t>();
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

at::Tensor dense_backward(const at::Tensor& grad, const at::Tensor& input,
                          const std::optional<at::Tensor>& offsets,
                          const std::optional<at::Tensor>& per_sample_weights,
                          const at::Tensor& max_indices, c10::SymInt num_weights_sym,
                          int64_t mode_value, std::optional<int64_t> padding_idx,
                          bool include_last_offset, bool scale_grad_by_freq) {
  const int64_t num_weights = num_weights_sym.expect_int();
  at::Tensor flat_grad;
  const auto in = prepare_weight_grad(grad, flat_grad, input, offsets, per_sample_weights,
                                      mode_value, padding_idx, include_last_offset, num_weights);
  check_index_values(in.input, in.offsets, num_weights);
  const Mode mode = in.mode;
  auto grad_weight = at::zeros({num_weights, in.dim}, grad.options());
  if (in.num_bags == 0 || in.dim == 0 || num_weights == 0) {
    return grad_weight;
  }
  if (mode == Mode::Max) {
    const auto winners = max_indices.contiguous();
    check_max_index_values(winners, in.num_bags, in.dim, num_weights, grad);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                    "mybag_embedding_bag_max_backward_cpu",
                                    [&] { max_weight_grad<scalar_t>(in, flat_grad, winners, grad_weight); });
    return grad_weight;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "mybag_embedding_bag_backward_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(in.input.scalar_type(), "mybag_embedding_bag_backward_cpu", [&] {
      sum_mean_weight_grad<scalar_t, index_t>(in, flat_grad, scale_grad_by_freq, grad_weight);
    });
  });
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CPU, m) {
  m.impl("_embedding_bag_dense_backward", &dense_backward);
}

}  // namespace mybag::cpu
