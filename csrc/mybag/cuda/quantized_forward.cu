// CUDA quantized forward: a group of lanes per bag (a warp, or a power-of-two part of one for
// short rows), each lane owning one chunk of consecutive columns at a time and reading its bytes
// of every row with one load of the widest width the table allows (16 bytes for 8-bit rows, else
// 8, 4 or 1, chosen per call from the base address and row_bytes: quantized_bags.cuh). The
// gather is what costs: an 8-bit row is a quarter of a float row, so the kernel must keep many
// rows in flight to near the DRAM bandwidth, which wide aligned loads, several entries read ahead
// (entries_ahead) and launch bounds that keep 24 warps a multiprocessor resident are for.
//
// Each lane adds a column's entries in bag order, in float registers, with the arithmetic of
// quantized_rows.h and rounds once: the CPU kernels' bits, every run the same (no atomics, no
// sums across lanes). Index values are checked on the device as in the float forward
// (cuda/value_checks.cuh); with the checks off a bad index is skipped and bad offsets are
// clamped, so no read ever leaves the table or input.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mybag/cuda/launch.cuh"
#include "mybag/cuda/quantized_bags.cuh"
#include "mybag/cuda/value_checks.cuh"
#include "mybag/kernel_inputs.h"
#include "mybag/quantized_args.h"
#include "mybag/quantized_rows.h"

namespace mybag::cuda {
namespace {

// The bags of this group of lanes and this lane's chunks: group g of a warp takes bags
// warp * groups + g, then a stride of every group of the grid; lane l takes chunks l, l + lanes...
struct LaneWork {
  int64_t first_bag;
  int64_t bag_stride;
  int lane;
  int lanes;
};

__device__ inline LaneWork lane_work(int lanes) {
  const int groups = kWarpSize / lanes;
  return {warp_item() * groups + threadIdx.x / lanes, warp_stride() * groups,
          static_cast<int>(threadIdx.x) % lanes, lanes};
}

// Blocks (of kWarpsPerBlock warps) each multiprocessor should hold at least: 24 of its 64 warps,
// whose rows in flight a DRAM gather needs. That caps the kernels at 80 registers a thread, which
// they fit (nvcc 13.0, sm_90: no spills but 8 bytes in the 16-byte sum kernels with 16-bit
// output); 4 blocks, 64 registers, would spill in most.
constexpr int kQuantizedBlocksPerSM = 3;

template <int kBits, int kWidth, typename index_t, typename out_t>
__global__ void __launch_bounds__(kWarpSize * kWarpsPerBlock, kQuantizedBlocksPerSM)
    quantized_sum_kernel(QuantizedForwardArgs<index_t, out_t> a, int64_t chunks, int lanes,
                         bool mean) {
  const LaneWork w = lane_work(lanes);
  for (int64_t bag = w.first_bag; bag < a.layout.num_bags; bag += w.bag_stride) {
    for (int64_t chunk = w.lane; chunk < chunks; chunk += w.lanes) {
      sum_bag_chunk<kBits, kWidth>(a, bag, chunk, mean);
    }
  }
}

template <int kBits, int kWidth, typename index_t, typename out_t>
__global__ void __launch_bounds__(kWarpSize * kWarpsPerBlock, kQuantizedBlocksPerSM)
    quantized_max_kernel(QuantizedForwardArgs<index_t, out_t> a, int64_t chunks, int lanes) {
  const LaneWork w = lane_work(lanes);
  for (int64_t bag = w.first_bag; bag < a.layout.num_bags; bag += w.bag_stride) {
    for (int64_t chunk = w.lane; chunk < chunks; chunk += w.lanes) {
      max_bag_chunk<kBits, kWidth>(a, bag, chunk);
    }
  }
}

template <int kBits, int kWidth, typename index_t, typename out_t>
void launch(const QuantizedForwardArgs<index_t, out_t>& a, Mode mode, const QuantizedPlan& plan) {
  const int64_t bags_per_warp = kWarpSize / plan.lanes;
  const auto grid = warp_grid((a.layout.num_bags + bags_per_warp - 1) / bags_per_warp);
  const auto stream = current_stream();
  if (mode == Mode::Max) {
    quantized_max_kernel<kBits, kWidth>
        <<<grid, warp_block(), 0, stream>>>(a, plan.chunks, plan.lanes);
  } else {
    quantized_sum_kernel<kBits, kWidth>
        <<<grid, warp_block(), 0, stream>>>(a, plan.chunks, plan.lanes, mode == Mode::Mean);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int kBits, typename index_t, typename out_t>
void launch_width(const QuantizedForwardArgs<index_t, out_t>& a, Mode mode,
                  const QuantizedPlan& plan) {
  switch (plan.width) {
    case 16:
      if constexpr (kBits == 8) {
        launch<kBits, 16>(a, mode, plan);
      } else {
        TORCH_INTERNAL_ASSERT(false, "mybag: 16-byte loads are planned for 8-bit rows only");
      }
      break;
    case 8: launch<kBits, 8>(a, mode, plan); break;
    case 4: launch<kBits, 4>(a, mode, plan); break;
    default: launch<kBits, 1>(a, mode, plan); break;
  }
}

at::Tensor quantized_forward(const at::Tensor& packed_weight, const at::Tensor& input,
                             const std::optional<at::Tensor>& offsets,
                             const std::optional<at::Tensor>& per_sample_weights, int64_t bits,
                             int64_t mode_value, std::optional<int64_t> padding_idx,
                             bool include_last_offset, at::ScalarType output_dtype) {
  const c10::cuda::CUDAGuard device_guard(packed_weight.device());
  const auto in = prepare_quantized_forward(packed_weight, input, offsets, per_sample_weights,
                                            bits, mode_value, padding_idx, include_last_offset,
                                            output_dtype);
  check_index_values(in.input, in.offsets, in.num_weights);
  const auto packed = packed_weight.contiguous();
  auto output = at::empty({in.num_bags, in.dim}, packed.options().dtype(output_dtype));
  if (in.num_bags == 0 || in.dim == 0) return output;
  const QuantizedPlan plan =
      quantized_plan(packed.const_data_ptr<uint8_t>(), packed.size(1), bits, in.dim);
  with_quantized_args(packed, in, output, [&](const auto& a) {
    if (bits == 8) {
      launch_width<8>(a, in.mode, plan);
    } else {
      launch_width<4>(a, in.mode, plan);
    }
  });
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CUDA, m) {
  m.impl("_quantized_embedding_bag_forward", &quantized_forward);
}

}  // namespace mybag::cuda
