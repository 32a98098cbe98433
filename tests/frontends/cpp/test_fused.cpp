// mybag::FusedEmbeddingBag and mybag::fused_embedding_bag, the C++ API of the embedding bag
// trained by its own backward: training steps with each optimizer against the same steps taken
// with torch's C++ API (torch::nn::EmbeddingBag with sparse gradients, and torch::optim::SGD or
// Adagrad) or, for adam and rowwise_adagrad (which torch::optim has no sparse C++ form of),
// against the update written out with tensor ops from torch's gradient; then the module's
// buffers and defaults, hyperparameters changed between steps, torch::save / torch::load
// resuming exactly, .to(), clone(), from_embedding_bag, the functional form, errors and
// pretty_print.
#include <mybag/mybag.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "check.h"

namespace F = torch::nn::functional;
using torch::Tensor;

namespace {

constexpr int64_t kNum = 10;
constexpr int64_t kDim = 5;
// The batches name rows below kTouchable only: the rows from there on must never change.
constexpr int64_t kTouchable = kNum - 2;

struct Batch {
  Tensor input, offsets, psw, target;
};

// 4 bags: 1-D input with offsets (bag 1 empty) or 2-D (4, 3), a row repeated within a bag, and
// two padding entries when padding_idx is set.
Batch make_batch(bool two_d, std::optional<int64_t> padding_idx, bool psw, uint64_t seed) {
  torch::manual_seed(seed);
  Batch b;
  if (two_d) {
    b.input = torch::randint(0, kTouchable, {4, 3}, torch::kLong);
  } else {
    b.input = torch::randint(0, kTouchable, {11}, torch::kLong);
    b.offsets = torch::tensor({0, 4, 4, 9}, torch::kLong);
  }
  auto flat = b.input.view(-1);
  flat.index_put_({3}, flat[2].item<int64_t>());
  if (padding_idx) {
    flat.index_put_({1}, *padding_idx);
    flat.index_put_({7}, *padding_idx);
  }
  if (psw) b.psw = torch::rand(b.input.sizes()) + 0.5;
  b.target = torch::randn({4, kDim});
  return b;
}

std::vector<Batch> make_batches(int count, bool two_d, std::optional<int64_t> padding_idx,
                                bool psw, uint64_t seed) {
  std::vector<Batch> batches;
  for (int i = 0; i < count; ++i) batches.push_back(make_batch(two_d, padding_idx, psw, seed + i));
  return batches;
}

// The target in the output's dtype, so that one batch serves tables of any dtype.
Tensor loss_of(const Tensor& out, const Batch& b) {
  return torch::mse_loss(out, b.target.to(out.scalar_type()));
}

// One training step of the fused module: forward and backward, nothing else.
void fused_step(mybag::FusedEmbeddingBag& bag, const Batch& b) {
  loss_of(bag(b.input, b.offsets, b.psw), b).backward();
}

Tensor snapshot(const Tensor& t) { return t.detach().clone(); }

std::string padding_name(std::optional<int64_t> p) { return p ? std::to_string(*p) : "none"; }

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ",") + name;
  return out;
}

// Rows the fused step must leave alone: the ones no batch names.
void expect_untouched_rows_unchanged(const Tensor& after, const Tensor& before) {
  EXPECT_EQUAL(after.slice(0, kTouchable), before.slice(0, kTouchable));
}

// The sparse reference with weight decay, as docs describe it: weight_decay * w added to the
// rows of torch's coalesced sparse gradient, then the optimizer without decay (torch::optim
// would decay every row, or refuses decay with sparse gradients).
void add_lazy_weight_decay(const Tensor& weight, double weight_decay) {
  const auto grad = weight.grad().coalesce();
  const auto rows = grad._indices()[0];
  const auto values = grad._values() + weight_decay * weight.detach().index_select(0, rows);
  weight.mutable_grad() = torch::sparse_coo_tensor(grad._indices(), values, grad.sizes());
}

// ---------------------------------------------------------------------------------------------

struct TorchCase {
  std::string optimizer;  // "sgd" or "adagrad"
  torch::nn::EmbeddingBagMode mode;
  bool two_d;
  std::optional<int64_t> padding_idx;
  bool psw;
  double weight_decay;
  double lr_decay;
  double initial_accumulator_value;
};

