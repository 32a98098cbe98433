// CPU kernel of _embedding_bag_fused_update_: one optimizer step over the rows the batch touched.
// Each touched row's whole gradient is summed into a small per-task buffer
// (cpu/row_gradients.h) and applied at once to the row and its state (mybag/optimizers.h):
// the gradient never exists as a table, and each row and its state are read and written once.
// Rows are visited in parallel, one task per group of rows, so the result does not depend on
// the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <vector>

#include "mybag/checks.h"
#include "mybag/kernel_inputs.h"
#include "mybag/optimizer_checks.h"
#include "mybag/optimizers.h"
#include "mybag/cpu/row_gradients.h"
#include "mybag/cpu/row_sort.h"
#include "mybag/cpu/value_checks.h"

namespace mybag::cpu {
namespace {

// The tables one step writes: the weight and the optimizer's state, as raw rows.
template <typename scalar_t, typename acc_t>
struct Tables {
  scalar_t* weight;
  acc_t* state0;  // adagrad's and rowwise_adagrad's sum, adam's exp_avg; else nullptr
  acc_t* state1;  // adam's exp_avg_sq; else nullptr
  int64_t dim;
};

// Applies one step to row `row` given its gradient. The loops are written element by element
// so the compiler vectorizes them (square roots included: the build passes -fno-math-errno).
template <Optimizer kind, typename scalar_t, typename acc_t>
void update_row(const Tables<scalar_t, acc_t>& t, const StepFactors<acc_t>& factors, int64_t row,
                const acc_t* __restrict__ g) {
  // A local copy: the rows written below could alias `factors` as far as the compiler knows,
  // and reloading it every element keeps the loops from vectorizing.
  const StepFactors<acc_t> f = factors;
  const int64_t dim = t.dim;
  scalar_t* __restrict__ w = t.weight + row * dim;
  if constexpr (kind == Optimizer::Sgd) {
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t old = static_cast<acc_t>(w[d]);
      w[d] = static_cast<scalar_t>(sgd_weight(old, decayed_grad(g[d], old, f), f));
    }
  } else if constexpr (kind == Optimizer::Adagrad) {
    acc_t* __restrict__ sum = t.state0 + row * dim;
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t old = static_cast<acc_t>(w[d]);
      w[d] = static_cast<scalar_t>(adagrad_weight(old, decayed_grad(g[d], old, f), sum[d], f));
    }
  } else if constexpr (kind == Optimizer::RowwiseAdagrad) {
    // The mean square in element order (as the written-out reference and the CUDA kernel's
    // fixed-order reduction define it), then the row's factor.
    acc_t squares = 0;
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t gd = decayed_grad(g[d], static_cast<acc_t>(w[d]), f);
      squares += gd * gd;
    }
    const acc_t factor = rowwise_adagrad_factor(t.state0[row], squares / static_cast<acc_t>(dim), f);
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t old = static_cast<acc_t>(w[d]);
      w[d] = static_cast<scalar_t>(rowwise_adagrad_weight(old, decayed_grad(g[d], old, f), factor));
    }
  } else {
    acc_t* __restrict__ exp_avg = t.state0 + row * dim;
    acc_t* __restrict__ exp_avg_sq = t.state1 + row * dim;
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t old = static_cast<acc_t>(w[d]);
      w[d] = static_cast<scalar_t>(
          adam_weight(old, decayed_grad(g[d], old, f), exp_avg[d], exp_avg_sq[d], f));
    }
  }
}

// The sink of cpu/row_gradients.h that steps each row it receives; it prefetches the row and
// its state for writing.
template <Optimizer kind, typename scalar_t>
struct StepRows {
  using acc_t = at::opmath_type<scalar_t>;
  Tables<scalar_t, acc_t> tables;
  StepFactors<acc_t> factors;

  static constexpr int64_t kStateRowsPerElement =
      kind == Optimizer::Adam ? 2 : kind == Optimizer::Adagrad ? 1 : 0;

  int64_t row_bytes() const {
    return tables.dim * static_cast<int64_t>(sizeof(scalar_t) + kStateRowsPerElement * sizeof(acc_t));
  }
  void prefetch(int64_t row) const {
    const int64_t dim = tables.dim;
    prefetch_lines_for_write(tables.weight + row * dim, dim * static_cast<int64_t>(sizeof(scalar_t)));
    if constexpr (kind == Optimizer::RowwiseAdagrad) {
      prefetch_lines_for_write(tables.state0 + row, sizeof(acc_t));
    } else if constexpr (kStateRowsPerElement > 0) {
      prefetch_lines_for_write(tables.state0 + row * dim, dim * static_cast<int64_t>(sizeof(acc_t)));
      if constexpr (kStateRowsPerElement > 1) {
        prefetch_lines_for_write(tables.state1 + row * dim, dim * static_cast<int64_t>(sizeof(acc_t)));
      }
    }
  }
  void operator()(int64_t row, const acc_t* gradient) const {
    update_row<kind>(tables, factors, row, gradient);
  }
};

