#include "mybag/module.h"

#include "mybag/checks.h"
#include "mybag/embedding_bag.h"
#include "mybag/module_options.h"

namespace mybag {

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
  weight = register_parameter("weight", initial_table("mybag::EmbeddingBag", options._weight(),
                                                      rows, dim, options.padding_idx()));
}

void EmbeddingBagImpl::reset_parameters() { fill_table(weight, options.padding_idx()); }

void EmbeddingBagImpl::pretty_print(std::ostream& stream) const {
  stream << "mybag::EmbeddingBag(";
  print_table_options(stream, options);
  stream << ")";
}

torch::Tensor EmbeddingBagImpl::forward(const torch::Tensor& input, const torch::Tensor& offsets,
                                        const torch::Tensor& per_sample_weights) {
  return embedding_bag(
      input, weight, optional_tensor(offsets),
      options.max_norm(), options.norm_type(), options.scale_grad_by_freq(),
      mode_of(options.mode()), options.sparse(),
      optional_tensor(per_sample_weights),
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