// The fused module against torch::nn::EmbeddingBag + torch::optim, four steps from the same
// table. torch refuses sparse gradients in max mode: its reference there is the dense gradient,
// which moves no row that sgd or adagrad would not (a zero gradient row stays put; the decay,
// which would move every row, is left out of those cases).
void test_sgd_and_adagrad_match_torch() {
  const std::vector<TorchCase> cases = {
      {"sgd", torch::kSum, false, 2, true, 0.0, 0.0, 0.0},
      {"sgd", torch::kMean, true, std::nullopt, false, 0.1, 0.0, 0.0},
      {"sgd", torch::kMax, false, 2, false, 0.0, 0.0, 0.0},
      {"adagrad", torch::kSum, false, 2, true, 0.0, 0.1, 0.1},
      {"adagrad", torch::kMean, false, std::nullopt, false, 0.05, 0.0, 0.0},
      {"adagrad", torch::kMax, true, 3, false, 0.0, 0.0, 0.0},
  };
  uint64_t seed = 100;
  for (const auto& c : cases) {
    const bool max = std::holds_alternative<torch::enumtype::kMax>(c.mode);
    SCOPE(c.optimizer, " mode=", torch::enumtype::get_enum_name(c.mode), " 2d=", c.two_d,
          " padding_idx=", padding_name(c.padding_idx), " psw=", c.psw,
          " weight_decay=", c.weight_decay);
    const bool adagrad = c.optimizer == "adagrad";
    const double lr = adagrad ? 0.1 : 0.5;
    torch::manual_seed(seed);
    torch::nn::EmbeddingBag ref(torch::nn::EmbeddingBagOptions(kNum, kDim)
                                    .mode(c.mode)
                                    .padding_idx(c.padding_idx)
                                    .sparse(!max));
    auto fused = mybag::FusedEmbeddingBag::from_embedding_bag(
        ref, mybag::FusedOptimizerOptions()
                 .optimizer(c.optimizer)
                 .lr(lr)
                 .weight_decay(c.weight_decay)
                 .lr_decay(c.lr_decay)
                 .initial_accumulator_value(c.initial_accumulator_value));
    std::unique_ptr<torch::optim::Optimizer> optimizer;
    if (adagrad) {
      optimizer = std::make_unique<torch::optim::Adagrad>(
          ref->parameters(), torch::optim::AdagradOptions(lr)
                                 .lr_decay(c.lr_decay)
                                 .initial_accumulator_value(c.initial_accumulator_value));
    } else {
      optimizer = std::make_unique<torch::optim::SGD>(ref->parameters(),
                                                      torch::optim::SGDOptions(lr));
    }
    const auto initial = snapshot(fused->weight);
    const auto batches = make_batches(4, c.two_d, c.padding_idx, c.psw, seed++);
    for (size_t i = 0; i < batches.size(); ++i) {
      SCOPE("step ", i + 1);
      const auto& b = batches[i];
      optimizer->zero_grad();
      loss_of(ref(b.input, b.offsets, b.psw), b).backward();
      EXPECT_EQ(ref->weight.grad().is_sparse(), !max);
      if (c.weight_decay != 0) add_lazy_weight_decay(ref->weight, c.weight_decay);
      optimizer->step();
      fused_step(fused, b);
      EXPECT_CLOSE(fused->weight, ref->weight);
      EXPECT(!fused->weight.grad().defined());
      EXPECT_EQ(fused->step.item<int64_t>(), static_cast<int64_t>(i + 1));
    }
    if (adagrad) {
      const auto& state = static_cast<torch::optim::AdagradParamState&>(
          *optimizer->state().at(ref->weight.unsafeGetTensorImpl()));
      EXPECT_CLOSE(fused->sum, state.sum());
      EXPECT_EQ(fused->step.item<int64_t>(), state.step());
    }
    EXPECT(!torch::equal(fused->weight, initial));  // it did train
    expect_untouched_rows_unchanged(fused->weight, initial);
  }
}

// adam (torch.optim.SparseAdam's rule) and rowwise_adagrad (FBGEMM's exact row-wise Adagrad)
// written out from the formulas, on the rows the batch touched (every non-padding entry's row,
// even one whose gradient is zero, as in max mode).
struct Reference {
  std::string optimizer;
  double lr = 0, eps = 0, beta1 = 0, beta2 = 0, weight_decay = 0;
  Tensor weight, sum, exp_avg, exp_avg_sq;
  int64_t step = 0;

  void train(const Batch& b, const torch::nn::EmbeddingBagMode& mode,
             std::optional<int64_t> padding_idx) {
    // torch's own (dense) gradient of the same loss.
    auto w = weight.clone().requires_grad_();
    auto options = F::EmbeddingBagFuncOptions().mode(mode).padding_idx(padding_idx);
    if (b.offsets.defined()) options.offsets(b.offsets);
    if (b.psw.defined()) options.per_sample_weights(b.psw);
    loss_of(F::embedding_bag(b.input, w, options), b).backward();
    auto entries = b.input.reshape(-1);
    if (padding_idx) entries = entries.masked_select(entries != *padding_idx);
    const auto rows = std::get<0>(torch::_unique(entries));

    ++step;
    auto row_weight = weight.index_select(0, rows);
    auto g = w.grad().index_select(0, rows);
    if (weight_decay != 0) g = g + weight_decay * row_weight;
    if (optimizer == "rowwise_adagrad") {
      const auto s = sum.index_select(0, rows) + g.pow(2).mean(1);
      sum.index_copy_(0, rows, s);
      row_weight = row_weight - (lr / (s.sqrt() + eps)).unsqueeze(1) * g;
    } else {
      const auto m = beta1 * exp_avg.index_select(0, rows) + (1 - beta1) * g;
      const auto v = beta2 * exp_avg_sq.index_select(0, rows) + (1 - beta2) * g * g;
      exp_avg.index_copy_(0, rows, m);
      exp_avg_sq.index_copy_(0, rows, v);
      const double step_size = lr * std::sqrt(1 - std::pow(beta2, static_cast<double>(step))) /
                               (1 - std::pow(beta1, static_cast<double>(step)));
      row_weight = row_weight - step_size * m / (v.sqrt() + eps);
    }
    weight.index_copy_(0, rows, row_weight);
  }
};

