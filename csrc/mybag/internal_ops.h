// Typed dispatcher handles of the internal ops, for the C++ code inside mybag that calls them
// (the public op and autograd). Calls go through the dispatcher, so every device and the
// tracing modes of torch.compile see them.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace mybag::ops {

inline void renorm_(at::Tensor& weight, const at::Tensor& input,
                    const std::optional<at::Tensor>& offsets, bool include_last_offset,
                    double max_norm, double norm_type) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mybag::_embedding_bag_renorm_", "")
                       .typed<void(at::Tensor&, const at::Tensor&,
                                   const std::optional<at::Tensor>&, bool, double, double)>();
  op.call(weight, input, offsets, include_last_offset, max_norm, norm_type);
}

inline std::tuple<at::Tensor, at::Tensor> forward(
    const at::Tensor& weight, const at::Tensor& input, const std::optional<at::Tensor>& offsets,
    const std::optional<at::Tensor>& per_sample_weights, int64_t mode,
    std::optional<int64_t> padding_idx, bool include_last_offset, bool scale_grad_by_freq,
    bool sparse) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mybag::_embedding_bag_forward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
              const std::optional<at::Tensor>&, int64_t, std::optional<int64_t>, bool, bool,
              bool)>();
  return op.call(weight, input, offsets, per_sample_weights, mode, padding_idx,
                 include_last_offset, scale_grad_by_freq, sparse);
}

inline at::Tensor dense_backward(const at::Tensor& grad, const at::Tensor& input,
                                 const std::optional<at::Tensor>& offsets,
                                 const std::optional<at::Tensor>& per_sample_weights,
                                 const at::Tensor& max_indices, const c10::SymInt& num_weights,
                                 int64_t mode, std::optional<int64_t> padding_idx,
                                 bool include_last_offset, bool scale_grad_by_freq) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mybag::_embedding_bag_dense_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, const at::Tensor&,
                                         c10::SymInt, int64_t, std::optional<int64_t>, bool,
                                         bool)>();
  return op.call(grad, input, offsets, per_sample_weights, max_indices, num_weights, mode,
                 padding_idx, include_last_offset, scale_grad_by_freq);
}

inline at::Tensor per_entry_grad(const at::Tensor& grad, const at::Tensor& input,
                                 const std::optional<at::Tensor>& offsets,
                                 const std::optional<at::Tensor>& per_sample_weights,
                                 const c10::SymInt& num_weights, int64_t mode,
                                 std::optional<int64_t> padding_idx, bool include_last_offset,
                                 bool scale_grad_by_freq) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mybag::_embedding_bag_per_entry_grad", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, c10::SymInt, int64_t,
                                         std::optional<int64_t>, bool, bool)>();
  return op.call(grad, input, offsets, per_sample_weights, num_weights, mode, padding_idx,
                 include_last_offset, scale_grad_by_freq);
}

inline at::Tensor per_sample_weights_backward(const at::Tensor& grad, const at::Tensor& weight,
                                              const at::Tensor& input,
                                              const std::optional<at::Tensor>& offsets,
                                              int64_t mode, std::optional<int64_t> padding_idx,
                                              bool include_last_offset) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mybag::_embedding_bag_per_sample_weights_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, int64_t, std::optional<int64_t>,
                            bool)>();
  return op.call(grad, weight, input, offsets, mode, padding_idx, include_last_offset);
}

inline at::Tensor fused_forward(const at::Tensor& weight, at::TensorList state,
                                const at::Tensor& step, const at::Tensor& input,
                                const std::optional<at::Tensor>& offsets,
                                const std::optional<at::Tensor>& per_sample_weights,
                                int64_t mode, std::optional<int64_t> padding_idx,
                                bool include_last_offset, bool scale_grad_by_freq,
                                c10::string_view optimizer, double lr, double eps, double beta1,
                                double beta2, double weight_decay, double lr_decay) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mybag::_embedding_bag_fused_forward", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList, const at::Tensor&,
                                         const at::Tensor&, const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, int64_t,
                                         std::optional<int64_t>, bool, bool, c10::string_view,
                                         double, double, double, double, double, double)>();
  return op.call(weight, state, step, input, offsets, per_sample_weights, mode, padding_idx,
                 include_last_offset, scale_grad_by_freq, optimizer, lr, eps, beta1, beta2,
                 weight_decay, lr_decay);
}

inline void fused_update_(at::Tensor& weight, at::TensorList state, at::Tensor& step,
                          const at::Tensor& grad, const at::Tensor& input,
                          const std::optional<at::Tensor>& offsets,
                          const std::optional<at::Tensor>& per_sample_weights,
                          const at::Tensor& max_indices, int64_t mode,
                          std::optional<int64_t> padding_idx, bool include_last_offset,
                          bool scale_grad_by_freq, c10::string_view optimizer, double lr,
                          double eps, double beta1, double beta2, double weight_decay,
                          double lr_decay) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mybag::_embedding_bag_fused_update_", "")
                       .typed<void(at::Tensor&, at::TensorList, at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, const at::Tensor&, int64_t,
                                   std::optional<int64_t>, bool, bool, c10::string_view, double,
                                   double, double, double, double, double)>();
  op.call(weight, state, step, grad, input, offsets, per_sample_weights, max_indices, mode,
          padding_idx, include_last_offset, scale_grad_by_freq, optimizer, lr, eps, beta1, beta2,
          weight_decay, lr_decay);
}

inline at::Tensor quantized_forward(const at::Tensor& packed_weight, const at::Tensor& input,
                                    const std::optional<at::Tensor>& offsets,
                                    const std::optional<at::Tensor>& per_sample_weights,
                                    int64_t bits, int64_t mode,
                                    std::optional<int64_t> padding_idx, bool include_last_offset,
                                    at::ScalarType output_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mybag::_quantized_embedding_bag_forward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, int64_t, int64_t,
                                         std::optional<int64_t>, bool, at::ScalarType)>();
  return op.call(packed_weight, input, offsets, per_sample_weights, bits, mode, padding_idx,
                 include_last_offset, output_dtype);
}

}  // namespace mybag::ops
