// The CPU kernels' grouping of entries by row (mybag/row_groups.h's RowGroups, the same
// tensors): a stable least-significant-digit radix sort whose digits cover only the bits the
// table's row count needs. ATen's sort of a batch's indices took a large share of a training
// step; a counting pass per digit, over that many digits only, does not.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "mybag/row_groups.h"

namespace mybag::cpu {

// flat_input: 1-D, int32 or int64, every value in [0, num_rows) (checked by the caller: a value
// outside it lands in some group rather than out of bounds, since digits are masked). Equal to
// mybag::group_by_row on the same input, for any thread count.
RowGroups group_by_row_cpu(const at::Tensor& flat_input, int64_t num_rows);

}  // namespace mybag::cpu
