// quantize_rowwise: a float table packed into torch's row-wise layouts (quantized_rows.h) with
// the rounding, scale and bias of torch's embedding_bag_byte_prepack and
// embedding_bag_4bit_prepack (FBGEMM's), so a table packed here or there is the same bytes.
//
// Written once in ATen operations, so it runs on every device (CompositeExplicitAutograd): each
// step is one IEEE operation per element in the order FBGEMM's scalar code does them, which
// gives its bits on the CPU and on CUDA alike. Packing is done once per table, not per lookup;
// rows go in blocks to bound the float32 temporaries.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>

#include "mybag/quantized_checks.h"
#include "mybag/quantized_rows.h"

namespace mybag {
namespace {

// Elements per block of rows (a few float32 temporaries of this size live at once).
constexpr int64_t kBlockElements = int64_t{1} << 22;

// Four float32 or two float16 values per row as their bytes, (rows, 2 * element size).
at::Tensor as_bytes(const at::Tensor& scale, const at::Tensor& bias) {
  return at::stack({scale, bias}, 1).contiguous().view(at::kByte);
}

// 8 bits: scale = (max - min) / 255, bias = min, q = round((x - min) * (255 / (range + 1e-8))).
void pack_8bit(const at::Tensor& w, at::Tensor out) {
  const int64_t dim = w.size(1);
  const auto min = std::get<0>(w.min(1, /*keepdim=*/true));
  const auto range = std::get<0>(w.max(1, /*keepdim=*/true)) - min;
  const auto inverse_scale = at::full({}, 255.0f, w.options()) / (range + 1e-8f);
  const auto q = ((w - min) * inverse_scale).round_();
  out.narrow(1, 0, dim).copy_(q);
  out.narrow(1, dim, 8).copy_(as_bytes((range / 255.0f).squeeze(1), min.squeeze(1)));
}

// 4 bits: bias = half(min); scale = half((max - bias) / 15), 1 where that is 0;
// q = clamp(round((x - bias) * (1 / scale)), 0, 15), two values a byte, the even column low.
void pack_4bit(const at::Tensor& w, at::Tensor out) {
  const int64_t dim = w.size(1);
  const auto bias_half = std::get<0>(w.min(1, /*keepdim=*/true)).to(at::kHalf);
  const auto bias = bias_half.to(at::kFloat);
  auto scale = ((std::get<0>(w.max(1, /*keepdim=*/true)) - bias) / 15.0f)
                   .to(at::kHalf)
                   .to(at::kFloat);
  scale.masked_fill_(scale == 0, 1.0f);
  const auto q = ((w - bias) * (1.0f / scale)).round_().clamp_(0, 15).to(at::kByte);
  const auto low = q.slice(1, 0, dim, 2);
  const auto high = q.slice(1, 1, dim, 2);
  out.narrow(1, 0, dim / 2).copy_(low.bitwise_or(high.bitwise_left_shift(4)));
  out.narrow(1, dim / 2, 4)
      .copy_(as_bytes(scale.squeeze(1).to(at::kHalf), bias_half.squeeze(1)));
}

at::Tensor quantize_rowwise(const at::Tensor& weight, int64_t bits) {
  check_quantize_weight(weight, bits);
  const int64_t rows = weight.size(0);
  const int64_t dim = weight.size(1);
  auto packed = at::empty({rows, packed_row_bytes(bits, dim)}, weight.options().dtype(at::kByte));
  const int64_t block = std::max<int64_t>(1, kBlockElements / dim);
  for (int64_t first = 0; first < rows; first += block) {
    const int64_t n = std::min(block, rows - first);
    const auto w = weight.narrow(0, first, n).to(at::kFloat);
    const auto out = packed.narrow(0, first, n);
    if (bits == 8) {
      pack_8bit(w, out);
    } else {
      pack_4bit(w, out);
    }
  }
  return packed;
}

}  // namespace

TORCH_LIBRARY_IMPL(mybag, CompositeExplicitAutograd, m) {
  m.impl("quantize_rowwise", &quantize_rowwise);
}

}  // namespace mybag
