// mybag's AVX-512/AVX2 float32 sum kernel against the FBGEMM kernel torch runs for the same
// call, on the same data, interleaved call by call, in one process and without Python: the
// tool behind the prefetch-distance and bag-loop figures in docs/benchmarks.md (the policy is in
// csrc/mybag/cpu/bag_range.h). torch's libtorch_cpu exports FBGEMM's kernel generator, which is
// declared here. mybag's kernel is the one the CPU runs (csrc/mybag/cpu/isa.h: AVX-512, else
// AVX2; MYBAG_CPU_SIMD=avx2 picks AVX2).
//
// Build (from the repository root; TORCH is torch's package directory):
//   TORCH=$(python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
//   g++ -O3 -DNDEBUG -std=c++20 -Icsrc -I$TORCH/include scripts/sum_kernel_vs_fbgemm.cpp \
//       csrc/mybag/cpu/isa.cpp csrc/mybag/cpu/forward_avx512.cpp csrc/mybag/cpu/forward_avx2.cpp \
//       -o /tmp/vs_fbgemm \
//       -L$TORCH/lib -ltorch_cpu -lc10 -Wl,-rpath,$TORCH/lib
// Run: /tmp/vs_fbgemm ROWS DIM BAG_SIZE zipf|uniform   (65,536 lookups per call, 1 thread)
// Prints FBGEMM's median time over mybag's (above 1: mybag is faster) and whether the sums
// agree to 1e-5.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "mybag/cpu/forward_kernels.h"
#include "mybag/cpu/isa.h"

namespace fbgemm {
template <typename InType, typename IndexType, typename OffsetType, typename OutType>
struct EmbeddingSpMDMKernelSignature {
  using Type = std::function<bool(int64_t, int64_t, int64_t, const InType*, const IndexType*,
                                  const OffsetType*, const float*, OutType*)>;
};
template <typename InType, typename IndexType, typename OffsetType, typename OutType,
          bool kThreadLocal>
typename EmbeddingSpMDMKernelSignature<InType, IndexType, OffsetType, OutType>::Type
GenerateEmbeddingSpMDM(int64_t block_size, bool has_weight, bool normalize_by_lengths,
                       int prefetch, bool is_weight_positional, bool use_offsets,
                       bool is_bf16_out, bool is_bf16_in);
}  // namespace fbgemm

namespace {

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Zipf (exponent 1.05, hot rows scattered by a permutation) or uniform row indices.
std::vector<int64_t> make_indices(int64_t rows, int64_t n, bool zipf) {
  std::mt19937_64 gen(1);
  std::vector<int64_t> indices(n);
  if (!zipf) {
    std::uniform_int_distribution<int64_t> pick(0, rows - 1);
    for (auto& x : indices) x = pick(gen);
    return indices;
  }
  std::vector<double> cdf(rows);
  double total = 0;
  for (int64_t k = 0; k < rows; ++k) cdf[k] = total += std::pow(k + 1, -1.05);
  std::vector<int64_t> perm(rows);
  for (int64_t k = 0; k < rows; ++k) perm[k] = k;
  std::shuffle(perm.begin(), perm.end(), gen);
  std::uniform_real_distribution<double> u(0, total);
  for (auto& x : indices) x = perm[std::lower_bound(cdf.begin(), cdf.end(), u(gen)) - cdf.begin()];
  return indices;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s ROWS DIM BAG_SIZE zipf|uniform\n", argv[0]);
    return 2;
  }
  const int64_t rows = std::atol(argv[1]), dim = std::atol(argv[2]), bag = std::atol(argv[3]);
  const bool zipf = std::strcmp(argv[4], "zipf") == 0;
  const int64_t bags = 65536 / bag, n = bags * bag;
  std::vector<float> weight(rows * dim);
  std::mt19937 gen(2);
  std::uniform_real_distribution<float> value(-1, 1);
  for (auto& x : weight) x = value(gen);
  const auto indices = make_indices(rows, n, zipf);
  std::vector<int64_t> offsets(bags + 1);
  for (int64_t b = 0; b <= bags; ++b) offsets[b] = b * bag;
  std::vector<float> theirs(bags * dim), ours(bags * dim);

  auto fbgemm_sum = fbgemm::GenerateEmbeddingSpMDM<float, int64_t, int64_t, float, false>(
      dim, false, false, /*prefetch=*/16, false, /*use_offsets=*/true, false, false);
  mybag::ForwardArgs<float, int64_t> args{
      weight.data(), dim,     1,       dim, indices.data(), {offsets.data(), bags, n, 0},
      nullptr,       -1,      ours.data(), nullptr, rows};

  if (mybag::cpu::cpu_isa() == mybag::cpu::CpuIsa::Portable) {
    std::fprintf(stderr, "no AVX2 on this CPU (or MYBAG_CPU_SIMD=0)\n");
    return 1;
  }
  const auto sum_bags = mybag::cpu::cpu_isa() == mybag::cpu::CpuIsa::Avx512
                            ? &mybag::cpu::sum_bags_avx512<float, int64_t>
                            : &mybag::cpu::sum_bags_avx2<float, int64_t>;
  std::vector<double> t_fbgemm, t_mybag;
  for (int round = 0; round < 801; ++round) {
    const double a = seconds();
    const bool ok = fbgemm_sum(bags, n, rows, weight.data(), indices.data(), offsets.data(),
                               nullptr, theirs.data());
    const double b = seconds();
    const bool ours_ok = sum_bags(args, mybag::Mode::Sum, 0, bags);
    const double c = seconds();
    if (!ok || !ours_ok) {
      std::fprintf(stderr, "a kernel refused the input\n");
      return 1;
    }
    t_fbgemm.push_back(b - a);
    t_mybag.push_back(c - b);
  }
  std::sort(t_fbgemm.begin(), t_fbgemm.end());
  std::sort(t_mybag.begin(), t_mybag.end());
  double worst = 0;
  for (int64_t k = 0; k < bags * dim; ++k) worst = std::max<double>(worst, std::fabs(ours[k] - theirs[k]));
  std::printf("%ld x %ld, bags of %ld, %s: FBGEMM %.3f ms, mybag %.3f ms, speed-up %.2fx, "
              "max |difference| %.1e%s\n",
              static_cast<long>(rows), static_cast<long>(dim), static_cast<long>(bag), argv[4],
              t_fbgemm[400] * 1e3, t_mybag[400] * 1e3, t_fbgemm[400] / t_mybag[400], worst,
              worst <= 1e-5 * bag ? "" : "  (MISMATCH)");
  return worst <= 1e-5 * bag ? 0 : 1;
}
