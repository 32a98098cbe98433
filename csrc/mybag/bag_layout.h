// Where each bag starts and ends in the flattened input: the one description of the bag forms
// (1-D input with offsets, with or without include_last_offset, and 2-D input) that every kernel
// reads, on the host and on the device.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace mybag {

template <typename index_t>
struct BagLayout {
  const index_t* offsets;  // nullptr for 2-D input
  int64_t num_bags;
  int64_t num_indices;     // N, entries of the flattened input
  int64_t bag_length;      // L, the width of a 2-D input

  C10_HOST_DEVICE int64_t begin(int64_t bag) const {
    return offsets ? static_cast<int64_t>(offsets[bag]) : bag * bag_length;
  }

  // The last bag always ends at N: with include_last_offset the final offset is not read (as in
  // torch's CUDA path and its tests; docs/spec.md §2).
  C10_HOST_DEVICE int64_t end(int64_t bag) const {
    if (!offsets) {
      return (bag + 1) * bag_length;
    }
    return bag + 1 < num_bags ? static_cast<int64_t>(offsets[bag + 1]) : num_indices;
  }

  // begin and end held to 0 <= begin <= end <= N. The same as begin/end for validated offsets;
  // the CUDA kernels read these so that unchecked offsets (value checks switched off) can never
  // send them outside input.
  C10_HOST_DEVICE int64_t bounded_begin(int64_t bag) const {
    const int64_t b = begin(bag);
    return b < 0 ? 0 : (b > num_indices ? num_indices : b);
  }
  C10_HOST_DEVICE int64_t bounded_end(int64_t bag) const {
    const int64_t b = bounded_begin(bag);
    const int64_t e = end(bag);
    return e < b ? b : (e > num_indices ? num_indices : e);
  }
};

}  // namespace mybag
