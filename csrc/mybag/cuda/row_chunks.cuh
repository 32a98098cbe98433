// How the CUDA kernels that sum a touched row's entries split the work (the dense weight gradient,
// cuda/weight_grad.cu, and the fused optimizer step, cuda/fused_update.cu): the row groups of
// mybag/row_groups.h are cut into chunks of kChunk entries in input order. One warp sums one
// chunk; a group of several chunks (a hot row, one row in much of the input) is summed chunk by
// chunk into partials by many warps, and its partials are then added up in chunk order. The
// sums are the same bits every run and no float atomics are needed.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "mybag/row_groups.h"

namespace mybag::cuda {

// Entries one warp sums before handing over to a partial sum.
constexpr int64_t kChunk = 32;

// The chunks of every group, as device arrays, and their totals on the host.
struct RowChunks {
  at::Tensor chunk_ends;    // int64 (groups,): inclusive prefix sums of the groups' chunk counts
  at::Tensor partial_ends;  // int64 (groups,): the same, counting only groups of several chunks
  int64_t total_chunks = 0;
  int64_t total_partials = 0;  // partial rows the groups of several chunks need
};

// Synchronizes once, to bring both totals to the host (the grids and the partials are sized by
// them). groups.count may be 0.
RowChunks cut_into_chunks(const RowGroups& groups);

// The device view of a RowChunks and its groups' starts.
struct ChunkIndex {
  const int64_t* starts;        // group g: sorted positions starts[g] .. starts[g + 1] - 1
  const int64_t* chunk_ends;
  const int64_t* partial_ends;
  int64_t groups;

  __device__ int64_t first_chunk(int64_t g) const { return g > 0 ? chunk_ends[g - 1] : 0; }
  __device__ int64_t first_partial(int64_t g) const { return g > 0 ? partial_ends[g - 1] : 0; }
  __device__ int64_t chunks(int64_t g) const { return chunk_ends[g] - first_chunk(g); }
};

inline ChunkIndex chunk_index(const RowGroups& groups, const RowChunks& chunks) {
  return {groups.starts.const_data_ptr<int64_t>(), chunks.chunk_ends.const_data_ptr<int64_t>(),
          chunks.partial_ends.const_data_ptr<int64_t>(), groups.count};
}

// The group holding item w of an inclusive prefix sum over the groups (chunk_ends for chunk w,
// partial_ends for partial w): the first g whose ends[g] > w.
__device__ inline int64_t group_of_chunk(const int64_t* ends, int64_t groups, int64_t w) {
  int64_t lo = 0;
  int64_t hi = groups;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (ends[mid] <= w) lo = mid + 1; else hi = mid;
  }
  return lo;
}

}  // namespace mybag::cuda
