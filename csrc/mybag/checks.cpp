#include "mybag/checks.h"

#include <c10/util/Exception.h>

namespace mybag {

Mode parse_mode(std::string_view mode) {
  if (mode == "sum") return Mode::Sum;
  if (mode == "mean") return Mode::Mean;
  if (mode == "max") return Mode::Max;
  TORCH_CHECK_VALUE(false, "embedding_bag: mode has to be one of 'sum', 'mean' or 'max', but got '",
                    mode, "'");
}

Mode mode_from_int(int64_t mode) {
  TORCH_CHECK(mode >= 0 && mode <= 2,
              "embedding_bag: mode has to be 0 (sum), 1 (mean) or 2 (max), but got ", mode);
  return static_cast<Mode>(mode);
}

const char* mode_name(Mode mode) {
  switch (mode) {
    case Mode::Sum: return "sum";
    case Mode::Mean: return "mean";
    case Mode::Max: return "max";
  }
  return "?";
}

namespace {

bool is_index_dtype(at::ScalarType t) {
  return t == at::kInt || t == at::kLong;
}

bool is_supported_weight_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

void check_bag_inputs(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                      const std::optional<at::Tensor>& per_sample_weights, Mode mode,
                      bool include_last_offset, const at::Tensor& table, const char* table_name) {
  TORCH_CHECK(is_index_dtype(input.scalar_type()),
              "embedding_bag: input has to hold int32 or int64 indices, but got ",
              input.scalar_type());
  TORCH_CHECK(input.device() == table.device(),
              "embedding_bag: input and ", table_name,
              " have to be on the same device, but input is on ", input.device(), " and ",
              table_name, " on ", table.device());

  const bool has_offsets = offsets.has_value() && offsets->defined();
  if (input.dim() == 2) {
    TORCH_CHECK_VALUE(!has_offsets,
                      "embedding_bag: offsets has to be None when input is 2-D (each row of input "
                      "is a bag), but got offsets of shape ", has_offsets ? offsets->sizes() : at::IntArrayRef{});
  } else if (input.dim() == 1) {
    TORCH_CHECK_VALUE(has_offsets,
                      "embedding_bag: offsets has to be a 1-D tensor when input is 1-D, but got None");
    TORCH_CHECK_VALUE(offsets->dim() == 1,
                      "embedding_bag: offsets has to be a 1-D tensor, but got a tensor of dimension ",
                      offsets->dim(), " and shape ", offsets->sizes());
    TORCH_CHECK(is_index_dtype(offsets->scalar_type()),
                "embedding_bag: offsets has to hold int32 or int64 values, but got ",
                offsets->scalar_type());
    TORCH_CHECK(offsets->scalar_type() == input.scalar_type(),
                "embedding_bag: input and offsets have to share one dtype here, but got ",
                input.scalar_type(), " and ", offsets->scalar_type());
    TORCH_CHECK(offsets->device() == table.device(),
                "embedding_bag: offsets and ", table_name,
                " have to be on the same device, but offsets is on ", offsets->device(), " and ",
                table_name, " on ", table.device());
    TORCH_CHECK_VALUE(!include_last_offset || offsets->sym_numel() >= 1,
                      "embedding_bag: include_last_offset=True needs offsets with B + 1 entries for B "
                      "bags (at least 1), but got an empty offsets");
  } else {
    TORCH_CHECK_VALUE(false,
                      "embedding_bag: input has to be a 1-D tensor (with offsets) or a 2-D tensor "
                      "(one bag a row), but got a tensor of dimension ", input.dim(),
                      " and shape ", input.sizes());
  }

  if (per_sample_weights.has_value() && per_sample_weights->defined()) {
    const auto& psw = *per_sample_weights;
    TORCH_CHECK_NOT_IMPLEMENTED(mode == Mode::Sum,
                                "embedding_bag: per_sample_weights is only supported with mode='sum', "
                                "but got mode='", mode_name(mode), "'");
    TORCH_CHECK_VALUE(psw.sym_sizes() == input.sym_sizes(),
                      "embedding_bag: per_sample_weights has to have the shape of input ",
                      input.sym_sizes(), ", but got shape ", psw.sym_sizes());
    TORCH_CHECK(psw.device() == table.device(),
                "embedding_bag: per_sample_weights and ", table_name,
                " have to be on the same device, but per_sample_weights is on ", psw.device(),
                " and ", table_name, " on ", table.device());
  }
}

void check_inputs(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    Mode mode,
    bool include_last_offset) {
  TORCH_CHECK_VALUE(weight.dim() == 2,
                    "embedding_bag: weight has to be a 2-D tensor (num_embeddings, embedding_dim), "
                    "but got a tensor of dimension ", weight.dim(), " and shape ", weight.sizes());
  TORCH_CHECK(is_supported_weight_dtype(weight.scalar_type()),
              "embedding_bag: weight has to be float32, float64, float16 or bfloat16, but got ",
              weight.scalar_type());
  check_bag_inputs(input, offsets, per_sample_weights, mode, include_last_offset, weight,
                   "weight");
  if (per_sample_weights.has_value() && per_sample_weights->defined()) {
    TORCH_CHECK(per_sample_weights->scalar_type() == weight.scalar_type(),
                "embedding_bag: per_sample_weights has to have the dtype of weight (",
                weight.scalar_type(), "), but got ", per_sample_weights->scalar_type());
  }
}

void check_index_dtypes(const at::Tensor& input, const std::optional<at::Tensor>& offsets) {
  // Everything else about these dtypes is check_inputs' to report; here only the pair of two
  // narrow integer dtypes, which promotes to a narrow one (torch rejects it too).
  if (!offsets.has_value() || !offsets->defined()) {
    return;
  }
  const at::ScalarType in = input.scalar_type();
  const at::ScalarType off = offsets->scalar_type();
  const bool both_narrow = at::isIntegralType(in, /*includeBool=*/false) &&
                           at::isIntegralType(off, /*includeBool=*/false) && !is_index_dtype(in) &&
                           !is_index_dtype(off);
  TORCH_CHECK(!both_narrow,
              "embedding_bag: input and offsets have to hold int32 or int64 values (int8, uint8 or "
              "int16 only for one of them, with the other int32 or int64), but got input of dtype ",
              in, " and offsets of dtype ", off);
}

void check_padding_idx(std::optional<int64_t> padding_idx, const c10::SymInt& num_weights) {
  if (!padding_idx.has_value()) {
    return;
  }
  const c10::SymInt p(*padding_idx);
  TORCH_CHECK(p >= -num_weights && p < num_weights,
              "embedding_bag: padding_idx has to be within [-num_embeddings, num_embeddings) = [",
              -num_weights, ", ", num_weights, "), but got ", *padding_idx);
}

int64_t normalize_padding_idx(std::optional<int64_t> padding_idx, int64_t num_weights) {
  check_padding_idx(padding_idx, c10::SymInt(num_weights));
  if (!padding_idx.has_value()) {
    return -1;
  }
  return *padding_idx < 0 ? *padding_idx + num_weights : *padding_idx;
}

int64_t module_padding_idx(int64_t padding_idx, int64_t num_embeddings) {
  TORCH_CHECK_VALUE(padding_idx >= -num_embeddings && padding_idx < num_embeddings,
                    "EmbeddingBag: padding_idx=", padding_idx,
                    " is out of range; expected an integer in [-num_embeddings, num_embeddings) = [",
                    -num_embeddings, ", ", num_embeddings, ")");
  return padding_idx < 0 ? padding_idx + num_embeddings : padding_idx;
}

void check_max_norm(double max_norm) {
  TORCH_CHECK_VALUE(max_norm >= 0, "embedding_bag: max_norm has to be a number >= 0, but got ",
                    max_norm);
}

c10::SymInt num_bags(
    const at::Tensor& input,
    const std::optional<at::Tensor>& offsets,
    bool include_last_offset) {
  if (input.dim() == 2) {
    return input.sym_size(0);
  }
  return offsets->sym_size(0) - (include_last_offset ? 1 : 0);
}

void check_per_entry_grad_mode(Mode mode) {
  TORCH_CHECK(mode != Mode::Max,
              "embedding_bag: the per-entry (sparse) gradient does not exist in max mode");
}

void check_per_sample_weights_grad_mode(Mode mode) {
  TORCH_CHECK_NOT_IMPLEMENTED(mode == Mode::Sum,
                              "embedding_bag: the per_sample_weights gradient exists only with "
                              "mode='sum', but got mode='", mode_name(mode), "'");
}

void check_grad_tensor(const at::Tensor& grad) {
  TORCH_CHECK(grad.dim() == 2,
              "embedding_bag backward: grad has to be 2-D (num_bags, embedding_dim), but got shape ",
              grad.sym_sizes());
  TORCH_CHECK(is_supported_weight_dtype(grad.scalar_type()),
              "embedding_bag backward: grad has to be float32, float64, float16 or bfloat16, but got ",
              grad.scalar_type());
}

void check_grad(const at::Tensor& grad, const c10::SymInt& bags, const c10::SymInt& embedding_dim,
                at::ScalarType weight_dtype) {
  TORCH_CHECK(grad.dim() == 2 && grad.sym_size(0) == bags && grad.sym_size(1) == embedding_dim,
              "embedding_bag backward: grad has to have shape (", bags, ", ", embedding_dim,
              "), but got ", grad.sym_sizes());
  TORCH_CHECK(grad.scalar_type() == weight_dtype,
              "embedding_bag backward: grad has to have the dtype of weight (", weight_dtype,
              "), but got ", grad.scalar_type());
}

void check_not_nested(const char* name, const at::Tensor& tensor) {
  TORCH_CHECK_VALUE(!(tensor.defined() && tensor.is_nested()), "embedding_bag: ", name,
                    " is a nested tensor, which torch.ops.mybag.embedding_bag does not take; "
                    "call mybag.embedding_bag or mybag.EmbeddingBag, which take a 2-D jagged "
                    "nested input as one bag per component");
}

void check_mode_options(Mode mode, bool scale_grad_by_freq, bool sparse) {
  if (mode != Mode::Max) return;
  TORCH_CHECK_VALUE(!scale_grad_by_freq,
                    "embedding_bag: mode='max' does not support scale_grad_by_freq=True");
  TORCH_CHECK_VALUE(!sparse, "embedding_bag: mode='max' does not support sparse=True");
}

void check_forward_args(const at::Tensor& weight, const at::Tensor& input,
                        const std::optional<at::Tensor>& offsets,
                        const std::optional<at::Tensor>& per_sample_weights, Mode mode,
                        std::optional<int64_t> padding_idx, bool include_last_offset,
                        bool scale_grad_by_freq, bool sparse) {
  check_inputs(input, weight, offsets, per_sample_weights, mode, include_last_offset);
  check_mode_options(mode, scale_grad_by_freq, sparse);
  check_padding_idx(padding_idx, weight.sym_size(0));
}

void check_renorm_args(const at::Tensor& weight, const at::Tensor& input,
                       const std::optional<at::Tensor>& offsets, bool include_last_offset,
                       double max_norm) {
  check_inputs(input, weight, offsets, std::nullopt, Mode::Sum, include_last_offset);
  check_max_norm(max_norm);
}

void check_weight_grad_args(const at::Tensor& grad, const at::Tensor& input,
                            const std::optional<at::Tensor>& offsets,
                            const std::optional<at::Tensor>& per_sample_weights, Mode mode,
                            std::optional<int64_t> padding_idx, bool include_last_offset,
                            const c10::SymInt& num_weights) {
  TORCH_CHECK(num_weights >= 0, "embedding_bag backward: num_weights has to be >= 0, but got ",
              num_weights);
  check_grad_tensor(grad);
  // grad stands in for weight: 2-D, a float dtype, the device and dtype of everything else.
  check_inputs(input, grad, offsets, per_sample_weights, mode, include_last_offset);
  check_grad(grad, num_bags(input, offsets, include_last_offset), grad.sym_size(1),
             grad.scalar_type());
  check_padding_idx(padding_idx, num_weights);
}

void check_per_sample_weights_grad_args(const at::Tensor& grad, const at::Tensor& weight,
                                        const at::Tensor& input,
                                        const std::optional<at::Tensor>& offsets, Mode mode,
                                        std::optional<int64_t> padding_idx,
                                        bool include_last_offset) {
  check_per_sample_weights_grad_mode(mode);
  check_inputs(input, weight, offsets, std::nullopt, mode, include_last_offset);
  check_grad_tensor(grad);
  check_grad(grad, num_bags(input, offsets, include_last_offset), weight.sym_size(1),
             weight.scalar_type());
  check_padding_idx(padding_idx, weight.sym_size(0));
}

void check_max_indices_shape(const at::Tensor& max_indices, int64_t bags, int64_t dim,
                             const at::Tensor& grad) {
  TORCH_CHECK(max_indices.device() == grad.device(),
              "embedding_bag backward: max_indices has to be on grad's device (", grad.device(),
              "), but is on ", max_indices.device());
  TORCH_CHECK(max_indices.scalar_type() == at::kLong && max_indices.dim() == 2 &&
                  max_indices.size(0) == bags && max_indices.size(1) == dim,
              "embedding_bag backward: max_indices has to be an int64 tensor of shape (", bags,
              ", ", dim, ") in max mode, but got ", max_indices.scalar_type(), " of shape ",
              max_indices.sizes());
}

void fail_index_out_of_range(int64_t position, int64_t index, int64_t num_weights) {
  TORCH_CHECK_INDEX(false, "embedding_bag: input[", position, "] = ", index,
                    " is out of range for weight with ", num_weights,
                    " rows (num_embeddings); expected 0 <= index < ", num_weights);
}

void fail_first_offset(int64_t first_offset) {
  TORCH_CHECK(false, "embedding_bag: offsets[0] has to be 0 (the first bag starts at the start of "
                     "input), but got offsets[0] = ", first_offset);
}

void fail_decreasing_offsets(int64_t position, int64_t offset, int64_t previous) {
  TORCH_CHECK(false, "embedding_bag: offsets have to be non-decreasing, but got offsets[", position,
              "] = ", offset, " < offsets[", position - 1, "] = ", previous);
}

void fail_offset_past_end(int64_t position, int64_t offset, int64_t num_indices) {
  TORCH_CHECK(false, "embedding_bag: offsets[", position, "] = ", offset,
              " is past the end of input, which holds ", num_indices,
              " indices; expected offsets <= ", num_indices);
}

void fail_max_index_out_of_range(int64_t index, int64_t num_weights) {
  TORCH_CHECK_INDEX(false, "embedding_bag backward: max_indices holds ", index,
                    ", out of range for weight with ", num_weights,
                    " rows; expected -1 <= index < ", num_weights);
}

}  // namespace mybag
