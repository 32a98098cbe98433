#include "mybag/fused_module.h"

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>
#include <torch/utils.h>

#include "mybag/checks.h"
#include "mybag/fused_embedding_bag.h"
#include "mybag/module_options.h"
#include "mybag/optimizer_checks.h"

namespace mybag {
namespace {

// torch::optim's defaults (row-wise Adagrad takes Adagrad's; SGD has no eps), as the Python
// module's _DEFAULT_LR and _DEFAULT_EPS.
double default_lr(Optimizer kind) {
  switch (kind) {
    case Optimizer::Sgd:
    case Optimizer::Adam: return 1e-3;
    case Optimizer::Adagrad:
    case Optimizer::RowwiseAdagrad: return 1e-2;
  }
  return 0;
}

double default_eps(Optimizer kind) {
  switch (kind) {
    case Optimizer::Sgd: return 0;
    case Optimizer::Adagrad:
    case Optimizer::RowwiseAdagrad: return 1e-10;
    case Optimizer::Adam: return 1e-8;
  }
  return 0;
}

// The hyperparameters a step uses. lr and eps fall back to their defaults here too, since a
// caller may set them back to std::nullopt after construction.
Hyperparameters hyperparameters_of(const FusedEmbeddingBagOptions& options) {
  const Optimizer kind = parse_optimizer(options.optimizer());
  return {options.lr().value_or(default_lr(kind)),
          options.eps().value_or(default_eps(kind)),
          std::get<0>(options.betas()),
          std::get<1>(options.betas()),
          options.weight_decay(),
          options.lr_decay()};
}

// The key of the optimizer's name and hyperparameters in a saved module, holding the dict the
// Python module saves as its extra state (the same keys).
constexpr const char* kExtraState = "_extra_state";

FusedEmbeddingBag fused_copy(const torch::nn::EmbeddingBagOptions& table,
                             const torch::Tensor& weight, bool training,
                             const FusedOptimizerOptions& optimizer) {
  FusedEmbeddingBag fused(
      FusedEmbeddingBagOptions(table.num_embeddings(), table.embedding_dim())
          .max_norm(table.max_norm())
          .norm_type(table.norm_type())
          .scale_grad_by_freq(table.scale_grad_by_freq())
          .mode(table.mode())
          .include_last_offset(table.include_last_offset())
          .padding_idx(table.padding_idx())
          // Contiguous, as the operator updates it in place; a copy, so that training the
          // fused module leaves the source module alone.
          ._weight(weight.detach().clone(at::MemoryFormat::Contiguous))
          .optimizer(optimizer.optimizer())
          .lr(optimizer.lr())
          .eps(optimizer.eps())
          .betas(optimizer.betas())
          .weight_decay(optimizer.weight_decay())
          .initial_accumulator_value(optimizer.initial_accumulator_value())
          .lr_decay(optimizer.lr_decay()));
  fused->train(training);
  return fused;
}

}  // namespace

FusedEmbeddingBagImpl::FusedEmbeddingBagImpl(FusedEmbeddingBagOptions options)
    : options(std::move(options)) {
  reset();
}

void FusedEmbeddingBagImpl::reset() {
  const int64_t rows = options.num_embeddings();
  const int64_t dim = options.embedding_dim();
  // Everything is checked before anything is registered: a bad option is refused at
  // construction, as in Python, rather than at the first forward or backward.
  const Optimizer kind = parse_optimizer(options.optimizer());
  options.lr(options.lr().value_or(default_lr(kind)));
  options.eps(options.eps().value_or(default_eps(kind)));
  check_hyperparameters(hyperparameters_of(options));
  check_initial_accumulator_value(options.initial_accumulator_value());
  check_mode_options(mode_of(options.mode()), options.scale_grad_by_freq(), /*sparse=*/false);
  if (options.padding_idx().has_value()) {
    options.padding_idx(module_padding_idx(*options.padding_idx(), rows));
  }
  weight = register_parameter("weight", initial_table("mybag::FusedEmbeddingBag",
                                                      options._weight(), rows, dim,
                                                      options.padding_idx()));
  step = register_buffer("step", torch::zeros({}, weight.options().dtype(torch::kLong)));
  const auto state_options = weight.options().dtype(optimizer_state_dtype(weight.scalar_type()));
  switch (kind) {
    case Optimizer::Sgd: break;
    case Optimizer::Adagrad:
      sum = register_buffer("sum", torch::empty({rows, dim}, state_options));
      break;
    case Optimizer::RowwiseAdagrad:
      sum = register_buffer("sum", torch::empty({rows}, state_options));
      break;
    case Optimizer::Adam:
      exp_avg = register_buffer("exp_avg", torch::empty({rows, dim}, state_options));
      exp_avg_sq = register_buffer("exp_avg_sq", torch::empty({rows, dim}, state_options));
      break;
  }
  reset_optimizer_state();
}

void FusedEmbeddingBagImpl::reset_parameters() {
  fill_table(weight, options.padding_idx());
  reset_optimizer_state();
}

void FusedEmbeddingBagImpl::reset_optimizer_state() {
  torch::NoGradGuard no_grad;
  step.zero_();
  if (sum.defined()) sum.fill_(options.initial_accumulator_value());
  if (exp_avg.defined()) exp_avg.zero_();
  if (exp_avg_sq.defined()) exp_avg_sq.zero_();
}

std::vector<torch::Tensor> FusedEmbeddingBagImpl::optimizer_state() const {
  std::vector<torch::Tensor> state;
  for (const auto* tensor : {&sum, &exp_avg, &exp_avg_sq}) {
    if (tensor->defined()) state.push_back(*tensor);
  }
  return state;
}

void FusedEmbeddingBagImpl::pretty_print(std::ostream& stream) const {
  stream << "mybag::FusedEmbeddingBag(";
  print_table_options(stream, options);
  // The hyperparameters the optimizer uses, as the Python module's extra_repr shows them. From
  // the options as they are: printing must not throw, even for options a forward would refuse.
  stream << ", optimizer=" << options.optimizer();
  if (options.lr().has_value()) stream << ", lr=" << *options.lr();
  if (options.optimizer() != "sgd" && options.eps().has_value()) {
    stream << ", eps=" << *options.eps();
  }
  if (options.optimizer() == "adam") {
    stream << ", betas=(" << std::get<0>(options.betas()) << ", " << std::get<1>(options.betas())
           << ")";
  }
  if (options.weight_decay() != 0) stream << ", weight_decay=" << options.weight_decay();
  if (options.lr_decay() != 0) stream << ", lr_decay=" << options.lr_decay();
  stream << ")";
}

torch::Tensor FusedEmbeddingBagImpl::forward(const torch::Tensor& input,
                                             const torch::Tensor& offsets,
                                             const torch::Tensor& per_sample_weights) {
  const Hyperparameters h = hyperparameters_of(options);
  return fused_embedding_bag(input, weight, optimizer_state(), step, optional_tensor(offsets),
                             options.max_norm(), options.norm_type(),
                             options.scale_grad_by_freq(), mode_of(options.mode()),
                             optional_tensor(per_sample_weights), options.include_last_offset(),
                             options.padding_idx(), options.optimizer(), h.lr, h.eps, h.beta1,
                             h.beta2, h.weight_decay, h.lr_decay);
}

void FusedEmbeddingBagImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  // set_data keeps each tensor object, so the registered tensors and the members stay one.
  weight.set_data(weight.to(device, dtype, non_blocking));
  const auto state_dtype = optimizer_state_dtype(dtype);
  for (auto& buffer : named_buffers(/*recurse=*/false)) {
    const auto buffer_dtype = buffer.key() == "step" ? torch::kLong : state_dtype;
    buffer->set_data(buffer->to(device, buffer_dtype, non_blocking));
  }
}

