// The portable quantized forward (quantized_kernels.h): plain C++ for any CPU, and the bits the
// AVX2 kernels reproduce lane by lane. Contraction is off: the only fused multiply-adds are the
// explicit ones of quantized_rows.h.
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <vector>

#include "mybag/cpu/quantized_kernels.h"
#include "mybag/reductions.h"

namespace mybag::cpu {
namespace {

template <int kBits, typename index_t, typename out_t>
void sum_bags(const QuantizedForwardArgs<index_t, out_t>& a, bool mean, int64_t first,
              int64_t last) {
  const auto r = quantized_bag_range(a);
  std::vector<float> acc(a.dim);
  for (int64_t bag = first; bag < last; ++bag) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    int64_t count = 0;
    for (int64_t i = a.layout.begin(bag); i < a.layout.end(bag); ++i) {
      r.prefetch_row(i, a.row_bytes);
      const int64_t row = a.indices[i];
      if (row == a.padding_idx) continue;
      ++count;
      const uint8_t* values = a.packed + row * a.row_bytes;
      RowQParams p = row_qparams<kBits>(values, a.dim);
      if (a.per_sample_weights != nullptr) p = weighted(p, a.per_sample_weights[i]);
      for (int64_t d = 0; d < a.dim; ++d) {
        acc[d] = accumulate(acc[d], p, static_cast<float>(quantized_value<kBits>(values, d)));
      }
    }
    const float divisor = (mean && count > 0) ? static_cast<float>(count) : 1.0f;
    out_t* out = a.output + bag * a.dim;
    for (int64_t d = 0; d < a.dim; ++d) out[d] = static_cast<out_t>(acc[d] / divisor);
  }
}

template <int kBits, typename index_t, typename out_t>
void max_bags(const QuantizedForwardArgs<index_t, out_t>& a, int64_t first, int64_t last) {
  const auto r = quantized_bag_range(a);
  std::vector<float> best(a.dim);
  for (int64_t bag = first; bag < last; ++bag) {
    bool any = false;
    for (int64_t i = a.layout.begin(bag); i < a.layout.end(bag); ++i) {
      r.prefetch_row(i, a.row_bytes);
      const int64_t row = a.indices[i];
      if (row == a.padding_idx) continue;
      const uint8_t* values = a.packed + row * a.row_bytes;
      const RowQParams p = row_qparams<kBits>(values, a.dim);
      for (int64_t d = 0; d < a.dim; ++d) {
        const float v = dequantized(p, static_cast<float>(quantized_value<kBits>(values, d)));
        if (max_replaces(best[d], v, /*first=*/!any)) best[d] = v;
      }
      any = true;
    }
    out_t* out = a.output + bag * a.dim;
    for (int64_t d = 0; d < a.dim; ++d) out[d] = static_cast<out_t>(any ? best[d] : 0.0f);
  }
}

}  // namespace

template <int kBits, typename index_t, typename out_t>
bool quantized_bags_portable(const QuantizedForwardArgs<index_t, out_t>& a, Mode mode,
                             int64_t first, int64_t last) {
  if (mode == Mode::Max) {
    max_bags<kBits>(a, first, last);
  } else {
    sum_bags<kBits>(a, mode == Mode::Mean, first, last);
  }
  return true;
}

#define MYBAG_INSTANTIATE(bits, index_t, out_t)                                          \
  template bool quantized_bags_portable<bits>(const QuantizedForwardArgs<index_t, out_t>&, \
                                              Mode, int64_t, int64_t);
MYBAG_FOR_QUANTIZED_TYPES(MYBAG_INSTANTIATE)

}  // namespace mybag::cpu
