// The three reductions, numbered as torch numbers them (the internal ops carry the number).
#pragma once

#include <cstdint>

namespace mybag {

enum class Mode : int64_t { Sum = 0, Mean = 1, Max = 2 };

}  // namespace mybag