template <Optimizer kind, typename scalar_t, typename index_t>
void fused_step(const KernelInputs& in, const at::Tensor& grad, const at::Tensor& max_indices,
                bool scale_grad_by_freq, const Tables<scalar_t, at::opmath_type<scalar_t>>& t,
                const StepFactors<at::opmath_type<scalar_t>>& f) {
  const RowGroups groups = group_by_row_cpu(in.input.view({-1}), in.num_weights);
  const StepRows<kind, scalar_t> sink{t, f};
  if (in.mode == Mode::Max) {
    for_each_max_row_gradient<scalar_t, index_t>(in, grad, max_indices, groups, sink);
  } else {
    for_each_row_gradient<scalar_t, index_t>(in, grad, scale_grad_by_freq, groups, sink);
  }
}

template <typename scalar_t, typename index_t>
void fused_step_for(Optimizer kind, const KernelInputs& in, const at::Tensor& grad,
                    const at::Tensor& max_indices, bool scale_grad_by_freq,
                    const Tables<scalar_t, at::opmath_type<scalar_t>>& t,
                    const StepFactors<at::opmath_type<scalar_t>>& f) {
  switch (kind) {
    case Optimizer::Sgd:
      return fused_step<Optimizer::Sgd, scalar_t, index_t>(in, grad, max_indices,
                                                           scale_grad_by_freq, t, f);
    case Optimizer::Adagrad:
      return fused_step<Optimizer::Adagrad, scalar_t, index_t>(in, grad, max_indices,
                                                               scale_grad_by_freq, t, f);
    case Optimizer::RowwiseAdagrad:
      return fused_step<Optimizer::RowwiseAdagrad, scalar_t, index_t>(in, grad, max_indices,
                                                                      scale_grad_by_freq, t, f);
    case Optimizer::Adam:
      return fused_step<Optimizer::Adam, scalar_t, index_t>(in, grad, max_indices,
                                                            scale_grad_by_freq, t, f);
  }
}

void fused_update(at::Tensor& weight, at::TensorList state, at::Tensor& step,
                  const at::Tensor& grad, const at::Tensor& input,
                  const std::optional<at::Tensor>& offsets,
                  const std::optional<at::Tensor>& per_sample_weights,
                  const at::Tensor& max_indices, int64_t mode_value,
                  std::optional<int64_t> padding_idx, bool include_last_offset,
                  bool scale_grad_by_freq, c10::string_view optimizer, double lr, double eps,
                  double beta1, double beta2, double weight_decay, double lr_decay) {
  // Everything is checked before anything is written: a failed step changes nothing.
  at::Tensor flat_grad;
  const FusedUpdateInputs prepared = prepare_fused_update(
      weight, state, step, grad, flat_grad, input, offsets, per_sample_weights, mode_value,
      padding_idx, include_last_offset, scale_grad_by_freq, optimizer,
      {lr, eps, beta1, beta2, weight_decay, lr_decay});
  const Optimizer kind = prepared.kind;
  const Hyperparameters& h = prepared.hyperparameters;
  const KernelInputs& args = prepared.in;
  check_index_values(args.input, args.offsets, args.num_weights);
  at::Tensor winners;
  if (args.mode == Mode::Max) {
    winners = max_indices.contiguous();
    check_max_index_values(winners, args.num_bags, args.dim, args.num_weights, flat_grad);
  }

  int64_t* step_count = step.mutable_data_ptr<int64_t>();
  *step_count += 1;
  if (args.num_bags == 0 || args.dim == 0 || args.num_weights == 0) return;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "mybag_fused_update_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Tables<scalar_t, acc_t> tables{
        weight.mutable_data_ptr<scalar_t>(),
        state.size() > 0 ? state[0].mutable_data_ptr<acc_t>() : nullptr,
        state.size() > 1 ? state[1].mutable_data_ptr<acc_t>() : nullptr, args.dim};
    const auto factors = step_factors<acc_t>(kind, h, *step_count);
    AT_DISPATCH_INDEX_TYPES(args.input.scalar_type(), "mybag_fused_update_cpu", [&] {
      fused_step_for<scalar_t, index_t>(kind, args, flat_grad, winners, scale_grad_by_freq,
                                        tables, factors);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CPU, m) {
  m.impl("_embedding_bag_fused_update_", &fused_update);
}

}  // namespace mybag::cpu
