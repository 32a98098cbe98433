// mybag::FusedEmbeddingBag: the C++ counterpart of the Python mybag.FusedEmbeddingBag (the same
// options and defaults, the same buffers under the same names, the same hyperparameters), an
// embedding bag trained by its own backward: loss.backward() applies the optimizer to the rows
// the batch touched, in place, and leaves weight.grad undefined. Do not give `weight` to a
// torch::optim optimizer; train the rest of the model with one as usual.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/options/embedding.h>
#include <torch/nn/pimpl.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "mybag/module.h"

namespace mybag {

// The optimizer's options, declared once for the two structs below that hold them.
//   optimizer: "sgd" (default), "adagrad", "rowwise_adagrad" or "adam".
//   lr, eps: std::nullopt (default) takes torch::optim's default for the optimizer: lr 1e-3 for
//       sgd and adam, 1e-2 for the Adagrads; eps 1e-10 for the Adagrads, 1e-8 for adam (sgd
//       has none: 0).
//   betas: adam's moment decay rates. weight_decay: L2 penalty, added to the gradient of the
//       touched rows only. initial_accumulator_value: the Adagrads' initial sum of squares.
//   lr_decay: adagrad's learning rate decay, as torch::optim::Adagrad's.
#define MYBAG_FUSED_OPTIMIZER_ARGS                                    \
  TORCH_ARG(std::string, optimizer) = "sgd";                          \
  TORCH_ARG(std::optional<double>, lr) = std::nullopt;                \
  TORCH_ARG(std::optional<double>, eps) = std::nullopt;               \
  TORCH_ARG(betas_t, betas) = std::make_tuple(0.9, 0.999);            \
  TORCH_ARG(double, weight_decay) = 0.0;                              \
  TORCH_ARG(double, initial_accumulator_value) = 0.0;                 \
  TORCH_ARG(double, lr_decay) = 0.0

// What FusedEmbeddingBag::from_embedding_bag takes besides the module it copies.
struct FusedOptimizerOptions {
  using betas_t = std::tuple<double, double>;
  MYBAG_FUSED_OPTIMIZER_ARGS;
};

// torch::nn::EmbeddingBagOptions' table options (no `sparse`: the gradient is never built), then
// the optimizer's. The module reads lr, eps, betas, weight_decay and lr_decay from its `options`
// at every forward, so they can be changed between steps (the backward of a forward uses the
// values of that forward); the constructor fills lr and eps in with their defaults.
struct FusedEmbeddingBagOptions {
  using betas_t = std::tuple<double, double>;
  FusedEmbeddingBagOptions(int64_t num_embeddings, int64_t embedding_dim)
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {}

  TORCH_ARG(int64_t, num_embeddings);
  TORCH_ARG(int64_t, embedding_dim);
  TORCH_ARG(std::optional<double>, max_norm) = std::nullopt;
  TORCH_ARG(double, norm_type) = 2.;
  TORCH_ARG(bool, scale_grad_by_freq) = false;
  TORCH_ARG(torch::nn::EmbeddingBagMode, mode) = torch::kMean;
  TORCH_ARG(bool, include_last_offset) = false;
  TORCH_ARG(std::optional<int64_t>, padding_idx) = std::nullopt;
  // Used as the table (its storage, not a copy), so training writes it; its dtype and device
  // are the table's and the state's.
  TORCH_ARG(torch::Tensor, _weight) = torch::Tensor();
  MYBAG_FUSED_OPTIMIZER_ARGS;
};

#undef MYBAG_FUSED_OPTIMIZER_ARGS

class FusedEmbeddingBagImpl : public torch::nn::Cloneable<FusedEmbeddingBagImpl> {
 public:
  FusedEmbeddingBagImpl(int64_t num_embeddings, int64_t embedding_dim)
      : FusedEmbeddingBagImpl(FusedEmbeddingBagOptions(num_embeddings, embedding_dim)) {}
  // c10::ValueError for an unknown optimizer, a hyperparameter out of range, a padding_idx out
  // of range, a _weight of the wrong shape, or max mode with scale_grad_by_freq.
  explicit FusedEmbeddingBagImpl(FusedEmbeddingBagOptions options);

  // Checks the options and creates `weight` (over options._weight()'s storage when given, else
  // N(0, 1) with the padding row zero) and the buffers (the constructor and clone() call it).
  void reset() override;
  // Draws a new table from N(0, 1) (zero padding row) and resets the optimizer state.
  void reset_parameters();
  // step to 0, the Adagrads' sum to initial_accumulator_value, adam's moments to 0.
  void reset_optimizer_state();
  // The state buffers in the order the operator takes them: {}, {sum} or {exp_avg, exp_avg_sq}.
  std::vector<torch::Tensor> optimizer_state() const;
  void pretty_print(std::ostream& stream) const override;

  // input: 1-D with offsets, or 2-D (B, L) with no offsets; returns (B, embedding_dim). The
  // backward of the result steps the optimizer.
  torch::Tensor forward(const torch::Tensor& input, const torch::Tensor& offsets = {},
                        const torch::Tensor& per_sample_weights = {});

  // Module::to converts every buffer to the dtype; here the state follows the table as the
  // operator requires it (float32, float64 for a float64 table) and step stays int64.
  using torch::nn::Module::to;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;

  // torch::save / torch::load: the parameter and buffers, and the optimizer's name and
  // hyperparameters (as the Python module's extra state), so that loading resumes training
  // exactly. Loading a checkpoint of another optimizer is a c10::ValueError that changes
  // nothing.
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  FusedEmbeddingBagOptions options;
  torch::Tensor weight;
  // Buffers: step (0-dim int64, the updates so far); sum ((E, D) for adagrad, (E,) for
  // rowwise_adagrad); exp_avg and exp_avg_sq ((E, D), adam). Undefined where the optimizer keeps
  // none.
  torch::Tensor step;
  torch::Tensor sum;
  torch::Tensor exp_avg;
  torch::Tensor exp_avg_sq;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(torch::Tensor())},
                           {2, torch::nn::AnyValue(torch::Tensor())})
};

// The module holder (a shared pointer to FusedEmbeddingBagImpl), plus from_embedding_bag.
class FusedEmbeddingBag : public torch::nn::ModuleHolder<FusedEmbeddingBagImpl> {
 public:
  using torch::nn::ModuleHolder<FusedEmbeddingBagImpl>::ModuleHolder;

  // A FusedEmbeddingBag with the options of `bag` and a copy of its table (its dtype and
  // device), trained by `optimizer`. `sparse` has no counterpart and is ignored; the training
  // flag is copied.
  static FusedEmbeddingBag from_embedding_bag(const EmbeddingBag& bag,
                                              const FusedOptimizerOptions& optimizer = {});
  static FusedEmbeddingBag from_embedding_bag(const torch::nn::EmbeddingBag& bag,
                                              const FusedOptimizerOptions& optimizer = {});
};

}  // namespace mybag
