#include "mybag/module_options.h"

#include <torch/nn/init.h>
#include <torch/utils.h>

#include <variant>

namespace mybag {

Mode mode_of(const torch::nn::EmbeddingBagMode& mode) {
  if (std::holds_alternative<torch::enumtype::kSum>(mode)) return Mode::Sum;
  if (std::holds_alternative<torch::enumtype::kMean>(mode)) return Mode::Mean;
  return Mode::Max;
}

torch::Tensor initial_table(const char* module_name, const torch::Tensor& _weight, int64_t rows,
                            int64_t dim, std::optional<int64_t> padding_idx) {
  if (!_weight.defined()) {
    auto table = torch::empty({rows, dim});
    fill_table(table, padding_idx);
    return table;
  }
  TORCH_CHECK_VALUE(_weight.dim() == 2 && _weight.size(0) == rows && _weight.size(1) == dim,
                    module_name, ": _weight has to have shape (num_embeddings, embedding_dim) = (",
                    rows, ", ", dim, "), but got ", _weight.sizes());
  // A new tensor over _weight's storage: clone() later gives the module's tensor fresh data,
  // which must not reach the module it was cloned from (or the caller's _weight tensor object).
  return _weight.detach();
}

void fill_table(const torch::Tensor& weight, std::optional<int64_t> padding_idx) {
  torch::NoGradGuard no_grad;
  torch::nn::init::normal_(weight);
  if (padding_idx.has_value()) {
    weight[*padding_idx].fill_(0);
  }
}

}  // namespace mybag
