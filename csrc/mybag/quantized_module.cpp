#include "mybag/quantized_module.h"

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>
#include <torch/utils.h>

#include "mybag/checks.h"
#include "mybag/internal_ops.h"
#include "mybag/module_options.h"
#include "mybag/quantized_embedding_bag.h"
#include "mybag/quantized_rows.h"

namespace mybag {
namespace {

constexpr const char* kModuleName = "mybag::QuantizedEmbeddingBag";

// The key of bits and embedding_dim in a saved module, holding the dict the Python module saves
// as its extra state (the same keys).
constexpr const char* kExtraState = "_extra_state";

void check_module_options(const QuantizedEmbeddingBagOptions& options) {
  TORCH_CHECK_VALUE(options.bits() == 8 || options.bits() == 4, kModuleName,
                    ": bits has to be 8 or 4, but got ", options.bits());
  // A packed row of 4-bit values holds an even number of them: an odd embedding_dim would
  // silently lose its last column.
  TORCH_CHECK_VALUE(options.bits() != 4 || options.embedding_dim() % 2 == 0, kModuleName,
                    ": embedding_dim has to be even for 4 bits (two values a byte), but got ",
                    options.embedding_dim());
  const auto t = options.output_dtype();
  TORCH_CHECK_VALUE(t == torch::kFloat || t == torch::kHalf || t == torch::kBFloat16,
                    kModuleName,
                    ": output_dtype has to be torch::kFloat, torch::kHalf or torch::kBFloat16, "
                    "but got ", t);
}

// The tensor the module registers as `packed_weight`: a new tensor over the storage of
// options._packed_weight() when it is defined (it has to fit the options), else a quantized
// N(0, 1) table whose padding row is zero.
torch::Tensor initial_packed_table(const QuantizedEmbeddingBagOptions& options) {
  const int64_t rows = options.num_embeddings();
  const int64_t dim = options.embedding_dim();
  const torch::Tensor& given = options._packed_weight();
  if (!given.defined()) {
    auto table = torch::empty({rows, dim});
    fill_table(table, options.padding_idx());
    return quantize_rowwise(table, options.bits());
  }
  const int64_t columns = packed_row_bytes(options.bits(), dim);
  TORCH_CHECK_VALUE(given.scalar_type() == torch::kByte && given.dim() == 2 &&
                        given.size(0) == rows && given.size(1) == columns,
                    kModuleName, ": _packed_weight has to be a uint8 tensor of shape "
                    "(num_embeddings, ", options.bits() == 8 ? "embedding_dim + 8" :
                    "embedding_dim / 2 + 4", ") = (", rows, ", ", columns, "), but got ",
                    given.scalar_type(), " of shape ", given.sizes());
  // A new tensor over the storage: clone() later gives the module's tensor fresh data, which
  // must not reach the module it was cloned from (or the caller's tensor object).
  return given.detach();
}

// Every row of weight renormalized as a lookup with max_norm would leave it, by the operator
// that renormalizes at lookup (one bag naming every row once).
torch::Tensor renormed(const torch::Tensor& weight, double max_norm, double norm_type) {
  torch::NoGradGuard no_grad;
  at::Tensor table = weight.detach().clone();
  const auto rows = torch::arange(table.size(0), table.options().dtype(torch::kLong));
  ops::renorm_(table, rows, rows.new_zeros({1}), /*include_last_offset=*/false, max_norm,
               norm_type);
  return table;
}

// What every from_float ends in: the table packed, and a module around it (no random table is
// drawn and thrown away).
QuantizedEmbeddingBag packed_module(const torch::Tensor& weight,
                                    const QuantizedEmbeddingBagFromFloatOptions& given,
                                    const torch::nn::EmbeddingBagMode& mode,
                                    bool include_last_offset, std::optional<int64_t> padding_idx) {
  TORCH_CHECK_VALUE(weight.dim() == 2, kModuleName,
                    "::from_float: a table has to be 2-D (num_embeddings, embedding_dim), but "
                    "got shape ", weight.sizes());
  QuantizedEmbeddingBag bag(
      QuantizedEmbeddingBagOptions(weight.size(0), weight.size(1))
          .bits(given.bits())
          .mode(given.mode().value_or(mode))
          .include_last_offset(given.include_last_offset().value_or(include_last_offset))
          .padding_idx(given.padding_idx().has_value() ? given.padding_idx() : padding_idx)
          .output_dtype(given.output_dtype().value_or(torch::kFloat))
          ._packed_weight(quantize_rowwise(weight.detach(), given.bits())));
  // The options would otherwise keep the packed table alive after the buffer moves on (to
  // another device, or replaced by torch::load): a second copy of a serving-sized table.
  // clone() then packs a random table that it overwrites at once.
  bag->options._packed_weight(torch::Tensor());
  return bag;
}

QuantizedEmbeddingBag from_module(const torch::nn::EmbeddingBagOptions& table,
                                  const torch::Tensor& weight,
                                  const QuantizedEmbeddingBagFromFloatOptions& options) {
  const torch::Tensor values = table.max_norm().has_value()
                                   ? renormed(weight, *table.max_norm(), table.norm_type())
                                   : weight.detach();
  return packed_module(values, options, table.mode(), table.include_last_offset(),
                       table.padding_idx());
}

}  // namespace

QuantizedEmbeddingBagImpl::QuantizedEmbeddingBagImpl(QuantizedEmbeddingBagOptions options)
    : options(std::move(options)) {
  reset();
}

void QuantizedEmbeddingBagImpl::reset() {
  // Everything is checked before anything is registered: a bad option is refused at
  // construction, as in Python, rather than at the first forward.
  check_module_options(options);
  if (options.padding_idx().has_value()) {
    options.padding_idx(module_padding_idx(*options.padding_idx(), options.num_embeddings()));
  }
  packed_weight = register_buffer("packed_weight", initial_packed_table(options));
}

void QuantizedEmbeddingBagImpl::pretty_print(std::ostream& stream) const {
  // As the Python module's extra_repr: bits and mode always, the rest when not the default.
  stream << kModuleName << "(num_embeddings=" << options.num_embeddings()
         << ", embedding_dim=" << options.embedding_dim() << ", bits=" << options.bits()
         << ", mode=" << mode_name(mode_of(options.mode()));
  if (options.include_last_offset()) stream << ", include_last_offset=true";
  if (options.padding_idx().has_value()) stream << ", padding_idx=" << *options.padding_idx();
  if (options.output_dtype() != torch::kFloat) {
    stream << ", output_dtype=" << options.output_dtype();
  }
  stream << ")";
}

torch::Tensor QuantizedEmbeddingBagImpl::forward(const torch::Tensor& input,
                                                 const torch::Tensor& offsets,
                                                 const torch::Tensor& per_sample_weights) {
  return quantized_embedding_bag(input, packed_weight, options.bits(), optional_tensor(offsets),
                                 mode_of(options.mode()), optional_tensor(per_sample_weights),
                                 options.include_last_offset(), options.padding_idx(),
                                 options.output_dtype());
}

torch::Tensor QuantizedEmbeddingBagImpl::dequantize() const {
  return dequantize_rowwise(packed_weight, options.bits());
}

void QuantizedEmbeddingBagImpl::to(torch::Device device, torch::Dtype /*dtype*/,
                                   bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
}

void QuantizedEmbeddingBagImpl::to(torch::Dtype /*dtype*/, bool /*non_blocking*/) {}

void QuantizedEmbeddingBagImpl::save(torch::serialize::OutputArchive& archive) const {
  torch::nn::Module::save(archive);
  c10::impl::GenericDict extra(c10::StringType::get(), c10::AnyType::get());
  extra.insert("bits", options.bits());
  extra.insert("embedding_dim", options.embedding_dim());
  archive.write(kExtraState, extra);
}

void QuantizedEmbeddingBagImpl::load(torch::serialize::InputArchive& archive) {
  // Read and checked before anything is replaced: Module::load would take a table of any shape.
  c10::IValue saved;
  archive.read(kExtraState, saved);
  const auto extra = saved.toGenericDict();
  const int64_t bits = extra.at("bits").toInt();
  const int64_t dim = extra.at("embedding_dim").toInt();
  TORCH_CHECK(bits == options.bits() && dim == options.embedding_dim(), kModuleName,
              "::load: the checkpoint holds a ", bits, "-bit table of embedding_dim ", dim,
              ", but this module has a ", options.bits(), "-bit table of embedding_dim ",
              options.embedding_dim());
  torch::Tensor table;
  archive.read("packed_weight", table, /*is_buffer=*/true);
  TORCH_CHECK(table.scalar_type() == packed_weight.scalar_type() &&
                  table.sizes() == packed_weight.sizes(),
              kModuleName, "::load: the checkpoint's packed_weight is ", table.scalar_type(),
              " of shape ", table.sizes(), ", but this module's is ",
              packed_weight.scalar_type(), " of shape ", packed_weight.sizes());
  torch::nn::Module::load(archive);
}

QuantizedEmbeddingBag QuantizedEmbeddingBag::from_float(
    const torch::Tensor& weight, const QuantizedEmbeddingBagFromFloatOptions& options) {
  const QuantizedEmbeddingBagOptions defaults(0, 0);
  return packed_module(weight, options, defaults.mode(), defaults.include_last_offset(),
                       defaults.padding_idx());
}

QuantizedEmbeddingBag QuantizedEmbeddingBag::from_float(
    const torch::nn::EmbeddingBag& bag, const QuantizedEmbeddingBagFromFloatOptions& options) {
  return from_module(bag->options, bag->weight, options);
}

QuantizedEmbeddingBag QuantizedEmbeddingBag::from_float(
    const EmbeddingBag& bag, const QuantizedEmbeddingBagFromFloatOptions& options) {
  return from_module(bag->options, bag->weight, options);
}

}  // namespace mybag
