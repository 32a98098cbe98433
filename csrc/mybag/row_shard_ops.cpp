// The ops of a row-wise sharded table (row_shard_entries.h), for python/mybag/distributed/,
// which adds the collectives. Each takes the shard's layout (first_row, num_weights) explicitly,
// the backward included, and runs the unsharded kernels on the shard's entries. Written in
// ATen operations and dispatcher calls, so one registration serves every device.
//
// A rank's forward gives its part of each bag: the sum over its entries ("mean": divided by the
// bag's count on all shards, so the parts add up to the mean), or in "max" its best entry and
// that entry's position in the batch, so that combining the parts of all ranks can keep the
// first-of-equal-values and first-NaN rules exactly (max_keys, max_claims, max_merge).
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
  const auto [unique_keys, inverse, unused_counts] =
      at::_unique2(keys, /*sorted=*/true, /*return_inverse=*/true, /*return_counts=*/false);
  const auto first = at::full({unique_keys.numel()}, std::numeric_limits<int64_t>::max(), options)
                         .scatter_reduce(0, inverse, e.kept, "amin");
  const auto found = best_rows.ge(0);
  const auto wanted =
      at::arange(bags, options).unsqueeze(1) * shard_rows + best_rows.clamp_min(0);
  const auto slot =
      at::searchsorted(unique_keys, wanted.reshape({-1})).clamp_max(unique_keys.numel() - 1);
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
                               include_last_offset, first_row, shard_rows, mode == Mode::Mean);
  const Mode kernel_mode = mode == Mode::Mean ? Mode::Sum : mode;
  auto [output, best_rows] =
      ops::forward(weight_shard, e.input, e.offsets, kept_weights(per_sample_weights, e),
                   static_cast<int64_t>(kernel_mode), std::nullopt, false, false, false);
  if (mode == Mode::Mean) output = divided_by_counts(output, e);
  at::Tensor positions = mode == Mode::Max ? best_positions(best_rows, e, shard_rows)
                                           : at::empty({0}, best_rows.options());
  return {output, best_rows, positions};
}

// Max over ranks, in two all-reduces whose size does not grow with the number of ranks, with
// one process's rules: a NaN beats every number and the earlier of two NaNs wins; otherwise the
// greater value wins, and the earlier entry among equals. Each rank's part is its best value
// and that entry's position in the batch (-1: the rank has no entry there).
//
// 1. keys, reduced by MAX over ranks: (2, B, D) of the output's dtype, [value, NaN flag]; a
//    NaN counts as +inf in the first (the flag tells it from a real +inf), no entry as -inf.
at::Tensor row_shard_max_keys(const at::Tensor& output, const at::Tensor& positions) {
  TORCH_CHECK(positions.sizes() == output.sizes(),
              "mybag: a rank's max part must be (B, D) values and positions, got ",
              output.sizes(), " and ", positions.sizes());
  const auto nan = output.isnan();
  const auto value = at::where(positions.lt(0), -std::numeric_limits<double>::infinity(),
                               at::where(nan, std::numeric_limits<double>::infinity(), output));
  return at::stack({value, nan.to(output.scalar_type())});
}

// 2. claims, reduced by MIN: where this rank holds a winning candidate (a NaN if any rank has
//    one, else a value equal to the maximum), 2 * position + the value's sign bit, so that the
//    reduction also carries the sign of a winning zero; elsewhere the largest int64.
at::Tensor row_shard_max_claims(const at::Tensor& output, const at::Tensor& positions,
                                const at::Tensor& keys) {
  TORCH_CHECK(keys.dim() == 3 && keys.size(0) == 2 && keys[0].sizes() == output.sizes(),
              "mybag: the reduced max keys must be (2, B, D), got ", keys.sizes());
  const auto any_nan = keys[1].gt(0);
  const auto candidate =
      positions.ge(0).logical_and(at::where(any_nan, output.isnan(), output.eq(keys[0])));
  const auto claim = positions * 2 + output.signbit().to(at::kLong);
  return at::where(candidate, claim, std::numeric_limits<int64_t>::max());
}

// 3. The bags' maxima, and this rank's rows of them (-1 where another rank holds the winner,
//    or no rank has an entry).
std::tuple<at::Tensor, at::Tensor> row_shard_max_merge(const at::Tensor& output,
                                                       const at::Tensor& positions,
                                                       const at::Tensor& best_rows,
                                                       const at::Tensor& keys,
                                                       const at::Tensor& claims) {
  TORCH_CHECK(claims.sizes() == output.sizes() && best_rows.sizes() == output.sizes(),
              "mybag: the reduced max claims and this rank's rows must be ", output.sizes(),
              ", got ", claims.sizes(), " and ", best_rows.sizes());
  const auto none = claims.eq(std::numeric_limits<int64_t>::max());
  const auto mine = none.logical_not().logical_and(positions.eq(at::floor_divide(claims, 2)));
  // A NaN or a zero with the winner's sign, or the maximum; zero where no rank had an entry.
  const auto nan = at::full({}, std::numeric_limits<double>::quiet_NaN(), output.options());
  const auto sign = at::where(claims.remainder(2).eq(1), -1.0, 1.0).to(output.scalar_type());
  auto value = at::where(keys[1].gt(0), at::copysign(nan, sign),
                         at::where(keys[0].eq(0), at::copysign(keys[0], sign), keys[0]));
  value = at::where(none, at::zeros_like(value), value);
  return {value, at::where(mine, best_rows, -1)};
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
                               include_last_offset, first_row, shard_rows, mode == Mode::Mean);
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
                               include_last_offset, first_row, weight_shard.size(0), false);
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
                               include_last_offset, first_row, weight_shard.size(0),
                               mode == Mode::Mean);
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
  m.impl("_embedding_bag_row_shard_max_keys", &row_shard_max_keys);
  m.impl("_embedding_bag_row_shard_max_claims", &row_shard_max_claims);
  m.impl("_embedding_bag_row_shard_max_merge", &row_shard_max_merge);
  m.impl("_embedding_bag_row_shard_backward", &row_shard_backward);
  m.impl("_embedding_bag_row_shard_per_sample_weights_backward",
         &row_shard_per_sample_weights_backward);
  m.impl("_embedding_bag_row_shard_renorm_", &row_shard_renorm_);
  m.impl("_embedding_bag_row_shard_fused_update_", &row_shard_fused_update_);
}

}  // namespace mybag
