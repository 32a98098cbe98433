// Argument checks of the fused optimizers, shared by the public op, every device's kernel of
// _embedding_bag_fused_update_ and its Meta kernel (the C++ module checks its hyperparameters
// with them too). ValueError for a bad name or hyperparameter, as torch.optim raises; RuntimeError
// for state tensors that do not fit the table.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string_view>

#include "mybag/optimizers.h"

namespace mybag {

// "sgd" | "adagrad" | "rowwise_adagrad" | "adam"; anything else is a ValueError naming it.
Optimizer parse_optimizer(std::string_view name);
const char* optimizer_name(Optimizer kind);

// lr, eps, weight_decay and lr_decay >= 0 and finite; betas in [0, 1).
void check_hyperparameters(const Hyperparameters& h);
// The Adagrads' initial sum of squares (a module option, not an op argument): >= 0 and finite.
void check_initial_accumulator_value(double value);

// The dtype of the optimizer state of a table of dtype weight_dtype: double for float64 tables,
// float32 for the others.
at::ScalarType optimizer_state_dtype(at::ScalarType weight_dtype);

// How many state tensors an optimizer keeps, and whether they are per row (E,) or per element
// (E, D).
int64_t optimizer_state_count(Optimizer kind);
bool optimizer_state_is_per_row(Optimizer kind);

// weight contiguous; state: the optimizer's tensors, each contiguous, of optimizer_state_dtype,
// on weight's device, shaped (E, D) or (E,); step an int64 scalar on weight's device. Needs no
// values (the Meta kernel runs it too).
void check_optimizer_state(Optimizer kind, const at::Tensor& weight, at::TensorList state,
                           const at::Tensor& step);

// The optimizer's name, hyperparameters and state: what the fused forward checks, so that a
// step that would fail is refused before the forward rather than in the backward.
Optimizer check_fused_optimizer(std::string_view optimizer, const Hyperparameters& h,
                                const at::Tensor& weight, at::TensorList state,
                                const at::Tensor& step);

// Everything _embedding_bag_fused_update_ checks before it reads a value (each device then checks
// the index values itself): the above, and grad, input, offsets and per_sample_weights as the
// dense backward checks them, against weight.
void check_fused_update_args(Optimizer kind, const Hyperparameters& h, const at::Tensor& weight,
                             at::TensorList state, const at::Tensor& step, const at::Tensor& grad,
                             const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             int64_t mode_value, std::optional<int64_t> padding_idx,
                             bool include_last_offset, bool scale_grad_by_freq);

}  // namespace mybag
