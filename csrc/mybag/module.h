// mybag::EmbeddingBag: a torch::nn module that mirrors torch::nn::EmbeddingBag (the same options
// type, forward and `weight` parameter) and computes with mybag's operator, so C++ model code
// swaps it in by changing the namespace.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/options/embedding.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <ostream>

namespace mybag {

using EmbeddingBagOptions = torch::nn::EmbeddingBagOptions;
using EmbeddingBagFromPretrainedOptions = torch::nn::EmbeddingBagFromPretrainedOptions;

class EmbeddingBagImpl : public torch::nn::Cloneable<EmbeddingBagImpl> {
 public:
  EmbeddingBagImpl(int64_t num_embeddings, int64_t embedding_dim)
      : EmbeddingBagImpl(EmbeddingBagOptions(num_embeddings, embedding_dim)) {}
  explicit EmbeddingBagImpl(EmbeddingBagOptions options);

  // Creates `weight` (the constructor and clone() call it): over options._weight()'s storage
  // when given, else N(0, 1) with the padding row zero.
  void reset() override;
  // Refills `weight` from N(0, 1) and zeroes the padding row.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  // input: 1-D with offsets, or 2-D (B, L) with no offsets; returns (B, embedding_dim).
  torch::Tensor forward(const torch::Tensor& input, const torch::Tensor& offsets = {},
                        const torch::Tensor& per_sample_weights = {});

  EmbeddingBagOptions options;
  torch::Tensor weight;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(torch::Tensor())},
                           {2, torch::nn::AnyValue(torch::Tensor())})
};

// The module holder (a shared pointer to EmbeddingBagImpl), as TORCH_MODULE would make, plus
// from_pretrained.
class EmbeddingBag : public torch::nn::ModuleHolder<EmbeddingBagImpl> {
 public:
  using torch::nn::ModuleHolder<EmbeddingBagImpl>::ModuleHolder;

  // A module around a 2-D table (used as is, not copied); options.freeze() (default true)
  // turns its gradient off.
  static EmbeddingBag from_pretrained(const torch::Tensor& embeddings,
                                      const EmbeddingBagFromPretrainedOptions& options = {});
};

}  // namespace mybag
