// How the AVX2 kernels cut a row's columns into tiles whose accumulators stay in registers:
// full tiles of kTile vectors, then one last tile of up to kTile full vectors and a partial one,
// chosen at run time among instantiations made at compile time. Shared by the float forward
// (forward_avx2.cpp) and the quantized forward (quantized_avx2.cpp).
//
// Include only from a file whose AVX2 functions call it (see lanes_avx2.h).
#pragma once

#include "mybag/cpu/isa.h"

#if MYBAG_X86_SIMD

namespace mybag::cpu {

// Runs Tile<NV, Part>::run(args...) for the last tile of a row: NV = full vectors left
// (0..kTile), Part = whether a partial vector follows.
template <int kTile, template <int, bool> class Tile, typename... Args>
MYBAG_AVX2_INLINE bool last_tile(int full, bool part, Args&&... args) {
  if constexpr (kTile > 0) {
    if (full == kTile) {
      return part ? Tile<kTile, true>::run(args...) : Tile<kTile, false>::run(args...);
    }
    return last_tile<kTile - 1, Tile>(full, part, args...);
  } else {
    return part ? Tile<0, true>::run(args...) : true;
  }
}

}  // namespace mybag::cpu

#endif  // MYBAG_X86_SIMD
