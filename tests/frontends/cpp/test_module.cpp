// mybag::EmbeddingBag (the C++ module) against torch::nn::EmbeddingBag: the same options and
// weights give the same forward and backward; options, initialization, from_pretrained, clone(),
// SGD training, use inside a user's module, serialization and pretty_print.
#include <mybag/mybag.h>
#include <torch/torch.h>

#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "check.h"

using torch::Tensor;

namespace {

constexpr int64_t kNum = 10;
constexpr int64_t kDim = 5;

struct Inputs {
  Tensor input, offsets, psw, grad_out;
};

// 1-D input with offsets (an empty bag; offsets[-1] == N when include_last_offset), or 2-D.
Inputs make_inputs(bool two_d, bool include_last_offset, std::optional<int64_t> padding_idx,
                   bool psw, uint64_t seed) {
  torch::manual_seed(seed);
  Inputs in;
  int64_t bags = 0;
  if (two_d) {
    in.input = torch::randint(0, kNum, {4, 3}, torch::kLong);
    bags = 4;
  } else {
    in.input = torch::randint(0, kNum, {11}, torch::kLong);
    std::vector<int64_t> offsets = {0, 4, 4, 9};
    bags = 4;
    if (include_last_offset) offsets.push_back(11);
    in.offsets = torch::tensor(offsets, torch::kLong);
  }
  if (padding_idx) {
    const int64_t p = *padding_idx < 0 ? *padding_idx + kNum : *padding_idx;
    in.input.view(-1).index_put_({1}, p);
    in.input.view(-1).index_put_({6}, p);
  }
  if (psw) in.psw = torch::rand(in.input.sizes()) + 0.5;
  in.grad_out = torch::randn({bags, kDim});
  return in;
}

struct Result {
  Tensor out, weight_grad, psw_grad, weight_after;
};

template <typename Module>
Result forward_backward(Module& module, const Inputs& in) {
  module->zero_grad();
  Tensor p = in.psw.defined() ? in.psw.clone().requires_grad_() : Tensor();
  auto out = module->forward(in.input, in.offsets, p);
  out.backward(in.grad_out);
  return {out.detach(), module->weight.grad(), p.defined() ? p.grad() : Tensor(),
          module->weight.detach().clone()};
}

void check_same(const Result& got, const Result& expected) {
  EXPECT_CLOSE(got.out, expected.out);
  EXPECT_CLOSE(got.weight_grad, expected.weight_grad);
  EXPECT_CLOSE(got.psw_grad, expected.psw_grad);
  EXPECT_CLOSE(got.weight_after, expected.weight_after);
}

void copy_weight(const Tensor& from, Tensor& to) {
  torch::NoGradGuard no_grad;
  to.copy_(from);
}

std::string padding_name(std::optional<int64_t> p) { return p ? std::to_string(*p) : "none"; }

// --------------------------------------------------------------------------------------------

void test_parity_with_torch_module() {
  const std::vector<torch::nn::EmbeddingBagMode> modes = {torch::kSum, torch::kMean, torch::kMax};
  int cases = 0;
  uint64_t seed = 1;
  for (const auto& mode : modes) {
    const bool sum = std::holds_alternative<torch::enumtype::kSum>(mode);
    for (const auto padding_idx : {std::optional<int64_t>(), std::optional<int64_t>(3),
                                   std::optional<int64_t>(-2)}) {
      for (const char* form : {"1d", "last", "2d"}) {
        for (const auto max_norm : {std::optional<double>(), std::optional<double>(1.0)}) {
          const bool two_d = std::string(form) == "2d";
          const bool last = std::string(form) == "last";
          SCOPE("mode=", torch::enumtype::get_enum_name(mode), " padding_idx=",
                padding_name(padding_idx), " form=", form, " max_norm=", max_norm.value_or(0));
          const auto options = mybag::EmbeddingBagOptions(kNum, kDim)
                                   .mode(mode)
                                   .padding_idx(padding_idx)
                                   .include_last_offset(last)
                                   .max_norm(max_norm);
          torch::manual_seed(seed);
          torch::nn::EmbeddingBag ref(options);
          mybag::EmbeddingBag mine(options);
          copy_weight(ref->weight, mine->weight);
          // Both store padding_idx non-negative.
          EXPECT(mine->options.padding_idx() == ref->options.padding_idx());
          const auto in = make_inputs(two_d, last, padding_idx, sum, seed++);
          const auto expected = forward_backward(ref, in);
          const auto got = forward_backward(mine, in);
          check_same(got, expected);
          // A second step from the (possibly renormalized) weights still agrees.
          check_same(forward_backward(mine, in), forward_backward(ref, in));
          ++cases;
        }
      }
    }
  }
  EXPECT_EQ(cases, 54);
}

void test_options_and_init() {
  {
    SCOPE("negative padding_idx");
    torch::manual_seed(5);
    torch::nn::EmbeddingBag ref(torch::nn::EmbeddingBagOptions(kNum, kDim).padding_idx(-2));
    torch::manual_seed(5);
    mybag::EmbeddingBag mine(mybag::EmbeddingBagOptions(kNum, kDim).padding_idx(-2));
    EXPECT(mine->options.padding_idx() == std::optional<int64_t>(kNum - 2));
    EXPECT_EQ(mine->weight.sizes(), torch::IntArrayRef({kNum, kDim}));
    EXPECT_EQ(mine->weight.scalar_type(), torch::kFloat);
    EXPECT(mine->weight.requires_grad());
    // The padding row is zero (as in torch.nn.EmbeddingBag; torch's C++ module zeroes it before
    // filling, so its row is not), and the rest comes from the same random stream as torch's.
    EXPECT_EQUAL(mine->weight[kNum - 2], torch::zeros({kDim}));
    auto others = torch::ones({kNum}, torch::kBool).index_put_({kNum - 2}, false);
    EXPECT_EQUAL(mine->weight.index({others}), ref->weight.index({others}));
    // reset_parameters() refills and zeroes the padding row again.
    const auto before = mine->weight.detach().clone();
    mine->reset_parameters();
    EXPECT(!torch::equal(mine->weight, before));
    EXPECT_EQUAL(mine->weight[kNum - 2], torch::zeros({kDim}));
    // One parameter, named "weight", and no buffers.
    const auto names = mine->named_parameters().keys();
    EXPECT_EQ(names.size(), 1u);
    EXPECT_EQ(names.at(0), std::string("weight"));
    EXPECT_EQ(mine->buffers().size(), 0u);
  }
  {
    SCOPE("padding_idx out of range");
    // A ValueError with the Python module's text (tests/frontends/test_module.py checks that side).
    const std::string too_high = "EmbeddingBag: padding_idx=" + std::to_string(kNum) +
                                 " is out of range; expected an integer in [-num_embeddings, "
                                 "num_embeddings) = [" + std::to_string(-kNum) + ", " +
                                 std::to_string(kNum) + ")";
    const std::string too_low = "EmbeddingBag: padding_idx=" + std::to_string(-kNum - 1) +
                                " is out of range";
    EXPECT_THROWS(c10::ValueError,
                  mybag::EmbeddingBag(mybag::EmbeddingBagOptions(kNum, kDim).padding_idx(kNum)),
                  too_high.c_str());
    EXPECT_THROWS(c10::ValueError,
                  mybag::EmbeddingBag(
                      mybag::EmbeddingBagOptions(kNum, kDim).padding_idx(-kNum - 1)),
                  too_low.c_str());
    mybag::EmbeddingBag lowest(mybag::EmbeddingBagOptions(kNum, kDim).padding_idx(-kNum));
    EXPECT(lowest->options.padding_idx() == std::optional<int64_t>(0));
  }
  {
    SCOPE("_weight");
    auto table = torch::randn({kNum, kDim}, torch::kDouble);
    mybag::EmbeddingBag mine(mybag::EmbeddingBagOptions(kNum, kDim)._weight(table));
    EXPECT_EQ(mine->weight.data_ptr(), table.data_ptr());  // used as is, as torch does
    EXPECT_EQ(mine->weight.scalar_type(), torch::kDouble);
    EXPECT_THROWS(c10::ValueError,
                  mybag::EmbeddingBag(
                      mybag::EmbeddingBagOptions(kNum, kDim)._weight(torch::randn({kNum, 3}))),
                  "_weight");
  }
  {
    SCOPE("forward default arguments and errors");
    mybag::EmbeddingBag mine(mybag::EmbeddingBagOptions(kNum, kDim).mode(torch::kSum));
    const auto input = torch::randint(0, kNum, {3, 4}, torch::kLong);
    const auto expected = mine->forward(input, Tensor(), Tensor());
    EXPECT_EQUAL(mine(input), expected);
    // Through AnyModule, which relies on FORWARD_HAS_DEFAULT_ARGS.
    torch::nn::AnyModule any(mine);
    EXPECT_EQUAL(any.forward(input), expected);
    EXPECT_THROWS(c10::IndexError, mine(input.clone().index_put_({1, 1}, kNum)), "input");
    EXPECT_THROWS(c10::ValueError, mine(input.view(-1)), "offsets");
    EXPECT_THROWS(c10::NotImplementedError,
                  mybag::EmbeddingBag(mybag::EmbeddingBagOptions(kNum, kDim))
                      ->forward(input, Tensor(), torch::rand({3, 4})),
                  "per_sample_weights");
  }
}

void test_from_pretrained() {
  for (const bool freeze : {true, false}) {
    SCOPE("freeze=", freeze);
    torch::manual_seed(9);
    const auto table = torch::randn({kNum, kDim});
    const auto options = torch::nn::EmbeddingBagFromPretrainedOptions()
                             .freeze(freeze)
                             .mode(torch::kSum)
                             .padding_idx(4)
                             .include_last_offset(true);
    auto mine_table = table.clone();
    auto mine = mybag::EmbeddingBag::from_pretrained(mine_table, options);
    // torch::nn::EmbeddingBag::from_pretrained drops include_last_offset (torch's C++ API,
    // unlike its Python one): build the reference from the options instead.
    torch::nn::EmbeddingBag ref(torch::nn::EmbeddingBagOptions(kNum, kDim)
                                    ._weight(table.clone())
                                    .mode(torch::kSum)
                                    .padding_idx(4)
                                    .include_last_offset(true));
    ref->weight.set_requires_grad(!freeze);
    EXPECT_EQ(mine->weight.requires_grad(), !freeze);
    EXPECT_EQ(mine->weight.data_ptr(), mine_table.data_ptr());  // no copy
    EXPECT_EQUAL(mine->weight[4], table[4]);                     // padding row left as given
    EXPECT(mine->options.padding_idx() == std::optional<int64_t>(4));
    EXPECT(mine->options.include_last_offset());
    const auto in = make_inputs(false, true, 4, true, 10);
    if (freeze) {
      auto p = in.psw.clone().requires_grad_();
      auto out = mine->forward(in.input, in.offsets, p);
      EXPECT_CLOSE(out, ref->forward(in.input, in.offsets, in.psw));
      out.backward(in.grad_out);
      EXPECT(!mine->weight.grad().defined());
      EXPECT(p.grad().defined());
    } else {
      check_same(forward_backward(mine, in), forward_backward(ref, in));
    }
  }
  EXPECT_THROWS(c10::ValueError, mybag::EmbeddingBag::from_pretrained(torch::randn({kNum})),
                "2-D");
}

void test_clone() {
  torch::manual_seed(13);
  mybag::EmbeddingBag original(
      mybag::EmbeddingBagOptions(kNum, kDim).mode(torch::kMean).padding_idx(-1).max_norm(2.0));
  auto copy = std::dynamic_pointer_cast<mybag::EmbeddingBagImpl>(original->clone());
  EXPECT(copy != nullptr);
  EXPECT(copy->options.padding_idx() == std::optional<int64_t>(kNum - 1));
  EXPECT(copy->options.max_norm() == std::optional<double>(2.0));
  EXPECT(std::holds_alternative<torch::enumtype::kMean>(copy->options.mode()));
  EXPECT_EQUAL(copy->weight, original->weight);
  EXPECT(copy->weight.data_ptr() != original->weight.data_ptr());
  EXPECT(copy->weight.requires_grad());
  EXPECT_EQ(copy->parameters().size(), 1u);
  const auto in = make_inputs(false, false, -1, false, 14);
  EXPECT_EQUAL(copy->forward(in.input, in.offsets), original->forward(in.input, in.offsets));
  // Independent: training the copy leaves the original alone.
  const auto before = original->weight.detach().clone();
  torch::optim::SGD sgd(copy->parameters(), torch::optim::SGDOptions(0.5));
  copy->forward(in.input, in.offsets).pow(2).sum().backward();
  sgd.step();
  EXPECT(!torch::equal(copy->weight, before));
  EXPECT_EQUAL(original->weight, before);
  EXPECT(!original->weight.grad().defined());
}

// A module around a given table (from_pretrained, _weight) clones into an independent copy too:
// training the clone changes neither the original module nor the caller's table.
void test_clone_of_pretrained() {
  torch::manual_seed(17);
  const Tensor table = torch::randn({kNum, kDim});
  const Tensor table_before = table.clone();
  auto original = mybag::EmbeddingBag::from_pretrained(
      table, torch::nn::EmbeddingBagFromPretrainedOptions().freeze(false).mode(torch::kSum));
  auto copy = std::dynamic_pointer_cast<mybag::EmbeddingBagImpl>(original->clone());
  EXPECT(copy != nullptr);
  EXPECT_EQUAL(copy->weight, original->weight);
  EXPECT(copy->weight.data_ptr() != original->weight.data_ptr());
  const auto in = make_inputs(false, false, -1, false, 15);
  torch::optim::SGD sgd(copy->parameters(), torch::optim::SGDOptions(0.5));
  copy->forward(in.input, in.offsets).pow(2).sum().backward();
  sgd.step();
  EXPECT(!torch::equal(copy->weight, table_before));
  EXPECT_EQUAL(original->weight, table_before);
  EXPECT_EQUAL(table, table_before);
}

// The same SGD loop on both modules gives the same weights after every step.
template <typename Module>
std::vector<Tensor> train(Module& module, const Inputs& in, const Tensor& target, int steps) {
  torch::optim::SGD sgd(module->parameters(), torch::optim::SGDOptions(0.1));
  std::vector<Tensor> weights;
  for (int step = 0; step < steps; ++step) {
    sgd.zero_grad();
    auto loss = torch::mse_loss(module->forward(in.input, in.offsets, in.psw), target);
    loss.backward();
    sgd.step();
    weights.push_back(module->weight.detach().clone());
  }
  return weights;
}

void test_sgd_training() {
  struct Case {
    torch::nn::EmbeddingBagMode mode;
    std::optional<int64_t> padding_idx;
    bool sparse;
    std::optional<double> max_norm;
  };
  const std::vector<Case> cases = {{torch::kSum, 2, false, {}},
                                   {torch::kMean, -1, false, {}},
                                   {torch::kMax, 0, false, {}},
                                   {torch::kSum, 2, true, {}},
                                   {torch::kMean, {}, false, 1.2}};
  uint64_t seed = 20;
  for (const auto& c : cases) {
    SCOPE("mode=", torch::enumtype::get_enum_name(c.mode), " padding_idx=",
          padding_name(c.padding_idx), " sparse=", c.sparse, " max_norm=", c.max_norm.value_or(0));
    const auto options = mybag::EmbeddingBagOptions(kNum, kDim)
                             .mode(c.mode)
                             .padding_idx(c.padding_idx)
                             .sparse(c.sparse)
                             .max_norm(c.max_norm);
    torch::manual_seed(seed);
    torch::nn::EmbeddingBag ref(options);
    mybag::EmbeddingBag mine(options);
    copy_weight(ref->weight, mine->weight);
    const auto initial = mine->weight.detach().clone();
    const auto in = make_inputs(false, false, c.padding_idx,
                                std::holds_alternative<torch::enumtype::kSum>(c.mode), seed++);
    const auto target = torch::randn({4, kDim});
    const auto expected = train(ref, in, target, 4);
    const auto got = train(mine, in, target, 4);
    for (size_t step = 0; step < got.size(); ++step) {
      SCOPE("step ", step);
      EXPECT_CLOSE(got[step], expected[step]);
    }
    EXPECT(!torch::equal(got.back(), initial));  // it did train
    if (c.padding_idx) {
      // The padding row gets no gradient: unchanged unless renormalized.
      const int64_t p = *c.padding_idx < 0 ? *c.padding_idx + kNum : *c.padding_idx;
      if (!c.max_norm) EXPECT_EQUAL(got.back()[p], initial[p]);
    }
  }
}

// A user's module holding a mybag::EmbeddingBag (register_module), next to one holding torch's.
template <typename Bag>
struct NetImpl : torch::nn::Module {
  explicit NetImpl(const torch::nn::EmbeddingBagOptions& options)
      : bag(register_module("bag", Bag(options))),
        linear(register_module("linear", torch::nn::Linear(kDim, 2))) {}
  Tensor forward(const Tensor& input, const Tensor& offsets) {
    return linear(torch::relu(bag(input, offsets)));
  }
  Bag bag;
  torch::nn::Linear linear;
};

void test_inside_a_user_module() {
  const auto options = mybag::EmbeddingBagOptions(kNum, kDim).mode(torch::kSum).padding_idx(7);
  torch::manual_seed(30);
  auto ref = std::make_shared<NetImpl<torch::nn::EmbeddingBag>>(options);
  auto mine = std::make_shared<NetImpl<mybag::EmbeddingBag>>(options);
  // The same parameter names, so a state copies over by name.
  const auto ref_params = ref->named_parameters();
  auto mine_params = mine->named_parameters();
  EXPECT_EQ(mine_params.size(), 3u);
  EXPECT(mine_params.contains("bag.weight"));
  for (const auto& item : ref_params) {
    EXPECT(mine_params.contains(item.key()));
    if (mine_params.contains(item.key())) copy_weight(item.value(), mine_params[item.key()]);
  }
  const auto in = make_inputs(false, false, 7, false, 31);
  const auto target = torch::randn({4, 2});
  auto run = [&](auto& net) {
    torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.1));
    for (int step = 0; step < 3; ++step) {
      sgd.zero_grad();
      torch::mse_loss(net->forward(in.input, in.offsets), target).backward();
      sgd.step();
    }
    return net->forward(in.input, in.offsets).detach();
  };
  EXPECT_CLOSE(run(mine), run(ref));
  for (const auto& item : ref_params) {
    SCOPE(item.key());
    EXPECT_CLOSE(mine_params[item.key()], item.value());
  }
  // pretty_print shows the nested module.
  std::ostringstream printed;
  printed << *mine;
  EXPECT(printed.str().find("(bag): mybag::EmbeddingBag(num_embeddings=10") != std::string::npos);
  // The mybag module trains a net that is then moved to double, like any torch module.
  mine->to(torch::kDouble);
  EXPECT_EQ(mine->bag->weight.scalar_type(), torch::kDouble);
  EXPECT_EQ(mine->forward(in.input, in.offsets).scalar_type(), torch::kDouble);
}

