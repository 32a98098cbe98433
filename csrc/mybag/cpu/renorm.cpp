// CPU max_norm: scales in place every distinct row referenced by input whose norm exceeds
// max_norm. Indices and offsets are validated first, so a failing call leaves weight as it was.
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "mybag/checks.h"
#include "mybag/cpu/value_checks.h"
#include "mybag/row_groups.h"
#include "mybag/row_norm.h"

namespace mybag::cpu {
namespace {

void renorm_(at::Tensor& weight, const at::Tensor& input, const std::optional<at::Tensor>& offsets,
             bool include_last_offset, double max_norm, double norm_type) {
  check_renorm_args(weight, input, offsets, include_last_offset, max_norm);
  // Rows that share memory (an expanded weight) would be scaled more than once.
  at::assert_no_internal_overlap(weight);
  check_index_values(input, offsets, weight.size(0));

  const auto flat_input = input.contiguous();
  const int64_t dim = weight.size(1);
  const int64_t row_stride = weight.stride(0);
  const int64_t col_stride = weight.stride(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "mybag_embedding_bag_renorm_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* table = weight.mutable_data_ptr<scalar_t>();
    // As int64, so one loop serves int32 and int64 inputs.
    const auto rows_tensor = distinct_rows(flat_input.view({-1})).to(at::kLong);
    const int64_t* rows = rows_tensor.const_data_ptr<int64_t>();
    at::parallel_for(0, rows_tensor.numel(), 64, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) {
        scalar_t* row = table + rows[k] * row_stride;
        RowNorm<acc_t> norm_of_row(norm_type);
        for (int64_t d = 0; d < dim; ++d) {
          norm_of_row.add(static_cast<acc_t>(row[d * col_stride]));
        }
        const double norm = static_cast<double>(static_cast<scalar_t>(norm_of_row.finish()));
        if (renorm_needed(norm, max_norm)) {
          const acc_t scale = static_cast<acc_t>(renorm_factor(norm, max_norm));
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
