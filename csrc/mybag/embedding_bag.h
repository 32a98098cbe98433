// mybag's C++ API for LibTorch programs. Calls go through the dispatcher, so autograd, every
// device and TorchScript behave as from Python. Link the program with -Wl,--no-as-needed (or
// reference a symbol of the library) so the operators are registered.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

namespace mybag {

// torch::nn::functional::embedding_bag's semantics with F.embedding_bag's argument order and
// defaults (mode "mean").
at::Tensor embedding_bag(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& offsets = std::nullopt,
                         std::optional<double> max_norm = std::nullopt, double norm_type = 2.0,
                         bool scale_grad_by_freq = false, std::string_view mode = "mean",
                         bool sparse = false,
                         const std::optional<at::Tensor>& per_sample_weights = std::nullopt,
                         bool include_last_offset = false,
                         std::optional<int64_t> padding_idx = std::nullopt);

}  // namespace mybag