Reference reference_of(const mybag::FusedEmbeddingBag& bag) {
  const auto& o = bag->options;
  Reference r;
  r.optimizer = o.optimizer();
  r.lr = *o.lr();
  r.eps = *o.eps();
  std::tie(r.beta1, r.beta2) = o.betas();
  r.weight_decay = o.weight_decay();
  r.weight = snapshot(bag->weight);
  if (bag->sum.defined()) r.sum = snapshot(bag->sum);
  if (bag->exp_avg.defined()) {
    r.exp_avg = snapshot(bag->exp_avg);
    r.exp_avg_sq = snapshot(bag->exp_avg_sq);
  }
  return r;
}

void expect_matches(const mybag::FusedEmbeddingBag& bag, const Reference& r) {
  EXPECT_CLOSE(bag->weight, r.weight);
  EXPECT_CLOSE(bag->sum, r.sum);
  EXPECT_CLOSE(bag->exp_avg, r.exp_avg);
  EXPECT_CLOSE(bag->exp_avg_sq, r.exp_avg_sq);
  EXPECT_EQ(bag->step.item<int64_t>(), r.step);
}

struct ReferenceCase {
  std::string optimizer;
  torch::nn::EmbeddingBagMode mode;
  bool two_d;
  std::optional<int64_t> padding_idx;
  bool psw;
  double weight_decay;
  double initial_accumulator_value;
  torch::Dtype dtype;
};

void test_adam_and_rowwise_adagrad_match_reference() {
  const std::vector<ReferenceCase> cases = {
      {"adam", torch::kSum, false, 2, true, 0.0, 0.0, torch::kFloat},
      {"adam", torch::kMean, true, std::nullopt, false, 0.1, 0.0, torch::kFloat},
      {"adam", torch::kMax, false, 2, false, 0.0, 0.0, torch::kFloat},
      {"adam", torch::kMean, false, 4, false, 0.01, 0.0, torch::kDouble},
      {"rowwise_adagrad", torch::kSum, false, 2, true, 0.0, 0.1, torch::kFloat},
      {"rowwise_adagrad", torch::kMean, true, std::nullopt, false, 0.05, 0.0, torch::kFloat},
      {"rowwise_adagrad", torch::kMax, false, std::nullopt, false, 0.0, 0.0, torch::kFloat},
      {"rowwise_adagrad", torch::kSum, false, 0, false, 0.0, 0.0, torch::kDouble},
  };
  uint64_t seed = 200;
  for (const auto& c : cases) {
    SCOPE(c.optimizer, " mode=", torch::enumtype::get_enum_name(c.mode), " 2d=", c.two_d,
          " padding_idx=", padding_name(c.padding_idx), " psw=", c.psw,
          " weight_decay=", c.weight_decay, " dtype=", c10::toString(c.dtype));
    torch::manual_seed(seed);
    mybag::FusedEmbeddingBag bag(
        mybag::FusedEmbeddingBagOptions(kNum, kDim)
            .mode(c.mode)
            .padding_idx(c.padding_idx)
            ._weight(torch::randn({kNum, kDim}, c.dtype))
            .optimizer(c.optimizer)
            .lr(0.05)
            .betas(std::make_tuple(0.8, 0.99))
            .weight_decay(c.weight_decay)
            .initial_accumulator_value(c.initial_accumulator_value));
    Reference r = reference_of(bag);
    const auto initial = snapshot(bag->weight);
    for (const auto& b : make_batches(4, c.two_d, c.padding_idx, c.psw, seed++)) {
      SCOPE("step ", r.step + 1);
      Batch typed = b;
      if (b.psw.defined()) typed.psw = b.psw.to(c.dtype);
      fused_step(bag, typed);
      r.train(typed, c.mode, c.padding_idx);
      expect_matches(bag, r);
      EXPECT(!bag->weight.grad().defined());
    }
    EXPECT(!torch::equal(bag->weight, initial));
    expect_untouched_rows_unchanged(bag->weight, initial);
  }
}

// ---------------------------------------------------------------------------------------------

