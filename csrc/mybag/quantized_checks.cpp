#include "mybag/quantized_checks.h"

#include <c10/util/Exception.h>

#include "mybag/checks.h"
#include "mybag/quantized_rows.h"

namespace mybag {

void check_bits(int64_t bits) {
  TORCH_CHECK_VALUE(bits == 8 || bits == 4,
                    "quantized_embedding_bag: bits has to be 8 or 4, but got ", bits);
}

void check_quantize_weight(const at::Tensor& weight, int64_t bits) {
  check_bits(bits);
  TORCH_CHECK_VALUE(weight.dim() == 2,
                    "quantize_rowwise: weight has to be a 2-D tensor (num_embeddings, "
                    "embedding_dim), but got a tensor of dimension ", weight.dim(),
                    " and shape ", weight.sym_sizes());
  const auto t = weight.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
              "quantize_rowwise: weight has to be float32, float16 or bfloat16, but got ", t);
  const c10::SymInt& dim = weight.sym_size(1);
  TORCH_CHECK_VALUE(dim >= 1,
                    "quantize_rowwise: embedding_dim (weight.size(1)) has to be at least 1, "
                    "but got ", dim);
  TORCH_CHECK_VALUE(bits != 4 || dim % 2 == 0,
                    "quantize_rowwise: embedding_dim (weight.size(1)) has to be even for 4 bits "
                    "(two values a byte), but got ", dim);
}

c10::SymInt check_packed_weight(const at::Tensor& packed_weight, int64_t bits) {
  check_bits(bits);
  TORCH_CHECK_VALUE(packed_weight.dim() == 2,
                    "quantized_embedding_bag: packed_weight has to be a 2-D tensor "
                    "(num_embeddings, packed columns), but got a tensor of dimension ",
                    packed_weight.dim(), " and shape ", packed_weight.sym_sizes());
  TORCH_CHECK(packed_weight.scalar_type() == at::kByte,
              "quantized_embedding_bag: packed_weight has to be uint8 (a table packed by "
              "quantize_rowwise or torch's embedding_bag_byte_prepack / "
              "embedding_bag_4bit_prepack), but got ", packed_weight.scalar_type());
  const c10::SymInt& columns = packed_weight.sym_size(1);
  const int64_t scale_bias_bytes = bits == 8 ? 8 : 4;
  TORCH_CHECK_VALUE(columns > scale_bias_bytes,
                    "quantized_embedding_bag: a ", bits, "-bit packed_weight has rows of values "
                    "then ", scale_bias_bytes, " bytes of scale and bias, so more than ",
                    scale_bias_bytes, " columns, but got shape ", packed_weight.sym_sizes());
  return bits == 8 ? columns - 8 : (columns - 4) * 2;
}

void check_output_dtype(at::ScalarType output_dtype) {
  TORCH_CHECK(output_dtype == at::kFloat || output_dtype == at::kHalf ||
                  output_dtype == at::kBFloat16,
              "quantized_embedding_bag: output_dtype has to be float32, float16 or bfloat16, "
              "but got ", output_dtype);
}

c10::SymInt check_quantized_forward_args(const at::Tensor& packed_weight, const at::Tensor& input,
                                         const std::optional<at::Tensor>& offsets,
                                         const std::optional<at::Tensor>& per_sample_weights,
                                         int64_t bits, Mode mode,
                                         std::optional<int64_t> padding_idx,
                                         bool include_last_offset, at::ScalarType output_dtype) {
  c10::SymInt dim = check_packed_weight(packed_weight, bits);
  check_output_dtype(output_dtype);
  check_bag_inputs(input, offsets, per_sample_weights, mode, include_last_offset, packed_weight,
                   "packed_weight");
  if (per_sample_weights.has_value() && per_sample_weights->defined()) {
    TORCH_CHECK(per_sample_weights->scalar_type() == at::kFloat,
                "quantized_embedding_bag: per_sample_weights has to be float32, float16 or "
                "bfloat16, but got ", per_sample_weights->scalar_type());
  }
  check_padding_idx(padding_idx, packed_weight.sym_size(0));
  return dim;
}

}  // namespace mybag
