// CUDA max_norm: one warp per distinct row referenced by input. The lanes accumulate the norm of
// their features, merge it across the warp in a fixed tree (every lane gets the same bits) and
// scale their own features. Indices and offsets are validated first, so a failing call leaves
// weight as it was.
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mybag/checks.h"
#include "mybag/cuda/launch.cuh"
#include "mybag/cuda/value_checks.cuh"
#include "mybag/row_groups.h"
#include "mybag/row_norm.h"

namespace mybag::cuda {
namespace {

template <typename scalar_t, typename index_t>
__global__ void renorm_kernel(scalar_t* weight, int64_t row_stride, int64_t col_stride,
                              int64_t num_weights, int64_t dim, const index_t* rows,
                              int64_t num_rows, double max_norm, double norm_type) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t k = warp_item(); k < num_rows; k += warp_stride()) {
    const int64_t row = rows[k];
    if (row < 0 || row >= num_weights) continue;  // only with value checks off; warp-uniform
    scalar_t* values = weight + row * row_stride;
    RowNorm<acc_t> norm(norm_type);
    for (int64_t d = threadIdx.x; d < dim; d += kWarpSize) {
      norm.add(static_cast<acc_t>(values[d * col_stride]));
    }
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      norm.merge(__shfl_xor_sync(0xffffffffu, norm.total, offset));
    }
    // Rounded to weight's dtype as torch does (see mybag/row_norm.h).
    const double row_norm = static_cast<double>(static_cast<scalar_t>(norm.finish()));
    if (!renorm_needed(row_norm, max_norm)) continue;
    const acc_t scale = static_cast<acc_t>(renorm_factor(row_norm, max_norm));
    for (int64_t d = threadIdx.x; d < dim; d += kWarpSize) {
      scalar_t& v = values[d * col_stride];
      v = static_cast<scalar_t>(static_cast<acc_t>(v) * scale);
    }
  }
}

void renorm_(at::Tensor& weight, const at::Tensor& input, const std::optional<at::Tensor>& offsets,
             bool include_last_offset, double max_norm, double norm_type) {
  const c10::cuda::CUDAGuard device_guard(weight.device());
  check_renorm_args(weight, input, offsets, include_last_offset, max_norm);
  // Rows that share memory (an expanded weight) would be scaled more than once.
  at::assert_no_internal_overlap(weight);
  const auto flat_input = input.contiguous().view({-1});
  check_index_values(input, offsets, weight.size(0));
  if (flat_input.numel() == 0 || weight.size(1) == 0) return;

  const auto rows = distinct_rows(flat_input);
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "mybag_embedding_bag_renorm_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(rows.scalar_type(), "mybag_embedding_bag_renorm_cuda", [&] {
      renorm_kernel<<<warp_grid(rows.numel()), warp_block(), 0, stream>>>(
          weight.mutable_data_ptr<scalar_t>(), weight.stride(0), weight.stride(1),
          weight.size(0), weight.size(1), rows.const_data_ptr<index_t>(), rows.numel(),
          max_norm, norm_type);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CUDA, m) {
  m.impl("_embedding_bag_renorm_", &renorm_);
}

}  // namespace mybag::cuda
