// CUDA kernel of _embedding_bag_fused_update_: one optimizer step over the rows the batch
// touched, deterministic and free of float atomics (cpu/fused_update.cpp is the CPU's twin).
//
// Entries are grouped by row with a stable sort and cut into chunks as the dense weight gradient
// cuts them (cuda/row_chunks.cuh). A hot row's chunks are first summed into partials by many
// warps; then one warp per touched row forms the row's whole gradient (its entries in input
// order, or its partials in chunk order) and applies the optimizer to the row and its state at
// once (mybag/optimizers.h). The gradient never exists as a table, every sum has a fixed order,
// and each row and its state are read and written by one warp, once.
//
// max: the gradient of (bag, feature) goes to the row that won it. A row's group lists the bags
// that name it, in bag order, so the row's warp walks them as in sum mode and takes
// grad[bag, d] wherever max_indices[bag, d] is the row: no sort of the (bag, feature) pairs.
// Every touched row is updated, also one that won no feature (its gradient is zero, but weight
// decay and Adam's moments still move it).
//
// The step count is incremented on the device, by one thread that also computes the step's
// factors from it, so the host never waits for the count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string_view>

#include "mybag/checks.h"
#include "mybag/cuda/entries.cuh"
#include "mybag/cuda/launch.cuh"
#include "mybag/cuda/packs.cuh"
#include "mybag/cuda/row_chunks.cuh"
#include "mybag/cuda/value_checks.cuh"
#include "mybag/kernel_inputs.h"
#include "mybag/optimizer_checks.h"
#include "mybag/optimizers.h"
#include "mybag/reductions.h"
#include "mybag/row_groups.h"
#include "mybag/tensor_layout.h"

namespace mybag::cuda {
namespace {

// Each lane holds kSlots vectors of kWidth neighbouring features of a row at a time (kWidth: 16
// bytes of the table's dtype), a tile of kTile features per warp: several independent loads in
// flight for every entry, and a whole row of up to one tile kept in registers between row-wise
// Adagrad's two passes. Lane l's features are the same whether the accesses are packed or not
// (packs.cuh), so that row-wise Adagrad's sum of squares, whose order follows them, is too.
constexpr int kSlots = 4;

template <typename scalar_t>
constexpr int kWidth = static_cast<int>(16 / sizeof(scalar_t));

template <typename scalar_t>
constexpr int64_t kTile = int64_t{kSlots} * kWarpSize * kWidth<scalar_t>;

// The first feature of this lane's slot s in the tile that starts at feature `tile`. A warp's
// lanes take consecutive vectors for each slot.
template <typename scalar_t>
__device__ inline int64_t feature(int64_t tile, int s) {
  return tile + (static_cast<int64_t>(s) * kWarpSize + threadIdx.x) * kWidth<scalar_t>;
}

// A lane's features of one tile, in acc_t.
template <typename scalar_t>
using TileValues = at::opmath_type<scalar_t>[kSlots][kWidth<scalar_t>];

template <typename scalar_t>
struct StepParams {
  using acc_t = at::opmath_type<scalar_t>;
  // The batch.
  const scalar_t* grad;    // (num_bags, dim)
  const int64_t* winners;  // max mode's max_indices (num_bags, dim); else nullptr
  const int64_t* order;    // the entry at each sorted position (RowGroups::order)
  const int64_t* bag_of;   // the bag of each entry, -1 for none
  EntryScale<acc_t, scalar_t> entry_scale;
  bool scale_grad_by_freq;
  // The touched rows.
  const int64_t* group_rows;  // (groups,): each group's row
  ChunkIndex chunks;
  acc_t* partials;  // one row per chunk of a group of several chunks
  // The tables the step writes.
  scalar_t* weight;  // (num_weights, dim)
  acc_t* state0;     // adagrad's and rowwise_adagrad's sum, adam's exp_avg; else nullptr
  acc_t* state1;     // adam's exp_avg_sq; else nullptr
  const StepFactors<acc_t>* factors;  // on the device, written by step_kernel
  int64_t dim;
  int64_t num_weights;
  int64_t padding_row;

