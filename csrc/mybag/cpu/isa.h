// Which instruction set the CPU kernels run: decided once per process, here and nowhere else.
//
// The library is compiled for baseline x86-64 (SSE2), so that it loads on any x86-64 CPU. The
// SIMD kernels are functions compiled for AVX2 or AVX-512 through GCC's target attribute
// (MYBAG_AVX2 / MYBAG_AVX512 below) and run only where cpu_isa() allows. Only
// such functions may use AVX2 or AVX-512: the files that hold them, and every header they
// include, stay baseline otherwise, so no SIMD code can leak into a shared inline function.
//
// MYBAG_CPU_SIMD in the environment (read once):
//   unset (or any other value)  the best this CPU supports: AVX-512, else AVX2, else portable;
//   "avx2"                      AVX2 even where AVX-512 is there (to test the AVX2 kernels);
//   "0"                         the portable loops only (to compare with, or to rule SIMD out).
// Every setting gives the same bits (tests/test_cpu_simd.py).
#pragma once

// The SIMD kernels exist for x86-64 with GCC or Clang (target attributes, <immintrin.h>);
// elsewhere cpu_isa() is Portable and the kernels' files compile to (almost) nothing.
#if defined(__x86_64__) && defined(__GNUC__)
#define MYBAG_X86_SIMD 1
// AVX2 comes with F16C (float16 rows) and FMA (the weighted sum's one fused multiply-add);
// AVX-512 is F, BW (16-bit masked loads and stores) and VL, on top of AVX2's.
// MYBAG_AVX2 marks a function compiled for AVX2, MYBAG_AVX2_INLINE one always inlined into such
// functions; the same for AVX-512.
#define MYBAG_AVX2 __attribute__((target("avx2,f16c,fma")))
#define MYBAG_AVX2_INLINE MYBAG_AVX2 __attribute__((always_inline)) inline
#define MYBAG_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c,fma")))
#define MYBAG_AVX512_INLINE MYBAG_AVX512 __attribute__((always_inline)) inline
#else
#define MYBAG_X86_SIMD 0
#endif

namespace mybag::cpu {

// In increasing order: a CPU that runs one level's kernels runs those of the levels below.
enum class CpuIsa { Portable, Avx2, Avx512 };

// The level chosen for this process (the CPU's and the OS's support, and MYBAG_CPU_SIMD).
CpuIsa cpu_isa();

// Whether the AVX2 kernels may run.
inline bool use_avx2() { return cpu_isa() >= CpuIsa::Avx2; }

}  // namespace mybag::cpu
