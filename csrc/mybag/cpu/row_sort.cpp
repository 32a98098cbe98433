#include "mybag/cpu/row_sort.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <bit>
#include <memory>
#include <vector>

namespace mybag::cpu {
namespace {

// The widest digit: one pass over 2^16 buckets still keeps a task's counters in L2.
constexpr int kMaxDigitBits = 16;
// Entries per sorting task, at least: below it a task's counters cost more than its entries.
constexpr int64_t kEntriesPerTask = 16384;

int bit_width(uint64_t value) { return static_cast<int>(std::bit_width(value)); }

// Each entry travels as one word, its row above its position: one store per entry and pass
// rather than two, and the positions of equal rows stay ascending because every pass is stable.
struct Packing {
  int position_bits;
  uint64_t row_mask;  // rows are masked to the bits the table needs (see row_sort.h)
};

// The digits of a sort: as wide as the batch makes worthwhile (counters beyond the entries'
// number are mostly zeros to clear and scan), and as few passes as those widths allow.
struct Digits {
  int passes;
  int bits;
};

Digits digits_for(int row_bits, int64_t entries) {
  const int widest = std::clamp(bit_width(static_cast<uint64_t>(entries)) - 1, 8, kMaxDigitBits);
  const int passes = (row_bits + widest - 1) / widest;
  return {passes, (row_bits + passes - 1) / passes};
}

// One stable counting pass of an LSD radix sort over the digit at `shift` of the words: tasks
// own contiguous ranges of the entries and, in a first sweep, count their digits; each
// (digit, task) pair then owns the output range after every smaller digit's and, within its
// digit, every earlier task's, so the result does not depend on how many tasks there are.
// `word_of(i)` gives entry i's input word (the first pass builds them from the rows).
template <typename WordOf>
void counting_pass(const WordOf& word_of, uint64_t* out, int64_t n, int shift, int digit_bits,
                   int64_t tasks) {
  const int64_t buckets = int64_t{1} << digit_bits;
  const uint64_t mask = static_cast<uint64_t>(buckets - 1);
  const int64_t per_task = (n + tasks - 1) / tasks;
  std::vector<int64_t> next(tasks * buckets, 0);
  // The loops read shift, mask and word_of's state from locals: a counter or word store could
  // otherwise alias them as far as the compiler knows, and it would reload them every entry.
  at::parallel_for(0, tasks, 1, [&, word_of, shift, mask](int64_t first_task, int64_t last_task) {
    for (int64_t t = first_task; t < last_task; ++t) {
      int64_t* count = next.data() + t * buckets;
      const int64_t end = std::min(n, (t + 1) * per_task);
      for (int64_t i = t * per_task; i < end; ++i) ++count[(word_of(i) >> shift) & mask];
    }
  });
  int64_t position = 0;
  for (int64_t b = 0; b < buckets; ++b) {
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t count = next[t * buckets + b];
      next[t * buckets + b] = position;
      position += count;
    }
  }
  at::parallel_for(0, tasks, 1, [&, word_of, shift, mask](int64_t first_task, int64_t last_task) {
    for (int64_t t = first_task; t < last_task; ++t) {
      int64_t* slot = next.data() + t * buckets;
      const int64_t end = std::min(n, (t + 1) * per_task);
      for (int64_t i = t * per_task; i < end; ++i) {
        const uint64_t word = word_of(i);
        out[slot[(word >> shift) & mask]++] = word;
      }
    }
  });
}

template <typename index_t>
RowGroups sort_rows(const at::Tensor& flat_input, int64_t num_rows) {
  const int64_t n = flat_input.numel();
  const int row_bits =
      std::max(1, bit_width(static_cast<uint64_t>(std::max<int64_t>(num_rows, 1) - 1)));
  const Packing packing{std::max(1, bit_width(static_cast<uint64_t>(n))),
                        (uint64_t{1} << row_bits) - 1};
  if (row_bits + packing.position_bits > 64) {
    // Not a table and batch that fit in memory today; the general sort still handles them.
    return group_by_row(flat_input);
  }
  const index_t* input = flat_input.const_data_ptr<index_t>();
  RowGroups groups;
  groups.sorted_rows = at::empty({n}, flat_input.options());
  groups.order = at::empty({n}, flat_input.options().dtype(at::kLong));
  auto starts = at::empty({n + 1}, groups.order.options());
  int64_t* start = starts.mutable_data_ptr<int64_t>();
  start[0] = 0;
  if (n == 0) {
    groups.starts = starts;
    return groups;
  }

  const Digits digits = digits_for(row_bits, n);
  const int64_t tasks = std::clamp<int64_t>(n / kEntriesPerTask, 1, at::get_num_threads());
  // Left uninitialized: every pass writes each word before the next reads it.
  std::unique_ptr<uint64_t[]> words(new uint64_t[n]);
  std::unique_ptr<uint64_t[]> scratch(new uint64_t[digits.passes > 1 ? n : 0]);
  uint64_t* to = words.get();
  uint64_t* from = scratch.get();
  const auto first_word = [input, packing](int64_t i) {
    return ((static_cast<uint64_t>(input[i]) & packing.row_mask) << packing.position_bits) |
           static_cast<uint64_t>(i);
  };
  counting_pass(first_word, to, n, packing.position_bits, digits.bits, tasks);
  for (int p = 1; p < digits.passes; ++p) {
    std::swap(from, to);
    const uint64_t* in = from;
    counting_pass([in](int64_t i) { return in[i]; }, to, n,
                  packing.position_bits + p * digits.bits, digits.bits, tasks);
  }

  // The words back into rows and positions, and the groups' boundaries where the row changes.
  index_t* rows = groups.sorted_rows.mutable_data_ptr<index_t>();
  int64_t* order = groups.order.mutable_data_ptr<int64_t>();
  const uint64_t position_mask = (uint64_t{1} << packing.position_bits) - 1;
  int64_t count = 0;
  uint64_t previous = to[0] >> packing.position_bits;
  for (int64_t k = 0; k < n; ++k) {
    const uint64_t row = to[k] >> packing.position_bits;
    if (row != previous) start[++count] = k;
    previous = row;
    rows[k] = static_cast<index_t>(row);
    order[k] = static_cast<int64_t>(to[k] & position_mask);
  }
  start[++count] = n;
  groups.count = count;
  groups.starts = starts.slice(0, 0, count + 1);
  return groups;
}

}  // namespace

RowGroups group_by_row_cpu(const at::Tensor& flat_input, int64_t num_rows) {
  TORCH_INTERNAL_ASSERT(flat_input.dim() == 1 && flat_input.is_contiguous());
  return AT_DISPATCH_INDEX_TYPES(flat_input.scalar_type(), "mybag_group_by_row_cpu",
                                 [&] { return sort_rows<index_t>(flat_input, num_rows); });
}

}  // namespace mybag::cpu
