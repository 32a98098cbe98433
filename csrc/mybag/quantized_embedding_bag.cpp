#include "mybag/quantized_embedding_bag.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>

#include "mybag/checks.h"
#include "mybag/quantized_rows.h"

namespace mybag {

at::Tensor quantize_rowwise(const at::Tensor& weight, int64_t bits) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mybag::quantize_rowwise", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op.call(weight, bits);
}

at::Tensor dequantize_rowwise(const at::Tensor& packed_weight, int64_t bits) {
  TORCH_CHECK_VALUE(bits == 8 || bits == 4,
                    "dequantize_rowwise: bits has to be 8 or 4, but got ", bits);
  TORCH_CHECK_VALUE(packed_weight.scalar_type() == at::kByte && packed_weight.dim() == 2,
                    "dequantize_rowwise: packed_weight has to be a 2-D uint8 tensor, but got ",
                    packed_weight.scalar_type(), " of shape ", packed_weight.sizes());
  // Python's version slices without this check and fails in the view below; here the same
  // ValueError as the operator's (quantized_checks.cpp) names the problem.
  const int64_t scale_bias_bytes = packed_row_bytes(bits, 0);
  TORCH_CHECK_VALUE(packed_weight.size(1) > scale_bias_bytes,
                    "dequantize_rowwise: a ", bits, "-bit packed_weight has rows of values then ",
                    scale_bias_bytes, " bytes of scale and bias, so more than ", scale_bias_bytes,
                    " columns, but got shape ", packed_weight.sizes());
  const at::Tensor packed = packed_weight.contiguous();
  const int64_t rows = packed.size(0);
  const int64_t value_bytes = packed.size(1) - scale_bias_bytes;
  at::Tensor q;
  at::Tensor scale_bias;  // (rows, 2) float32: scale, bias
  if (bits == 8) {
    q = packed.slice(1, 0, value_bytes);
    scale_bias = packed.slice(1, value_bytes).contiguous().view(at::kFloat);
  } else {
    const at::Tensor bytes = packed.slice(1, 0, value_bytes);
    // Column 2k is the low nibble of byte k, column 2k + 1 its high nibble.
    q = at::stack({bytes.bitwise_and(0x0F), bytes.bitwise_right_shift(4)}, 2)
            .reshape({rows, value_bytes * 2});
    scale_bias = packed.slice(1, value_bytes).contiguous().view(at::kHalf).to(at::kFloat);
  }
  const at::Tensor scale = scale_bias.slice(1, 0, 1).to(at::kDouble);
  const at::Tensor bias = scale_bias.slice(1, 1, 2).to(at::kDouble);
  // q * scale is exact in float64 (8 bits times a float32), so adding bias there and rounding to
  // float32 rounds the whole expression once, as the kernels' fma does.
  return q.to(at::kDouble).mul(scale).add(bias).to(at::kFloat);
}

at::Tensor quantized_embedding_bag(const at::Tensor& input, const at::Tensor& packed_weight,
                                   int64_t bits, const std::optional<at::Tensor>& offsets,
                                   std::string_view mode,
                                   const std::optional<at::Tensor>& per_sample_weights,
                                   bool include_last_offset, std::optional<int64_t> padding_idx,
                                   std::optional<at::ScalarType> output_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mybag::quantized_embedding_bag", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t,
                                         const std::optional<at::Tensor>&, c10::string_view,
                                         const std::optional<at::Tensor>&, bool,
                                         std::optional<int64_t>,
                                         std::optional<at::ScalarType>)>();
  return op.call(input, packed_weight, bits, offsets, c10::string_view(mode.data(), mode.size()),
                 per_sample_weights, include_last_offset, padding_idx, output_dtype);
}

at::Tensor quantized_embedding_bag(const at::Tensor& input, const at::Tensor& packed_weight,
                                   int64_t bits, const std::optional<at::Tensor>& offsets,
                                   Mode mode, const std::optional<at::Tensor>& per_sample_weights,
                                   bool include_last_offset, std::optional<int64_t> padding_idx,
                                   std::optional<at::ScalarType> output_dtype) {
  return quantized_embedding_bag(input, packed_weight, bits, offsets, mode_name(mode),
                                 per_sample_weights, include_last_offset, padding_idx,
                                 output_dtype);
}

}  // namespace mybag
