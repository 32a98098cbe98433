// The CPU quantized forward: check the call, choose the kernel (quantized_kernels.h) and run it
// over ranges of bags (at::parallel_for), as the float forward does (forward.cpp).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>

#include "mybag/cpu/isa.h"
#include "mybag/cpu/quantized_kernels.h"
#include "mybag/cpu/rows.h"
#include "mybag/cpu/value_checks.h"
#include "mybag/kernel_inputs.h"
#include "mybag/quantized_args.h"

namespace mybag::cpu {
namespace {

template <int kBits, typename index_t, typename out_t>
QuantizedBagsKernel<kBits, index_t, out_t> choose_kernel(CpuIsa isa) {
#if MYBAG_X86_SIMD
  if (isa != CpuIsa::Portable) return &quantized_bags_avx2<kBits, index_t, out_t>;
#endif
  return &quantized_bags_portable<kBits, index_t, out_t>;
}

template <int kBits, typename index_t, typename out_t>
void run_kernel(const QuantizedForwardArgs<index_t, out_t>& a, Mode mode, int64_t bags,
                CpuIsa isa, const at::Tensor& input, const std::optional<at::Tensor>& offsets) {
  const auto kernel = choose_kernel<kBits, index_t, out_t>(isa);
  std::atomic<bool> bad_index{false};
  at::parallel_for(0, bags, bag_grain_size(a.layout.num_indices, bags, a.dim),
                   [&](int64_t first, int64_t last) {
    if (!kernel(a, mode, first, last)) bad_index = true;
  });
  if (bad_index) {
    // Names the first bad entry and throws; output is dropped.
    check_index_values(input, offsets, a.num_weights);
    TORCH_INTERNAL_ASSERT(false, "mybag: a kernel met an index the full check accepts");
  }
}

at::Tensor quantized_forward(const at::Tensor& packed_weight, const at::Tensor& input,
                             const std::optional<at::Tensor>& offsets,
                             const std::optional<at::Tensor>& per_sample_weights, int64_t bits,
                             int64_t mode_value, std::optional<int64_t> padding_idx,
                             bool include_last_offset, at::ScalarType output_dtype) {
  const auto in = prepare_quantized_forward(packed_weight, input, offsets, per_sample_weights,
                                            bits, mode_value, padding_idx, include_last_offset,
                                            output_dtype);
  const auto packed = packed_weight.contiguous();
  const CpuIsa isa = cpu_isa();
  // The AVX2 kernels check each index as they read it; the portable loops, and calls that read
  // no row, check them all first.
  if (isa != CpuIsa::Portable && in.num_bags > 0 && in.dim > 0) {
    check_offset_values(input, offsets);
  } else {
    check_index_values(input, offsets, in.num_weights);
  }
  auto output = at::empty({in.num_bags, in.dim}, packed.options().dtype(output_dtype));
  if (in.num_bags == 0 || in.dim == 0) return output;
  with_quantized_args(packed, in, output, [&](const auto& a) {
    if (bits == 8) {
      run_kernel<8>(a, in.mode, in.num_bags, isa, input, offsets);
    } else {
      run_kernel<4>(a, in.mode, in.num_bags, isa, input, offsets);
    }
  });
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CPU, m) {
  m.impl("_quantized_embedding_bag_forward", &quantized_forward);
}

}  // namespace mybag::cpu