void test_buffers_and_defaults() {
  struct Expected {
    std::string optimizer;
    double lr, eps;
    std::vector<std::string> buffers;
  };
  const std::vector<Expected> all = {
      {"sgd", 1e-3, 0.0, {"step"}},
      {"adagrad", 1e-2, 1e-10, {"step", "sum"}},
      {"rowwise_adagrad", 1e-2, 1e-10, {"step", "sum"}},
      {"adam", 1e-3, 1e-8, {"step", "exp_avg", "exp_avg_sq"}},
  };
  for (const auto& e : all) {
    for (const auto dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16}) {
      SCOPE(e.optimizer, " ", c10::toString(dtype));
      mybag::FusedEmbeddingBag bag(mybag::FusedEmbeddingBagOptions(kNum, kDim)
                                       .optimizer(e.optimizer)
                                       ._weight(torch::randn({kNum, kDim}, dtype))
                                       .initial_accumulator_value(0.25));
      // torch::optim's defaults, filled into the options.
      EXPECT(bag->options.lr() == std::optional<double>(e.lr));
      EXPECT(bag->options.eps() == std::optional<double>(e.eps));
      EXPECT_EQ(joined(bag->named_buffers().keys()), joined(e.buffers));
      EXPECT_EQ(joined(bag->named_parameters().keys()), std::string("weight"));
      EXPECT(bag->weight.requires_grad());
      EXPECT_EQUAL(bag->step, torch::zeros({}, torch::kLong));
      const auto state_dtype = dtype == torch::kDouble ? torch::kDouble : torch::kFloat;
      const auto state = bag->optimizer_state();
      EXPECT_EQ(state.size(), e.buffers.size() - 1);
      for (const auto& s : state) {
        EXPECT_EQ(s.scalar_type(), state_dtype);
        EXPECT(!s.requires_grad());
      }
      if (e.optimizer == "adagrad") {
        EXPECT_EQUAL(bag->sum, torch::full({kNum, kDim}, 0.25, state_dtype));
      } else if (e.optimizer == "rowwise_adagrad") {
        EXPECT_EQUAL(bag->sum, torch::full({kNum}, 0.25, state_dtype));
      } else if (e.optimizer == "adam") {
        EXPECT_EQUAL(bag->exp_avg, torch::zeros({kNum, kDim}, state_dtype));
        EXPECT_EQUAL(bag->exp_avg_sq, torch::zeros({kNum, kDim}, state_dtype));
      }
      // A step changes the state; reset_optimizer_state puts it back, reset_parameters draws a
      // new table and resets the state too.
      fused_step(bag, make_batch(false, std::nullopt, false, 1));
      EXPECT_EQ(bag->step.item<int64_t>(), 1);
      bag->reset_optimizer_state();
      EXPECT_EQ(bag->step.item<int64_t>(), 0);
      if (bag->sum.defined()) EXPECT(bag->sum.eq(0.25).all().item<bool>());
      if (bag->exp_avg.defined()) EXPECT(bag->exp_avg.eq(0).all().item<bool>());
      fused_step(bag, make_batch(false, std::nullopt, false, 2));
      const auto before = snapshot(bag->weight);
      bag->reset_parameters();
      EXPECT(!torch::equal(bag->weight, before));
      EXPECT_EQ(bag->step.item<int64_t>(), 0);
    }
  }
  {
    SCOPE("padding_idx and the default initialization");
    torch::manual_seed(3);
    mybag::FusedEmbeddingBag bag(mybag::FusedEmbeddingBagOptions(kNum, kDim).padding_idx(-3));
    torch::manual_seed(3);
    mybag::EmbeddingBag plain(mybag::EmbeddingBagOptions(kNum, kDim).padding_idx(-3));
    EXPECT(bag->options.padding_idx() == std::optional<int64_t>(kNum - 3));
    EXPECT_EQUAL(bag->weight, plain->weight);  // the same draw, the same zero padding row
    EXPECT_EQUAL(bag->weight[kNum - 3], torch::zeros({kDim}));
    EXPECT_EQ(bag->weight.scalar_type(), torch::kFloat);
    // Given hyperparameters are kept, not replaced by the defaults.
    mybag::FusedEmbeddingBag set(
        mybag::FusedEmbeddingBagOptions(kNum, kDim).optimizer("adam").lr(0.5).eps(0.25));
    EXPECT(set->options.lr() == std::optional<double>(0.5));
    EXPECT(set->options.eps() == std::optional<double>(0.25));
  }
}

// step counts every backward, also of a batch that touches no row; weight.grad stays undefined;
// per_sample_weights get their usual gradient.
void test_steps_and_gradients() {
  torch::manual_seed(7);
  mybag::FusedEmbeddingBag bag(
      mybag::FusedEmbeddingBagOptions(kNum, kDim).mode(torch::kSum).padding_idx(1).optimizer(
          "adagrad"));
  const auto b = make_batch(false, 1, true, 8);
  const auto table = snapshot(bag->weight);

  auto psw = b.psw.clone().requires_grad_();
  bag(b.input, b.offsets, psw).backward(b.target);
  EXPECT_EQ(bag->step.item<int64_t>(), 1);
  EXPECT(!bag->weight.grad().defined());
  // per_sample_weights' gradient comes from the rows before the step: the plain op's.
  auto plain_psw = b.psw.clone().requires_grad_();
  mybag::embedding_bag(b.input, table, b.offsets, std::nullopt, 2.0, false, mybag::Mode::Sum,
                       false, plain_psw, false, 1)
      .backward(b.target);
  EXPECT_CLOSE(psw.grad(), plain_psw.grad());

  // Only padding entries and empty bags: no row is touched, but the step still counts.
  const auto after_one = snapshot(bag->weight);
  const auto sum_after_one = snapshot(bag->sum);
  const auto padding_only = torch::full({3}, 1, torch::kLong);
  bag(padding_only, torch::tensor({0, 0, 3}, torch::kLong)).sum().backward();
  EXPECT_EQ(bag->step.item<int64_t>(), 2);
  EXPECT_EQUAL(bag->weight, after_one);
  EXPECT_EQUAL(bag->sum, sum_after_one);

  // A forward that fails (an index out of range) changes nothing.
  EXPECT_THROWS(c10::IndexError,
                bag(torch::tensor(std::vector<int64_t>{0, kNum}),
                    torch::tensor({0}, torch::kLong)),
                "is out of range");
  EXPECT_EQ(bag->step.item<int64_t>(), 2);
  EXPECT_EQUAL(bag->weight, after_one);

  // Through AnyModule, which relies on FORWARD_HAS_DEFAULT_ARGS.
  torch::nn::AnyModule any(bag);
  const auto two_d = torch::randint(0, kNum, {2, 3}, torch::kLong);
  EXPECT_EQUAL(any.forward(two_d), bag->forward(two_d));
}

