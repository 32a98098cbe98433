// Argument validation shared by the public op, every device's kernels and the Meta kernels:
// one home for each error message, so CPU, CUDA and torch.compile users all read the same text.
//
// Exception types follow torch.nn.functional.embedding_bag: ValueError for shapes, the mode and
// the presence of offsets; IndexError for an index out of range; NotImplementedError for
// per_sample_weights outside sum mode; RuntimeError for the rest (dtypes, devices, offsets'
// values, padding_idx).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include "mybag/mode.h"

#include <cstdint>
#include <optional>
#include <string_view>

namespace mybag {

// "sum" | "mean" | "max"; anything else is a ValueError naming the value.
Mode parse_mode(std::string_view mode);
// The internal ops carry the mode as torch's integer; anything else is a RuntimeError.
Mode mode_from_int(int64_t mode);
const char* mode_name(Mode mode);

// Checks everything that does not need the indices' values: dimensions, dtypes, devices, the
// presence and shape of offsets, per_sample_weights against mode and input. input and offsets
// have to share one dtype: the public op promotes them first (check_index_dtypes).
void check_inputs(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    Mode mode,
    bool include_last_offset);

// The bag arguments alone: input and offsets (dtypes, shapes, devices), per_sample_weights'
// presence against mode, its shape and device; table is the tensor they index, named
// table_name in the messages. check_inputs (the float table) and the quantized op
// (quantized_checks.h) each add their table's own checks.
void check_bag_inputs(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                      const std::optional<at::Tensor>& per_sample_weights, Mode mode,
                      bool include_last_offset, const at::Tensor& table, const char* table_name);

// The public op's index dtypes, before promotion: int32 or int64, or (as torch allows) int8,
// uint8 or int16 for one of input and offsets when the other is int32 or int64.
void check_index_dtypes(const at::Tensor& input, const std::optional<at::Tensor>& offsets);

// Range-checks padding_idx against [-num_weights, num_weights) (num_weights may be symbolic under
// torch.compile).
void check_padding_idx(std::optional<int64_t> padding_idx, const c10::SymInt& num_weights);
// Checks padding_idx and returns it as a row index, or -1 when there is none.
int64_t normalize_padding_idx(std::optional<int64_t> padding_idx, int64_t num_weights);

// The module front ends (mybag.EmbeddingBag in Python, mybag::EmbeddingBag in C++) check
// padding_idx when they are built, before any call: a ValueError in both (torch's module asserts;
// the op itself, as torch's, raises a RuntimeError through check_padding_idx). Returns it
// non-negative, as the modules store it. The Python module raises the same text.
int64_t module_padding_idx(int64_t padding_idx, int64_t num_embeddings);

// max_norm has to be a number >= 0 (torch does not check: a negative one flips rows' signs).
void check_max_norm(double max_norm);

// Number of bags: rows of a 2-D input, else offsets' length (less one with include_last_offset).
c10::SymInt num_bags(
    const at::Tensor& input,
    const std::optional<at::Tensor>& offsets,
    bool include_last_offset);

// The per-entry (sparse) gradient exists for sum and mean; the per_sample_weights gradient for
// sum alone.
void check_per_entry_grad_mode(Mode mode);
void check_per_sample_weights_grad_mode(Mode mode);

// Checks that the gradient handed to a backward op is 2-D and of a supported float dtype. The
// backward ops then check input, offsets and per_sample_weights against it with check_inputs,
// as they would against weight.
void check_grad_tensor(const at::Tensor& grad);

// Checks the gradient handed to a backward op: (num_bags, D) and weight's dtype.
void check_grad(const at::Tensor& grad, const c10::SymInt& bags, const c10::SymInt& embedding_dim,
                at::ScalarType weight_dtype);

// The public op takes plain tensors: the Python functional and module unpack a jagged nested
// input (one bag per component) before they call it. Names the argument that is nested.
void check_not_nested(const char* name, const at::Tensor& tensor);

// Max mode has neither a per-entry gradient nor a row count: no sparse, no scale_grad_by_freq.
void check_mode_options(Mode mode, bool scale_grad_by_freq, bool sparse);

// Everything each internal op checks before it reads a value: the device kernels and the Meta
// kernels call the same function, so all of them accept and reject the same arguments. The
// public op relies on the forward's checks (it repeats them only before max_norm's renorm,
// which writes before the forward runs).
void check_forward_args(const at::Tensor& weight, const at::Tensor& input,
                        const std::optional<at::Tensor>& offsets,
                        const std::optional<at::Tensor>& per_sample_weights, Mode mode,
                        std::optional<int64_t> padding_idx, bool include_last_offset,
                        bool scale_grad_by_freq, bool sparse);
void check_renorm_args(const at::Tensor& weight, const at::Tensor& input,
                       const std::optional<at::Tensor>& offsets, bool include_last_offset,
                       double max_norm);
// The dense weight gradient and the per-entry rows of the sparse one.
void check_weight_grad_args(const at::Tensor& grad, const at::Tensor& input,
                            const std::optional<at::Tensor>& offsets,
                            const std::optional<at::Tensor>& per_sample_weights, Mode mode,
                            std::optional<int64_t> padding_idx, bool include_last_offset,
                            const c10::SymInt& num_weights);
void check_per_sample_weights_grad_args(const at::Tensor& grad, const at::Tensor& weight,
                                        const at::Tensor& input,
                                        const std::optional<at::Tensor>& offsets, Mode mode,
                                        std::optional<int64_t> padding_idx,
                                        bool include_last_offset);

// max mode's backward: max_indices has to be int64 of shape (num_bags, D), on grad's device.
void check_max_indices_shape(const at::Tensor& max_indices, int64_t bags, int64_t dim,
                             const at::Tensor& grad);

// Messages for the value checks, which each device runs its own way (the CPU in one pass over
// host memory; CUDA on the device). All throw.
[[noreturn]] void fail_index_out_of_range(int64_t position, int64_t index, int64_t num_weights);
[[noreturn]] void fail_first_offset(int64_t first_offset);
[[noreturn]] void fail_decreasing_offsets(int64_t position, int64_t offset, int64_t previous);
[[noreturn]] void fail_offset_past_end(int64_t position, int64_t offset, int64_t num_indices);
[[noreturn]] void fail_max_index_out_of_range(int64_t index, int64_t num_weights);

}  // namespace mybag
