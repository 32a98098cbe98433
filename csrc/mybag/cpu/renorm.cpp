// CPU max_norm: scales in place every distinct row referenced by input whose norm exceeds
// max_norm. Indices and offsets are validated first, so a failing call leaves weight as it was.
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "mybag/checks.h"
#include "mybag/cpu/layout.h"
#include "mybag/cpu/value_checks.h"

namespace mybag::cpu {
namespace {

// The norm_type-norm of one row, as torch.linalg.vector_norm defines it (0, +-inf and any p).
template <typename acc_t, typename scalar_t>
acc_t row_norm(const scalar_t* row, int64_t col_stride, int64_t dim, double p) {
  if (p == 2.0) {
    acc_t total = 0;
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t v = static_cast<acc_t>(row[d * col_stride]);
      total += v * v;
    }
    return std::sqrt(total);
  }
  if (std::isinf(p)) {
    acc_t best = p > 0 ? acc_t(0) : std::numeric_limits<acc_t>::infinity();
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t v = std::abs(static_cast<acc_t>(row[d * col_stride]));
      best = p > 0 ? std::max(best, v) : std::min(best, v);
    }
    return best;
  }
  acc_t total = 0;
  for (int64_t d = 0; d < dim; ++d) {
    const acc_t v = std::abs(static_cast<acc_t>(row[d * col_stride]));
    total += p == 0.0 ? acc_t(v != 0) : (p == 1.0 ? v : std::pow(v, static_cast<acc_t>(p)));
  }
  return (p == 0.0 || p == 1.0) ? total : std::pow(total, static_cast<acc_t>(1.0 / p));
}

template <typename index_t>
std::vector<int64_t> distinct_rows(const index_t* indices, int64_t n) {
  std::vector<int64_t> rows(indices, indices + n);
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

void renorm_(at::Tensor& weight, const at::Tensor& input, const std::optional<at::Tensor>& offsets,
             bool include_last_offset, double max_norm, double norm_type) {
  check_renorm_args(weight, input, offsets, include_last_offset, max_norm);
  // Rows that share memory (an expanded weight) would be scaled more than once.
  at::assert_no_internal_overlap(weight);
  check_index_values(input, offsets, weight.size(0), include_last_offset);

  const auto flat_input = input.contiguous();
  const int64_t dim = weight.size(1);
  const int64_t row_stride = weight.stride(0);
  const int64_t col_stride = weight.stride(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "mybag_embedding_bag_renorm_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* table = weight.mutable_data_ptr<scalar_t>();
    std::vector<int64_t> rows;
    AT_DISPATCH_INDEX_TYPES(flat_input.scalar_type(), "mybag_embedding_bag_renorm_cpu", [&] {
      rows = distinct_rows(flat_input.const_data_ptr<index_t>(), flat_input.numel());
    });
    at::parallel_for(0, static_cast<int64_t>(rows.size()), 64, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) {
        scalar_t* row = table + rows[k] * row_stride;
        // torch computes the norm as a tensor of weight's dtype and reads it back as a double:
        // round the same way so half and bfloat16 tables scale identically.
        const double norm = static_cast<double>(
            static_cast<scalar_t>(row_norm<acc_t>(row, col_stride, dim, norm_type)));
        if (norm > max_norm) {
          const acc_t scale = static_cast<acc_t>(max_norm / (norm + 1e-7));
          for (int64_t d = 0; d < dim; ++d) {
            scalar_t& v = row[d * col_stride];
            v = static_cast<scalar_t>(static_cast<acc_t>(v) * scale);
          }
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CPU, m) {
  m.impl("_embedding_bag_renorm_", &renorm_);
}

}  // namespace mybag::cpu
