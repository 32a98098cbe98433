#include "mybag/cuda/row_chunks.cuh"

#include <ATen/ops/cumsum.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

namespace mybag::cuda {

RowChunks cut_into_chunks(const RowGroups& groups) {
  RowChunks chunks;
  if (groups.count == 0) {
    chunks.chunk_ends = at::zeros({0}, groups.starts.options());
    chunks.partial_ends = chunks.chunk_ends;
    return chunks;
  }
  const auto sizes = groups.starts.slice(0, 1).sub(groups.starts.slice(0, 0, -1));
  const auto counts = sizes.add(kChunk - 1).div(kChunk, "floor");
  chunks.chunk_ends = at::cumsum(counts, 0);
  chunks.partial_ends = at::cumsum(at::where(counts.gt(1), counts, 0), 0);
  // One synchronization for both totals.
  const auto totals = at::stack({chunks.chunk_ends[-1], chunks.partial_ends[-1]}).cpu();
  chunks.total_chunks = totals[0].item<int64_t>();
  chunks.total_partials = totals[1].item<int64_t>();
  return chunks;
}

}  // namespace mybag::cuda
