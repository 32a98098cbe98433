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

// The switch's ops take no tensor, so no dispatch key can be computed from their arguments: a
// CompositeImplicitAutograd kernel is the one that serves them (as for torchvision's
// _cuda_version). They make the switch reachable from Python and TorchScript.
TORCH_LIBRARY_IMPL(mybag, CompositeImplicitAutograd, m) {
  m.impl("_set_cuda_value_checks", &mybag::set_cuda_value_checks);
  m.impl("_cuda_value_checks_enabled", &mybag::cuda_value_checks_enabled);
}
