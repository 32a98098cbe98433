// mybag's C++ API for LibTorch programs: the functional form. Calls go through the dispatcher,
// so autograd, every device and TorchScript behave as from Python. Programs link the library
// with -Wl,--no-as-needed (the CMake package's mybag::mybag target does) so that the operators
// register even though nothing references a symbol of the library.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "mybag/mode.h"

namespace mybag {

// torch.nn.functional.embedding_bag's arguments, order and defaults (mode "mean"); the same
// results and errors as from Python. mode is "sum", "mean" or "max".
at::Tensor embedding_bag(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& offsets = std::nullopt,
                         std::optional<double> max_norm = std::nullopt, double norm_type = 2.0,
                         bool scale_grad_by_freq = false, std::string_view mode = "mean",
                         bool sparse = false,
                         const std::optional<at::Tensor>& per_sample_weights = std::nullopt,
                         bool include_last_offset = false,
                         std::optional<int64_t> padding_idx = std::nullopt);

// The same, with the mode as an enum.
at::Tensor embedding_bag(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& offsets, std::optional<double> max_norm,
                         double norm_type, bool scale_grad_by_freq, Mode mode, bool sparse = false,
                         const std::optional<at::Tensor>& per_sample_weights = std::nullopt,
                         bool include_last_offset = false,
                         std::optional<int64_t> padding_idx = std::nullopt);

}  // namespace mybag
