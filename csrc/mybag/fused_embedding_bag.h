// mybag's C++ API for the embedding bag trained by its own backward (issue 14): the functional
// form of the mybag::fused_embedding_bag operator, called through the dispatcher as
// mybag::embedding_bag is (embedding_bag.h), so that C++ autograd runs the fused optimizer step.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>
#include <string_view>

#include "mybag/mode.h"

namespace mybag {

// mybag::embedding_bag (no `sparse`) whose backward updates `weight` in place with an optimizer
// instead of producing weight.grad: every row named by a non-padding entry of input gets one
// step from its whole gradient in the batch, and `state` and `step` are updated with it.
//   state: the optimizer's tensors, contiguous, float32 (float64 for a float64 weight), on
//          weight's device: {} for "sgd"; {sum} for "adagrad" (weight's shape) and
//          "rowwise_adagrad" ((num_embeddings,)); {exp_avg, exp_avg_sq} for "adam" (weight's
//          shape). A std::vector<at::Tensor> or a braced list converts to it.
//   step:  0-dim int64 on weight's device, the steps taken so far; the backward adds one.
//   optimizer: "sgd", "adagrad", "rowwise_adagrad" or "adam"; lr, eps, beta1, beta2,
//          weight_decay and lr_decay as in torch::optim (weight_decay is applied to the touched
//          rows only). The values of this call are the ones its backward uses.
// The same errors as from Python: c10::ValueError for an unknown optimizer or a hyperparameter
// out of range, c10::Error for state or step that do not fit weight, and embedding_bag's.
at::Tensor fused_embedding_bag(const at::Tensor& input, const at::Tensor& weight,
                               at::TensorList state, const at::Tensor& step,
                               const std::optional<at::Tensor>& offsets = std::nullopt,
                               std::optional<double> max_norm = std::nullopt,
                               double norm_type = 2.0, bool scale_grad_by_freq = false,
                               std::string_view mode = "mean",
                               const std::optional<at::Tensor>& per_sample_weights = std::nullopt,
                               bool include_last_offset = false,
                               std::optional<int64_t> padding_idx = std::nullopt,
                               std::string_view optimizer = "sgd", double lr = 1e-3,
                               double eps = 1e-10, double beta1 = 0.9, double beta2 = 0.999,
                               double weight_decay = 0.0, double lr_decay = 0.0);

// The same, with the mode as an enum.
at::Tensor fused_embedding_bag(const at::Tensor& input, const at::Tensor& weight,
                               at::TensorList state, const at::Tensor& step,
                               const std::optional<at::Tensor>& offsets,
                               std::optional<double> max_norm, double norm_type,
                               bool scale_grad_by_freq, Mode mode,
                               const std::optional<at::Tensor>& per_sample_weights = std::nullopt,
                               bool include_last_offset = false,
                               std::optional<int64_t> padding_idx = std::nullopt,
                               std::string_view optimizer = "sgd", double lr = 1e-3,
                               double eps = 1e-10, double beta1 = 0.9, double beta2 = 0.999,
                               double weight_decay = 0.0, double lr_decay = 0.0);

}  // namespace mybag