  // Padding's group, and with value checks off groups of rows outside the table, are skipped.
  __device__ bool row_skipped(int64_t row) const {
    return !row_used(row, num_weights, padding_row);
  }
};

template <typename scalar_t>
__device__ inline void zero(TileValues<scalar_t>& values) {
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
#pragma unroll
    for (int v = 0; v < kWidth<scalar_t>; ++v) values[s][v] = 0;
  }
}

// Adds the gradients of sorted positions begin .. end - 1 of a group (entries naming `row`) to
// this lane's features of one tile, in input order. group_begin: the group's first position.
template <bool kPacked, bool kMax, typename scalar_t>
__device__ inline void add_entries(const StepParams<scalar_t>& p, int64_t row,
                                   int64_t group_begin, int64_t begin, int64_t end,
                                   int64_t frequency, int64_t tile, TileValues<scalar_t>& acc) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = kWidth<scalar_t>;
  for (int64_t k = begin; k < end; ++k) {
    const int64_t entry = p.order[k];
    const int64_t bag = p.bag_of[entry];
    if (bag < 0) continue;
    const scalar_t* grad_row = p.grad + bag * p.dim;
    if constexpr (kMax) {
      // A bag that names the row more than once sends each feature's gradient to it once. Its
      // entries are neighbours in the group, since a bag is a range of input.
      if (k > group_begin && p.bag_of[p.order[k - 1]] == bag) continue;
      const int64_t* winner_row = p.winners + bag * p.dim;
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const int64_t d = feature<scalar_t>(tile, s);
        if (d >= p.dim) continue;
        int64_t winner[V];
        load_features<kPacked>(winner_row, d, p.dim, int64_t{-1}, winner);
        bool won = false;
#pragma unroll
        for (int v = 0; v < V; ++v) won = won || winner[v] == row;
        if (!won) continue;
        scalar_t g[V];
        load_features<kPacked>(grad_row, d, p.dim, scalar_t(0), g);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          if (winner[v] == row) acc[s][v] += static_cast<acc_t>(g[v]);
        }
      }
    } else {
      const acc_t scale = p.entry_scale(entry, bag, frequency);
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const int64_t d = feature<scalar_t>(tile, s);
        if (d >= p.dim) continue;
        scalar_t g[V];
        load_features<kPacked>(grad_row, d, p.dim, scalar_t(0), g);
#pragma unroll
        for (int v = 0; v < V; ++v) acc[s][v] += scale * static_cast<acc_t>(g[v]);
      }
    }
  }
}

// This lane's features of one tile of group g's whole gradient: its entries when it has one
// chunk, else its partials in chunk order.
template <bool kPacked, bool kMax, typename scalar_t>
__device__ inline void row_gradient(const StepParams<scalar_t>& p, int64_t g, int64_t row,
                                    int64_t tile, TileValues<scalar_t>& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = kWidth<scalar_t>;
  zero<scalar_t>(grad);
  const int64_t chunks = p.chunks.chunks(g);
  if (chunks > 1) {
    const acc_t* first = p.partials + p.chunks.first_partial(g) * p.dim;
    for (int64_t c = 0; c < chunks; ++c) {
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const int64_t d = feature<scalar_t>(tile, s);
        if (d >= p.dim) continue;
        acc_t part[V];
        load_features<kPacked>(first + c * p.dim, d, p.dim, acc_t(0), part);
#pragma unroll
        for (int v = 0; v < V; ++v) grad[s][v] += part[v];
      }
    }
    return;
  }
  const int64_t begin = p.chunks.starts[g];
  const int64_t end = p.chunks.starts[g + 1];
  add_entries<kPacked, kMax>(p, row, begin, begin, end, p.scale_grad_by_freq ? end - begin : 0,
                             tile, grad);
}

// One warp per chunk of the groups of several chunks: the chunk's sum, per feature.
template <bool kPacked, bool kMax, typename scalar_t>
__global__ void partial_kernel(StepParams<scalar_t> p, int64_t total_partials) {
  for (int64_t w = warp_item(); w < total_partials; w += warp_stride()) {
    const int64_t g = group_of_chunk(p.chunks.partial_ends, p.chunks.groups, w);
    const int64_t row = p.group_rows[g];
    if (p.row_skipped(row)) continue;
    const int64_t group_begin = p.chunks.starts[g];
    const int64_t group_end = p.chunks.starts[g + 1];
    const int64_t begin = group_begin + (w - p.chunks.first_partial(g)) * kChunk;
    const int64_t end = begin + kChunk < group_end ? begin + kChunk : group_end;
    const int64_t frequency = p.scale_grad_by_freq ? group_end - group_begin : 0;
    auto* out = p.partials + w * p.dim;
    for (int64_t tile = 0; tile < p.dim; tile += kTile<scalar_t>) {
      TileValues<scalar_t> acc;
      zero<scalar_t>(acc);
      add_entries<kPacked, kMax>(p, row, group_begin, begin, end, frequency, tile, acc);
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const int64_t d = feature<scalar_t>(tile, s);
        if (d < p.dim) store_features<kPacked>(out, d, p.dim, acc[s]);
      }
    }
  }
}

