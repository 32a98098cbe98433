// The CPU forward: check the call, choose the kernel for it (forward_kernels.h) and run it over
// ranges of bags (at::parallel_for).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <limits>

#include "mybag/checks.h"
#include "mybag/cpu/forward_kernels.h"
#include "mybag/cpu/isa.h"
#include "mybag/cpu/rows.h"
#include "mybag/cpu/value_checks.h"
#include "mybag/kernel_inputs.h"
#include "mybag/tensor_layout.h"

namespace mybag::cpu {
namespace {

// The instruction set this call runs with: the process's (isa.h), unless the call needs the
// portable loops. The SIMD kernels read contiguous rows only, and in max mode keep a winner's
// position in its bag in an int32 lane.
CpuIsa forward_isa(int64_t col_stride, int64_t num_indices, Mode mode) {
  if (col_stride != 1) return CpuIsa::Portable;
  if (mode == Mode::Max && num_indices > std::numeric_limits<int32_t>::max()) {
    return CpuIsa::Portable;
  }
  return cpu_isa();
}

template <typename scalar_t, typename index_t>
BagsKernel<scalar_t, index_t> choose_kernel(CpuIsa isa, Mode mode) {
  const bool max = mode == Mode::Max;
#if MYBAG_X86_SIMD
  switch (isa) {
    case CpuIsa::Avx512:
      if (!max) return &sum_bags_avx512<scalar_t, index_t>;
      [[fallthrough]];  // no AVX-512 max kernel
    case CpuIsa::Avx2:
      return max ? &max_bags_avx2<scalar_t, index_t> : &sum_bags_avx2<scalar_t, index_t>;
    case CpuIsa::Portable:
      break;
  }
#endif
  return max ? &max_bags_portable<scalar_t, index_t> : &sum_bags_portable<scalar_t, index_t>;
}

std::tuple<at::Tensor, at::Tensor> forward(
    const at::Tensor& weight,
    const at::Tensor& input,
    const std::optional<at::Tensor>& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t mode_value,
    std::optional<int64_t> padding_idx,
    bool include_last_offset,
    bool scale_grad_by_freq,
    bool sparse) {
  const auto in = prepare_forward(weight, input, offsets, per_sample_weights, mode_value,
                                  padding_idx, include_last_offset, scale_grad_by_freq, sparse);
  const Mode mode = in.mode;
  const int64_t num_weights = in.num_weights;
  const int64_t dim = in.dim;
  const int64_t bags = in.num_bags;
  const CpuIsa isa = forward_isa(weight.stride(1), input.numel(), mode);
  // The SIMD kernels check each index as they read it (a separate pass costs a noticeable share
  // of a small-row forward); the portable loops, and calls that read no row, check them all
  // first.
  if (isa != CpuIsa::Portable && bags > 0 && dim > 0) {
    check_offset_values(input, offsets);
  } else {
    check_index_values(input, offsets, num_weights);
  }
  auto [output, max_indices] = allocate_forward_outputs(in, weight);
  if (bags == 0 || dim == 0) {
    return {output, max_indices};
  }
  const auto& flat_input = in.input;
  const auto& psw = in.per_sample_weights;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "mybag_embedding_bag_forward_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(flat_input.scalar_type(), "mybag_embedding_bag_forward_cpu", [&] {
      const ForwardArgs<scalar_t, index_t> a{
          weight.const_data_ptr<scalar_t>(),
          weight.stride(0),
          weight.stride(1),
          dim,
          flat_input.const_data_ptr<index_t>(),
          make_layout<index_t>(flat_input, in.offsets, include_last_offset),
          psw.defined() ? psw.const_data_ptr<scalar_t>() : nullptr,
          in.padding_row,
          output.mutable_data_ptr<scalar_t>(),
          mode == Mode::Max ? max_indices.mutable_data_ptr<int64_t>() : nullptr,
          num_weights,
      };
      const BagsKernel<scalar_t, index_t> kernel = choose_kernel<scalar_t, index_t>(isa, mode);
      std::atomic<bool> bad_index{false};
      at::parallel_for(0, bags, bag_grain_size(a.layout.num_indices, bags, dim),
                       [&](int64_t first, int64_t last) {
        if (!kernel(a, mode, first, last)) bad_index = true;
      });
      if (bad_index) {
        // Names the first bad entry and throws; output is dropped.
        check_index_values(input, offsets, num_weights);
        TORCH_INTERNAL_ASSERT(false, "mybag: a kernel met an index the full check accepts");
      }
    });
  });
  return {output, max_indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CPU, m) {
  m.impl("_embedding_bag_forward", &forward);
}

}  // namespace mybag::cpu
