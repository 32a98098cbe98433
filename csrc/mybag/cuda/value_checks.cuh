// The CUDA kernels' value checks: the same conditions and messages as the CPU's
// (mybag/checks.h), found on the device and reported through one small device-to-host copy.
// Skipped when mybag/cuda_value_checks.h's switch is off or a CUDA graph is being captured; the
// kernels then contain bad values instead (see that header).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace mybag::cuda {

// Whether this call checks values: the switch is on and the current stream is not capturing.
bool value_checks_active();

// Indices within [0, num_weights); offsets starting at 0, never decreasing, never past the end
// of input. input and offsets have the same integer dtype.
void check_index_values(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                        int64_t num_weights);

// max mode's backward: every max_indices entry within [-1, num_weights).
void check_max_indices_values(const at::Tensor& max_indices, int64_t num_weights);

}  // namespace mybag::cuda
