#include "mybag/fused_embedding_bag.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include "mybag/checks.h"

namespace mybag {
namespace {

c10::string_view view_of(std::string_view text) { return {text.data(), text.size()}; }

}  // namespace

at::Tensor fused_embedding_bag(const at::Tensor& input, const at::Tensor& weight,
                               at::TensorList state, const at::Tensor& step,
                               const std::optional<at::Tensor>& offsets,
                               std::optional<double> max_norm, double norm_type,
                               bool scale_grad_by_freq, std::string_view mode,
                               const std::optional<at::Tensor>& per_sample_weights,
                               bool include_last_offset, std::optional<int64_t> padding_idx,
                               std::string_view optimizer, double lr, double eps, double beta1,
                               double beta2, double weight_decay, double lr_decay) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mybag::fused_embedding_bag", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::TensorList,
                            const at::Tensor&, const std::optional<at::Tensor>&,
                            std::optional<double>, double, bool, c10::string_view,
                            const std::optional<at::Tensor>&, bool, std::optional<int64_t>,
                            c10::string_view, double, double, double, double, double, double)>();
  return op.call(input, weight, state, step, offsets, max_norm, norm_type, scale_grad_by_freq,
                 view_of(mode), per_sample_weights, include_last_offset, padding_idx,
                 view_of(optimizer), lr, eps, beta1, beta2, weight_decay, lr_decay);
}

at::Tensor fused_embedding_bag(const at::Tensor& input, const at::Tensor& weight,
                               at::TensorList state, const at::Tensor& step,
                               const std::optional<at::Tensor>& offsets,
                               std::optional<double> max_norm, double norm_type,
                               bool scale_grad_by_freq, Mode mode,
                               const std::optional<at::Tensor>& per_sample_weights,
                               bool include_last_offset, std::optional<int64_t> padding_idx,
                               std::string_view optimizer, double lr, double eps, double beta1,
                               double beta2, double weight_decay, double lr_decay) {
  return fused_embedding_bag(input, weight, state, step, offsets, max_norm, norm_type,
                             scale_grad_by_freq, mode_name(mode), per_sample_weights,
                             include_last_offset, padding_idx, optimizer, lr, eps, beta1, beta2,
                             weight_decay, lr_decay);
}

}  // namespace mybag
