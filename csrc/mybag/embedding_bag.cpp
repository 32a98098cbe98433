#include "mybag/embedding_bag.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include "mybag/checks.h"

namespace mybag {

at::Tensor embedding_bag(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& offsets, std::optional<double> max_norm,
                         double norm_type, bool scale_grad_by_freq, std::string_view mode,
                         bool sparse, const std::optional<at::Tensor>& per_sample_weights,
                         bool include_last_offset, std::optional<int64_t> padding_idx) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mybag::embedding_bag", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, std::optional<double>,
                                         double, bool, c10::string_view, bool,
                                         const std::optional<at::Tensor>&, bool,
                                         std::optional<int64_t>)>();
  return op.call(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq,
                 c10::string_view(mode.data(), mode.size()), sparse, per_sample_weights,
                 include_last_offset, padding_idx);
}

at::Tensor embedding_bag(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& offsets, std::optional<double> max_norm,
                         double norm_type, bool scale_grad_by_freq, Mode mode, bool sparse,
                         const std::optional<at::Tensor>& per_sample_weights,
                         bool include_last_offset, std::optional<int64_t> padding_idx) {
  return embedding_bag(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq,
                       mode_name(mode), sparse, per_sample_weights, include_last_offset,
                       padding_idx);
}

}  // namespace mybag
