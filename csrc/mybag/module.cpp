#include "mybag/module.h"

#include <torch/nn/init.h>
#include <torch/utils.h>

#include <variant>

#include "mybag/checks.h"
#include "mybag/embedding_bag.h"

namespace mybag {
namespace {

Mode mode_of(const torch::nn::EmbeddingBagMode& mode) {
  if (std::holds_alternative<torch::enumtype::kSum>(mode)) return Mode::Sum;
  if (std::holds_alternative<torch::enumtype::kMean>(mode)) return Mode::Mean;
  return Mode::Max;
}

}  // namespace

EmbeddingBagImpl::EmbeddingBagImpl(EmbeddingBagOptions options) : options(std::move(options)) {
  reset();
}

void EmbeddingBagImpl::reset() {
  const int64_t rows = options.num_embeddings();
  const int64_t dim = options.embedding_dim();
  if (options.padding_idx().has_value()) {
    // Stored non-negative, as torch::nn::EmbeddingBag does.
    options.padding_idx(module_padding_idx(*options.padding_idx(), rows));
  }
  if (options._weight().defined()) {
    TORCH_CHECK_VALUE(options._weight().dim() == 2 && options._weight().size(0) == rows &&
                          options._weight().size(1) == dim,
                      "mybag::EmbeddingBag: _weight has to have shape (num_embeddings, "
                      "embedding_dim) = (", rows, ", ", dim, "), but got ",
                      options._weight().sizes());
    // A new tensor over _weight's storage: clone() later gives this tensor fresh data, which
    // must not reach the module it was cloned from (or the caller's _weight tensor object).
    weight = register_parameter("weight", options._weight().detach());
  } else {
    weight = register_parameter("weight", torch::empty({rows, dim}));
    reset_parameters();
  }
}

void EmbeddingBagImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  torch::nn::init::normal_(weight);
  if (options.padding_idx().has_value()) {
    weight[*options.padding_idx()].fill_(0);
  }
}

void EmbeddingBagImpl::pretty_print(std::ostream& stream) const {
  stream << "mybag::EmbeddingBag(num_embeddings=" << options.num_embeddings()
         << ", embedding_dim=" << options.embedding_dim();
  if (options.max_norm().has_value()) stream << ", max_norm=" << *options.max_norm();
  if (options.norm_type() != 2) stream << ", norm_type=" << options.norm_type();
  if (options.scale_grad_by_freq()) stream << ", scale_grad_by_freq=true";
  if (options.sparse()) stream << ", sparse=true";
  stream << ", mode=" << mode_name(mode_of(options.mode()));
  if (options.include_last_offset()) stream << ", include_last_offset=true";
  if (options.padding_idx().has_value()) stream << ", padding_idx=" << *options.padding_idx();
  stream << ")";
}

torch::Tensor EmbeddingBagImpl::forward(const torch::Tensor& input, const torch::Tensor& offsets,
                                        const torch::Tensor& per_sample_weights) {
  return embedding_bag(
      input, weight, offsets.defined() ? std::optional(offsets) : std::nullopt,
      options.max_norm(), options.norm_type(), options.scale_grad_by_freq(),
      mode_of(options.mode()), options.sparse(),
      per_sample_weights.defined() ? std::optional(per_sample_weights) : std::nullopt,
      options.include_last_offset(), options.padding_idx());
}

EmbeddingBag EmbeddingBag::from_pretrained(const torch::Tensor& embeddings,
                                           const EmbeddingBagFromPretrainedOptions& options) {
  TORCH_CHECK_VALUE(embeddings.dim() == 2,
                    "mybag::EmbeddingBag::from_pretrained: embeddings has to be 2-D, but got "
                    "shape ", embeddings.sizes());
  EmbeddingBag bag(EmbeddingBagOptions(embeddings.size(0), embeddings.size(1))
                       .max_norm(options.max_norm())
                       .norm_type(options.norm_type())
                       .scale_grad_by_freq(options.scale_grad_by_freq())
                       .mode(options.mode())
                       .sparse(options.sparse())
                       ._weight(embeddings)
                       .include_last_offset(options.include_last_offset())
                       .padding_idx(options.padding_idx()));
  bag->weight.set_requires_grad(!options.freeze());
  return bag;
}

}  // namespace mybag
