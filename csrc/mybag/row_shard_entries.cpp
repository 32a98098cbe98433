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
  if (n > 0) {
    // One pass in the common case; the position of a bad index only when there is one.
    const auto [lowest, highest] = at::aminmax(flat);
    if (lowest.item<int64_t>() < 0 || highest.item<int64_t>() >= num_weights) {
      const int64_t position = first_true(flat.lt(0).logical_or_(flat.ge(num_weights)));
      fail_index_out_of_range(position, flat[position].item<int64_t>(), num_weights);
    }
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
                           int64_t shard_rows, bool with_counts) {
  const auto flat = input.reshape({-1});
  const int64_t n = flat.numel();
  const auto long_options = flat.options().dtype(at::kLong);
  // Where each bag starts. With include_last_offset the final offset is checked but, as in the
  // unsharded op (docs/spec.md §2), the last bag runs to the end of input.
  at::Tensor starts;
  if (input.dim() == 2) {
    starts = at::arange(0, input.size(0), long_options).mul_(input.size(1));
  } else {
    const auto o = offsets->to(at::kLong);
    starts = include_last_offset ? o.slice(0, 0, -1) : o;
  }
  const auto local = flat - first_row;
  auto mine = local.ge(0).logical_and_(local.lt(shard_rows));
  const bool padding_here = padding_row >= first_row && padding_row < first_row + shard_rows;
  if (padding_here) mine.logical_and_(local.ne(padding_row - first_row));

  ShardEntries e;
  e.kept = mine.nonzero().select(1, 0);
  e.input = local.index_select(0, e.kept);
  // A bag's first kept entry: the number of kept positions before its start.
  e.offsets = at::searchsorted(e.kept, starts).to(input.scalar_type());
  if (with_counts) {
    const auto ends = at::cat({starts.slice(0, 1), at::full({1}, n, long_options)})
                          .slice(0, 0, starts.numel());
    if (padding_row < 0) {
      e.counts = ends - starts;
    } else {
      const auto counted_before =
          at::cat({at::zeros({1}, long_options), flat.ne(padding_row).cumsum(0)});
      e.counts = counted_before.index_select(0, ends) - counted_before.index_select(0, starts);
    }
  }
  return e;
}

}  // namespace mybag
