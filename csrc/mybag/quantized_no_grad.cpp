// The quantized forward has no backward: its table is integer, and a gradient for
// per_sample_weights is not provided. Under the Autograd key this refuses, at the call, a
// per_sample_weights that would need one (instead of a result whose gradient silently never
// arrives), and otherwise runs the kernels below autograd.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include "mybag/internal_ops.h"

namespace mybag {
namespace {

at::Tensor quantized_forward_no_grad(const at::Tensor& packed_weight, const at::Tensor& input,
                                     const std::optional<at::Tensor>& offsets,
                                     const std::optional<at::Tensor>& per_sample_weights,
                                     int64_t bits, int64_t mode,
                                     std::optional<int64_t> padding_idx,
                                     bool include_last_offset, at::ScalarType output_dtype) {
  TORCH_CHECK(!(c10::GradMode::is_enabled() && per_sample_weights.has_value() &&
                per_sample_weights->defined() && per_sample_weights->requires_grad()),
              "quantized_embedding_bag: per_sample_weights requires grad, but quantized tables "
              "have no backward; call it under torch.no_grad() or pass "
              "per_sample_weights.detach()");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return ops::quantized_forward(packed_weight, input, offsets, per_sample_weights, bits, mode,
                                padding_idx, include_last_offset, output_dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, Autograd, m) {
  m.impl("_quantized_embedding_bag_forward", &quantized_forward_no_grad);
}

}  // namespace mybag
