// Shape-only kernels for the internal ops (Meta key): what FakeTensor runs under torch.compile
// and torch.export. They run the same metadata checks as the device kernels, with symbolic
// sizes, and never read values.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "mybag/checks.h"
#include "mybag/optimizer_checks.h"
#include "mybag/quantized_checks.h"

namespace mybag {
namespace {

void renorm_meta(at::Tensor& weight, const at::Tensor& input,
                 const std::optional<at::Tensor>& offsets, bool include_last_offset,
                 double max_norm, double /*norm_type*/) {
  check_renorm_args(weight, input, offsets, include_last_offset, max_norm);
}

std::tuple<at::Tensor, at::Tensor> forward_meta(
    const at::Tensor& weight, const at::Tensor& input, const std::optional<at::Tensor>& offsets,
    const std::optional<at::Tensor>& per_sample_weights, int64_t mode_value,
    std::optional<int64_t> padding_idx, bool include_last_offset, bool scale_grad_by_freq,
    bool sparse) {
  const Mode mode = mode_from_int(mode_value);
  check_forward_args(weight, input, offsets, per_sample_weights, mode, padding_idx,
                     include_last_offset, scale_grad_by_freq, sparse);
  const auto bags = num_bags(input, offsets, include_last_offset);
  const auto dim = weight.sym_size(1);
  auto output = at::empty_symint({bags, dim}, weight.options());
  const bool is_max = mode == Mode::Max;
  auto max_indices = at::empty_symint({is_max ? bags : c10::SymInt(0), is_max ? dim : c10::SymInt(0)},
                                      weight.options().dtype(at::kLong));
  return {output, max_indices};
}

at::Tensor dense_backward_meta(const at::Tensor& grad, const at::Tensor& input,
                               const std::optional<at::Tensor>& offsets,
                               const std::optional<at::Tensor>& per_sample_weights,
                               const at::Tensor& /*max_indices*/, c10::SymInt num_weights,
                               int64_t mode, std::optional<int64_t> padding_idx,
                               bool include_last_offset, bool) {
  check_weight_grad_args(grad, input, offsets, per_sample_weights, mode_from_int(mode), padding_idx,
                      include_last_offset, num_weights);
  return at::empty_symint({num_weights, grad.sym_size(1)}, grad.options());
}

at::Tensor per_entry_grad_meta(const at::Tensor& grad, const at::Tensor& input,
                               const std::optional<at::Tensor>& offsets,
                               const std::optional<at::Tensor>& per_sample_weights,
                               c10::SymInt num_weights, int64_t mode,
                               std::optional<int64_t> padding_idx, bool include_last_offset,
                               bool) {
  check_per_entry_grad_mode(mode_from_int(mode));
  check_weight_grad_args(grad, input, offsets, per_sample_weights, mode_from_int(mode), padding_idx,
                      include_last_offset, num_weights);
  return at::empty_symint({input.sym_numel(), grad.sym_size(1)}, grad.options());
}

at::Tensor per_sample_weights_backward_meta(const at::Tensor& grad, const at::Tensor& weight,
                                            const at::Tensor& input,
                                            const std::optional<at::Tensor>& offsets,
                                            int64_t mode_value, std::optional<int64_t> padding_idx,
                                            bool include_last_offset) {
  check_per_sample_weights_grad_args(grad, weight, input, offsets, mode_from_int(mode_value),
                                     padding_idx, include_last_offset);
  return at::empty_symint(input.sym_sizes(), grad.options());
}

void fused_update_meta(at::Tensor& weight, at::TensorList state, at::Tensor& step,
                       const at::Tensor& grad, const at::Tensor& input,
                       const std::optional<at::Tensor>& offsets,
                       const std::optional<at::Tensor>& per_sample_weights,
                       const at::Tensor& /*max_indices*/, int64_t mode_value,
                       std::optional<int64_t> padding_idx, bool include_last_offset,
                       bool scale_grad_by_freq, c10::string_view optimizer, double lr, double eps,
                       double beta1, double beta2, double weight_decay, double lr_decay) {
  const Hyperparameters h{lr, eps, beta1, beta2, weight_decay, lr_decay};
  check_fused_update_args(parse_optimizer(std::string_view(optimizer.data(), optimizer.size())), h,
                          weight, state, step, grad, input, offsets, per_sample_weights,
                          mode_value, padding_idx, include_last_offset, scale_grad_by_freq);
}

at::Tensor quantize_rowwise_meta(const at::Tensor& weight, int64_t bits) {
  check_quantize_weight(weight, bits);
  const c10::SymInt& dim = weight.sym_size(1);
  c10::SymInt columns = bits == 8 ? dim + 8 : dim / 2 + 4;
  return at::empty_symint({weight.sym_size(0), std::move(columns)},
                          weight.options().dtype(at::kByte));
}

at::Tensor quantized_forward_meta(const at::Tensor& packed_weight, const at::Tensor& input,
                                  const std::optional<at::Tensor>& offsets,
                                  const std::optional<at::Tensor>& per_sample_weights,
                                  int64_t bits, int64_t mode, std::optional<int64_t> padding_idx,
                                  bool include_last_offset, at::ScalarType output_dtype) {
  c10::SymInt dim = check_quantized_forward_args(packed_weight, input, offsets,
                                                 per_sample_weights, bits, mode_from_int(mode),
                                                 padding_idx, include_last_offset, output_dtype);
  return at::empty_symint({num_bags(input, offsets, include_last_offset), std::move(dim)},
                          packed_weight.options().dtype(output_dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, Meta, m) {
  m.impl("_embedding_bag_fused_update_", &fused_update_meta);
  m.impl("_embedding_bag_renorm_", &renorm_meta);
  m.impl("_embedding_bag_forward", &forward_meta);
  m.impl("_embedding_bag_dense_backward", &dense_backward_meta);
  m.impl("_embedding_bag_per_entry_grad", &per_entry_grad_meta);
  m.impl("_embedding_bag_per_sample_weights_backward", &per_sample_weights_backward_meta);
  m.impl("quantize_rowwise", &quantize_rowwise_meta);
  m.impl("_quantized_embedding_bag_forward", &quantized_forward_meta);
}

}  // namespace mybag
