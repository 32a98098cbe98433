// The fused optimizers' arithmetic, written once for the CPU and CUDA kernels of
// _embedding_bag_fused_update_ (docs/spec.md §8).
//
// A touched row r gets its whole gradient g_r of the batch (all its entries summed, as the dense
// backward defines it); with weight_decay, g_r += weight_decay * w_r first (L2, applied lazily:
// only to the rows the batch touched). Then, per element, in the accumulation type acc_t (float
// for float32, float16 and bfloat16 tables; double for float64), with the weight rounded to
// its dtype once at the end:
//   sgd              w -= lr * g
//   adagrad          s += g * g;  w -= clr * (g / (sqrt(s) + eps)),  clr = lr / (1 + (step - 1) * lr_decay)
//   rowwise_adagrad  s_r += mean over the row of g * g;  w -= (lr / (sqrt(s_r) + eps)) * g
//   adam             m += (g - m) * (1 - beta1);  v += (g * g - v) * (1 - beta2);
//                    w -= step_size * (m / (sqrt(v) + eps)),
//                    step_size = lr * sqrt(1 - beta2^step) / (1 - beta1^step)
// The operations are grouped and ordered as torch.optim's sparse paths compute them (Adagrad's
// and SparseAdam's `_make_sparse` updates), so results agree with torch to rounding of the same
// order. The per-step factors are computed in double, as Python computes torch.optim's.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace mybag {

enum class Optimizer : int { Sgd = 0, Adagrad = 1, RowwiseAdagrad = 2, Adam = 3 };

// The hyperparameters as the op receives them.
struct Hyperparameters {
  double lr = 0;
  double eps = 0;
  double beta1 = 0;
  double beta2 = 0;
  double weight_decay = 0;
  double lr_decay = 0;
};

C10_HOST_DEVICE inline float square_root(float x) { return sqrtf(x); }
C10_HOST_DEVICE inline double square_root(double x) { return sqrt(x); }

// The factors of one step, once the step count (after this step's increment) is known.
template <typename acc_t>
struct StepFactors {
  acc_t lr;                 // sgd: lr; adagrad: clr; rowwise_adagrad: lr; adam: step_size
  acc_t eps;
  acc_t one_minus_beta1;
  acc_t one_minus_beta2;
  acc_t weight_decay;
};

template <typename acc_t>
C10_HOST_DEVICE inline StepFactors<acc_t> step_factors(Optimizer kind, const Hyperparameters& h,
                                                       int64_t step) {
  double lr = h.lr;
  if (kind == Optimizer::Adagrad) {
    lr = h.lr / (1.0 + static_cast<double>(step - 1) * h.lr_decay);
  } else if (kind == Optimizer::Adam) {
    const double correction1 = 1.0 - pow(h.beta1, static_cast<double>(step));
    const double correction2 = 1.0 - pow(h.beta2, static_cast<double>(step));
    lr = h.lr * sqrt(correction2) / correction1;
  }
  return {static_cast<acc_t>(lr), static_cast<acc_t>(h.eps),
          static_cast<acc_t>(1.0 - h.beta1), static_cast<acc_t>(1.0 - h.beta2),
          static_cast<acc_t>(h.weight_decay)};
}

// g + weight_decay * w (the decay term is skipped at 0, so that a zero decay adds no rounding).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t decayed_grad(acc_t g, acc_t w, const StepFactors<acc_t>& f) {
  return f.weight_decay != acc_t(0) ? g + f.weight_decay * w : g;
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t sgd_weight(acc_t w, acc_t g, const StepFactors<acc_t>& f) {
  return w - f.lr * g;
}

// Updates one element's sum of squares and returns the new weight.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t adagrad_weight(acc_t w, acc_t g, acc_t& sum,
                                            const StepFactors<acc_t>& f) {
  sum = sum + g * g;
  return w - f.lr * (g / (square_root(sum) + f.eps));
}

// Row-wise Adagrad: one sum per row. Adds the row's mean square gradient to it and returns the
// factor every element's gradient is multiplied by.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t rowwise_adagrad_factor(acc_t& row_sum, acc_t mean_square,
                                                    const StepFactors<acc_t>& f) {
  row_sum = row_sum + mean_square;
  return f.lr / (square_root(row_sum) + f.eps);
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t rowwise_adagrad_weight(acc_t w, acc_t g, acc_t factor) {
  return w - factor * g;
}

// Updates one element's moments and returns the new weight.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t adam_weight(acc_t w, acc_t g, acc_t& exp_avg, acc_t& exp_avg_sq,
                                         const StepFactors<acc_t>& f) {
  exp_avg = exp_avg + (g - exp_avg) * f.one_minus_beta1;
  exp_avg_sq = exp_avg_sq + (g * g - exp_avg_sq) * f.one_minus_beta2;
  return w - f.lr * (exp_avg / (square_root(exp_avg_sq) + f.eps));
}

}  // namespace mybag
