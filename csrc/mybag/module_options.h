// What mybag's two C++ modules (mybag::EmbeddingBag in module.cpp, mybag::FusedEmbeddingBag in
// fused_module.cpp) do alike with the table options they both take from torch's
// EmbeddingBagOptions: one place, so that the two build, check and print their tables the same
// way. Internal (not installed).
#pragma once

#include <torch/nn/options/embedding.h>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <ostream>

#include "mybag/checks.h"
#include "mybag/mode.h"

namespace mybag {

Mode mode_of(const torch::nn::EmbeddingBagMode& mode);

// The tensor a module registers as `weight`: a new tensor over the storage of _weight when it is
// defined (it has to be (rows, dim): else a ValueError naming the module), else a new float32
// table filled by fill_table.
torch::Tensor initial_table(const char* module_name, const torch::Tensor& _weight, int64_t rows,
                            int64_t dim, std::optional<int64_t> padding_idx);

// Refills the table from N(0, 1) and zeroes the padding row (torch.nn.EmbeddingBag's
// initialization; torch's C++ module zeroes the row before filling, so its row is not zero).
void fill_table(const torch::Tensor& weight, std::optional<int64_t> padding_idx);

// forward's tensor arguments default to undefined tensors (torch's module convention); the
// functional forms take std::optional.
inline std::optional<torch::Tensor> optional_tensor(const torch::Tensor& tensor) {
  return tensor.defined() ? std::optional(tensor) : std::nullopt;
}

// `sparse` exists in torch's options only; the fused module's options have none (it never
// builds a gradient).
inline bool sparse_of(const torch::nn::EmbeddingBagOptions& options) { return options.sparse(); }
template <typename Options>
bool sparse_of(const Options&) {
  return false;
}

// The table options as both modules' pretty_print shows them, from num_embeddings to
// padding_idx, defaults left out. A template because the two options types are different
// structs with the same accessors. (No C++20 here: pip builds with torch's C++ standard.)
template <typename Options>
void print_table_options(std::ostream& stream, const Options& options) {
  stream << "num_embeddings=" << options.num_embeddings()
         << ", embedding_dim=" << options.embedding_dim();
  if (options.max_norm().has_value()) stream << ", max_norm=" << *options.max_norm();
  if (options.norm_type() != 2) stream << ", norm_type=" << options.norm_type();
  if (options.scale_grad_by_freq()) stream << ", scale_grad_by_freq=true";
  if (sparse_of(options)) stream << ", sparse=true";
  stream << ", mode=" << mode_name(mode_of(options.mode()));
  if (options.include_last_offset()) stream << ", include_last_offset=true";
  if (options.padding_idx().has_value()) stream << ", padding_idx=" << *options.padding_idx();
}

}  // namespace mybag
