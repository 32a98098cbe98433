// The packed layouts of row-wise quantized tables (torch's, so tables packed by
// torch.ops.quantized.embedding_bag_byte_prepack / embedding_bag_4bit_prepack work unchanged),
// and the arithmetic every device's kernels do on them, written once (docs/spec.md §9).
//
// A table is uint8 (num_embeddings, packed columns); each row holds its D values, then its scale
// and bias:
//   8 bits: D bytes, then float32 scale and float32 bias (D + 8 bytes);
//   4 bits: D / 2 bytes, two values a byte (the even column in the low nibble), then float16
//           scale and float16 bias (D / 2 + 4 bytes). D is even.
// The dequantized value of q is scale * q + bias.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cmath>
#include <cstring>

#include "mybag/bag_layout.h"

namespace mybag {

// Bytes of one packed row of D values, and the D a packed row of `columns` bytes holds.
C10_HOST_DEVICE inline int64_t packed_row_bytes(int64_t bits, int64_t dim) {
  return bits == 8 ? dim + 8 : dim / 2 + 4;
}
C10_HOST_DEVICE inline int64_t packed_dim(int64_t bits, int64_t columns) {
  return bits == 8 ? columns - 8 : (columns - 4) * 2;
}

struct RowQParams {
  float scale;
  float bias;
};

// A row's scale and bias, read from the bytes after its values (unaligned: a row of 8-bit values
// is aligned to 4 bytes only when D is).
template <int kBits>
C10_HOST_DEVICE inline RowQParams row_qparams(const uint8_t* row, int64_t dim) {
  if constexpr (kBits == 8) {
    float p[2];
    memcpy(p, row + dim, sizeof(p));
    return {p[0], p[1]};
  } else {
    c10::Half p[2];
    memcpy(p, row + dim / 2, sizeof(p));
    return {static_cast<float>(p[0]), static_cast<float>(p[1])};
  }
}

// Column d's quantized value.
template <int kBits>
C10_HOST_DEVICE inline uint8_t quantized_value(const uint8_t* row, int64_t d) {
  if constexpr (kBits == 8) {
    return row[d];
  } else {
    return (row[d / 2] >> ((d % 2) * 4)) & 0x0F;
  }
}

// What every kernel does per entry of a sum or mean bag, in this order (FBGEMM's, so a sum
// equals torch's quantized ops bit for bit): the entry's per-sample weight scales its row's scale
// and bias (scale * w, bias * w), then each column adds acc = fma(scale, q, acc + bias).
C10_HOST_DEVICE inline RowQParams weighted(RowQParams p, float weight) {
#ifdef __CUDA_ARCH__
  // Rounded products: nvcc would otherwise fuse bias * w into the add that follows.
  return {__fmul_rn(p.scale, weight), __fmul_rn(p.bias, weight)};
#else
  return {p.scale * weight, p.bias * weight};
#endif
}
C10_HOST_DEVICE inline float accumulate(float acc, RowQParams p, float q) {
  return fmaf(p.scale, q, acc + p.bias);
}

// Max mode compares dequantized values rounded once: fma(scale, q, bias).
C10_HOST_DEVICE inline float dequantized(RowQParams p, float q) {
  return fmaf(p.scale, q, p.bias);
}

// What a quantized forward kernel needs, on any device. out_t is the output's dtype (float,
// c10::Half or c10::BFloat16); every kernel accumulates in float and rounds once.
template <typename index_t, typename out_t>
struct QuantizedForwardArgs {
  const uint8_t* packed;               // (num_weights, row_bytes), contiguous
  int64_t row_bytes;
  int64_t dim;                         // D
  const index_t* indices;
  BagLayout<index_t> layout;
  const float* per_sample_weights;     // nullptr when absent
  int64_t padding_idx;                 // the padding row, -1 when absent
  out_t* output;                       // (num_bags, dim), contiguous
  int64_t num_weights;
};

}  // namespace mybag
