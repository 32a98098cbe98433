// The CPU's value checks: indices within the table, offsets starting at 0, never decreasing and
// never past the end of input. Every CPU kernel runs them before it writes anything; the
// messages come from mybag/checks.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace mybag::cpu {

// With include_last_offset the final offset is checked like the others, though no bag reads it
// (as CUDA's check): the call does not need to say which form offsets has.
void check_index_values(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                        int64_t num_weights);

// The offsets part alone, for kernels that check each index as they read it.
void check_offset_values(const at::Tensor& input, const std::optional<at::Tensor>& offsets);

// max mode's backward: max_indices (contiguous) has to be (bags, dim) int64 and name rows of
// the table or -1 (an empty bag).
void check_max_index_values(const at::Tensor& max_indices, int64_t bags, int64_t dim,
                            int64_t num_weights, const at::Tensor& grad);

}  // namespace mybag::cpu
