// What one lane of the CUDA quantized forward (cuda/quantized_forward.cu) does: reduce one chunk
// of one bag's columns, and the launch plan (load width, lanes per bag) the host derives from
// the table. Plain C++ with C10_HOST_DEVICE and no CUDA header, so that a host program can run
// every (bag, chunk) exactly as the device does and compare bits with the CPU kernels.
//
// A chunk is kWidth consecutive bytes of a row's values (kWidth columns of 8 bits, 2 * kWidth of
// 4 bits), read with one kWidth-byte load. Loads of kWidth bytes need every row start aligned
// to kWidth: the base pointer and row_bytes both multiples of kWidth (quantized_load_width).
// Then a chunk that starts within the values also ends within the row (row_bytes is a multiple
// of kWidth too), so the last chunk may cover the scale and bias bytes but never the next row:
// those columns are computed and never stored.
//
// The arithmetic is quantized_rows.h's, per column in entry order, and every product is rounded
// on its own (weighted): the CPU kernels' bits.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>
#include <cstring>

#include "mybag/quantized_rows.h"
#include "mybag/reductions.h"

namespace mybag::cuda {

// Entries a lane reads before it adds any of them: their indices, bytes and scales are loads in
// flight at once, which a gather from DRAM needs to approach the bandwidth (one row at a time
// leaves it latency-bound). They are added in entry order after, so the bits do not change.
// Bounded by registers: with more, ptxas spills under the kernels' launch bounds.
template <int kWidth>
constexpr int entries_ahead() {
  return kWidth == 16 ? 2 : (kWidth == 1 ? 8 : 4);
}

// Columns of one chunk.
template <int kBits, int kWidth>
constexpr int chunk_columns() {
  return kBits == 8 ? kWidth : 2 * kWidth;
}

// How the kernels cover a table: the widest load the rows allow, the chunks of a row's values,
// and lanes per bag (a power of two dividing 32: short rows share a warp among several bags
// rather than leave most of its lanes idle).
struct QuantizedPlan {
  int width;       // bytes per load: 16, 8, 4 or 1
  int64_t chunks;  // chunks of a row's values
  int lanes;       // lanes per bag
};

// Loads of 16 bytes only for 8-bit rows: 16 bytes of 4-bit values are 32 columns, whose
// accumulators and unpacking would not fit a lane's registers without spilling.
inline int quantized_load_width(const void* packed, int64_t row_bytes, int64_t bits) {
  const auto address = reinterpret_cast<std::uintptr_t>(packed);
  for (const int width : {16, 8, 4}) {
    if (width == 16 && bits != 8) continue;
    if (address % width == 0 && row_bytes % width == 0) return width;
  }
  return 1;
}

inline QuantizedPlan quantized_plan(const void* packed, int64_t row_bytes, int64_t bits,
                                    int64_t dim) {
  QuantizedPlan plan{};
  plan.width = quantized_load_width(packed, row_bytes, bits);
  const int64_t value_bytes = bits == 8 ? dim : dim / 2;
  plan.chunks = (value_bytes + plan.width - 1) / plan.width;
  plan.lanes = 1;
  while (plan.lanes < 32 && plan.lanes < plan.chunks) plan.lanes *= 2;
  return plan;
}

namespace detail {

template <int kWidth>
struct alignas(kWidth) Chunk {
  uint8_t bytes[kWidth];
};

// kWidth bytes from an address aligned to kWidth (the plan's promise): one load instruction.
template <int kWidth>
C10_HOST_DEVICE inline Chunk<kWidth> load_chunk(const uint8_t* from) {
  return *reinterpret_cast<const Chunk<kWidth>*>(from);
}

// A row's scale and bias, decoded by row_qparams. With kWidth >= 4 the plan guarantees the row
// start aligned to kWidth, and so the scale and bias (the row's last 8 bytes for 8 bits, 4 for
// 4 bits) at a multiple of 4 bytes, of 8 for 8-bit rows with kWidth >= 8: they come in one or
// two aligned loads, not byte by byte (the compiler cannot see that alignment through
// row_qparams' offset), and are decoded from that copy, a row of no values.
template <int kBits, int kWidth>
C10_HOST_DEVICE inline RowQParams load_qparams(const uint8_t* row, int64_t dim) {
  if constexpr (kWidth >= 4) {
    constexpr int kBytes = kBits == 8 ? 8 : 4;
    constexpr int kAlign = (kBits == 8 && kWidth >= 8) ? 8 : 4;
    const uint8_t* from = row + packed_row_bytes(kBits, dim) - kBytes;
    Chunk<kBytes> copy;
#pragma unroll
    for (int k = 0; k < kBytes; k += kAlign) {
      const Chunk<kAlign> part = load_chunk<kAlign>(from + k);
#pragma unroll
      for (int j = 0; j < kAlign; ++j) copy.bytes[k + j] = part.bytes[j];
    }
    return row_qparams<kBits>(copy.bytes, /*dim=*/0);
  } else {
    return row_qparams<kBits>(row, dim);
  }
}

template <typename T>
struct alignas(16) Pack16 {
  T values[16 / sizeof(T)];
};

// Columns first .. first + kColumns - 1 of an output row, rounded once from float: as 16-byte
// stores when the chunk lies wholly within the row and its address allows, else one by one.
template <int kColumns, typename out_t>
C10_HOST_DEVICE inline void store_columns(out_t* out_row, int64_t first, int64_t dim,
                                          const float (&values)[kColumns]) {
  constexpr int kPerPack = static_cast<int>(16 / sizeof(out_t));
  out_t* to = out_row + first;
  if constexpr (kColumns % kPerPack == 0) {
    if (first + kColumns <= dim && reinterpret_cast<std::uintptr_t>(to) % 16 == 0) {
#pragma unroll
      for (int k = 0; k < kColumns; k += kPerPack) {
        Pack16<out_t> pack;
#pragma unroll
        for (int j = 0; j < kPerPack; ++j) pack.values[j] = static_cast<out_t>(values[k + j]);
        *reinterpret_cast<Pack16<out_t>*>(to + k) = pack;
      }
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < kColumns; ++j) {
    if (first + j < dim) to[j] = static_cast<out_t>(values[j]);
  }
}

// Up to kAhead entries from `i` of a bag ending at `end`: which are used, and the used ones'
// chunk bytes and scale and bias (weighted by their per-sample weight when `weigh`). Every load
// of the group is issued before the caller adds any.
template <int kBits, int kWidth, typename index_t, typename out_t>
struct EntryGroup {
  static constexpr int kAhead = entries_ahead<kWidth>();
  bool used[kAhead];
  RowQParams params[kAhead];
  Chunk<kWidth> chunk[kAhead];

  C10_HOST_DEVICE void load(const QuantizedForwardArgs<index_t, out_t>& a, int64_t i,
                            int64_t end, int64_t byte_offset, bool weigh) {
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int64_t entry = i + u;
      used[u] = false;
      if (entry < end) {
        const int64_t row = a.indices[entry];
        used[u] = row_used(row, a.num_weights, a.padding_idx);
        if (used[u]) {
          const uint8_t* values = a.packed + row * a.row_bytes;
          chunk[u] = load_chunk<kWidth>(values + byte_offset);
          params[u] = load_qparams<kBits, kWidth>(values, a.dim);
          if (weigh) params[u] = weighted(params[u], a.per_sample_weights[entry]);
        }
      }
    }
  }

  // Column j of entry u's chunk as a float.
  C10_HOST_DEVICE float q(int u, int j) const {
    return static_cast<float>(quantized_value<kBits>(chunk[u].bytes, j));
  }
};

}  // namespace detail

// Sum or mean mode: chunk `chunk` of bag `bag`, every used entry in order per column
// (acc = fma(scale, q, acc + bias), quantized_rows.h), divided by the used count in mean mode,
// rounded once: the CPU kernels' bits.
template <int kBits, int kWidth, typename index_t, typename out_t>
C10_HOST_DEVICE void sum_bag_chunk(const QuantizedForwardArgs<index_t, out_t>& a, int64_t bag,
                                   int64_t chunk, bool mean) {
  using Group = detail::EntryGroup<kBits, kWidth, index_t, out_t>;
  constexpr int kColumns = chunk_columns<kBits, kWidth>();
  const int64_t begin = a.layout.bounded_begin(bag);
  const int64_t end = a.layout.bounded_end(bag);
  const bool weigh = a.per_sample_weights != nullptr;
  float acc[kColumns];
#pragma unroll
  for (int j = 0; j < kColumns; ++j) acc[j] = 0.0f;
  int64_t count = 0;
  for (int64_t i = begin; i < end; i += Group::kAhead) {
    Group group;
    group.load(a, i, end, chunk * kWidth, weigh);
#pragma unroll
    for (int u = 0; u < Group::kAhead; ++u) {
      if (!group.used[u]) continue;
      ++count;
#pragma unroll
      for (int j = 0; j < kColumns; ++j) {
        acc[j] = accumulate(acc[j], group.params[u], group.q(u, j));
      }
    }
  }
  const float divisor = (mean && count > 0) ? static_cast<float>(count) : 1.0f;
#pragma unroll
  for (int j = 0; j < kColumns; ++j) acc[j] = acc[j] / divisor;
  detail::store_columns<kColumns>(a.output + bag * a.dim, chunk * kColumns, a.dim, acc);
}

// Max mode: per column the max_replaces rule (reductions.h) over fma(scale, q, bias) of the used
// entries in order; a bag with none gives zeros.
template <int kBits, int kWidth, typename index_t, typename out_t>
C10_HOST_DEVICE void max_bag_chunk(const QuantizedForwardArgs<index_t, out_t>& a, int64_t bag,
                                   int64_t chunk) {
  using Group = detail::EntryGroup<kBits, kWidth, index_t, out_t>;
  constexpr int kColumns = chunk_columns<kBits, kWidth>();
  const int64_t begin = a.layout.bounded_begin(bag);
  const int64_t end = a.layout.bounded_end(bag);
  float best[kColumns];
#pragma unroll
  for (int j = 0; j < kColumns; ++j) best[j] = 0.0f;
  bool any = false;
  for (int64_t i = begin; i < end; i += Group::kAhead) {
    Group group;
    group.load(a, i, end, chunk * kWidth, /*weigh=*/false);
#pragma unroll
    for (int u = 0; u < Group::kAhead; ++u) {
      if (!group.used[u]) continue;
#pragma unroll
      for (int j = 0; j < kColumns; ++j) {
        const float v = dequantized(group.params[u], group.q(u, j));
        if (max_replaces(best[j], v, /*first=*/!any)) best[j] = v;
      }
      any = true;
    }
  }
  detail::store_columns<kColumns>(a.output + bag * a.dim, chunk * kColumns, a.dim, best);
}

}  // namespace mybag::cuda
