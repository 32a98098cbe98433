#include "mybag/optimizer_checks.h"

#include <c10/util/Exception.h>

#include <cmath>

#include "mybag/checks.h"

namespace mybag {

Optimizer parse_optimizer(std::string_view name) {
  if (name == "sgd") return Optimizer::Sgd;
  if (name == "adagrad") return Optimizer::Adagrad;
  if (name == "rowwise_adagrad") return Optimizer::RowwiseAdagrad;
  if (name == "adam") return Optimizer::Adam;
  TORCH_CHECK_VALUE(false,
                    "fused_embedding_bag: optimizer has to be one of 'sgd', 'adagrad', "
                    "'rowwise_adagrad' or 'adam', but got '", name, "'");
}

const char* optimizer_name(Optimizer kind) {
  switch (kind) {
    case Optimizer::Sgd: return "sgd";
    case Optimizer::Adagrad: return "adagrad";
    case Optimizer::RowwiseAdagrad: return "rowwise_adagrad";
    case Optimizer::Adam: return "adam";
  }
  return "?";
}

namespace {

void check_at_least_zero(const char* name, double value) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value >= 0,
                    "fused_embedding_bag: ", name, " has to be a finite number >= 0, but got ",
                    value);
}

void check_beta(const char* name, double value) {
  TORCH_CHECK_VALUE(value >= 0 && value < 1, "fused_embedding_bag: ", name,
                    " has to be in [0, 1), but got ", value);
}

}  // namespace

void check_hyperparameters(const Hyperparameters& h) {
  check_at_least_zero("lr", h.lr);
  check_at_least_zero("eps", h.eps);
  check_at_least_zero("weight_decay", h.weight_decay);
  check_at_least_zero("lr_decay", h.lr_decay);
  check_beta("beta1 (betas[0])", h.beta1);
  check_beta("beta2 (betas[1])", h.beta2);
}

void check_initial_accumulator_value(double value) {
  check_at_least_zero("initial_accumulator_value", value);
}

at::ScalarType optimizer_state_dtype(at::ScalarType weight_dtype) {
  return weight_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

int64_t optimizer_state_count(Optimizer kind) {
  switch (kind) {
    case Optimizer::Sgd: return 0;
    case Optimizer::Adagrad:
    case Optimizer::RowwiseAdagrad: return 1;
    case Optimizer::Adam: return 2;
  }
  return 0;
}

bool optimizer_state_is_per_row(Optimizer kind) { return kind == Optimizer::RowwiseAdagrad; }

void check_optimizer_state(Optimizer kind, const at::Tensor& weight, at::TensorList state,
                           const at::Tensor& step) {
  const char* name = optimizer_name(kind);
  TORCH_CHECK(weight.is_contiguous(),
              "fused_embedding_bag: weight has to be contiguous (it is updated in place)");
  TORCH_CHECK(static_cast<int64_t>(state.size()) == optimizer_state_count(kind),
              "fused_embedding_bag: optimizer '", name, "' keeps ", optimizer_state_count(kind),
              " state tensor(s), but state holds ", state.size());
  const auto dtype = optimizer_state_dtype(weight.scalar_type());
  for (size_t i = 0; i < state.size(); ++i) {
    const at::Tensor& s = state[i];
    TORCH_CHECK(s.device() == weight.device(), "fused_embedding_bag: state[", i,
                "] has to be on weight's device ", weight.device(), ", but is on ", s.device());
    TORCH_CHECK(s.scalar_type() == dtype, "fused_embedding_bag: state[", i, "] of a ",
                weight.scalar_type(), " table has to be ", dtype, ", but got ", s.scalar_type());
    if (optimizer_state_is_per_row(kind)) {
      TORCH_CHECK(s.dim() == 1 && s.sym_size(0) == weight.sym_size(0),
                  "fused_embedding_bag: state[", i, "] of '", name,
                  "' has to have shape (num_embeddings,) = (", weight.sym_size(0),
                  ",), but got ", s.sym_sizes());
    } else {
      TORCH_CHECK(s.sym_sizes() == weight.sym_sizes(), "fused_embedding_bag: state[", i,
                  "] of '", name, "' has to have weight's shape ", weight.sym_sizes(),
                  ", but got ", s.sym_sizes());
    }
    TORCH_CHECK(s.is_contiguous(), "fused_embedding_bag: state[", i, "] has to be contiguous");
    TORCH_CHECK(!s.is_same(weight), "fused_embedding_bag: state[", i, "] is weight itself");
  }
  TORCH_CHECK(step.scalar_type() == at::kLong && step.dim() == 0,
              "fused_embedding_bag: step has to be a 0-dim int64 tensor, but got a ",
              step.scalar_type(), " tensor of shape ", step.sizes());
  TORCH_CHECK(step.device() == weight.device(), "fused_embedding_bag: step has to be on "
              "weight's device ", weight.device(), ", but is on ", step.device());
}

Optimizer check_fused_optimizer(std::string_view optimizer, const Hyperparameters& h,
                                const at::Tensor& weight, at::TensorList state,
                                const at::Tensor& step) {
  const Optimizer kind = parse_optimizer(optimizer);
  check_hyperparameters(h);
  check_optimizer_state(kind, weight, state, step);
  return kind;
}

void check_fused_update_args(Optimizer kind, const Hyperparameters& h, const at::Tensor& weight,
                             at::TensorList state, const at::Tensor& step, const at::Tensor& grad,
                             const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             int64_t mode_value, std::optional<int64_t> padding_idx,
                             bool include_last_offset, bool scale_grad_by_freq) {
  check_hyperparameters(h);
  check_optimizer_state(kind, weight, state, step);
  const Mode mode = mode_from_int(mode_value);
  check_mode_options(mode, scale_grad_by_freq, /*sparse=*/false);
  check_weight_grad_args(grad, input, offsets, per_sample_weights, mode, padding_idx,
                         include_last_offset, weight.sym_size(0));
  TORCH_CHECK(grad.scalar_type() == weight.scalar_type() && grad.device() == weight.device(),
              "fused_embedding_bag: grad has to have weight's dtype and device (", weight.scalar_type(),
              ", ", weight.device(), "), but got ", grad.scalar_type(), " on ", grad.device());
  TORCH_CHECK(grad.sym_size(1) == weight.sym_size(1),
              "fused_embedding_bag: grad has ", grad.sym_size(1), " columns, but weight has ",
              weight.sym_size(1));
}

}  // namespace mybag
