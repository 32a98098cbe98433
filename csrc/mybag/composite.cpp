// The public operators (embedding_bag, fused_embedding_bag, quantized_embedding_bag) as
// CompositeImplicitAutograd kernels: they run on every device and under every tracer by calling
// the internal ops, which hold the device kernels, the Meta kernels and autograd.
//
// Order matters for "a failed call modifies nothing": with max_norm, every check that needs no
// index values runs here first, and the renorm op then checks the index values before it writes.
// Without max_norm nothing is written before the forward, whose kernel checks the same things:
// they run once per call.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_to_copy.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <string_view>
#include <tuple>
#include <utility>

#include "mybag/checks.h"
#include "mybag/internal_ops.h"
#include "mybag/optimizer_checks.h"

namespace mybag {
namespace {

// input and offsets of different integer dtypes meet at their promoted type, as in torch: the
// kernels then see one dtype. That lets int8/uint8/int16 pair with int32/int64 (torch accepts
// those); check_index_dtypes rejects two narrow ones, as torch does. Anything else (bool, a
// floating dtype) is left as it is, for the forward's checks to reject.
std::pair<at::Tensor, std::optional<at::Tensor>> promoted_indices(
    const at::Tensor& input,
    const std::optional<at::Tensor>& offsets) {
  if (!offsets.has_value() || offsets->scalar_type() == input.scalar_type() ||
      !at::isIntegralType(input.scalar_type(), /*includeBool=*/false) ||
      !at::isIntegralType(offsets->scalar_type(), /*includeBool=*/false)) {
    return {input, offsets};
  }
  const at::ScalarType common = at::promoteTypes(input.scalar_type(), offsets->scalar_type());
  return {input.to(common), offsets->to(common)};
}

// What every public op does before its forward: nested tensors rejected, the mode parsed,
// absent tensors normalized and indices promoted to one dtype. `table` is the tensor the bags
// index, named table_name.
struct PreparedCall {
  Mode mode;
  at::Tensor indices;
  std::optional<at::Tensor> offsets;
  std::optional<at::Tensor> per_sample_weights;
  bool include_last_offset;
};

PreparedCall prepare_bags(const at::Tensor& input, const at::Tensor& table,
                          const char* table_name, const std::optional<at::Tensor>& offsets_arg,
                          c10::string_view mode_name,
                          const std::optional<at::Tensor>& per_sample_weights_arg,
                          bool include_last_offset_arg) {
  check_not_nested("input", input);
  check_not_nested(table_name, table);
  if (offsets_arg.has_value()) check_not_nested("offsets", *offsets_arg);
  if (per_sample_weights_arg.has_value()) {
    check_not_nested("per_sample_weights", *per_sample_weights_arg);
  }
  PreparedCall call;
  call.mode = parse_mode(std::string_view(mode_name.data(), mode_name.size()));
  const auto offsets = offsets_arg.has_value() && offsets_arg->defined() ? offsets_arg : std::nullopt;
  call.per_sample_weights = per_sample_weights_arg.has_value() && per_sample_weights_arg->defined()
                                ? per_sample_weights_arg
                                : std::nullopt;
  // A 2-D input is a batch of equal bags: include_last_offset does not apply (as in torch).
  call.include_last_offset = input.dim() == 2 ? false : include_last_offset_arg;
  check_index_dtypes(input, offsets);
  std::tie(call.indices, call.offsets) = promoted_indices(input, offsets);
  return call;
}

// The float ops: prepare_bags, then with max_norm every check the forward would run, done
// before the renorm writes the referenced rows.
PreparedCall prepare_call(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& offsets_arg,
                          std::optional<double> max_norm, double norm_type,
                          bool scale_grad_by_freq, c10::string_view mode_name, bool sparse,
                          const std::optional<at::Tensor>& per_sample_weights_arg,
                          bool include_last_offset_arg, std::optional<int64_t> padding_idx) {
  PreparedCall call = prepare_bags(input, weight, "weight", offsets_arg, mode_name,
                                   per_sample_weights_arg, include_last_offset_arg);
  if (max_norm.has_value()) {
    // The renorm writes before the forward runs: everything the forward would reject is
    // rejected first (without max_norm the forward's own checks are the only ones).
    check_forward_args(weight, call.indices, call.offsets, call.per_sample_weights, call.mode,
                       padding_idx, call.include_last_offset, scale_grad_by_freq, sparse);
    check_max_norm(*max_norm);
    // Renormalization is not part of the differentiated function (as in torch).
    at::NoGradGuard no_grad;
    at::Tensor table = weight;  // shares weight's storage: the op writes through it
    ops::renorm_(table, call.indices, call.offsets, call.include_last_offset, *max_norm,
                 norm_type);
  }
  return call;
}

at::Tensor embedding_bag_composite(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& offsets,
    std::optional<double> max_norm,
    double norm_type,
    bool scale_grad_by_freq,
    c10::string_view mode_name,
    bool sparse,
    const std::optional<at::Tensor>& per_sample_weights,
    bool include_last_offset,
    std::optional<int64_t> padding_idx) {
  const PreparedCall call =
      prepare_call(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode_name,
                   sparse, per_sample_weights, include_last_offset, padding_idx);
  return std::get<0>(ops::forward(weight, call.indices, call.offsets, call.per_sample_weights,
                                  static_cast<int64_t>(call.mode), padding_idx,
                                  call.include_last_offset, scale_grad_by_freq, sparse));
}

// The fused op: embedding_bag's preparation, then the internal op whose autograd node steps the
// optimizer in the backward. The optimizer's arguments are checked first, so a step that would
// fail is refused before anything (max_norm's renorm included) runs.
at::Tensor fused_embedding_bag_composite(
    const at::Tensor& input, const at::Tensor& weight, at::TensorList state,
    const at::Tensor& step, const std::optional<at::Tensor>& offsets,
    std::optional<double> max_norm, double norm_type, bool scale_grad_by_freq,
    c10::string_view mode_name, const std::optional<at::Tensor>& per_sample_weights,
    bool include_last_offset, std::optional<int64_t> padding_idx,
    c10::string_view optimizer, double lr, double eps, double beta1, double beta2,
    double weight_decay, double lr_decay) {
  check_fused_optimizer(std::string_view(optimizer.data(), optimizer.size()),
                        {lr, eps, beta1, beta2, weight_decay, lr_decay}, weight, state, step);
  const PreparedCall call =
      prepare_call(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode_name,
                   /*sparse=*/false, per_sample_weights, include_last_offset, padding_idx);
  return ops::fused_forward(weight, state, step, call.indices, call.offsets,
                            call.per_sample_weights, static_cast<int64_t>(call.mode), padding_idx,
                            call.include_last_offset, scale_grad_by_freq, optimizer, lr, eps,
                            beta1, beta2, weight_decay, lr_decay);
}

// The quantized op: the bags prepared as for embedding_bag; float16 and bfloat16
// per_sample_weights become float32 (exactly), the dtype the kernels read.
at::Tensor quantized_embedding_bag_composite(
    const at::Tensor& input, const at::Tensor& packed_weight, int64_t bits,
    const std::optional<at::Tensor>& offsets, c10::string_view mode_name,
    const std::optional<at::Tensor>& per_sample_weights, bool include_last_offset,
    std::optional<int64_t> padding_idx, std::optional<at::ScalarType> output_dtype) {
  PreparedCall call = prepare_bags(input, packed_weight, "packed_weight", offsets, mode_name,
                                   per_sample_weights, include_last_offset);
  if (call.per_sample_weights.has_value()) {
    const auto t = call.per_sample_weights->scalar_type();
    if (t == at::kHalf || t == at::kBFloat16) {
      call.per_sample_weights = call.per_sample_weights->to(at::kFloat);
    }
  }
  return ops::quantized_forward(packed_weight, call.indices, call.offsets,
                                call.per_sample_weights, bits, static_cast<int64_t>(call.mode),
                                padding_idx, call.include_last_offset,
                                output_dtype.value_or(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CompositeImplicitAutograd, m) {
  m.impl("embedding_bag", &embedding_bag_composite);
  m.impl("fused_embedding_bag", &fused_embedding_bag_composite);
  m.impl("quantized_embedding_bag", &quantized_embedding_bag_composite);
}

}  // namespace mybag
