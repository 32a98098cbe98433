#include "mybag/cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace mybag::cpu {
namespace {

CpuIsa probe() {
#if MYBAG_X86_SIMD
  const char* setting = std::getenv("MYBAG_CPU_SIMD");
  const auto is = [setting](const char* value) {
    return setting != nullptr && std::strcmp(setting, value) == 0;
  };
  if (is("0")) return CpuIsa::Portable;
  __builtin_cpu_init();
  // The features of MYBAG_AVX2 and MYBAG_AVX512 in isa.h.
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
        __builtin_cpu_supports("fma"))) {
    return CpuIsa::Portable;
  }
  if (is("avx2")) return CpuIsa::Avx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    return CpuIsa::Avx512;
  }
  return CpuIsa::Avx2;
#else
  return CpuIsa::Portable;
#endif
}

}  // namespace

CpuIsa cpu_isa() {
  static const CpuIsa isa = probe();
  return isa;
}

}  // namespace mybag::cpu
