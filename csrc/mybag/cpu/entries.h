// Facts about input's bags that the CPU backward kernels share: which bag each entry belongs to
// and each bag's non-padding count (cuda/entries.cuh is the CUDA twin; the grouping by row is
// cpu/row_sort.h).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "mybag/kernel_inputs.h"
#include "mybag/reductions.h"
#include "mybag/tensor_layout.h"

namespace mybag::cpu {

// bag_of[i]: the bag that entry i belongs to; -1 for entries in no bag (possible only when
// include_last_offset leaves a tail after an empty offsets list, i.e. never for valid input).
template <typename index_t>
std::vector<int64_t> bag_of_entries(const BagLayout<index_t>& layout);

// Non-padding entries of every bag: mean mode's divisor.
template <typename index_t>
std::vector<int64_t> non_padding_counts(const BagLayout<index_t>& layout, const index_t* indices,
                                        int64_t padding_idx);

// The EntryScale (mybag/reductions.h) of a sum or mean gradient, with the bag counts it reads in
// mean mode: what the dense weight gradient and the per-entry rows share. Not copyable, since
// scale points into counts.
template <typename scalar_t, typename index_t>
struct EntryScales {
  EntryScales(const KernelInputs& in, const BagLayout<index_t>& layout)
      : counts(in.mode == Mode::Mean
                   ? non_padding_counts(layout, in.input.const_data_ptr<index_t>(), in.padding_row)
                   : std::vector<int64_t>()),
        scale{in.per_sample_weights.defined()
                  ? in.per_sample_weights.template const_data_ptr<scalar_t>()
                  : nullptr,
              in.mode == Mode::Mean ? counts.data() : nullptr} {}
  EntryScales(const EntryScales&) = delete;
  EntryScales& operator=(const EntryScales&) = delete;

  std::vector<int64_t> counts;
  EntryScale<at::opmath_type<scalar_t>, scalar_t> scale;
};

}  // namespace mybag::cpu