// Adds this lane's squared (decayed) gradients of one tile to `squares`, in feature order.
template <bool kPacked, typename scalar_t>
__device__ inline void add_squares(const StepParams<scalar_t>& p, int64_t row, int64_t tile,
                                   const TileValues<scalar_t>& grad,
                                   const StepFactors<at::opmath_type<scalar_t>>& f,
                                   at::opmath_type<scalar_t>& squares) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = kWidth<scalar_t>;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int64_t d = feature<scalar_t>(tile, s);
    if (d >= p.dim) continue;
    scalar_t stored[V];
    load_features<kPacked>(p.weight + row * p.dim, d, p.dim, scalar_t(0), stored);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (!kPacked && d + v >= p.dim) continue;
      const acc_t g = decayed_grad(grad[s][v], static_cast<acc_t>(stored[v]), f);
      squares += g * g;
    }
  }
}

// Steps this lane's features of one tile of the row, and their state. row_factor: row-wise
// Adagrad's factor of the row (unused by the others). Features past the row's end are computed
// from zeros and never stored.
template <Optimizer kind, bool kPacked, typename scalar_t>
__device__ inline void update_tile(const StepParams<scalar_t>& p, int64_t row, int64_t tile,
                                   const TileValues<scalar_t>& grad,
                                   const StepFactors<at::opmath_type<scalar_t>>& f,
                                   at::opmath_type<scalar_t> row_factor) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = kWidth<scalar_t>;
  scalar_t* weight_row = p.weight + row * p.dim;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int64_t d = feature<scalar_t>(tile, s);
    if (d >= p.dim) continue;
    scalar_t stored[V];
    load_features<kPacked>(weight_row, d, p.dim, scalar_t(0), stored);
    acc_t w[V];
#pragma unroll
    for (int v = 0; v < V; ++v) w[v] = static_cast<acc_t>(stored[v]);
    if constexpr (kind == Optimizer::Sgd) {
#pragma unroll
      for (int v = 0; v < V; ++v) w[v] = sgd_weight(w[v], decayed_grad(grad[s][v], w[v], f), f);
    } else if constexpr (kind == Optimizer::Adagrad) {
      acc_t* sum_row = p.state0 + row * p.dim;
      acc_t sum[V];
      load_features<kPacked>(sum_row, d, p.dim, acc_t(0), sum);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        w[v] = adagrad_weight(w[v], decayed_grad(grad[s][v], w[v], f), sum[v], f);
      }
      store_features<kPacked>(sum_row, d, p.dim, sum);
    } else if constexpr (kind == Optimizer::RowwiseAdagrad) {
#pragma unroll
      for (int v = 0; v < V; ++v) {
        w[v] = rowwise_adagrad_weight(w[v], decayed_grad(grad[s][v], w[v], f), row_factor);
      }
    } else {
      acc_t* exp_avg_row = p.state0 + row * p.dim;
      acc_t* exp_avg_sq_row = p.state1 + row * p.dim;
      acc_t exp_avg[V];
      acc_t exp_avg_sq[V];
      load_features<kPacked>(exp_avg_row, d, p.dim, acc_t(0), exp_avg);
      load_features<kPacked>(exp_avg_sq_row, d, p.dim, acc_t(0), exp_avg_sq);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        w[v] = adam_weight(w[v], decayed_grad(grad[s][v], w[v], f), exp_avg[v], exp_avg_sq[v], f);
      }
      store_features<kPacked>(exp_avg_row, d, p.dim, exp_avg);
      store_features<kPacked>(exp_avg_sq_row, d, p.dim, exp_avg_sq);
    }
#pragma unroll
    for (int v = 0; v < V; ++v) stored[v] = static_cast<scalar_t>(w[v]);
    store_features<kPacked>(weight_row, d, p.dim, stored);
  }
}