// lr (and the other hyperparameters) are read by each forward: changed between steps, they take
// effect at the next step; changed between a forward and its backward, they do not.
void test_hyperparameters_between_steps() {
  const auto batches = make_batches(3, false, std::nullopt, false, 300);
  {
    SCOPE("sgd against torch::optim::SGD with its lr changed the same way");
    torch::manual_seed(30);
    torch::nn::EmbeddingBag ref(torch::nn::EmbeddingBagOptions(kNum, kDim).sparse(true));
    auto fused = mybag::FusedEmbeddingBag::from_embedding_bag(
        ref, mybag::FusedOptimizerOptions().lr(0.5));
    torch::optim::SGD sgd(ref->parameters(), torch::optim::SGDOptions(0.5));
    const std::vector<double> lrs = {0.5, 0.05, 2.0};
    for (size_t i = 0; i < batches.size(); ++i) {
      SCOPE("step ", i + 1, " lr=", lrs[i]);
      static_cast<torch::optim::SGDOptions&>(sgd.param_groups()[0].options()).lr(lrs[i]);
      sgd.zero_grad();
      loss_of(ref(batches[i].input, batches[i].offsets), batches[i]).backward();
      sgd.step();
      fused->options.lr(lrs[i]);
      fused_step(fused, batches[i]);
      EXPECT_CLOSE(fused->weight, ref->weight);
    }
  }
  {
    SCOPE("adam: lr, betas, eps and weight_decay changed between steps");
    torch::manual_seed(31);
    mybag::FusedEmbeddingBag bag(mybag::FusedEmbeddingBagOptions(kNum, kDim).optimizer("adam"));
    Reference r = reference_of(bag);
    fused_step(bag, batches[0]);
    r.train(batches[0], torch::kMean, std::nullopt);
    bag->options.lr(0.1).betas(std::make_tuple(0.5, 0.9)).eps(1e-3).weight_decay(0.2);
    r.lr = 0.1;
    r.beta1 = 0.5;
    r.beta2 = 0.9;
    r.eps = 1e-3;
    r.weight_decay = 0.2;
    fused_step(bag, batches[1]);
    r.train(batches[1], torch::kMean, std::nullopt);
    expect_matches(bag, r);
  }
  {
    SCOPE("the values of the forward are the ones its backward uses");
    torch::manual_seed(32);
    mybag::FusedEmbeddingBag bag(mybag::FusedEmbeddingBagOptions(kNum, kDim).lr(0.5));
    auto twin = std::dynamic_pointer_cast<mybag::FusedEmbeddingBagImpl>(bag->clone());
    const auto& b = batches[0];
    auto loss = loss_of(bag(b.input, b.offsets), b);
    bag->options.lr(100.0);
    loss.backward();
    loss_of(twin->forward(b.input, b.offsets), b).backward();  // lr 0.5 throughout
    EXPECT_EQUAL(bag->weight, twin->weight);
  }
}

// torch::save and torch::load: a module loaded from a checkpoint (into one built with other
// hyperparameters) continues training with the same bits as the module that was saved.
void test_save_load_resumes_exactly() {
  uint64_t seed = 400;
  for (const std::string optimizer : {"sgd", "adagrad", "rowwise_adagrad", "adam"}) {
    SCOPE(optimizer);
    const auto batches = make_batches(4, false, 2, true, seed++);
    torch::manual_seed(seed);
    const auto options = mybag::FusedEmbeddingBagOptions(kNum, kDim)
                             .mode(torch::kSum)
                             .padding_idx(2)
                             .optimizer(optimizer);
    mybag::FusedEmbeddingBag saved(mybag::FusedEmbeddingBagOptions(options)
                                       .lr(0.2)
                                       .betas(std::make_tuple(0.7, 0.95))
                                       .weight_decay(0.01)
                                       .lr_decay(0.05)
                                       .initial_accumulator_value(0.3));
    fused_step(saved, batches[0]);
    saved->options.lr(0.1);  // a schedule's change, which the checkpoint has to carry
    fused_step(saved, batches[1]);
    std::stringstream checkpoint;
    torch::save(saved, checkpoint);

    mybag::FusedEmbeddingBag loaded(options);  // default hyperparameters, another table
    torch::load(loaded, checkpoint);
    EXPECT(loaded->options.lr() == std::optional<double>(0.1));
    EXPECT(loaded->options.betas() == std::make_tuple(0.7, 0.95));
    EXPECT_EQ(loaded->options.weight_decay(), 0.01);
    EXPECT_EQ(loaded->options.lr_decay(), 0.05);
    EXPECT_EQ(loaded->options.initial_accumulator_value(), 0.3);
    EXPECT_EQ(loaded->step.item<int64_t>(), 2);
    for (size_t i = 2; i < batches.size(); ++i) {
      fused_step(saved, batches[i]);
      fused_step(loaded, batches[i]);
    }
    EXPECT_EQUAL(loaded->weight, saved->weight);
    EXPECT_EQUAL(loaded->step, saved->step);
    const auto loaded_state = loaded->optimizer_state();
    const auto saved_state = saved->optimizer_state();
    EXPECT_EQ(loaded_state.size(), saved_state.size());
    for (size_t i = 0; i < loaded_state.size() && i < saved_state.size(); ++i) {
      EXPECT_EQUAL(loaded_state[i], saved_state[i]);
    }
  }
  {
    SCOPE("a checkpoint of another optimizer is refused and changes nothing");
    mybag::FusedEmbeddingBag adam(mybag::FusedEmbeddingBagOptions(kNum, kDim).optimizer("adam"));
    std::stringstream checkpoint;
    torch::save(adam, checkpoint);
    mybag::FusedEmbeddingBag adagrad(
        mybag::FusedEmbeddingBagOptions(kNum, kDim).optimizer("adagrad").lr(0.3));
    const auto before = snapshot(adagrad->weight);
    EXPECT_THROWS(c10::ValueError, torch::load(adagrad, checkpoint),
                  "saved with optimizer 'adam', but this module uses 'adagrad'");
    EXPECT_EQUAL(adagrad->weight, before);
    EXPECT(adagrad->options.lr() == std::optional<double>(0.3));
  }
}

