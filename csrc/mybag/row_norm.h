// The norm of a weight row for max_norm, written once for the CPU and CUDA kernels: an
// accumulator that takes values one at a time (CPU: the whole row; CUDA: each lane its columns)
// and merges with another (CUDA: across the lanes of a warp). Norms follow
// torch.linalg.vector_norm for every p: 0, 1, 2, +-inf and any other.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/MathConstants.h>

#include <cmath>

namespace mybag {

// The float and double math functions by name, so host and device call the very same ones
// (std:: overloads are not all available in device code).
C10_HOST_DEVICE inline float norm_abs(float v) { return fabsf(v); }
C10_HOST_DEVICE inline double norm_abs(double v) { return fabs(v); }
C10_HOST_DEVICE inline float norm_pow(float v, float e) { return powf(v, e); }
C10_HOST_DEVICE inline double norm_pow(double v, double e) { return pow(v, e); }
C10_HOST_DEVICE inline float norm_sqrt(float v) { return sqrtf(v); }
C10_HOST_DEVICE inline double norm_sqrt(double v) { return sqrt(v); }
C10_HOST_DEVICE inline bool is_infinite(double p) { return p == INFINITY || p == -INFINITY; }

template <typename acc_t>
struct RowNorm {
  double p;
  acc_t total;

  C10_HOST_DEVICE explicit RowNorm(double p_) : p(p_), total(initial(p_)) {}

  C10_HOST_DEVICE static acc_t initial(double p) {
    // +inf keeps the largest magnitude (start at 0); -inf the smallest (start at +inf).
    return (is_infinite(p) && p < 0) ? static_cast<acc_t>(INFINITY) : acc_t(0);
  }

  // The larger (p = +inf) or smaller (p = -inf) magnitude; a NaN wins and stays, as in
  // torch.linalg.vector_norm (a row holding NaN has norm NaN and is never rescaled).
  C10_HOST_DEVICE acc_t extreme(acc_t a, acc_t b) const {
    if (a != a || b != b) return a != a ? a : b;
    return p > 0 ? (a > b ? a : b) : (a < b ? a : b);
  }

  C10_HOST_DEVICE void add(acc_t value) {
    const acc_t a = norm_abs(value);
    if (p == 2.0) {
      total += value * value;
    } else if (is_infinite(p)) {
      total = extreme(total, a);
    } else if (p == 0.0) {
      total += acc_t(a != acc_t(0));
    } else if (p == 1.0) {
      total += a;
    } else {
      total += norm_pow(a, static_cast<acc_t>(p));
    }
  }

  // Merges the partial result of another accumulator over other columns.
  C10_HOST_DEVICE void merge(acc_t other) {
    if (is_infinite(p)) {
      total = extreme(total, other);
    } else {
      total += other;
    }
  }

  C10_HOST_DEVICE acc_t finish() const {
    if (p == 2.0) return norm_sqrt(total);
    if (is_infinite(p) || p == 0.0 || p == 1.0) return total;
    return norm_pow(total, static_cast<acc_t>(1.0 / p));
  }
};

// The factor max_norm applies to a row of the given norm (1 when the row is within bounds).
// torch computes the norm as a tensor of weight's dtype and reads it back as a double: callers
// round the norm to scalar_t first so half and bfloat16 tables scale exactly as torch's.
C10_HOST_DEVICE inline bool renorm_needed(double norm, double max_norm) {
  return norm > max_norm;
}
C10_HOST_DEVICE inline double renorm_factor(double norm, double max_norm) {
  return max_norm / (norm + 1e-7);
}

}  // namespace mybag
