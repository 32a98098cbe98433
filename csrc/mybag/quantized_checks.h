// Argument checks of the quantized ops (quantize_rowwise, quantized_embedding_bag and its
// internal op), shared by every device's kernels and the Meta kernels. The bag arguments go
// through the main op's checks (check_bag_inputs, checks.h), so both ops word them alike.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <cstdint>
#include <optional>

#include "mybag/mode.h"

namespace mybag {

// bits has to be 8 or 4.
void check_bits(int64_t bits);

// quantize_rowwise's weight: 2-D, float32, float16 or bfloat16, at least one column, and an
// even number of them for 4 bits.
void check_quantize_weight(const at::Tensor& weight, int64_t bits);

// A packed table: 2-D uint8 with the columns of at least one value (and its scale and bias).
// Returns D, the values a row holds (symbolic under torch.compile).
c10::SymInt check_packed_weight(const at::Tensor& packed_weight, int64_t bits);

// The output dtype the quantized op rounds to: float32, float16 or bfloat16.
void check_output_dtype(at::ScalarType output_dtype);

// Everything _quantized_embedding_bag_forward checks before it reads a value; per_sample_weights
// has to be float32 (the public op converts float16 and bfloat16 ones). Returns D.
c10::SymInt check_quantized_forward_args(const at::Tensor& packed_weight, const at::Tensor& input,
                                         const std::optional<at::Tensor>& offsets,
                                         const std::optional<at::Tensor>& per_sample_weights,
                                         int64_t bits, Mode mode,
                                         std::optional<int64_t> padding_idx,
                                         bool include_last_offset, at::ScalarType output_dtype);

}  // namespace mybag