// One warp per touched row: its whole gradient, then the step, tile by tile. Every condition
// that skips work is the same for the warp's lanes, so all of them reach the warp's reduction.
template <Optimizer kind, bool kPacked, bool kMax, typename scalar_t>
__global__ void update_kernel(StepParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  const StepFactors<acc_t> f = *p.factors;
  for (int64_t g = warp_item(); g < p.chunks.groups; g += warp_stride()) {
    const int64_t row = p.group_rows[g];
    if (p.row_skipped(row)) continue;
    TileValues<scalar_t> grad;
    acc_t row_factor = 0;
    if constexpr (kind == Optimizer::RowwiseAdagrad) {
      // The row's mean square gradient comes before any feature's update: a first pass sums the
      // squares, each lane in its feature order and then the warp in a fixed tree.
      acc_t squares = 0;
      for (int64_t tile = 0; tile < p.dim; tile += kTile<scalar_t>) {
        row_gradient<kPacked, kMax>(p, g, row, tile, grad);
        add_squares<kPacked>(p, row, tile, grad, f, squares);
      }
      const acc_t mean_square = warp_sum(squares) / static_cast<acc_t>(p.dim);
      // One lane owns the row's sum (read and written by no other), and hands out the factor.
      if (threadIdx.x == 0) {
        row_factor = rowwise_adagrad_factor(p.state0[row], mean_square, f);
      }
      row_factor = __shfl_sync(0xffffffffu, row_factor, 0);
    }
    for (int64_t tile = 0; tile < p.dim; tile += kTile<scalar_t>) {
      // A row of one tile still holds its gradient from the first pass; a longer one forms it
      // again, in the same order, so to the same bits.
      if (kind != Optimizer::RowwiseAdagrad || p.dim > kTile<scalar_t>) {
        row_gradient<kPacked, kMax>(p, g, row, tile, grad);
      }
      update_tile<kind, kPacked>(p, row, tile, grad, f, row_factor);
    }
  }
}

// Increments the step count and computes the step's factors from the new count.
template <typename acc_t>
__global__ void step_kernel(int64_t* step, Optimizer kind, Hyperparameters h,
                            StepFactors<acc_t>* factors) {
  const int64_t count = *step + 1;
  *step = count;
  *factors = step_factors<acc_t>(kind, h, count);
}