void FusedEmbeddingBagImpl::to(torch::Dtype dtype, bool non_blocking) {
  to(weight.device(), dtype, non_blocking);
}

void FusedEmbeddingBagImpl::save(torch::serialize::OutputArchive& archive) const {
  torch::nn::Module::save(archive);
  const Hyperparameters h = hyperparameters_of(options);
  c10::impl::GenericDict extra(c10::StringType::get(), c10::AnyType::get());
  extra.insert("optimizer", options.optimizer());
  extra.insert("lr", h.lr);
  extra.insert("eps", h.eps);
  extra.insert("betas", c10::ivalue::Tuple::create(h.beta1, h.beta2));
  extra.insert("weight_decay", h.weight_decay);
  extra.insert("lr_decay", h.lr_decay);
  extra.insert("initial_accumulator_value", options.initial_accumulator_value());
  archive.write(kExtraState, extra);
}

void FusedEmbeddingBagImpl::load(torch::serialize::InputArchive& archive) {
  // The saved hyperparameters are read and checked first, so that a checkpoint of another
  // optimizer (whose buffers differ) or a bad value is refused before any tensor is replaced.
  c10::IValue saved;
  archive.read(kExtraState, saved);
  const auto extra = saved.toGenericDict();
  const std::string optimizer = extra.at("optimizer").toStringRef();
  TORCH_CHECK_VALUE(optimizer == options.optimizer(),
                    "mybag::FusedEmbeddingBag::load: the checkpoint was saved with optimizer '",
                    optimizer, "', but this module uses '", options.optimizer(), "'");
  const auto betas = extra.at("betas").toTupleRef().elements();
  FusedEmbeddingBagOptions loaded = options;
  loaded.lr(extra.at("lr").toDouble())
      .eps(extra.at("eps").toDouble())
      .betas(std::make_tuple(betas.at(0).toDouble(), betas.at(1).toDouble()))
      .weight_decay(extra.at("weight_decay").toDouble())
      .lr_decay(extra.at("lr_decay").toDouble())
      .initial_accumulator_value(extra.at("initial_accumulator_value").toDouble());
  check_hyperparameters(hyperparameters_of(loaded));
  check_initial_accumulator_value(loaded.initial_accumulator_value());
  torch::nn::Module::load(archive);
  options = std::move(loaded);
}

FusedEmbeddingBag FusedEmbeddingBag::from_embedding_bag(const EmbeddingBag& bag,
                                                        const FusedOptimizerOptions& optimizer) {
  return fused_copy(bag->options, bag->weight, bag->is_training(), optimizer);
}

FusedEmbeddingBag FusedEmbeddingBag::from_embedding_bag(const torch::nn::EmbeddingBag& bag,
                                                        const FusedOptimizerOptions& optimizer) {
  return fused_copy(bag->options, bag->weight, bag->is_training(), optimizer);
}

}  // namespace mybag
