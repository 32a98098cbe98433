// Autograd for mybag::_embedding_bag_forward, in C++ under the Autograd key, so that training
// works the same from Python, TorchScript and LibTorch programs with no Python at all.
//
// The backward ops themselves are not differentiable: they get autograd's "not implemented"
// kernel, so a double backward fails with an error naming the op instead of a silent zero.
#include <ATen/ops/_sparse_coo_tensor_unsafe.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "mybag/checks.h"
#include "mybag/cuda_value_checks.h"
#include "mybag/internal_ops.h"

namespace mybag {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The sparse COO gradient: one row per non-padding entry of input (uncoalesced, as torch's).
// With CUDA value checks off, entries out of range are dropped too: they got no gradient, and a
// sparse tensor must not name rows the table lacks.
at::Tensor sparse_weight_grad(const at::Tensor& per_entry, const at::Tensor& input,
                              int64_t padding_row, int64_t num_weights) {
  auto rows = input.reshape({-1}).to(at::kLong);
  auto values = per_entry;
  const bool unchecked = input.is_cuda() && !cuda_value_checks_enabled();
  if (padding_row >= 0 || unchecked) {
    auto keep = padding_row >= 0 ? rows.ne(padding_row) : at::ones_like(rows, at::kBool);
    if (unchecked) keep = keep.logical_and(rows.ge(0)).logical_and(rows.lt(num_weights));
    // One selection for both, so rows and values provably keep the same (data-dependent)
    // length under torch.compile.
    const auto kept = keep.nonzero().squeeze(1);
    rows = rows.index_select(0, kept);
    values = values.index_select(0, kept);
  }
  // Sizes stay symbolic: per_entry.size(1) would materialize every size of per_entry as an
  // integer, and under torch.compile that guards its first size (the number of entries) to
  // the traced value, a new graph for every input length.
  const c10::SymInt sizes[] = {c10::SymInt(num_weights), per_entry.sym_size(1)};
  return at::_sparse_coo_tensor_unsafe_symint(rows.unsqueeze(0), values, sizes,
                                              values.options().layout(at::kSparse));
}

class EmbeddingBagFunction : public torch::autograd::Function<EmbeddingBagFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight,
                               const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                               const std::optional<at::Tensor>& per_sample_weights, int64_t mode,
                               std::optional<int64_t> padding_idx, bool include_last_offset,
                               bool scale_grad_by_freq, bool sparse) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, max_indices] =
        ops::forward(weight, input, offsets, per_sample_weights, mode, padding_idx,
                     include_last_offset, scale_grad_by_freq, sparse);
    const bool psw_needs_grad = per_sample_weights.has_value() &&
                                per_sample_weights->defined() &&
                                per_sample_weights->requires_grad();
    // weight is needed only for the per_sample_weights gradient: don't keep it alive otherwise.
    ctx->save_for_backward({input, offsets.value_or(at::Tensor()),
                            per_sample_weights.value_or(at::Tensor()), max_indices,
                            psw_needs_grad ? weight : at::Tensor()});
    ctx->saved_data["num_weights"] = weight.sym_size(0);
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["padding_idx"] = padding_idx;
    ctx->saved_data["include_last_offset"] = include_last_offset;
    ctx->saved_data["scale_grad_by_freq"] = scale_grad_by_freq;
    ctx->saved_data["sparse"] = sparse;
    // needs_input_grad() counts only the tensors that were passed, so an absent offsets would
    // shift per_sample_weights' position: remember its need here instead.
    ctx->saved_data["psw_needs_grad"] = psw_needs_grad;
    ctx->mark_non_differentiable({max_indices});
    return {output, max_indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const auto offsets = saved[1].defined() ? std::optional(saved[1]) : std::nullopt;
    const auto per_sample_weights = saved[2].defined() ? std::optional(saved[2]) : std::nullopt;
    const at::Tensor& max_indices = saved[3];
    const at::Tensor& weight = saved[4];
    const auto num_weights = ctx->saved_data["num_weights"].toSymInt();
    const int64_t mode = ctx->saved_data["mode"].toInt();
    const auto padding_ivalue = ctx->saved_data["padding_idx"];
    const std::optional<int64_t> padding_idx =
        padding_ivalue.isNone() ? std::nullopt : std::optional(padding_ivalue.toInt());
    const bool include_last_offset = ctx->saved_data["include_last_offset"].toBool();
    const bool scale_grad_by_freq = ctx->saved_data["scale_grad_by_freq"].toBool();
    const bool sparse = ctx->saved_data["sparse"].toBool();
    const at::Tensor& grad = grad_outputs[0];

    at::Tensor grad_weight;
    if (ctx->needs_input_grad(0)) {
      if (sparse) {
        const auto per_entry =
            ops::per_entry_grad(grad, input, offsets, per_sample_weights, num_weights, mode,
                                padding_idx, include_last_offset, scale_grad_by_freq);
        const int64_t rows = num_weights.guard_int(__FILE__, __LINE__);
        grad_weight = sparse_weight_grad(per_entry, input,
                                         normalize_padding_idx(padding_idx, rows), rows);
      } else {
        grad_weight = ops::dense_backward(grad, input, offsets, per_sample_weights, max_indices,
                                          num_weights, mode, padding_idx, include_last_offset,
                                          scale_grad_by_freq);
      }
    }
    at::Tensor grad_per_sample_weights;
    if (ctx->saved_data["psw_needs_grad"].toBool()) {
      grad_per_sample_weights = ops::per_sample_weights_backward(
          grad, weight, input, offsets, mode, padding_idx, include_last_offset);
    }
    // One entry per argument of forward(); only weight and per_sample_weights have gradients.
    return {grad_weight,    at::Tensor(), at::Tensor(), grad_per_sample_weights, at::Tensor(),
            at::Tensor(),   at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> forward_autograd(
    const at::Tensor& weight, const at::Tensor& input, const std::optional<at::Tensor>& offsets,
    const std::optional<at::Tensor>& per_sample_weights, int64_t mode,
    std::optional<int64_t> padding_idx, bool include_last_offset, bool scale_grad_by_freq,
    bool sparse) {
  const bool psw_requires_grad = per_sample_weights.has_value() && per_sample_weights->defined() &&
                                 per_sample_weights->requires_grad();
  if (!at::GradMode::is_enabled() || !(weight.requires_grad() || psw_requires_grad)) {
    // Nothing to differentiate (inference, or a frozen table): no graph node, no saved
    // tensors, as torch's own embedding_bag then takes its forward-only path.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::forward(weight, input, offsets, per_sample_weights, mode, padding_idx,
                        include_last_offset, scale_grad_by_freq, sparse);
  }
  auto result = EmbeddingBagFunction::apply(weight, input, offsets, per_sample_weights, mode,
                                            padding_idx, include_last_offset, scale_grad_by_freq,
                                            sparse);
  return {result[0], result[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, Autograd, m) {
  m.impl("_embedding_bag_forward", &forward_autograd);
  m.impl("_embedding_bag_renorm_", torch::autograd::autogradNotImplementedFallback());
  m.impl("_embedding_bag_dense_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("_embedding_bag_per_entry_grad", torch::autograd::autogradNotImplementedFallback());
  m.impl("_embedding_bag_per_sample_weights_backward",
         torch::autograd::autogradNotImplementedFallback());
}

// renorm_ writes into weight: bump its version counter so autograd notices a later misuse.
TORCH_LIBRARY_IMPL(mybag, ADInplaceOrView, m) {
  m.impl("_embedding_bag_renorm_",
         torch::autograd::autogradNotImplementedInplaceOrViewFallback());
}

}  // namespace mybag
