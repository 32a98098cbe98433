// Launch shapes and loops shared by the CUDA kernels.
//
// Every kernel loops over its work with a grid-stride loop in int64_t, so any size works with a
// grid capped at a few waves of the device (no 2^31 limits, no grid-size errors), and each is
// launched on the current stream and checked right after.
#pragma once

// c10's CUDA headers only: ATen/cuda/CUDAContext.h would pull in the cuBLAS and cuSPARSE
// headers, which a CUDA toolkit without those libraries (and torch's wheels) may not have.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mybag/reductions.h"  // row_used, which every kernel here skips rows by

namespace mybag::cuda {

constexpr int kWarpSize = 32;
// Warps per block for the kernels that give one warp to each item (a bag, an entry, a row).
constexpr int kWarpsPerBlock = 8;
// Threads per block for the kernels that give one thread to each item.
constexpr int kThreadsPerBlock = 256;

// Multiprocessors of the current device, asked once per device.
inline int64_t multiprocessors() {
  static const std::vector<int> counts = [] {
    std::vector<int> result(c10::cuda::device_count());
    for (size_t device = 0; device < result.size(); ++device) {
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&result[device], cudaDevAttrMultiProcessorCount,
                                            static_cast<int>(device)));
    }
    return result;
  }();
  return counts.at(c10::cuda::current_device());
}

// Blocks for `items` items at `per_block` items a block: enough to fill the device, no more.
inline unsigned int blocks_for(int64_t items, int64_t per_block) {
  const int64_t needed = (items + per_block - 1) / per_block;
  const int64_t resident = multiprocessors() * 16;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(needed, resident)));
}

inline cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

// Launch helpers: a 1-D grid of threads, or of warps (threadIdx.x is the lane, threadIdx.y the
// warp within the block).
inline dim3 warp_block() { return dim3(kWarpSize, kWarpsPerBlock); }
inline unsigned int warp_grid(int64_t items) { return blocks_for(items, kWarpsPerBlock); }
inline unsigned int thread_grid(int64_t items) { return blocks_for(items, kThreadsPerBlock); }

// The first item of this thread (or warp) and the stride to its next one.
__device__ inline int64_t thread_item() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline int64_t thread_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}
__device__ inline int64_t warp_item() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
}
__device__ inline int64_t warp_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.y;
}

// Sum over the warp's lanes, the same tree every time (so the same bits every run).
template <typename acc_t>
__device__ inline acc_t warp_sum(acc_t value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

}  // namespace mybag::cuda
