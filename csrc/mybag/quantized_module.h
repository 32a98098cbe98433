// mybag::QuantizedEmbeddingBag: the C++ counterpart of the Python mybag.QuantizedEmbeddingBag (the
// same options and defaults, the buffer under the same name), an embedding bag over a row-wise
// quantized (8- or 4-bit) table for inference: torch::nn::EmbeddingBag's forward computed by
// mybag::quantized_embedding_bag (quantized_embedding_bag.h). Build a useful one with from_float
// (from a trained torch::nn::EmbeddingBag, mybag::EmbeddingBag or a float table) or around a
// table packed elsewhere (options._packed_weight).
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

#include "mybag/module.h"

namespace mybag {

// The Python constructor's arguments and defaults; mode as torch::nn::EmbeddingBagOptions has it.
//   bits: 8 or 4 (embedding_dim even for 4).
//   padding_idx: in [-num_embeddings, num_embeddings), stored non-negative; its entries are
//       skipped and not counted for mean, as in torch::nn::EmbeddingBag.
//   output_dtype: torch::kFloat, torch::kHalf or torch::kBFloat16; bags are reduced in float32
//       and rounded once to it.
//   _packed_weight: a table already packed (uint8 (num_embeddings, embedding_dim + 8) for 8 bits,
//       (num_embeddings, embedding_dim / 2 + 4) for 4), used as the module's table (its storage,
//       not a copy), as torch's _weight is; when undefined, rows drawn from N(0, 1) (the padding
//       row zero) are quantized, as torch::nn::EmbeddingBag draws them.
struct QuantizedEmbeddingBagOptions {
  QuantizedEmbeddingBagOptions(int64_t num_embeddings, int64_t embedding_dim)
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {}

  TORCH_ARG(int64_t, num_embeddings);
  TORCH_ARG(int64_t, embedding_dim);
  TORCH_ARG(int64_t, bits) = 8;
  TORCH_ARG(torch::nn::EmbeddingBagMode, mode) = torch::kMean;
  TORCH_ARG(bool, include_last_offset) = false;
  TORCH_ARG(std::optional<int64_t>, padding_idx) = std::nullopt;
  TORCH_ARG(torch::Dtype, output_dtype) = torch::kFloat;
  TORCH_ARG(torch::Tensor, _packed_weight) = torch::Tensor();
};

// What QuantizedEmbeddingBag::from_float takes besides the table or module (Python's keyword
// arguments): bits, and options that, where set, replace those copied from the module (a bare
// table takes QuantizedEmbeddingBagOptions' defaults for the ones not set).
struct QuantizedEmbeddingBagFromFloatOptions {
  TORCH_ARG(int64_t, bits) = 8;
  TORCH_ARG(std::optional<torch::nn::EmbeddingBagMode>, mode) = std::nullopt;
  TORCH_ARG(std::optional<bool>, include_last_offset) = std::nullopt;
  TORCH_ARG(std::optional<int64_t>, padding_idx) = std::nullopt;
  TORCH_ARG(std::optional<torch::Dtype>, output_dtype) = std::nullopt;
};

class QuantizedEmbeddingBagImpl : public torch::nn::Cloneable<QuantizedEmbeddingBagImpl> {
 public:
  QuantizedEmbeddingBagImpl(int64_t num_embeddings, int64_t embedding_dim)
      : QuantizedEmbeddingBagImpl(QuantizedEmbeddingBagOptions(num_embeddings, embedding_dim)) {}
  // c10::ValueError for bits other than 8 or 4, an odd embedding_dim for 4 bits, an output_dtype
  // other than the three, a padding_idx out of range or a _packed_weight that does not fit.
  explicit QuantizedEmbeddingBagImpl(QuantizedEmbeddingBagOptions options);

  // Checks the options and creates the buffer `packed_weight` (the constructor and clone() call
  // it): over options._packed_weight()'s storage when given, else quantized from N(0, 1).
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  // input: 1-D with offsets, or 2-D (B, L) with no offsets; returns (B, embedding_dim) in
  // options.output_dtype. per_sample_weights (sum mode) must not require grad under grad mode:
  // there is no backward.
  torch::Tensor forward(const torch::Tensor& input, const torch::Tensor& offsets = {},
                        const torch::Tensor& per_sample_weights = {});

  // The float32 table the packed one stands for (mybag::dequantize_rowwise).
  torch::Tensor dequantize() const;

  // Module::to(dtype) would convert every buffer, the uint8 table too; as in Python, where
  // .to(dtype) and .half() convert floating-point tensors only, the table keeps its dtype (and
  // output_dtype stays): a dtype moves nothing, a device moves the table.
  using torch::nn::Module::to;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;

  // torch::save / torch::load: packed_weight, and bits and embedding_dim (the Python module's
  // extra state, under the same keys). Loading a checkpoint of another bits, embedding_dim or
  // table shape is a c10::Error that changes nothing (two layouts can have the same number of
  // columns).
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  QuantizedEmbeddingBagOptions options;
  // uint8 (num_embeddings, packed columns); a buffer, not a parameter: nothing trains it.
  torch::Tensor packed_weight;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(torch::Tensor())},
                           {2, torch::nn::AnyValue(torch::Tensor())})
};

// The module holder (a shared pointer to QuantizedEmbeddingBagImpl), plus from_float.
class QuantizedEmbeddingBag : public torch::nn::ModuleHolder<QuantizedEmbeddingBagImpl> {
 public:
  using torch::nn::ModuleHolder<QuantizedEmbeddingBagImpl>::ModuleHolder;

  // Quantizes a float32, float16 or bfloat16 table (num_embeddings, embedding_dim) with
  // mybag::quantize_rowwise, on its device; c10::ValueError for a table that is not 2-D. The
  // packed table is the module's buffer only (options._packed_weight() is left undefined, so
  // that no second reference keeps it alive once the buffer moves or is loaded over).
  static QuantizedEmbeddingBag from_float(
      const torch::Tensor& weight, const QuantizedEmbeddingBagFromFloatOptions& options = {});
  // Quantizes a module's table, keeping its mode, include_last_offset and padding_idx unless
  // options sets them. Its max_norm is applied to every row before quantizing: a lookup
  // renormalizes each row it reads the same way, so the outputs are the float module's, up to
  // quantization. scale_grad_by_freq and sparse concern training and are dropped.
  static QuantizedEmbeddingBag from_float(
      const torch::nn::EmbeddingBag& bag,
      const QuantizedEmbeddingBagFromFloatOptions& options = {});
  static QuantizedEmbeddingBag from_float(
      const EmbeddingBag& bag, const QuantizedEmbeddingBagFromFloatOptions& options = {});
};

}  // namespace mybag
