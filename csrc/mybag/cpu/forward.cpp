// CPU forward: one task per range of bags (at::parallel_for), each reducing its bags' rows into a
// float (or double) accumulator that is rounded to weight's dtype once, at the end.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "mybag/checks.h"
#include "mybag/kernel_inputs.h"
#include "mybag/reductions.h"
#include "mybag/cpu/forward_args.h"
#include "mybag/cpu/entries.h"
#include "mybag/cpu/simd.h"
#include "mybag/cpu/value_checks.h"
#include "mybag/cpu/rows.h"

namespace mybag::cpu {
namespace {

template <typename scalar_t, typename index_t>
void sum_or_mean(const ForwardArgs<scalar_t, index_t>& a, bool mean, int64_t first, int64_t last) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> acc(a.dim);
  for (int64_t bag = first; bag < last; ++bag) {
    std::fill(acc.begin(), acc.end(), acc_t(0));
    int64_t count = 0;
    for (int64_t i = a.layout.begin(bag); i < a.layout.end(bag); ++i) {
      prefetch_ahead(a, i);
      const int64_t row = a.indices[i];
      if (row == a.padding_idx) continue;
      ++count;
      const scalar_t* values = a.weight + row * a.row_stride;
      if (a.per_sample_weights != nullptr) {
        fma_row(acc.data(), values, a.col_stride, a.dim, acc_t(a.per_sample_weights[i]));
      } else {
        add_scaled_row(acc.data(), values, a.col_stride, a.dim, acc_t(1));
      }
    }
    const acc_t divisor = (mean && count > 0) ? acc_t(count) : acc_t(1);
    scalar_t* out = a.output + bag * a.dim;
    for (int64_t d = 0; d < a.dim; ++d) {
      out[d] = static_cast<scalar_t>(acc[d] / divisor);
    }
  }
}

template <typename scalar_t, typename index_t>
void max_reduce(const ForwardArgs<scalar_t, index_t>& a, int64_t first, int64_t last) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> best(a.dim);
  std::vector<int64_t> winner(a.dim);
  for (int64_t bag = first; bag < last; ++bag) {
    int64_t count = 0;
    for (int64_t i = a.layout.begin(bag); i < a.layout.end(bag); ++i) {
      prefetch_ahead(a, i);
      const int64_t row = a.indices[i];
      if (row == a.padding_idx) continue;
      const scalar_t* values = a.weight + row * a.row_stride;
      for (int64_t d = 0; d < a.dim; ++d) {
        const acc_t v = static_cast<acc_t>(values[d * a.col_stride]);
        if (max_replaces(best[d], v, count == 0)) {
          best[d] = v;
          winner[d] = row;
        }
      }
      ++count;
    }
    scalar_t* out = a.output + bag * a.dim;
    int64_t* out_winner = a.max_indices + bag * a.dim;
    for (int64_t d = 0; d < a.dim; ++d) {
      out[d] = count > 0 ? static_cast<scalar_t>(best[d]) : scalar_t(0);
      out_winner[d] = count > 0 ? winner[d] : -1;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> forward(
    const at::Tensor& weight,
    const at::Tensor& input,
    const std::optional<at::Tensor>& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t mode_value,
    std::optional<int64_t> padding_idx,
    bool include_last_offset,
    bool scale_grad_by_freq,
    bool sparse) {
  const auto in = prepare_forward(weight, input, offsets, per_sample_weights, mode_value,
                                  padding_idx, include_last_offset, scale_grad_by_freq, sparse);
  const Mode mode = in.mode;
  const int64_t num_weights = in.num_weights;
  const int64_t dim = in.dim;
  const int64_t bags = in.num_bags;
  // The SIMD kernels check each index as they read it (a separate pass cost a fifth of a
  // small-row forward); the portable loops, and calls that read no row, check them all first.
  const bool simd = bags > 0 && dim > 0 &&
                    avx2_forward_applies(weight.stride(1), input.numel(), mode == Mode::Max);
  if (simd) {
    check_offset_values(input, offsets);
  } else {
    check_index_values(input, offsets, num_weights, include_last_offset);
  }
  auto [output, max_indices] = allocate_forward_outputs(in, weight);
  if (bags == 0 || dim == 0) {
    return {output, max_indices};
  }
  const auto& flat_input = in.input;
  const auto& psw = in.per_sample_weights;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "mybag_embedding_bag_forward_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(flat_input.scalar_type(), "mybag_embedding_bag_forward_cpu", [&] {
      ForwardArgs<scalar_t, index_t> a{
          weight.const_data_ptr<scalar_t>(),
          weight.stride(0),
          weight.stride(1),
          dim,
          flat_input.const_data_ptr<index_t>(),
          make_layout<index_t>(flat_input, in.offsets, include_last_offset),
          psw.defined() ? psw.const_data_ptr<scalar_t>() : nullptr,
          in.padding_row,
          output.mutable_data_ptr<scalar_t>(),
          mode == Mode::Max ? max_indices.mutable_data_ptr<int64_t>() : nullptr,
          num_weights,
      };
      const int64_t grain = bag_grain_size(a.layout.num_indices, bags, dim);
      std::atomic<bool> bad_index{false};
      at::parallel_for(0, bags, grain, [&](int64_t first, int64_t last) {
        if (!simd) {
          if (mode == Mode::Max) {
            max_reduce(a, first, last);
          } else {
            sum_or_mean(a, mode == Mode::Mean, first, last);
          }
        } else if (!(mode == Mode::Max ? max_bags_avx2(a, first, last)
                                       : sum_bags_avx2(a, mode == Mode::Mean, first, last))) {
          bad_index = true;
        }
      });
      if (bad_index) {
        // Names the first bad entry and throws; output is dropped.
        check_index_values(input, offsets, num_weights, include_last_offset);
        TORCH_INTERNAL_ASSERT(false, "mybag: a kernel met an index the full check accepts");
      }
    });
  });
  return {output, max_indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CPU, m) {
  m.impl("_embedding_bag_forward", &forward);
}

}  // namespace mybag::cpu