// A mybag::EmbeddingBag's saved state loads into torch::nn::EmbeddingBag and back.
void test_serialization() {
  torch::manual_seed(40);
  mybag::EmbeddingBag mine(mybag::EmbeddingBagOptions(kNum, kDim).mode(torch::kMax));
  torch::nn::EmbeddingBag ref(torch::nn::EmbeddingBagOptions(kNum, kDim).mode(torch::kMax));
  std::stringstream stream;
  torch::save(mine, stream);
  torch::load(ref, stream);
  EXPECT_EQUAL(ref->weight, mine->weight);
  mybag::EmbeddingBag back(mybag::EmbeddingBagOptions(kNum, kDim).mode(torch::kMax));
  std::stringstream stream2;
  torch::nn::EmbeddingBag source(torch::nn::EmbeddingBagOptions(kNum, kDim));
  torch::save(source, stream2);
  torch::load(back, stream2);
  EXPECT_EQUAL(back->weight, source->weight);
}

void test_pretty_print() {
  std::ostringstream plain;
  plain << *mybag::EmbeddingBag(kNum, kDim);
  EXPECT_EQ(plain.str(), std::string("mybag::EmbeddingBag(num_embeddings=10, embedding_dim=5, "
                                     "mode=mean)"));
  std::ostringstream full;
  mybag::EmbeddingBag bag(mybag::EmbeddingBagOptions(kNum, kDim)
                               .mode(torch::kSum)
                               .max_norm(1.5)
                               .norm_type(1.0)
                               .scale_grad_by_freq(true)
                               .sparse(true)
                               .include_last_offset(true)
                               .padding_idx(-3));
  full << *bag;
  EXPECT_EQ(full.str(),
            std::string("mybag::EmbeddingBag(num_embeddings=10, embedding_dim=5, max_norm=1.5, "
                        "norm_type=1, scale_grad_by_freq=true, sparse=true, mode=sum, "
                        "include_last_offset=true, padding_idx=7)"));
}

}  // namespace

int main() {
  RUN(test_parity_with_torch_module);
  RUN(test_options_and_init);
  RUN(test_from_pretrained);
  RUN(test_clone);
  RUN(test_clone_of_pretrained);
  RUN(test_sgd_training);
  RUN(test_inside_a_user_module);
  RUN(test_serialization);
  RUN(test_pretty_print);
  return check::report("test_module");
}
