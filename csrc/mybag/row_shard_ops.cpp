// The ops of a row-wise sharded table (row_shard_entries.h), for python/mybag/distributed/,
// which adds the collectives. Each takes the shard's layout (first_row, num_weights) explicitly,
// the backward included, and runs the unsharded kernels on the shard's entries. Written in
// ATen operations and dispatcher calls, so one registration serves every device.
//
// A rank's forward gives its part of each bag: the sum over its entries ("mean": divided by the
// bag's count on all shards, so the parts add up to the mean), or in "max" its best entry and
// that entry's position in the batch, so that merging the parts of all ranks can keep torch's
// first-of-equal-values and first-NaN rules exactly.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "mybag/checks.h"
#include "mybag/internal_ops.h"
#include "mybag/row_shard_entries.h"

namespace mybag {
namespace {

// What the shard adds to the checks of the unsharded op (check_inputs, or the backward's
// check_weight_grad_args, done by the caller): its layout, and padding_idx and the values
// against the whole table.
void check_shard_call(int64_t shard_rows, const at::Tensor& input,
                      const std::optional<at::Tensor>& offsets, Mode mode,
                      std::optional<int64_t> padding_idx, bool scale_grad_by_freq,
                      int64_t first_row, int64_t num_weights) {
  check_mode_options(mode, scale_grad_by_freq, /*sparse=*/false);
  check_shard_layout(shard_rows, first_row, num_weights);
  check_padding_idx(padding_idx, num_weights);
  check_values_on_any_device(input, offsets, num_weights);
}

std::optional<at::Tensor> kept_weights(const std::optional<at::Tensor>& per_sample_weights,
                                       const ShardEntries& e) {
  if (!per_sample_weights.has_value() || !per_sample_weights->defined()) return std::nullopt;
  return per_sample_weights->reshape({-1}).index_select(0, e.kept);
}

// A mean's part: the shard's sum divided by the bag's count on all shards (empty bags stay 0).
at::Tensor divided_by_counts(const at::Tensor& sums, const ShardEntries& e) {
  return sums / e.counts.clamp_min(1).unsqueeze(1).to(sums.scalar_type());
}

// Position in the batch of each (bag, feature)'s best entry, from the row the kernel chose
// (-1 for none). The kernel keeps the first of equal values, and an entry's value depends only on
// its row, so the best entry is the first in its bag to read that row.
at::Tensor best_positions(const at::Tensor& best_rows, const ShardEntries& e, int64_t shard_rows) {
  const auto options = best_rows.options();
  const int64_t bags = best_rows.size(0);
  if (e.kept.numel() == 0) return at::full(best_rows.sizes(), -1, options);
  const auto local_offsets = e.offsets.to(at::kLong);
  const auto entry_bag =
      at::searchsorted(local_offsets, at::arange(e.kept.numel(), options), /*out_int32=*/false,
                       /*right=*/true) - 1;
  const auto keys = entry_bag * shard_rows + e.input.to(at::kLong);
  const auto [unique_keys, inverse, counts] =
      at::_unique2(keys, /*sorted=*/true, /*return_inverse=*/true, /*return_counts=*/false);
  const auto first = at::full({unique_keys.numel()}, std::numeric_limits<int64_t>::max(), options)
                         .scatter_reduce(0, inverse, e.kept, "amin");
  const auto found = best_rows.ge(0);
  const auto wanted = at::arange(bags, options).unsqueeze(1) * shard_rows + best_rows.clamp_min(0);
  const auto slot = at::searchsorted(unique_keys, wanted.reshape({-1})).clamp_max(unique_keys.numel() - 1);
  return at::where(found, first.index_select(0, slot).view_as(best_rows), -1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_shard_forward(
    const at::Tensor& weight_shard, const at::Tensor& input,
    const std::optional<at::Tensor>& offsets, const std::optional<at::Tensor>& per_sample_weights,
    int64_t mode_value, std::optional<int64_t> padding_idx, bool include_last_offset,
    int64_t first_row, int64_t num_weights) {
  const Mode mode = mode_from_int(mode_value);
  check_inputs(input, weight_shard, offsets, per_sample_weights, mode, include_last_offset);
  const int64_t shard_rows = weight_shard.size(0);
  check_shard_call(shard_rows, input, offsets, mode, padding_idx, false, first_row, num_weights);
  const auto e = shard_entries(input, offsets, normalize_padding_idx(padding_idx, num_weights),
                               include_last_offset, first_row, shard_rows);
  const Mode kernel_mode = mode == Mode::Mean ? Mode::Sum : mode;
  auto [output, best_rows] =
      ops::forward(weight_shard, e.input, e.offsets, kept_weights(per_sample_weights, e),
                   static_cast<int64_t>(kernel_mode), std::nullopt, false, false, false);
  if (mode == Mode::Mean) output = divided_by_counts(output, e);
  at::Tensor positions = mode == Mode::Max ? best_positions(best_rows, e, shard_rows)
                                           : at::empty({0}, best_rows.options());
  return {output, best_rows, positions};
}

// The parts of every rank, stacked (world, B, D), merged as one process would reduce the whole
// bag: a NaN beats every number and the earlier of two NaNs wins; otherwise the greater value,
// the earlier entry among equals. Returns the bags' maxima and, for this rank, the rows of the
// maxima it holds (-1 where another rank's entry won, as for an empty bag).
std::tuple<at::Tensor, at::Tensor> row_shard_max_merge(const at::Tensor& values,
                                                       const at::Tensor& positions,
                                                       const at::Tensor& best_rows,
                                                       int64_t rank) {
  TORCH_CHECK(values.dim() == 3 && positions.sizes() == values.sizes(),
              "mybag: the ranks' max parts must be (world, B, D) values and positions, got ",
              values.sizes(), " and ", positions.sizes());
  TORCH_CHECK(rank >= 0 && rank < values.size(0), "mybag: rank=", rank,
              " is not one of the ", values.size(0), " ranks");
  auto best = values[0];
  auto best_position = positions[0];
  auto best_rank = at::zeros_like(best_position);
  for (int64_t r = 1; r < values.size(0); ++r) {
    const auto value = values[r];
    const auto position = positions[r];
    const auto earlier = position.lt(best_position);
    const auto value_nan = value.isnan();
    const auto best_nan = best.isnan();
    const auto numbers_better =
        value_nan.logical_not().logical_and(best_nan.logical_not())
            .logical_and(value.gt(best).logical_or(value.eq(best).logical_and(earlier)));
    const auto nan_better = value_nan.logical_and(best_nan.logical_not().logical_or(earlier));
    const auto better = position.ge(0).logical_and(
        best_position.lt(0).logical_or(nan_better).logical_or(numbers_better));
    best = at::where(better, value, best);
    best_position = at::where(better, position, best_position);
    best_rank = at::where(better, r, best_rank);
  }
  const auto mine = best_rank.eq(rank).logical_and(best_position.ge(0));
  return {best, at::where(mine, best_rows, -1)};
}

at::Tensor row_shard_backward(const at::Tensor& grad, const at::Tensor& input,
                              const std::optional<at::Tensor>& offsets,
                              const std::optional<at::Tensor>& per_sample_weights,
                              const at::Tensor& best_rows, int64_t mode_value,
                              std::optional<int64_t> padding_idx, bool include_last_offset,
                              bool scale_grad_by_freq, int64_t first_row, int64_t shard_rows,
                              int64_t num_weights) {
  const Mode mode = mode_from_int(mode_value);
  check_weight_grad_args(grad, input, offsets, per_sample_weights, mode, padding_idx,
                         include_last_offset, num_weights);
  check_shard_call(shard_rows, input, offsets, mode, padding_idx, scale_grad_by_freq, first_row,
                   num_weights);
  const auto e = shard_entries(input, offsets, normalize_padding_idx(padding_idx, num_weights),
                               include_last_offset, first_row, shard_rows);
  if (mode == Mode::Max) {
    return ops::dense_backward(grad, e.input, e.offsets, std::nullopt, best_rows, shard_rows,
                               static_cast<int64_t>(Mode::Max), std::nullopt, false, false);
  }
  const auto bag_grad = mode == Mode::Mean ? divided_by_counts(grad, e) : grad;
  return ops::dense_backward(bag_grad, e.input, e.offsets, kept_weights(per_sample_weights, e),
                             at::empty({0}, grad.options().dtype(at::kLong)), shard_rows,
                             static_cast<int64_t>(Mode::Sum), std::nullopt, false,
                             scale_grad_by_freq);
}

// per_sample_weights' gradient from one shard: its entries' parts, zeros elsewhere; the ranks'
// results add up to the whole gradient.
at::Tensor row_shard_per_sample_weights_backward(
    const at::Tensor& grad, const at::Tensor& weight_shard, const at::Tensor& input,
    const std::optional<at::Tensor>& offsets, int64_t mode_value,
    std::optional<int64_t> padding_idx, bool include_last_offset, int64_t first_row,
    int64_t num_weights) {
  const Mode mode = mode_from_int(mode_value);
  check_per_sample_weights_grad_mode(mode);
  check_inputs(input, weight_shard, offsets, std::nullopt, mode, include_last_offset);
  check_shard_call(weight_shard.size(0), input, offsets, mode, padding_idx, false, first_row,
                   num_weights);
  const auto e = shard_entries(input, offsets, normalize_padding_idx(padding_idx, num_weights),
                               include_last_offset, first_row, weight_shard.size(0));
  const auto part = ops::per_sample_weights_backward(grad, weight_shard, e.input, e.offsets,
                                                     static_cast<int64_t>(Mode::Sum),
                                                     std::nullopt, false);
  return at::zeros({input.numel()}, part.options()).index_copy_(0, e.kept, part).view_as(input);
}

// max_norm on a shard: the rows it holds among those input references (as the unsharded op,
// every entry counts, padding and entries past the last bag included), renormalized by the
// unsharded op as one bag.
void row_shard_renorm_(at::Tensor& weight_shard, const at::Tensor& input,
                       const std::optional<at::Tensor>& offsets, bool include_last_offset,
                       double max_norm, double norm_type, int64_t first_row,
                       int64_t num_weights) {
  check_max_norm(max_norm);
  check_inputs(input, weight_shard, offsets, std::nullopt, Mode::Sum, include_last_offset);
  check_shard_call(weight_shard.size(0), input, offsets, Mode::Sum, std::nullopt, false,
                   first_row, num_weights);
  const auto flat = input.reshape({-1});
  const auto mine = flat.ge(first_row).logical_and(flat.lt(first_row + weight_shard.size(0)));
  const auto rows = flat.masked_select(mine).sub_(first_row);
  ops::renorm_(weight_shard, rows, at::zeros({1}, rows.options()), false, max_norm, norm_type);
}

// The fused optimizer's step on a shard (FusedEmbeddingBag with a row-wise table): its rows'
// gradient, formed as row_shard_backward forms it, applied by the unsharded update to the
// shard's rows and state. step advances on every rank, touched or not.
void row_shard_fused_update_(at::Tensor& weight_shard, at::TensorList state, at::Tensor& step,
                             const at::Tensor& grad, const at::Tensor& input,
                             const std::optional<at::Tensor>& offsets,
                             const std::optional<at::Tensor>& per_sample_weights,
                             const at::Tensor& best_rows, int64_t bag_mode,
                             std::optional<int64_t> padding_idx, bool include_last_offset,
                             bool scale_grad_by_freq, c10::string_view optimizer, double lr,
                             double eps, double beta1, double beta2, double weight_decay,
                             double lr_decay, int64_t first_row, int64_t num_weights) {
  const Mode mode = mode_from_int(bag_mode);
  check_weight_grad_args(grad, input, offsets, per_sample_weights, mode, padding_idx,
                         include_last_offset, num_weights);
  check_shard_call(weight_shard.size(0), input, offsets, mode, padding_idx, scale_grad_by_freq,
                   first_row, num_weights);
  const auto e = shard_entries(input, offsets, normalize_padding_idx(padding_idx, num_weights),
                               include_last_offset, first_row, weight_shard.size(0));
  const bool max = mode == Mode::Max;
  const auto bag_grad = mode == Mode::Mean ? divided_by_counts(grad, e) : grad;
  ops::fused_update_(weight_shard, state, step, bag_grad, e.input, e.offsets,
                     kept_weights(per_sample_weights, e),
                     max ? best_rows : at::empty({0}, grad.options().dtype(at::kLong)),
                     static_cast<int64_t>(max ? Mode::Max : Mode::Sum), std::nullopt, false,
                     scale_grad_by_freq, optimizer, lr, eps, beta1, beta2, weight_decay,
                     lr_decay);
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CompositeExplicitAutograd, m) {
  m.impl("_embedding_bag_row_shard_forward", &row_shard_forward);
  m.impl("_embedding_bag_row_shard_max_merge", &row_shard_max_merge);
  m.impl("_embedding_bag_row_shard_backward", &row_shard_backward);
  m.impl("_embedding_bag_row_shard_per_sample_weights_backward",
         &row_shard_per_sample_weights_backward);
  m.impl("_embedding_bag_row_shard_renorm_", &row_shard_renorm_);
  m.impl("_embedding_bag_row_shard_fused_update_", &row_shard_fused_update_);
}

}  // namespace mybag
