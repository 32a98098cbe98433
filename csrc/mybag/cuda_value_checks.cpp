#include "mybag/cuda_value_checks.h"

#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace mybag {
namespace {

bool enabled_by_environment() {
  const char* value = std::getenv("MYBAG_CUDA_VALUE_CHECKS");
  return value == nullptr || std::strcmp(value, "0") != 0;
}

std::atomic<bool>& checks_enabled() {
  static std::atomic<bool> enabled{enabled_by_environment()};
  return enabled;
}

}  // namespace

bool cuda_value_checks_enabled() {
  return checks_enabled().load(std::memory_order_relaxed);
}

bool set_cuda_value_checks(bool enabled) {
  return checks_enabled().exchange(enabled);
}

}  // namespace mybag

// Defined here rather than in ops.cpp because they are not tensor operators: they take no
// tensor, so their one kernel serves every dispatch key (as torchvision's _cuda_version). They
// make the switch reachable from Python and TorchScript.
TORCH_LIBRARY_FRAGMENT(mybag, m) {
  m.def("_set_cuda_value_checks(bool enabled) -> bool", &mybag::set_cuda_value_checks);
  m.def("_cuda_value_checks_enabled() -> bool", &mybag::cuda_value_checks_enabled);
}
