// What the CPU and CUDA registrations of the quantized forward share after their checks: the
// kernels' arguments (QuantizedForwardArgs, quantized_rows.h) built from the prepared inputs, for
// the call's index dtype and output dtype, each pair its own instantiation.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include "mybag/kernel_inputs.h"
#include "mybag/quantized_rows.h"
#include "mybag/tensor_layout.h"

namespace mybag {

// Calls run(args) with the QuantizedForwardArgs<index_t, out_t> of this call: index_t from
// in.input's dtype (int32 or int64), out_t from output's dtype (float, c10::Half or
// c10::BFloat16, the dtypes check_output_dtype allows). packed is contiguous.
template <typename Run>
void with_quantized_args(const at::Tensor& packed, const KernelInputs& in, at::Tensor& output,
                         Run&& run) {
  const auto with_output = [&](auto out_tag) {
    using out_t = decltype(out_tag);
    AT_DISPATCH_INDEX_TYPES(in.input.scalar_type(), "mybag_quantized_embedding_bag", [&] {
      const QuantizedForwardArgs<index_t, out_t> args{
          packed.const_data_ptr<uint8_t>(),
          packed.size(1),
          in.dim,
          in.input.const_data_ptr<index_t>(),
          make_layout<index_t>(in.input, in.offsets, in.include_last_offset),
          in.per_sample_weights.defined() ? in.per_sample_weights.const_data_ptr<float>()
                                          : nullptr,
          in.padding_row,
          output.mutable_data_ptr<out_t>(),
          in.num_weights,
      };
      run(args);
    });
  };
  switch (output.scalar_type()) {
    case at::kHalf: with_output(c10::Half()); break;
    case at::kBFloat16: with_output(c10::BFloat16()); break;
    default: with_output(float()); break;
  }
}

}  // namespace mybag