template <Optimizer kind, bool kPacked, bool kMax, typename scalar_t>
void launch_update(const StepParams<scalar_t>& p) {
  update_kernel<kind, kPacked, kMax>
      <<<warp_grid(p.chunks.groups), warp_block(), 0, current_stream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool kPacked, bool kMax, typename scalar_t>
void launch(Optimizer kind, const StepParams<scalar_t>& p, int64_t total_partials) {
  if (total_partials > 0) {
    partial_kernel<kPacked, kMax>
        <<<warp_grid(total_partials), warp_block(), 0, current_stream()>>>(p, total_partials);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  switch (kind) {
    case Optimizer::Sgd: return launch_update<Optimizer::Sgd, kPacked, kMax>(p);
    case Optimizer::Adagrad: return launch_update<Optimizer::Adagrad, kPacked, kMax>(p);
    case Optimizer::RowwiseAdagrad:
      return launch_update<Optimizer::RowwiseAdagrad, kPacked, kMax>(p);
    case Optimizer::Adam: return launch_update<Optimizer::Adam, kPacked, kMax>(p);
  }
}

template <bool kPacked, typename scalar_t>
void launch_for_mode(Optimizer kind, bool max, const StepParams<scalar_t>& p,
                     int64_t total_partials) {
  if (max) {
    launch<kPacked, true>(kind, p, total_partials);
  } else {
    launch<kPacked, false>(kind, p, total_partials);
  }
}

// Whether every row the kernels read or write starts 16-byte aligned (packs.cuh).
template <typename scalar_t>
bool rows_pack_aligned(const StepParams<scalar_t>& p) {
  return p.dim % kWidth<scalar_t> == 0 && pack_aligned(p.grad) && pack_aligned(p.winners) &&
         pack_aligned(p.partials) && pack_aligned(p.weight) && pack_aligned(p.state0) &&
         pack_aligned(p.state1);
}

template <typename scalar_t>
void fused_step(Optimizer kind, const Hyperparameters& h, const KernelInputs& in,
                const at::Tensor& grad, const at::Tensor& winners, bool scale_grad_by_freq,
                at::Tensor& weight, at::TensorList state, at::Tensor& step) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto stream = current_stream();
  at::Tensor factors = at::empty({static_cast<int64_t>(sizeof(StepFactors<acc_t>))},
                                 weight.options().dtype(at::kByte));
  auto* factors_ptr = reinterpret_cast<StepFactors<acc_t>*>(factors.mutable_data_ptr<uint8_t>());
  // Launched once all that can fail has run: a step that fails leaves the count alone too.
  const auto advance_step = [&] {
    step_kernel<acc_t><<<1, 1, 0, stream>>>(step.mutable_data_ptr<int64_t>(), kind, h,
                                            factors_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (in.num_bags == 0 || in.dim == 0 || in.num_weights == 0 || in.input.numel() == 0) {
    return advance_step();
  }

  const bool mean = in.mode == Mode::Mean;
  at::Tensor bag_of;
  at::Tensor counts;
  AT_DISPATCH_INDEX_TYPES(in.input.scalar_type(), "mybag_fused_update_cuda", [&] {
    const auto layout = make_layout<index_t>(in.input, in.offsets, in.include_last_offset);
    bag_of = bag_of_entries(layout, in.input);
    if (mean) {
      counts = non_padding_counts(layout, in.input.const_data_ptr<index_t>(), in.num_weights,
                                  in.padding_row, in.input);
    }
  });
  const auto groups = group_by_row(in.input.view({-1}));
  if (groups.count == 0) return advance_step();
  // Each group's row as int64, so that the kernels need not know input's dtype.
  const at::Tensor group_rows =
      groups.sorted_rows.index_select(0, groups.starts.slice(0, 0, -1)).to(at::kLong);
  const auto chunks = cut_into_chunks(groups);
  at::Tensor partials = at::empty({chunks.total_partials, in.dim},
                                  grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value));

  const StepParams<scalar_t> p{
      grad.const_data_ptr<scalar_t>(),
      winners.defined() ? winners.const_data_ptr<int64_t>() : nullptr,
      groups.order.const_data_ptr<int64_t>(),
      bag_of.const_data_ptr<int64_t>(),
      {in.per_sample_weights.defined() ? in.per_sample_weights.const_data_ptr<scalar_t>()
                                       : nullptr,
       mean ? counts.const_data_ptr<int64_t>() : nullptr},
      scale_grad_by_freq,
      group_rows.const_data_ptr<int64_t>(),
      chunk_index(groups, chunks),
      chunks.total_partials > 0 ? partials.mutable_data_ptr<acc_t>() : nullptr,
      weight.mutable_data_ptr<scalar_t>(),
      state.size() > 0 ? state[0].mutable_data_ptr<acc_t>() : nullptr,
      state.size() > 1 ? state[1].mutable_data_ptr<acc_t>() : nullptr,
      factors_ptr,
      in.dim,
      in.num_weights,
      in.padding_row,
  };
  advance_step();
  const bool max = in.mode == Mode::Max;
  if (rows_pack_aligned(p)) {
    launch_for_mode<true>(kind, max, p, chunks.total_partials);
  } else {
    launch_for_mode<false>(kind, max, p, chunks.total_partials);
  }
}

void fused_update(at::Tensor& weight, at::TensorList state, at::Tensor& step,
                  const at::Tensor& grad, const at::Tensor& input,
                  const std::optional<at::Tensor>& offsets,
                  const std::optional<at::Tensor>& per_sample_weights,
                  const at::Tensor& max_indices, int64_t mode_value,
                  std::optional<int64_t> padding_idx, bool include_last_offset,
                  bool scale_grad_by_freq, c10::string_view optimizer, double lr, double eps,
                  double beta1, double beta2, double weight_decay, double lr_decay) {
  const c10::cuda::CUDAGuard device_guard(weight.device());
  // Everything is checked before anything is written: a failed step changes nothing.
  at::Tensor flat_grad;
  const FusedUpdateInputs prepared = prepare_fused_update(
      weight, state, step, grad, flat_grad, input, offsets, per_sample_weights, mode_value,
      padding_idx, include_last_offset, scale_grad_by_freq, optimizer,
      {lr, eps, beta1, beta2, weight_decay, lr_decay});
  const Optimizer kind = prepared.kind;
  const Hyperparameters& h = prepared.hyperparameters;
  const KernelInputs& in = prepared.in;
  check_index_values(in.input, in.offsets, in.num_weights);
  at::Tensor winners;
  if (in.mode == Mode::Max) {
    check_max_indices_shape(max_indices, in.num_bags, in.dim, grad);
    check_max_indices_values(max_indices, in.num_weights);
    winners = max_indices.contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "mybag_fused_update_cuda", [&] {
    fused_step<scalar_t>(kind, h, in, flat_grad, winners, scale_grad_by_freq, weight, state,
                         step);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CUDA, m) {
  m.impl("_embedding_bag_fused_update_", &fused_update);
}

}  // namespace mybag::cuda
