// mybag's C++ API for row-wise quantized (8- or 4-bit) embedding bags, for serving: the
// functional forms of the mybag::quantize_rowwise and mybag::quantized_embedding_bag operators,
// called through the dispatcher as mybag::embedding_bag is (embedding_bag.h), and the unpacking
// of a table. The same names, arguments, defaults and errors as Python's mybag.quantize_rowwise,
// mybag.quantized_embedding_bag and mybag.dequantize_rowwise.
//
// A packed table is a uint8 tensor (num_embeddings, packed columns), in torch's own layouts, so a
// table packed by torch's quantized::embedding_bag_byte_prepack / embedding_bag_4bit_prepack
// works unchanged. Each row holds its D values, then its scale and bias:
//   bits = 8: D bytes, then float32 scale and bias (D + 8 bytes);
//   bits = 4: D / 2 bytes, two values a byte (the even column in the low nibble), then float16
//             scale and bias (D / 2 + 4 bytes); D is even.
// The dequantized value of q is q * scale + bias.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string_view>

#include "mybag/mode.h"

namespace mybag {

// Packs a float32, float16 or bfloat16 table (num_embeddings, embedding_dim) into the bits-bit
// layout, on weight's device. Values, scales and biases are torch's: the result equals torch's
// embedding_bag_byte_prepack (bits 8) or embedding_bag_4bit_prepack (bits 4, embedding_dim even)
// byte for byte. c10::ValueError for bits other than 8 or 4, a weight that is not 2-D, or an odd
// embedding_dim for 4 bits; c10::Error for another dtype.
at::Tensor quantize_rowwise(const at::Tensor& weight, int64_t bits = 8);

// The float32 table (num_embeddings, D) a packed one stands for: q * scale + bias for every
// value, rounded once (the value max mode compares). c10::ValueError for bits other than 8 or 4
// or a packed_weight that is not a 2-D uint8 tensor with more columns than its scale and bias.
at::Tensor dequantize_rowwise(const at::Tensor& packed_weight, int64_t bits = 8);

// torch::nn::functional::embedding_bag over the dequantized rows of a packed table, each bag
// reduced in float32 and rounded once to output_dtype (float32 when std::nullopt; float16 and
// bfloat16 allowed). input, offsets, mode ("sum", "mean" or "max"), per_sample_weights (sum
// only; float32, float16 or bfloat16), include_last_offset and padding_idx as for
// mybag::embedding_bag, with the same errors; bits (8 or 4) is packed_weight's layout. Sums equal
// torch's quantized ops bit for bit. No backward: per_sample_weights that require grad are
// refused (c10::Error) unless grad mode is off.
at::Tensor quantized_embedding_bag(
    const at::Tensor& input, const at::Tensor& packed_weight, int64_t bits,
    const std::optional<at::Tensor>& offsets = std::nullopt, std::string_view mode = "mean",
    const std::optional<at::Tensor>& per_sample_weights = std::nullopt,
    bool include_last_offset = false, std::optional<int64_t> padding_idx = std::nullopt,
    std::optional<at::ScalarType> output_dtype = std::nullopt);

// The same, with the mode as an enum.
at::Tensor quantized_embedding_bag(
    const at::Tensor& input, const at::Tensor& packed_weight, int64_t bits,
    const std::optional<at::Tensor>& offsets, Mode mode,
    const std::optional<at::Tensor>& per_sample_weights = std::nullopt,
    bool include_last_offset = false, std::optional<int64_t> padding_idx = std::nullopt,
    std::optional<at::ScalarType> output_dtype = std::nullopt);

}  // namespace mybag
