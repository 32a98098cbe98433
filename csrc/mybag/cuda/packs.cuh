// Loads and stores of V consecutive elements, for kernels whose lanes each take V neighbouring
// features of a row. With V * sizeof(T) a multiple of 16 bytes they move as 16-byte packs, one
// instruction each, which needs every row read or written to start 16-byte aligned (aligned base
// pointers, a row length that is a multiple of V): the launcher checks, and otherwise runs the
// same kernel with element-by-element accesses. Lanes take the same features either way, so the
// choice never changes a result.
#pragma once

#include <cstdint>

namespace mybag::cuda {

template <typename T>
struct alignas(16) Pack16 {
  T values[16 / sizeof(T)];
};

// Whether a pointer may be read or written as 16-byte packs.
inline bool pack_aligned(const void* pointer) {
  return reinterpret_cast<std::uintptr_t>(pointer) % 16 == 0;
}

template <int V, typename T>
__device__ inline void load(const T* from, T (&to)[V]) {
  constexpr int kPerPack = static_cast<int>(16 / sizeof(T));
  if constexpr (V % kPerPack == 0) {
#pragma unroll
    for (int i = 0; i < V; i += kPerPack) {
      const Pack16<T> pack = *reinterpret_cast<const Pack16<T>*>(from + i);
#pragma unroll
      for (int j = 0; j < kPerPack; ++j) to[i + j] = pack.values[j];
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) to[i] = from[i];
  }
}

template <int V, typename T>
__device__ inline void store(T* to, const T (&from)[V]) {
  constexpr int kPerPack = static_cast<int>(16 / sizeof(T));
  if constexpr (V % kPerPack == 0) {
#pragma unroll
    for (int i = 0; i < V; i += kPerPack) {
      Pack16<T> pack;
#pragma unroll
      for (int j = 0; j < kPerPack; ++j) pack.values[j] = from[i + j];
      *reinterpret_cast<Pack16<T>*>(to + i) = pack;
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) to[i] = from[i];
  }
}

// Features d .. d + V - 1 of a row of `dim` features: as packs when kPacked, else one by one,
// where features past the row's end read as `fill` and are never written.
template <bool kPacked, int V, typename T>
__device__ inline void load_features(const T* row, int64_t d, int64_t dim, T fill, T (&to)[V]) {
  if constexpr (kPacked) {
    load<V>(row + d, to);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) to[i] = d + i < dim ? row[d + i] : fill;
  }
}

template <bool kPacked, int V, typename T>
__device__ inline void store_features(T* row, int64_t d, int64_t dim, const T (&from)[V]) {
  if constexpr (kPacked) {
    store<V>(row + d, from);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (d + i < dim) row[d + i] = from[i];
    }
  }
}

}  // namespace mybag::cuda
