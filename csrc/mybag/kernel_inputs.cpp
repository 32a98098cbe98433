#include "mybag/kernel_inputs.h"

#include <ATen/ops/empty.h>

#include "mybag/checks.h"
#include "mybag/optimizer_checks.h"
#include "mybag/quantized_checks.h"

namespace mybag {
namespace {

KernelInputs contiguous_inputs(Mode mode, const at::Tensor& input,
                               const std::optional<at::Tensor>& offsets,
                               const std::optional<at::Tensor>& per_sample_weights,
                               std::optional<int64_t> padding_idx, bool include_last_offset,
                               int64_t num_weights, int64_t dim) {
  KernelInputs in;
  in.mode = mode;
  in.input = input.contiguous();
  if (input.dim() == 1 && offsets.has_value()) in.offsets = offsets->contiguous();
  if (per_sample_weights.has_value() && per_sample_weights->defined()) {
    in.per_sample_weights = per_sample_weights->contiguous();
  }
  in.padding_row = normalize_padding_idx(padding_idx, num_weights);
  in.include_last_offset = include_last_offset;
  in.num_bags = num_bags(input, offsets, include_last_offset).expect_int();
  in.num_weights = num_weights;
  in.dim = dim;
  return in;
}

}  // namespace

KernelInputs prepare_forward(const at::Tensor& weight, const at::Tensor& input,
                             const std::optional<at::Tensor>& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             int64_t mode_value, std::optional<int64_t> padding_idx,
                             bool include_last_offset, bool scale_grad_by_freq, bool sparse) {
  const Mode mode = mode_from_int(mode_value);
  check_forward_args(weight, input, offsets, per_sample_weights, mode, padding_idx,
                     include_last_offset, scale_grad_by_freq, sparse);
  return contiguous_inputs(mode, input, offsets, per_sample_weights, padding_idx,
                           include_last_offset, weight.size(0), weight.size(1));
}

KernelInputs prepare_quantized_forward(const at::Tensor& packed_weight, const at::Tensor& input,
                                       const std::optional<at::Tensor>& offsets,
                                       const std::optional<at::Tensor>& per_sample_weights,
                                       int64_t bits, int64_t mode_value,
                                       std::optional<int64_t> padding_idx,
                                       bool include_last_offset, at::ScalarType output_dtype) {
  const Mode mode = mode_from_int(mode_value);
  const int64_t dim = check_quantized_forward_args(packed_weight, input, offsets,
                                                   per_sample_weights, bits, mode, padding_idx,
                                                   include_last_offset, output_dtype)
                          .expect_int();
  return contiguous_inputs(mode, input, offsets, per_sample_weights, padding_idx,
                           include_last_offset, packed_weight.size(0), dim);
}

std::tuple<at::Tensor, at::Tensor> allocate_forward_outputs(const KernelInputs& in,
                                                            const at::Tensor& weight) {
  const bool max = in.mode == Mode::Max;
  auto output = at::empty({in.num_bags, in.dim}, weight.options());
  auto max_indices = at::empty({max ? in.num_bags : 0, max ? in.dim : 0},
                               weight.options().dtype(at::kLong));
  return {output, max_indices};
}

KernelInputs prepare_weight_grad(const at::Tensor& grad, at::Tensor& contiguous_grad,
                                 const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                                 const std::optional<at::Tensor>& per_sample_weights,
                                 int64_t mode_value, std::optional<int64_t> padding_idx,
                                 bool include_last_offset, int64_t num_weights) {
  const Mode mode = mode_from_int(mode_value);
  check_weight_grad_args(grad, input, offsets, per_sample_weights, mode, padding_idx,
                         include_last_offset, c10::SymInt(num_weights));
  contiguous_grad = grad.contiguous();
  return contiguous_inputs(mode, input, offsets, per_sample_weights, padding_idx,
                           include_last_offset, num_weights, grad.size(1));
}

KernelInputs prepare_per_sample_weights_grad(const at::Tensor& grad, at::Tensor& contiguous_grad,
                                             const at::Tensor& weight, const at::Tensor& input,
                                             const std::optional<at::Tensor>& offsets,
                                             int64_t mode_value,
                                             std::optional<int64_t> padding_idx,
                                             bool include_last_offset) {
  const Mode mode = mode_from_int(mode_value);
  check_per_sample_weights_grad_args(grad, weight, input, offsets, mode, padding_idx,
                                     include_last_offset);
  contiguous_grad = grad.contiguous();
  return contiguous_inputs(mode, input, offsets, std::nullopt, padding_idx, include_last_offset,
                           weight.size(0), weight.size(1));
}

FusedUpdateInputs prepare_fused_update(const at::Tensor& weight, at::TensorList state,
                                       const at::Tensor& step, const at::Tensor& grad,
                                       at::Tensor& contiguous_grad, const at::Tensor& input,
                                       const std::optional<at::Tensor>& offsets,
                                       const std::optional<at::Tensor>& per_sample_weights,
                                       int64_t mode_value, std::optional<int64_t> padding_idx,
                                       bool include_last_offset, bool scale_grad_by_freq,
                                       c10::string_view optimizer, const Hyperparameters& h) {
  const Optimizer kind = parse_optimizer(std::string_view(optimizer.data(), optimizer.size()));
  check_fused_update_args(kind, h, weight, state, step, grad, input, offsets, per_sample_weights,
                          mode_value, padding_idx, include_last_offset, scale_grad_by_freq);
  return {kind, h,
          prepare_weight_grad(grad, contiguous_grad, input, offsets, per_sample_weights,
                              mode_value, padding_idx, include_last_offset, weight.size(0))};
}

}  // namespace mybag
