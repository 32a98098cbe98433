// Autograd for mybag::_embedding_bag_fused_forward: the backward updates the table in place
// with the fused optimizer (_embedding_bag_fused_update_) and returns no gradient for weight,
// so weight.grad stays None and no optimizer has to step it. Written in C++ under the Autograd
// key, as the plain op's (autograd.cpp), so that training works the same from Python,
// TorchScript and LibTorch programs.
//
// weight, the state tensors and step are held by the node as plain references, not as saved
// variables: the backward writes them, and a saved variable would then fail its version check.
// What a saved variable would have caught is checked by hand instead: if weight changed between
// the forward and this backward (another backward of the same table already stepped it, or the
// user wrote to it), the step is refused, since its gradient was computed from rows that no
// longer exist.
#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "mybag/internal_ops.h"
#include "mybag/optimizer_checks.h"

namespace mybag {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The tensors the backward writes. Not a tensor type, so autograd::Function does not take
// them for inputs of the node.
struct UpdatedTables {
  std::vector<at::Tensor> state;
  at::Tensor step;
};

class FusedEmbeddingBagFunction
    : public torch::autograd::Function<FusedEmbeddingBagFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight,
                               const UpdatedTables& tables, const at::Tensor& input,
                               const std::optional<at::Tensor>& offsets,
                               const std::optional<at::Tensor>& per_sample_weights, int64_t mode,
                               std::optional<int64_t> padding_idx, bool include_last_offset,
                               bool scale_grad_by_freq, const std::string& optimizer, double lr,
                               double eps, double beta1, double beta2, double weight_decay,
                               double lr_decay) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, max_indices] =
        ops::forward(weight, input, offsets, per_sample_weights, mode, padding_idx,
                     include_last_offset, scale_grad_by_freq, /*sparse=*/false);
    ctx->save_for_backward({input, offsets.value_or(at::Tensor()),
                            per_sample_weights.value_or(at::Tensor()), max_indices});
    ctx->saved_data["weight"] = weight;
    ctx->saved_data["weight_version"] = static_cast<int64_t>(weight._version());
    ctx->saved_data["state"] = c10::List<at::Tensor>(tables.state);
    ctx->saved_data["step"] = tables.step;
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["padding_idx"] = padding_idx;
    ctx->saved_data["include_last_offset"] = include_last_offset;
    ctx->saved_data["scale_grad_by_freq"] = scale_grad_by_freq;
    ctx->saved_data["psw_needs_grad"] = per_sample_weights.has_value() &&
                                        per_sample_weights->defined() &&
                                        per_sample_weights->requires_grad();
    ctx->saved_data["optimizer"] = optimizer;
    ctx->saved_data["hyperparameters"] =
        std::vector<double>{lr, eps, beta1, beta2, weight_decay, lr_decay};
    return {output};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const auto offsets = saved[1].defined() ? std::optional(saved[1]) : std::nullopt;
    const auto per_sample_weights = saved[2].defined() ? std::optional(saved[2]) : std::nullopt;
    const at::Tensor& max_indices = saved[3];
    at::Tensor weight = ctx->saved_data["weight"].toTensor();
    const auto state_list = ctx->saved_data["state"].toTensorList();
    const std::vector<at::Tensor> state(state_list.begin(), state_list.end());
    at::Tensor step = ctx->saved_data["step"].toTensor();
    const int64_t mode = ctx->saved_data["mode"].toInt();
    const auto padding_ivalue = ctx->saved_data["padding_idx"];
    const std::optional<int64_t> padding_idx =
        padding_ivalue.isNone() ? std::nullopt : std::optional(padding_ivalue.toInt());
    const bool include_last_offset = ctx->saved_data["include_last_offset"].toBool();
    const bool scale_grad_by_freq = ctx->saved_data["scale_grad_by_freq"].toBool();
    const std::string optimizer = ctx->saved_data["optimizer"].toStringRef();
    const auto h = ctx->saved_data["hyperparameters"].toDoubleVector();
    const at::Tensor& grad = grad_outputs[0];

    TORCH_CHECK(static_cast<int64_t>(weight._version()) ==
                    ctx->saved_data["weight_version"].toInt(),
                "fused_embedding_bag: weight was modified after this forward and before its "
                "backward (for example by the backward of another forward of the same table, "
                "or by an in-place write), so this step's gradient no longer fits it. Run one "
                "forward per table between optimizer steps, e.g. concatenate the inputs.");

    // The per_sample_weights gradient reads the rows as the forward saw them: before the step.
    at::Tensor grad_per_sample_weights;
    if (ctx->saved_data["psw_needs_grad"].toBool()) {
      grad_per_sample_weights = ops::per_sample_weights_backward(
          grad, weight, input, offsets, mode, padding_idx, include_last_offset);
    }
    if (ctx->needs_input_grad(0)) {
      at::NoGradGuard no_grad;
      ops::fused_update_(weight, state, step, grad, input, offsets, per_sample_weights,
                         max_indices, mode, padding_idx, include_last_offset, scale_grad_by_freq,
                         optimizer, h[0], h[1], h[2], h[3], h[4], h[5]);
    }
    // One entry per argument of forward(), per_sample_weights' fifth; weight's is left
    // undefined, so weight.grad is never written.
    variable_list grads(16);
    grads[4] = grad_per_sample_weights;
    return grads;
  }
};

