#include "mybag/cpu/entries.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace mybag::cpu {

template <typename index_t>
std::vector<int64_t> bag_of_entries(const BagLayout<index_t>& layout) {
  std::vector<int64_t> bag_of(layout.num_indices, -1);
  at::parallel_for(0, layout.num_bags, 1024, [&](int64_t first, int64_t last) {
    for (int64_t bag = first; bag < last; ++bag) {
      std::fill(bag_of.begin() + layout.begin(bag), bag_of.begin() + layout.end(bag), bag);
    }
  });
  return bag_of;
}

template <typename index_t>
std::vector<int64_t> non_padding_counts(const BagLayout<index_t>& layout, const index_t* indices,
                                        int64_t padding_idx) {
  std::vector<int64_t> counts(layout.num_bags, 0);
  at::parallel_for(0, layout.num_bags, 1024, [&](int64_t first, int64_t last) {
    for (int64_t bag = first; bag < last; ++bag) {
      int64_t count = 0;
      for (int64_t i = layout.begin(bag); i < layout.end(bag); ++i) {
        count += indices[i] != padding_idx;
      }
      counts[bag] = count;
    }
  });
  return counts;
}

template std::vector<int64_t> bag_of_entries(const BagLayout<int32_t>&);
template std::vector<int64_t> bag_of_entries(const BagLayout<int64_t>&);
template std::vector<int64_t> non_padding_counts(const BagLayout<int32_t>&, const int32_t*, int64_t);
template std::vector<int64_t> non_padding_counts(const BagLayout<int64_t>&, const int64_t*, int64_t);

}  // namespace mybag::cpu
