// What every device's kernels do before their own work, written once: check the arguments
// (mybag/checks.h), normalize padding_idx, count the bags and make the tensors contiguous.
// Value checks (indices, offsets) are each device's own, and run after these.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "mybag/mode.h"
#include "mybag/optimizers.h"

namespace mybag {

struct KernelInputs {
  Mode mode;
  at::Tensor input;                   // contiguous, 1-D or 2-D
  std::optional<at::Tensor> offsets;  // contiguous, when input is 1-D
  at::Tensor per_sample_weights;      // contiguous, or undefined when absent
  int64_t padding_row;                // -1 when absent
  bool include_last_offset;
  int64_t num_bags;
  int64_t num_weights;
  int64_t dim;                        // D
};

// For _embedding_bag_forward.
KernelInputs prepare_forward(const at::Tensor& weight, const at::Tensor& input,
                             const std::optional<at::Tensor>& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             int64_t mode_value, std::optional<int64_t> padding_idx,
                             bool include_last_offset, bool scale_grad_by_freq, bool sparse);

// (output, max_indices) of _embedding_bag_forward: max_indices is (0, 0) outside max mode.
std::tuple<at::Tensor, at::Tensor> allocate_forward_outputs(const KernelInputs& in,
                                                            const at::Tensor& weight);

// For _embedding_bag_dense_backward and _embedding_bag_per_entry_grad; grad is made contiguous.
KernelInputs prepare_weight_grad(const at::Tensor& grad, at::Tensor& contiguous_grad,
                                 const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                                 const std::optional<at::Tensor>& per_sample_weights,
                                 int64_t mode_value, std::optional<int64_t> padding_idx,
                                 bool include_last_offset, int64_t num_weights);

// For _embedding_bag_per_sample_weights_backward; grad is made contiguous.
KernelInputs prepare_per_sample_weights_grad(const at::Tensor& grad, at::Tensor& contiguous_grad,
                                             const at::Tensor& weight, const at::Tensor& input,
                                             const std::optional<at::Tensor>& offsets,
                                             int64_t mode_value,
                                             std::optional<int64_t> padding_idx,
                                             bool include_last_offset);

// For _quantized_embedding_bag_forward (quantized_checks.h); dim is the table's D.
KernelInputs prepare_quantized_forward(const at::Tensor& packed_weight, const at::Tensor& input,
                                       const std::optional<at::Tensor>& offsets,
                                       const std::optional<at::Tensor>& per_sample_weights,
                                       int64_t bits, int64_t mode_value,
                                       std::optional<int64_t> padding_idx,
                                       bool include_last_offset, at::ScalarType output_dtype);

// For _embedding_bag_fused_update_: parses the optimizer, runs every check that needs no values
// (mybag/optimizer_checks.h) and prepares the inputs as for the dense gradient; grad is made
// contiguous. The index values are each device's to check.
struct FusedUpdateInputs {
  Optimizer kind;
  Hyperparameters hyperparameters;
  KernelInputs in;
};
FusedUpdateInputs prepare_fused_update(const at::Tensor& weight, at::TensorList state,
                                       const at::Tensor& step, const at::Tensor& grad,
                                       at::Tensor& contiguous_grad, const at::Tensor& input,
                                       const std::optional<at::Tensor>& offsets,
                                       const std::optional<at::Tensor>& per_sample_weights,
                                       int64_t mode_value, std::optional<int64_t> padding_idx,
                                       bool include_last_offset, bool scale_grad_by_freq,
                                       c10::string_view optimizer, const Hyperparameters& h);

}  // namespace mybag