at::Tensor fused_forward_autograd(const at::Tensor& weight, at::TensorList state,
                                  const at::Tensor& step, const at::Tensor& input,
                                  const std::optional<at::Tensor>& offsets,
                                  const std::optional<at::Tensor>& per_sample_weights,
                                  int64_t mode, std::optional<int64_t> padding_idx,
                                  bool include_last_offset, bool scale_grad_by_freq,
                                  c10::string_view optimizer, double lr, double eps,
                                  double beta1, double beta2, double weight_decay,
                                  double lr_decay) {
  check_fused_optimizer(std::string_view(optimizer.data(), optimizer.size()),
                        {lr, eps, beta1, beta2, weight_decay, lr_decay}, weight, state, step);
  const bool psw_requires_grad = per_sample_weights.has_value() && per_sample_weights->defined() &&
                                 per_sample_weights->requires_grad();
  if (!at::GradMode::is_enabled() || !(weight.requires_grad() || psw_requires_grad)) {
    // Inference, or a frozen table: no node, no step.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::fused_forward(weight, state, step, input, offsets, per_sample_weights, mode,
                              padding_idx, include_last_offset, scale_grad_by_freq, optimizer,
                              lr, eps, beta1, beta2, weight_decay, lr_decay);
  }
  const UpdatedTables tables{state.vec(), step};
  return FusedEmbeddingBagFunction::apply(
      weight, tables, input, offsets, per_sample_weights, mode, padding_idx, include_last_offset,
      scale_grad_by_freq, std::string(optimizer.data(), optimizer.size()), lr, eps, beta1, beta2,
      weight_decay, lr_decay)[0];
}

// Below autograd the fused forward is the plain forward: every device (and Meta) gets it from
// _embedding_bag_forward's kernels.
at::Tensor fused_forward_composite(const at::Tensor& weight, at::TensorList state,
                                   const at::Tensor& step, const at::Tensor& input,
                                   const std::optional<at::Tensor>& offsets,
                                   const std::optional<at::Tensor>& per_sample_weights,
                                   int64_t mode, std::optional<int64_t> padding_idx,
                                   bool include_last_offset, bool scale_grad_by_freq,
                                   c10::string_view optimizer, double lr, double eps,
                                   double beta1, double beta2, double weight_decay,
                                   double lr_decay) {
  check_fused_optimizer(std::string_view(optimizer.data(), optimizer.size()),
                        {lr, eps, beta1, beta2, weight_decay, lr_decay}, weight, state, step);
  return std::get<0>(ops::forward(weight, input, offsets, per_sample_weights, mode, padding_idx,
                                  include_last_offset, scale_grad_by_freq, /*sparse=*/false));
}

// The update op's autograd kernel. The op is not differentiable (it is the backward), and it
// writes weight, state and step but returns nothing, so torch's stock fallbacks would neither
// refuse a differentiable call nor bump the version counters (they bump mutated outputs only).
// This kernel does both: the counters of what it wrote go up, so that every saved tensor or
// fused node that read them before the step notices it.
void fused_update_autograd(at::Tensor& weight, at::TensorList state, at::Tensor& step,
                           const at::Tensor& grad, const at::Tensor& input,
                           const std::optional<at::Tensor>& offsets,
                           const std::optional<at::Tensor>& per_sample_weights,
                           const at::Tensor& max_indices, int64_t mode,
                           std::optional<int64_t> padding_idx, bool include_last_offset,
                           bool scale_grad_by_freq, c10::string_view optimizer, double lr,
                           double eps, double beta1, double beta2, double weight_decay,
                           double lr_decay) {
  if (at::GradMode::is_enabled()) {
    bool differentiable = weight.requires_grad() || grad.requires_grad() ||
                          (per_sample_weights.has_value() && per_sample_weights->requires_grad());
    for (const at::Tensor& s : state) differentiable = differentiable || s.requires_grad();
    TORCH_CHECK(!differentiable,
                "the derivative for mybag::_embedding_bag_fused_update_ is not implemented: it "
                "is the fused backward itself; call it under torch.no_grad()");
  }
  {
    at::AutoDispatchBelowADInplaceOrView below;
    ops::fused_update_(weight, state, step, grad, input, offsets, per_sample_weights, max_indices,
                       mode, padding_idx, include_last_offset, scale_grad_by_freq, optimizer, lr,
                       eps, beta1, beta2, weight_decay, lr_decay);
  }
  torch::autograd::impl::bump_version(weight);
  for (const at::Tensor& s : state) torch::autograd::impl::bump_version(s);
  torch::autograd::impl::bump_version(step);
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, Autograd, m) {
  m.impl("_embedding_bag_fused_forward", &fused_forward_autograd);
  m.impl("_embedding_bag_fused_update_", &fused_update_autograd);
}

TORCH_LIBRARY_IMPL(mybag, CompositeExplicitAutograd, m) {
  m.impl("_embedding_bag_fused_forward", &fused_forward_composite);
}

}  // namespace mybag