// Module::to would convert every buffer to the dtype; the state follows the table instead, as
// the operator wants it, and step stays int64.
void test_to() {
  torch::manual_seed(50);
  // A large lr, so that the bfloat16 step below moves rows by more than bfloat16's spacing.
  mybag::FusedEmbeddingBag bag(
      mybag::FusedEmbeddingBagOptions(kNum, kDim).optimizer("adam").lr(0.1));
  fused_step(bag, make_batch(false, std::nullopt, false, 51));
  const auto weight = snapshot(bag->weight);
  const auto exp_avg = snapshot(bag->exp_avg);
  bag->to(torch::kDouble);
  EXPECT_EQ(bag->weight.scalar_type(), torch::kDouble);
  EXPECT_EQ(bag->exp_avg.scalar_type(), torch::kDouble);
  EXPECT_EQ(bag->exp_avg_sq.scalar_type(), torch::kDouble);
  EXPECT_EQUAL(bag->step, torch::scalar_tensor(1, torch::kLong));
  EXPECT_EQUAL(bag->weight, weight.to(torch::kDouble));
  EXPECT_EQUAL(bag->exp_avg, exp_avg.to(torch::kDouble));
  // The members are the registered tensors still.
  EXPECT(bag->named_buffers()["exp_avg"].is_same(bag->exp_avg));
  EXPECT(bag->named_parameters()["weight"].is_same(bag->weight));
  EXPECT(bag->weight.requires_grad());
  const Batch b = make_batch(false, std::nullopt, false, 52);
  fused_step(bag, b);
  EXPECT_EQ(bag->step.item<int64_t>(), 2);

  bag->to(torch::kBFloat16);
  EXPECT_EQ(bag->weight.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(bag->exp_avg.scalar_type(), torch::kFloat);
  EXPECT_EQ(bag->step.scalar_type(), torch::kLong);
  const auto before = snapshot(bag->weight);
  fused_step(bag, b);
  EXPECT_EQ(bag->step.item<int64_t>(), 3);
  EXPECT(!torch::equal(bag->weight, before));

  // Device and dtype together (the CPU here): the same rule.
  bag->to(torch::kCPU, torch::kFloat);
  EXPECT_EQ(bag->weight.scalar_type(), torch::kFloat);
  EXPECT_EQ(bag->exp_avg_sq.scalar_type(), torch::kFloat);
  EXPECT_EQ(bag->step.scalar_type(), torch::kLong);
}

void test_clone() {
  torch::manual_seed(60);
  mybag::FusedEmbeddingBag original(mybag::FusedEmbeddingBagOptions(kNum, kDim)
                                        .optimizer("rowwise_adagrad")
                                        .padding_idx(-1)
                                        .lr(0.3));
  const auto batches = make_batches(2, false, kNum - 1, false, 61);
  fused_step(original, batches[0]);
  auto copy = std::dynamic_pointer_cast<mybag::FusedEmbeddingBagImpl>(original->clone());
  EXPECT(copy != nullptr);
  EXPECT_EQUAL(copy->weight, original->weight);
  EXPECT_EQUAL(copy->sum, original->sum);
  EXPECT_EQUAL(copy->step, original->step);
  EXPECT(copy->weight.data_ptr() != original->weight.data_ptr());
  EXPECT(copy->sum.data_ptr() != original->sum.data_ptr());
  EXPECT(copy->options.lr() == std::optional<double>(0.3));
  // Independent: training the copy leaves the original alone.
  const auto weight = snapshot(original->weight);
  const auto sum = snapshot(original->sum);
  loss_of(copy->forward(batches[1].input, batches[1].offsets), batches[1]).backward();
  EXPECT_EQ(copy->step.item<int64_t>(), 2);
  EXPECT(!torch::equal(copy->weight, weight));
  EXPECT_EQUAL(original->weight, weight);
  EXPECT_EQUAL(original->sum, sum);
  EXPECT_EQ(original->step.item<int64_t>(), 1);
}

// from_embedding_bag copies the table options and the table (not sharing it), from torch's
// module and from mybag's, and takes the optimizer's options.
void test_from_embedding_bag() {
  torch::manual_seed(70);
  const auto table_options = torch::nn::EmbeddingBagOptions(kNum, kDim)
                                 .mode(torch::kSum)
                                 .padding_idx(-2)
                                 .include_last_offset(true)
                                 .max_norm(3.0)
                                 .norm_type(1.5)
                                 .sparse(true);
  torch::nn::EmbeddingBag torch_bag(table_options);
  mybag::EmbeddingBag mybag_bag(table_options);
  mybag_bag->eval();
  const auto optimizer = mybag::FusedOptimizerOptions()
                             .optimizer("adagrad")
                             .lr(0.3)
                             .initial_accumulator_value(0.2);
  for (const bool from_torch : {true, false}) {
    SCOPE(from_torch ? "from torch::nn::EmbeddingBag" : "from mybag::EmbeddingBag");
    const Tensor source = from_torch ? torch_bag->weight : mybag_bag->weight;
    const auto source_before = snapshot(source);
    auto fused = from_torch
                     ? mybag::FusedEmbeddingBag::from_embedding_bag(torch_bag, optimizer)
                     : mybag::FusedEmbeddingBag::from_embedding_bag(mybag_bag, optimizer);
    const auto& o = fused->options;
    EXPECT(std::holds_alternative<torch::enumtype::kSum>(o.mode()));
    EXPECT(o.padding_idx() == std::optional<int64_t>(kNum - 2));
    EXPECT(o.include_last_offset());
    EXPECT(o.max_norm() == std::optional<double>(3.0));
    EXPECT_EQ(o.norm_type(), 1.5);
    EXPECT_EQ(o.optimizer(), std::string("adagrad"));
    EXPECT(o.lr() == std::optional<double>(0.3));
    EXPECT(o.eps() == std::optional<double>(1e-10));  // adagrad's default
    EXPECT_EQUAL(fused->sum, torch::full({kNum, kDim}, 0.2));
    EXPECT_EQ(fused->is_training(), from_torch);  // the mybag module was put in eval mode
    EXPECT_EQUAL(fused->weight, source);
    EXPECT(fused->weight.data_ptr() != source.data_ptr());
    EXPECT(fused->weight.requires_grad());
    // Training the copy (max_norm renormalizes rows too) leaves the source alone.
    const auto input = torch::tensor({0, 3, 3, 5, 7}, torch::kLong);
    const auto offsets = torch::tensor({0, 2, 5}, torch::kLong);
    fused(input, offsets).pow(2).sum().backward();
    EXPECT_EQ(fused->step.item<int64_t>(), 1);
    EXPECT(!torch::equal(fused->weight, source_before));
    EXPECT_EQUAL(source, source_before);
  }
  {
    SCOPE("a non-contiguous table is copied contiguous");
    torch::nn::EmbeddingBag transposed(torch::nn::EmbeddingBagOptions(kNum, kDim)._weight(
        torch::randn({kDim, kNum}).t()));
    EXPECT(!transposed->weight.is_contiguous());
    auto fused = mybag::FusedEmbeddingBag::from_embedding_bag(transposed);
    EXPECT(fused->weight.is_contiguous());
    EXPECT_EQUAL(fused->weight, transposed->weight);
    EXPECT_EQ(fused->options.optimizer(), std::string("sgd"));
    fused(torch::tensor({{1, 2}}, torch::kLong)).sum().backward();
    EXPECT_EQ(fused->step.item<int64_t>(), 1);
  }
}

// The functional form takes the state as a vector or a braced list and the mode as a string or
// an enum: each the same step as the module's, on a table that is a plain leaf tensor.
void test_functional() {
  torch::manual_seed(80);
  mybag::FusedEmbeddingBag bag(mybag::FusedEmbeddingBagOptions(kNum, kDim)
                                   .mode(torch::kSum)
                                   .padding_idx(2)
                                   .optimizer("adam")
                                   .lr(0.01)
                                   .betas(std::make_tuple(0.8, 0.9))
                                   .weight_decay(0.1));
  const auto b = make_batch(false, 2, true, 81);
  const auto table = snapshot(bag->weight);
  fused_step(bag, b);
  for (const bool vector_and_string : {true, false}) {
    SCOPE(vector_and_string ? "vector, string mode" : "braced list, enum mode");
    auto weight = table.clone().requires_grad_();
    auto exp_avg = torch::zeros_like(table);
    auto exp_avg_sq = torch::zeros_like(table);
    auto step = torch::zeros({}, torch::kLong);
    Tensor out;
    if (vector_and_string) {
      const std::vector<Tensor> state = {exp_avg, exp_avg_sq};
      out = mybag::fused_embedding_bag(b.input, weight, state, step, b.offsets, std::nullopt,
                                       2.0, false, "sum", b.psw, false, 2, "adam", 0.01, 1e-8,
                                       0.8, 0.9, 0.1);
    } else {
      out = mybag::fused_embedding_bag(b.input, weight, {exp_avg, exp_avg_sq}, step, b.offsets,
                                       std::nullopt, 2.0, false, mybag::Mode::Sum, b.psw, false,
                                       2, "adam", 0.01, 1e-8, 0.8, 0.9, 0.1);
    }
    loss_of(out, b).backward();
    EXPECT_EQUAL(weight, bag->weight);
    EXPECT_EQUAL(exp_avg, bag->exp_avg);
    EXPECT_EQUAL(exp_avg_sq, bag->exp_avg_sq);
    EXPECT_EQ(step.item<int64_t>(), 1);
    EXPECT(!weight.grad().defined());
  }
  {
    SCOPE("defaults: sgd, lr 1e-3, mean");
    auto weight = table.clone().requires_grad_();
    auto step = torch::zeros({}, torch::kLong);
    const auto input = torch::tensor({{0, 1}, {1, 4}}, torch::kLong);
    mybag::fused_embedding_bag(input, weight, {}, step).sum().backward();
    // d(sum of means)/d(row) = (number of bags naming it) / 2.
    auto expected = table.clone();
    expected[0] -= 1e-3 * 0.5;
    expected[1] -= 1e-3 * 1.0;
    expected[4] -= 1e-3 * 0.5;
    EXPECT_CLOSE(weight, expected);
  }
}

void test_errors() {
  const auto options = mybag::FusedEmbeddingBagOptions(kNum, kDim);
  EXPECT_THROWS(c10::ValueError,
                mybag::FusedEmbeddingBag(mybag::FusedEmbeddingBagOptions(options).optimizer(
                    "adamw")),
                "optimizer has to be one of", "'adamw'");
  EXPECT_THROWS(c10::ValueError,
                mybag::FusedEmbeddingBag(mybag::FusedEmbeddingBagOptions(options).lr(-1.0)),
                "lr has to be a finite number >= 0");
  EXPECT_THROWS(c10::ValueError,
                mybag::FusedEmbeddingBag(mybag::FusedEmbeddingBagOptions(options)
                                             .optimizer("adam")
                                             .betas(std::make_tuple(0.9, 1.0))),
                "betas[1]");
  EXPECT_THROWS(c10::ValueError,
                mybag::FusedEmbeddingBag(mybag::FusedEmbeddingBagOptions(options)
                                             .optimizer("adagrad")
                                             .initial_accumulator_value(-0.5)),
                "initial_accumulator_value");
  EXPECT_THROWS(c10::ValueError,
                mybag::FusedEmbeddingBag(mybag::FusedEmbeddingBagOptions(options)
                                             .mode(torch::kMax)
                                             .scale_grad_by_freq(true)),
                "scale_grad_by_freq");
  EXPECT_THROWS(c10::ValueError,
                mybag::FusedEmbeddingBag(mybag::FusedEmbeddingBagOptions(options).padding_idx(
                    kNum)),
                "padding_idx=10 is out of range");
  EXPECT_THROWS(c10::ValueError,
                mybag::FusedEmbeddingBag(mybag::FusedEmbeddingBagOptions(options)._weight(
                    torch::randn({kNum, 3}))),
                "mybag::FusedEmbeddingBag: _weight has to have shape");
  // A hyperparameter set out of range after construction is refused by the forward.
  mybag::FusedEmbeddingBag bag(options);
  const auto input = torch::tensor({{1, 2}}, torch::kLong);
  bag->options.lr(std::nan(""));
  EXPECT_THROWS(c10::ValueError, bag(input), "lr");
  // The functional form: the optimizer's name, and a state that does not fit it.
  auto weight = torch::randn({kNum, kDim}).requires_grad_();
  auto step = torch::zeros({}, torch::kLong);
  EXPECT_THROWS(c10::ValueError,
                mybag::fused_embedding_bag(input, weight, {}, step, std::nullopt, std::nullopt,
                                           2.0, false, "mean", std::nullopt, false, std::nullopt,
                                           "momentum"),
                "optimizer has to be one of");
  EXPECT_THROWS(c10::Error,
                mybag::fused_embedding_bag(input, weight, {}, step, std::nullopt, std::nullopt,
                                           2.0, false, "mean", std::nullopt, false, std::nullopt,
                                           "adagrad"),
                "keeps 1 state tensor(s), but state holds 0");
}

void test_pretty_print() {
  std::ostringstream plain;
  plain << *mybag::FusedEmbeddingBag(kNum, kDim);
  EXPECT_EQ(plain.str(), std::string("mybag::FusedEmbeddingBag(num_embeddings=10, "
                                     "embedding_dim=5, mode=mean, optimizer=sgd, lr=0.001)"));
  std::ostringstream full;
  full << *mybag::FusedEmbeddingBag(mybag::FusedEmbeddingBagOptions(kNum, kDim)
                                        .mode(torch::kSum)
                                        .max_norm(1.5)
                                        .include_last_offset(true)
                                        .padding_idx(-3)
                                        .optimizer("adam")
                                        .weight_decay(0.5));
  EXPECT_EQ(full.str(),
            std::string("mybag::FusedEmbeddingBag(num_embeddings=10, embedding_dim=5, "
                        "max_norm=1.5, mode=sum, include_last_offset=true, padding_idx=7, "
                        "optimizer=adam, lr=0.001, eps=1e-08, betas=(0.9, 0.999), "
                        "weight_decay=0.5)"));
  std::ostringstream adagrad;
  adagrad << *mybag::FusedEmbeddingBag(
      mybag::FusedEmbeddingBagOptions(kNum, kDim).optimizer("adagrad").lr_decay(0.25));
  EXPECT_EQ(adagrad.str(), std::string("mybag::FusedEmbeddingBag(num_embeddings=10, "
                                       "embedding_dim=5, mode=mean, optimizer=adagrad, lr=0.01, "
                                       "eps=1e-10, lr_decay=0.25)"));
}

}  // namespace

int main() {
  RUN(test_sgd_and_adagrad_match_torch);
  RUN(test_adam_and_rowwise_adagrad_match_reference);
  RUN(test_buffers_and_defaults);
  RUN(test_steps_and_gradients);
  RUN(test_hyperparameters_between_steps);
  RUN(test_save_load_resumes_exactly);
  RUN(test_to);
  RUN(test_clone);
  RUN(test_from_embedding_bag);
  RUN(test_functional);
  RUN(test_errors);
  RUN(test_pretty_print);
  return check::report("test_fused");
}
