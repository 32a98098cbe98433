// TorchScript models saved by Python (tests/frontends/cpp/make_scripted_model.py) load and run in a C++
// program with no Python (docs/spec.md §7): forward equals Python's, backward gives Python's
// gradients, and K SGD steps in C++ give the weights K steps gave in Python.
//
//   test_torchscript DATA_DIR      (the directory make_scripted_model.py wrote)
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "check.h"

using torch::Tensor;

namespace {

std::string data_dir;
torch::jit::Module expected_values;

Tensor expected(const char* name) {
  if (!expected_values.hasattr(name)) {
    check::record(false, __FILE__, __LINE__, check::str("expected.pt has no tensor named ", name));
    return Tensor();
  }
  return expected_values.attr(name).toTensor();
}

torch::jit::Module load(const char* file) { return torch::jit::load(data_dir + "/" + file); }

// Assert-close-like tolerance for values computed in Python and in C++.
constexpr double kTol = 1e-5;

// --------------------------------------------------------------------------------------------

void test_operator_registered() {
  // mybag::mybag links with --no-as-needed: the library's static initializers ran although this
  // program references none of its symbols.
  for (const char* name : {"mybag::embedding_bag", "mybag::_embedding_bag_forward",
                           "mybag::_embedding_bag_renorm_"}) {
    SCOPE(name);
    EXPECT(c10::Dispatcher::singleton().findSchema({name, ""}).has_value());
  }
}

void test_model_forward() {
  auto model = load("model.pt");
  const auto out = model.forward({expected("input"), expected("offsets")}).toTensor();
  EXPECT_CLOSE_TOL(out, expected("output"), kTol, kTol);
  EXPECT_EQ(out.sizes(), torch::IntArrayRef({4, 3}));
  // The scripted module's forward, inlined, calls the operator.
  auto graph = model.get_method("forward").graph()->copy();
  torch::jit::Inline(*graph);
  EXPECT(graph->toString().find("mybag::embedding_bag") != std::string::npos);
  // Under no-grad too.
  torch::NoGradGuard no_grad;
  EXPECT_CLOSE_TOL(model.forward({expected("input"), expected("offsets")}).toTensor(),
                   expected("output"), kTol, kTol);
}

void test_model_backward() {
  auto model = load("model.pt");
  auto loss = torch::mse_loss(model.forward({expected("input"), expected("offsets")}).toTensor(),
                              expected("target"));
  loss.backward();
  const auto bag_weight = model.attr("bag").toModule().attr("weight").toTensor();
  EXPECT_CLOSE_TOL(bag_weight.grad(), expected("bag_weight_grad"), kTol, kTol);
  // The padding row (2) gets no gradient.
  EXPECT_EQUAL(bag_weight.grad()[2], torch::zeros({4}));
}

void test_model_training() {
  auto model = load("model.pt");
  std::vector<Tensor> parameters;
  for (const auto& p : model.parameters()) parameters.push_back(p);
  EXPECT_EQ(parameters.size(), 3u);
  const auto initial = model.attr("bag").toModule().attr("weight").toTensor().detach().clone();
  const double lr = expected("lr").item<double>();
  const int64_t steps = expected("steps").item<int64_t>();
  EXPECT_EQ(steps, 3);
  torch::optim::SGD sgd(parameters, torch::optim::SGDOptions(lr));
  for (int64_t step = 0; step < steps; ++step) {
    sgd.zero_grad();
    auto out = model.forward({expected("input"), expected("offsets")}).toTensor();
    torch::mse_loss(out, expected("target")).backward();
    sgd.step();
  }
  const std::vector<std::pair<std::string, const char*>> names = {
      {"bag.weight", "trained_bag_weight"},
      {"linear.weight", "trained_linear_weight"},
      {"linear.bias", "trained_linear_bias"}};
  int found = 0;
  for (const auto& item : model.named_parameters()) {
    for (const auto& [name, key] : names) {
      if (item.name != name) continue;
      SCOPE(name);
      ++found;
      EXPECT_CLOSE_TOL(item.value, expected(key), kTol, kTol);
    }
  }
  EXPECT_EQ(found, 3);
  EXPECT(!torch::equal(model.attr("bag").toModule().attr("weight").toTensor(), initial));
}

void test_max_model() {
  auto model = load("max_model.pt");
  const auto input = expected("max_input");
  EXPECT_EQ(input.scalar_type(), torch::kInt);
  auto out = model.forward({input, expected("max_offsets")}).toTensor();
  EXPECT_CLOSE_TOL(out, expected("max_output"), kTol, kTol);
  out.backward(expected("max_grad_out"));
  EXPECT_CLOSE_TOL(model.attr("bag").toModule().attr("weight").toTensor().grad(),
                   expected("max_weight_grad"), kTol, kTol);
}

void test_op_module() {
  auto module = load("op_module.pt");
  auto psw = expected("op_psw").clone().requires_grad_();
  auto out = module.forward({expected("op_input"), psw}).toTensor();
  EXPECT_CLOSE_TOL(out, expected("op_output"), kTol, kTol);
  const auto weight = module.attr("weight").toTensor();
  // max_norm renormalized the referenced rows in place, as in Python.
  EXPECT_CLOSE_TOL(weight, expected("op_weight_after"), kTol, kTol);
  out.backward(expected("op_grad_out"));
  EXPECT_CLOSE_TOL(weight.grad(), expected("op_weight_grad"), kTol, kTol);
  EXPECT_CLOSE_TOL(psw.grad(), expected("op_psw_grad"), kTol, kTol);
  // Optional per_sample_weights: None from C++ is accepted.
  auto unweighted = module.forward({expected("op_input"), torch::jit::IValue()}).toTensor();
  EXPECT_EQ(unweighted.sizes(), out.sizes());
}

void test_op_function() {
  auto function = load("op_function.pt");
  const auto out =
      function.forward({expected("fn_input"), expected("fn_weight"), expected("fn_offsets")})
          .toTensor();
  EXPECT_EQ(out.scalar_type(), torch::kDouble);
  EXPECT_CLOSE_TOL(out, expected("fn_output"), 1e-12, 1e-12);
}

void test_errors_through_script() {
  auto model = load("model.pt");
  const auto bad = expected("input").clone().index_put_({3}, 10);
  // The interpreter rethrows the library's error as a std::runtime_error, message included.
  EXPECT_THROWS_ANY(model.forward({bad, expected("offsets")}),
                     "input[3] = 10 is out of range");
  // Still usable.
  EXPECT_CLOSE_TOL(model.forward({expected("input"), expected("offsets")}).toTensor(),
                   expected("output"), kTol, kTol);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " DATA_DIR (written by make_scripted_model.py)\n";
    return 2;
  }
  data_dir = argv[1];
  try {
    expected_values = torch::jit::load(data_dir + "/expected.pt");
  } catch (const c10::Error& e) {
    std::cerr << "cannot load " << data_dir << "/expected.pt: " << e.what_without_backtrace()
              << "\n";
    return 1;
  }
  RUN(test_operator_registered);
  RUN(test_model_forward);
  RUN(test_model_backward);
  RUN(test_model_training);
  RUN(test_max_model);
  RUN(test_op_module);
  RUN(test_op_function);
  RUN(test_errors_through_script);
  return check::report("test_torchscript");
}
