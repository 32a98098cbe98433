// Selecting a row shard's entries (row_shard_entries.h), in ATen operations so that it runs on
// every device: a few passes over the indices, small beside the rows the kernels then read.
#include "mybag/row_shard_entries.h"

#include <ATen/ATen.h>

#include "mybag/checks.h"

namespace mybag {
namespace {

int64_t first_true(const at::Tensor& mask) {
  return mask.nonzero().select(1, 0).select(0, 0).item<int64_t>();
}

}  // namespace

void check_shard_layout(int64_t shard_rows, int64_t first_row, int64_t num_weights) {
  TORCH_CHECK(num_weights >= 0 && first_row >= 0 && first_row <= num_weights && shard_rows >= 0 &&
                  shard_rows <= num_weights - first_row,
              "mybag: a row shard of ", shard_rows, " rows starting at row first_row=", first_row,
              " does not fit in a table of num_weights=", num_weights, " rows");
}

void check_values_on_any_device(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                                int64_t num_weights) {
  const auto flat = input.reshape({-1});
  const int64_t n = flat.numel();
  const auto bad = flat.lt(0).logical_or(flat.ge(num_weights));
  if (bad.any().item<bool>()) {
    const int64_t position = first_true(bad);
    fail_index_out_of_range(position, flat[position].item<int64_t>(), num_weights);
  }
  if (!offsets.has_value() || offsets->numel() == 0) return;
  const auto o = offsets->to(at::kLong);
  const int64_t first = o[0].item<int64_t>();
  if (first != 0) fail_first_offset(first);
  const auto decreasing = o.slice(0, 1).lt(o.slice(0, 0, -1));
  if (decreasing.any().item<bool>()) {
    const int64_t position = first_true(decreasing) + 1;
    fail_decreasing_offsets(position, o[position].item<int64_t>(),
                            o[position - 1].item<int64_t>());
  }
  const int64_t last = o[-1].item<int64_t>();
  if (last > n) fail_offset_past_end(o.numel() - 1, last, n);
}

ShardEntries shard_entries(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                           int64_t padding_row, bool include_last_offset, int64_t first_row,
                           int64_t shard_rows) {
  const auto flat = input.reshape({-1});
  const int64_t n = flat.numel();
  const auto long_options = flat.options().dtype(at::kLong);
  // Where each bag starts. With include_last_offset the final offset is checked but, as in the
  // unsharded op (docs/spec.md §2), the last bag runs to the end of input.
  at::Tensor starts;
  if (input.dim() == 2) {
    const int64_t length = input.size(1);
    starts = at::arange(0, input.size(0), long_options).mul_(length);
  } else {
    const auto o = offsets->to(at::kLong);
    starts = include_last_offset ? o.slice(0, 0, -1) : o;
  }
  const int64_t bags = starts.numel();
  const auto in_shard = flat.ge(first_row).logical_and(flat.lt(first_row + shard_rows));
  const auto counted = padding_row >= 0 ? flat.ne(padding_row) : at::ones_like(flat, at::kBool);
  const auto mine = in_shard.logical_and(counted);

  ShardEntries e;
  e.kept = mine.nonzero().select(1, 0);
  e.input = flat.index_select(0, e.kept).sub_(first_row);
  // Entries of each kind before position p, for p in [0, n]: a bag's start in the kept entries
  // and its non-padding count both come from these running totals.
  const auto zero = at::zeros({1}, long_options);
  const auto mine_before = at::cat({zero, mine.cumsum(0)});
  e.offsets = mine_before.index_select(0, starts).to(input.scalar_type());
  const auto counted_before = at::cat({zero, counted.cumsum(0)});
  const auto ends = at::cat({starts.slice(0, 1), at::full({1}, n, long_options)}).slice(0, 0, bags);
  e.counts = counted_before.index_select(0, ends) - counted_before.index_select(0, starts);
  return e;
}

}  // namespace mybag
