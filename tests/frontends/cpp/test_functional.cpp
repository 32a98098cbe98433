// mybag::embedding_bag (the C++ functional API) against torch::nn::functional::embedding_bag:
// forward and backward through C++ autograd for every mode, input form, padding_idx,
// per_sample_weights, weight and index dtype; the Mode overload; sparse gradients; max_norm;
// scale_grad_by_freq (against a hand-computed value, docs/spec.md §5); and the errors of bad
// input.
#include <mybag/mybag.h>
#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include "check.h"

namespace F = torch::nn::functional;
using torch::Tensor;

namespace {

constexpr int64_t kNum = 10;  // num_embeddings
constexpr int64_t kDim = 5;   // embedding_dim

torch::nn::EmbeddingBagMode torch_mode(const std::string& mode) {
  if (mode == "sum") return torch::kSum;
  if (mode == "mean") return torch::kMean;
  return torch::kMax;
}

mybag::Mode enum_mode(const std::string& mode) {
  if (mode == "sum") return mybag::Mode::Sum;
  if (mode == "mean") return mybag::Mode::Mean;
  return mybag::Mode::Max;
}

std::optional<Tensor> opt(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

// Input forms: "1d" (offsets), "last" (1-D, include_last_offset=true, offsets[-1] == N), "2d".
struct Data {
  Tensor input;    // int64
  Tensor offsets;  // int64, undefined for "2d"
  Tensor weight;
  Tensor psw;       // per_sample_weights, or undefined
  Tensor grad_out;  // (B, D), for backward
  int64_t bags = 0;
  bool include_last_offset = false;
};

// Deterministic data. Bags include an empty one, repeated indices, padding entries and (when
// padding_idx is set) a bag holding only padding.
Data make_data(const std::string& form, std::optional<int64_t> padding_idx, bool psw,
               torch::Dtype dtype, uint64_t seed) {
  torch::manual_seed(seed);
  Data d;
  d.weight = torch::randn({kNum, kDim}, torch::dtype(dtype)) * 2;
  if (form == "2d") {
    d.input = torch::randint(0, kNum, {4, 3}, torch::kLong);
    d.input.index_put_({1, 2}, d.input.index({1, 0}));  // a repeat within a bag
    d.bags = 4;
  } else {
    d.input = torch::randint(0, kNum, {13}, torch::kLong);
    d.input.index_put_({2}, d.input.index({1}));
    std::vector<int64_t> offsets = {0, 3, 3, 7, 12};  // bag 1 empty, bag 4 = {input[12]}
    d.bags = 5;
    if (form == "last") {
      offsets.push_back(13);
      d.include_last_offset = true;
    }
    d.offsets = torch::tensor(offsets, torch::kLong);
  }
  if (padding_idx) {
    const int64_t p = *padding_idx < 0 ? *padding_idx + kNum : *padding_idx;
    auto flat = d.input.view(-1);
    if (form == "2d") {
      flat.index_put_({0}, p);
      d.input.index_put_({3}, p);  // row 3: only padding
    } else {
      flat.index_put_({0}, p);
      flat.index_put_({5}, p);
      flat.index_put_({12}, p);  // bag 4: only padding
    }
  }
  if (psw) d.psw = torch::rand(d.input.sizes(), torch::dtype(dtype)) + 0.5;
  d.grad_out = torch::randn({d.bags, kDim}, torch::dtype(dtype));
  return d;
}

struct Result {
  Tensor out, weight_grad, psw_grad, weight_after;
};

// Runs fn(weight, psw) on fresh leaves, then backward with grad_out.
template <typename Fn>
Result forward_backward(Fn fn, const Data& d) {
  auto w = d.weight.clone().requires_grad_(true);
  Tensor p = d.psw.defined() ? d.psw.clone().requires_grad_(true) : Tensor();
  auto out = fn(w, p);
  out.backward(d.grad_out);
  return {out.detach(), w.grad(), p.defined() ? p.grad() : Tensor(), w.detach()};
}

void check_same(const Result& got, const Result& expected) {
  EXPECT_CLOSE(got.out, expected.out);
  EXPECT_CLOSE(got.weight_grad, expected.weight_grad);
  EXPECT_CLOSE(got.psw_grad, expected.psw_grad);
  EXPECT_CLOSE(got.weight_after, expected.weight_after);
}

// torch's functional, with indices as int64 and padding_idx made non-negative (the C++ functional
// does not normalize it; torch.nn.functional does).
Tensor torch_reference(const Data& d, const Tensor& w, const Tensor& p, const std::string& mode,
                       std::optional<int64_t> padding_idx, std::optional<double> max_norm = {},
                       bool sparse = false, double norm_type = 2.0) {
  auto options = F::EmbeddingBagFuncOptions()
                     .mode(torch_mode(mode))
                     .include_last_offset(d.include_last_offset)
                     .sparse(sparse)
                     .norm_type(norm_type);
  if (d.offsets.defined()) options.offsets(d.offsets.to(torch::kLong));
  if (p.defined()) options.per_sample_weights(p);
  if (padding_idx) options.padding_idx(*padding_idx < 0 ? *padding_idx + kNum : *padding_idx);
  if (max_norm) options.max_norm(*max_norm);
  return F::embedding_bag(d.input.to(torch::kLong), w, options);
}

std::string dtype_name(torch::Dtype t) { return std::string(c10::toString(t)); }

// --------------------------------------------------------------------------------------------

void test_parity_grid() {
  const std::vector<std::string> modes = {"sum", "mean", "max"};
  const std::vector<std::string> forms = {"1d", "last", "2d"};
  const std::vector<std::optional<int64_t>> paddings = {std::nullopt, 2, -1};
  const std::vector<torch::Dtype> dtypes = {torch::kFloat, torch::kDouble};
  // (input dtype, offsets dtype): equal, or different (promoted to the wider one).
  const std::vector<std::pair<torch::Dtype, torch::Dtype>> index_dtypes = {
      {torch::kLong, torch::kLong}, {torch::kInt, torch::kInt}, {torch::kInt, torch::kLong}};
  int cases = 0;
  uint64_t seed = 100;
  for (const auto& mode : modes) {
    for (const auto& form : forms) {
      for (const auto& padding_idx : paddings) {
        for (const bool psw : {false, true}) {
          if (psw && mode != "sum") continue;
          for (const auto dtype : dtypes) {
            for (const auto& [input_dtype, offsets_dtype] : index_dtypes) {
              if (form == "2d" && input_dtype != offsets_dtype) continue;
              SCOPE("mode=", mode, " form=", form, " padding_idx=",
                    padding_idx ? std::to_string(*padding_idx) : "none", " psw=", psw,
                    " dtype=", dtype_name(dtype), " input=", dtype_name(input_dtype),
                    " offsets=", dtype_name(offsets_dtype));
              const Data d = make_data(form, padding_idx, psw, dtype, seed++);
              const Tensor input = d.input.to(input_dtype);
              const Tensor offsets = d.offsets.defined() ? d.offsets.to(offsets_dtype) : Tensor();
              const auto expected = forward_backward(
                  [&](const Tensor& w, const Tensor& p) {
                    return torch_reference(d, w, p, mode, padding_idx);
                  },
                  d);
              const auto got = forward_backward(
                  [&](const Tensor& w, const Tensor& p) {
                    return mybag::embedding_bag(input, w, opt(offsets), std::nullopt, 2.0, false,
                                                mode, false, opt(p), d.include_last_offset,
                                                padding_idx);
                  },
                  d);
              check_same(got, expected);
              EXPECT_EQ(got.out.scalar_type(), dtype);
              // The Mode overload is the same call: the same bits.
              const auto with_enum = forward_backward(
                  [&](const Tensor& w, const Tensor& p) {
                    return mybag::embedding_bag(input, w, opt(offsets), std::nullopt, 2.0, false,
                                                enum_mode(mode), false, opt(p),
                                                d.include_last_offset, padding_idx);
                  },
                  d);
              EXPECT_EQUAL(with_enum.out, got.out);
              EXPECT_EQUAL(with_enum.weight_grad, got.weight_grad);
              ++cases;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 192);
}

void test_default_mode_is_mean() {
  const Data d = make_data("1d", std::nullopt, false, torch::kFloat, 1);
  const auto got = mybag::embedding_bag(d.input, d.weight, d.offsets);
  EXPECT_EQUAL(got, mybag::embedding_bag(d.input, d.weight, d.offsets, std::nullopt, 2.0, false,
                                         mybag::Mode::Mean));
  EXPECT_CLOSE(got, F::embedding_bag(d.input, d.weight,
                                     F::EmbeddingBagFuncOptions().offsets(d.offsets)));
  // torch::nn::functional's default mode is mean too.
  EXPECT_CLOSE(got, torch_reference(d, d.weight, Tensor(), "mean", std::nullopt));
}

void test_reductions_by_hand() {
  // Small enough to write the answer down.
  auto weight = torch::tensor({{1.0, -2.0}, {3.0, 4.0}, {-5.0, 6.0}, {7.0, -8.0}}, torch::kDouble);
  auto input = torch::tensor({1, 2, 3, 3, 0, 2}, torch::kLong);
  auto offsets = torch::tensor({0, 2, 2, 5}, torch::kLong);  // {1,2} {} {3,3,0} {2}
  auto psw = torch::tensor({1.0, 0.5, 2.0, -1.0, 3.0, 0.25}, torch::kDouble);
  auto sum = mybag::embedding_bag(input, weight, offsets, {}, 2.0, false, "sum");
  EXPECT_EQUAL(sum, torch::tensor({{-2.0, 10.0}, {0.0, 0.0}, {15.0, -18.0}, {-5.0, 6.0}},
                                  torch::kDouble));
  auto mean = mybag::embedding_bag(input, weight, offsets, {}, 2.0, false, "mean");
  EXPECT_CLOSE(mean, torch::tensor({{-1.0, 5.0}, {0.0, 0.0}, {5.0, -6.0}, {-5.0, 6.0}},
                                   torch::kDouble));
  auto max = mybag::embedding_bag(input, weight, offsets, {}, 2.0, false, "max");
  EXPECT_EQUAL(max, torch::tensor({{3.0, 6.0}, {0.0, 0.0}, {7.0, -2.0}, {-5.0, 6.0}},
                                  torch::kDouble));
  auto weighted = mybag::embedding_bag(input, weight, offsets, {}, 2.0, false, "sum", false, psw);
  EXPECT_CLOSE(weighted, torch::tensor({{0.5, 7.0}, {0.0, 0.0}, {10.0, -14.0}, {-1.25, 1.5}},
                                       torch::kDouble));
  // padding_idx 3: skipped, not counted by mean; bag 2 becomes {0}.
  auto padded = mybag::embedding_bag(input, weight, offsets, {}, 2.0, false, "mean", false, {},
                                     false, 3);
  EXPECT_CLOSE(padded, torch::tensor({{-1.0, 5.0}, {0.0, 0.0}, {1.0, -2.0}, {-5.0, 6.0}},
                                     torch::kDouble));
  // include_last_offset: B + 1 offsets give B bags, the last one ending at N even when
  // offsets[-1] < N (docs/spec.md §2; torch's CPU fast path differs, its CUDA path agrees).
  auto rows = torch::arange(10, torch::kDouble).view({5, 2});  // row r = {2r, 2r + 1}
  EXPECT_EQUAL(mybag::embedding_bag(torch::tensor({1, 2, 3, 4}), rows, torch::tensor({0, 1, 2}), {},
                                     2.0, false, "sum", false, {}, /*include_last_offset=*/true),
                torch::tensor({{2.0, 3.0}, {18.0, 21.0}}, torch::kDouble));
  // Max ties: the first occurrence wins the gradient (rows 0 and 1 tie on feature 0).
  auto tie_weight = torch::tensor({{2.0, 0.0}, {2.0, 1.0}}, torch::kDouble).requires_grad_();
  auto tie_out = mybag::embedding_bag(torch::tensor({1, 0}), tie_weight, torch::tensor({0}), {},
                                      2.0, false, "max");
  tie_out.backward(torch::ones_like(tie_out));
  EXPECT_EQUAL(tie_weight.grad(), torch::tensor({{0.0, 0.0}, {1.0, 1.0}}, torch::kDouble));
}

void test_empty() {
  auto weight = torch::randn({kNum, kDim});
  auto out = mybag::embedding_bag(torch::empty({0}, torch::kLong), weight,
                                  torch::empty({0}, torch::kLong), {}, 2.0, false, "sum");
  EXPECT_EQ(out.sizes(), torch::IntArrayRef({0, kDim}));
  auto out2d = mybag::embedding_bag(torch::empty({0, 3}, torch::kLong), weight, {}, {}, 2.0,
                                    false, "max");
  EXPECT_EQ(out2d.sizes(), torch::IntArrayRef({0, kDim}));
  // Bags with no entries give zeros in every mode.
  for (const char* mode : {"sum", "mean", "max"}) {
    SCOPE("mode=", mode);
    auto zeros = mybag::embedding_bag(torch::empty({0}, torch::kLong), weight,
                                      torch::zeros({3}, torch::kLong), {}, 2.0, false, mode);
    EXPECT_EQUAL(zeros, torch::zeros({3, kDim}));
  }
}

void test_sparse_gradient() {
  for (const char* mode : {"sum", "mean"}) {
    for (const auto& padding_idx : {std::optional<int64_t>(), std::optional<int64_t>(3)}) {
      for (const char* form : {"1d", "2d"}) {
        SCOPE("mode=", mode, " padding_idx=", padding_idx.value_or(-100), " form=", form);
        const bool psw = std::string(mode) == "sum";
        const Data d = make_data(form, padding_idx, psw, torch::kFloat, 7);
        auto call = [&](bool sparse) {
          return [&, sparse](const Tensor& w, const Tensor& p) {
            return mybag::embedding_bag(d.input, w, opt(d.offsets), {}, 2.0, false, mode, sparse,
                                        opt(p), false, padding_idx);
          };
        };
        const auto sparse = forward_backward(call(true), d);
        const auto dense = forward_backward(call(false), d);
        EXPECT(sparse.weight_grad.is_sparse());
        EXPECT_EQ(sparse.weight_grad.sizes(), torch::IntArrayRef({kNum, kDim}));
        EXPECT_EQUAL(sparse.out, dense.out);
        EXPECT_CLOSE(sparse.weight_grad.to_dense(), dense.weight_grad);
        EXPECT_CLOSE(sparse.psw_grad, dense.psw_grad);
        // torch's sparse gradient, densified, is the same.
        const auto reference = forward_backward(
            [&](const Tensor& w, const Tensor& p) {
              return torch_reference(d, w, p, mode, padding_idx, {}, /*sparse=*/true);
            },
            d);
        EXPECT_CLOSE(sparse.weight_grad.to_dense(), reference.weight_grad.to_dense());
      }
    }
  }
}

// weight.grad with scale_grad_by_freq: each row's gradient divided by how often its index occurs
// in the whole input (docs/spec.md §5: computed by hand, not compared with CPU torch).
void test_scale_grad_by_freq() {
  for (const char* mode : {"sum", "mean"}) {
    for (const char* form : {"1d", "2d"}) {
      for (const bool sparse : {false, true}) {
        SCOPE("mode=", mode, " form=", form, " sparse=", sparse);
        const auto padding_idx = std::optional<int64_t>(4);
        const Data d = make_data(form, padding_idx, false, torch::kDouble, 11);
        auto call = [&](bool scale) {
          return [&, scale](const Tensor& w, const Tensor&) {
            return mybag::embedding_bag(d.input, w, opt(d.offsets), {}, 2.0, scale, mode,
                                        scale && sparse, {}, false, padding_idx);
          };
        };
        const auto plain = forward_backward(call(false), d);
        const auto scaled = forward_backward(call(true), d);
        const auto counts =
            torch::bincount(d.input.view(-1), {}, kNum).to(torch::kDouble).clamp_min(1);
        const auto expected = plain.weight_grad / counts.unsqueeze(1);
        EXPECT(scaled.weight_grad.is_sparse() == sparse);
        EXPECT_CLOSE(scaled.weight_grad.is_sparse() ? scaled.weight_grad.to_dense()
                                                    : scaled.weight_grad,
                     expected);
        EXPECT_EQUAL(scaled.out, plain.out);
        // Some index occurs more than once, so the check has teeth.
        EXPECT(counts.max().item<double>() > 1);
      }
    }
  }
}

void test_max_norm() {
  for (const char* mode : {"sum", "mean", "max"}) {
    for (const double norm_type : {2.0, 1.0}) {
      for (const auto& padding_idx : {std::optional<int64_t>(), std::optional<int64_t>(2)}) {
        SCOPE("mode=", mode, " norm_type=", norm_type, " padding_idx=", padding_idx.value_or(-100));
        const Data d = make_data("1d", padding_idx, false, torch::kFloat, 21);
        const double max_norm = 1.5;
        const auto expected = forward_backward(
            [&](const Tensor& w, const Tensor& p) {
              return torch_reference(d, w, p, mode, padding_idx, max_norm, false, norm_type);
            },
            d);
        const auto got = forward_backward(
            [&](const Tensor& w, const Tensor& p) {
              return mybag::embedding_bag(d.input, w, d.offsets, max_norm, norm_type, false, mode,
                                          false, opt(p), false, padding_idx);
            },
            d);
        check_same(got, expected);  // weight_after: renormalized in place alike
        // Referenced rows now have norm <= max_norm; the others are untouched.
        const auto referenced = torch::zeros({kNum}, torch::kBool).index_fill_(0, d.input, true);
        const auto norms = got.weight_after.norm(norm_type, 1);
        EXPECT((norms.masked_select(referenced) <= max_norm + 1e-4).all().item<bool>());
        EXPECT_EQUAL(got.weight_after.index({~referenced}), d.weight.index({~referenced}));
        // ...and some did change: the renorm happened.
        EXPECT(!torch::equal(got.weight_after, d.weight));
      }
    }
  }
}

void test_half_precision() {
  // Accumulated in float32 and rounded once: within half/bfloat16 rounding of the float result.
  for (const auto dtype : {torch::kHalf, torch::kBFloat16}) {
    for (const char* mode : {"sum", "mean", "max"}) {
      SCOPE("dtype=", dtype_name(dtype), " mode=", mode);
      const Data d = make_data("1d", 2, false, torch::kFloat, 31);
      const auto weight = d.weight.to(dtype);
      const auto got = mybag::embedding_bag(d.input, weight, d.offsets, {}, 2.0, false, mode, false,
                                            {}, false, 2);
      const auto expected = torch_reference(d, weight.to(torch::kFloat), Tensor(), mode, 2);
      EXPECT_EQ(got.scalar_type(), dtype);
      EXPECT_CLOSE(got, expected.to(dtype));
    }
  }
}

void test_max_nan_propagates() {
  // Beyond torch (docs/spec.md §3): a NaN anywhere in a bag makes that feature NaN.
  auto weight = torch::tensor({{1.0f, 2.0f}, {NAN, 0.0f}, {3.0f, -1.0f}});
  auto out = mybag::embedding_bag(torch::tensor({0, 1, 2, 2, 0}), weight, torch::tensor({0, 3}),
                                  {}, 2.0, false, "max");
  EXPECT(std::isnan(out.index({0, 0}).item<float>()));
  EXPECT_EQ(out.index({0, 1}).item<float>(), 2.0f);
  EXPECT_EQUAL(out.index({1}), torch::tensor({3.0f, 2.0f}));
}

void test_deterministic() {
  for (const char* mode : {"sum", "mean", "max"}) {
    SCOPE("mode=", mode);
    const Data d = make_data("1d", 1, false, torch::kFloat, 41);
    auto call = [&](const Tensor& w, const Tensor&) {
      return mybag::embedding_bag(d.input, w, d.offsets, {}, 2.0, false, mode, false, {}, false, 1);
    };
    const auto a = forward_backward(call, d);
    const auto b = forward_backward(call, d);
    EXPECT_EQUAL(a.out, b.out);
    EXPECT_EQUAL(a.weight_grad, b.weight_grad);
  }
}

void test_no_grad_and_grad_fn() {
  const Data d = make_data("2d", std::nullopt, false, torch::kFloat, 51);
  auto w = d.weight.clone().requires_grad_();
  EXPECT(mybag::embedding_bag(d.input, w, {}, {}, 2.0, false, "sum").requires_grad());
  torch::NoGradGuard no_grad;
  EXPECT(!mybag::embedding_bag(d.input, w, {}, {}, 2.0, false, "sum").requires_grad());
}

// Double backward is not supported (docs/spec.md §5): it fails with an error naming the op,
// never a silent zero. Both first-order gradients depend on something differentiable (the psw
// gradient on weight, the weight gradient on grad_out), so a silently detached result would be
// wrong.
void test_double_backward() {
  const Data d = make_data("1d", std::nullopt, true, torch::kDouble, 61);
  auto w = d.weight.clone().requires_grad_();
  auto p = d.psw.clone().requires_grad_();
  auto g = d.grad_out.clone().requires_grad_();
  auto out = mybag::embedding_bag(d.input, w, d.offsets, {}, 2.0, false, "sum", false, p);
  auto grads = torch::autograd::grad({out}, {w, p}, {g}, /*retain_graph=*/true,
                                     /*create_graph=*/true);
  EXPECT_THROWS(c10::Error,
                torch::autograd::grad({grads[1].sum()}, {w}, {}, true, false, true),
                "_embedding_bag_per_sample_weights_backward");
  EXPECT_THROWS(c10::Error,
                torch::autograd::grad({grads[0].sum()}, {g}, {}, true, false, true),
                "_embedding_bag_dense_backward");
}

// --------------------------------------------------------------------------------------------
// Bad input: the exception types follow torch.nn.functional (docs/spec.md §6).

void test_errors() {
  const Data d = make_data("1d", std::nullopt, false, torch::kFloat, 71);
  const auto& w = d.weight;
  const auto& off = d.offsets;
  const auto bad_high = d.input.clone().index_put_({4}, kNum + 4);
  const auto bad_low = d.input.clone().index_put_({4}, -1);
  for (const char* mode : {"sum", "mean", "max"}) {
    SCOPE("mode=", mode);
    EXPECT_THROWS(c10::IndexError,
                  mybag::embedding_bag(bad_high, w, off, {}, 2.0, false, mode), "input", "14");
    EXPECT_THROWS(c10::IndexError,
                  mybag::embedding_bag(bad_low, w, off, {}, 2.0, false, mode), "input", "-1");
    EXPECT_THROWS(c10::IndexError,
                  mybag::embedding_bag(bad_high.to(torch::kInt), w, off.to(torch::kInt), {}, 2.0,
                                       false, mode),
                  "input");
    EXPECT_THROWS(c10::IndexError,
                  mybag::embedding_bag(bad_high.narrow(0, 0, 12).view({4, 3}), w, {}, {}, 2.0,
                                       false, mode),
                  "input");
  }
  // Mode.
  EXPECT_THROWS(c10::ValueError,
                mybag::embedding_bag(d.input, w, off, {}, 2.0, false, "avg"), "mode", "avg");
  EXPECT_THROWS(c10::ValueError, mybag::embedding_bag(d.input, w, off, {}, 2.0, false, ""), "mode");
  // per_sample_weights.
  const auto psw = torch::rand({13});
  EXPECT_THROWS(c10::NotImplementedError,
                mybag::embedding_bag(d.input, w, off, {}, 2.0, false, "mean", false, psw),
                "per_sample_weights", "mean");
  EXPECT_THROWS(c10::NotImplementedError,
                mybag::embedding_bag(d.input, w, off, {}, 2.0, false, mybag::Mode::Max, false, psw),
                "per_sample_weights", "max");
  EXPECT_THROWS(c10::ValueError,
                mybag::embedding_bag(d.input, w, off, {}, 2.0, false, "sum", false,
                                     torch::rand({12})),
                "per_sample_weights");
  EXPECT_THROWS(c10::Error,
                mybag::embedding_bag(d.input, w, off, {}, 2.0, false, "sum", false,
                                     psw.to(torch::kDouble)),
                "per_sample_weights");
  // offsets.
  EXPECT_THROWS(c10::Error,
                mybag::embedding_bag(d.input, w, torch::tensor({1, 3}), {}, 2.0, false, "sum"),
                "offsets[0]");
  EXPECT_THROWS(c10::Error,
                mybag::embedding_bag(d.input, w, torch::tensor({0, 5, 3}), {}, 2.0, false, "sum"),
                "non-decreasing");
  EXPECT_THROWS(c10::Error,
                mybag::embedding_bag(d.input, w, torch::tensor({0, 14}), {}, 2.0, false, "sum"),
                "offsets[1]", "14");
  EXPECT_THROWS(c10::ValueError,
                mybag::embedding_bag(d.input, w, torch::empty({0}, torch::kLong), {}, 2.0, false,
                                     "sum", false, {}, /*include_last_offset=*/true),
                "include_last_offset");
  EXPECT_THROWS(c10::ValueError,
                mybag::embedding_bag(d.input, w, off.view({1, 5}), {}, 2.0, false, "sum"),
                "offsets");
  EXPECT_THROWS(c10::ValueError, mybag::embedding_bag(d.input, w, std::nullopt), "offsets");
  EXPECT_THROWS(c10::ValueError,
                mybag::embedding_bag(d.input.narrow(0, 0, 12).view({4, 3}), w, off), "offsets");
  EXPECT_THROWS(c10::Error, mybag::embedding_bag(d.input, w, off.to(torch::kFloat)), "offsets");
  // input and weight.
  EXPECT_THROWS(c10::ValueError, mybag::embedding_bag(torch::tensor(3), w, off), "input");
  EXPECT_THROWS(c10::ValueError,
                mybag::embedding_bag(d.input.narrow(0, 0, 12).view({2, 2, 3}), w, {}), "input");
  EXPECT_THROWS(c10::Error, mybag::embedding_bag(d.input.to(torch::kFloat), w, off), "input");
  EXPECT_THROWS(c10::ValueError, mybag::embedding_bag(d.input, w.view(-1), off), "weight");
  EXPECT_THROWS(c10::Error, mybag::embedding_bag(d.input, w.to(torch::kLong), off), "weight");
  // padding_idx out of range.
  EXPECT_THROWS(c10::Error,
                mybag::embedding_bag(d.input, w, off, {}, 2.0, false, "sum", false, {}, false,
                                     kNum),
                "padding_idx");
  EXPECT_THROWS(c10::Error,
                mybag::embedding_bag(d.input, w, off, {}, 2.0, false, "sum", false, {}, false,
                                     -kNum - 1),
                "padding_idx");
  // max mode rejects scale_grad_by_freq and sparse.
  EXPECT_THROWS(c10::ValueError,
                mybag::embedding_bag(d.input, w, off, {}, 2.0, true, "max"), "scale_grad_by_freq");
  EXPECT_THROWS(c10::ValueError,
                mybag::embedding_bag(d.input, w, off, {}, 2.0, false, "max", true), "sparse");
  // Still usable afterwards.
  EXPECT_CLOSE(mybag::embedding_bag(d.input, w, off, {}, 2.0, false, "sum"),
               torch_reference(d, w, Tensor(), "sum", std::nullopt));
}

// Beyond torch (docs/spec.md §4): validation happens before the renorm, so a failed call with
// max_norm leaves weight untouched (torch renormalizes first).
void test_failed_max_norm_leaves_weight() {
  const Data d = make_data("1d", std::nullopt, false, torch::kFloat, 81);
  const auto original = d.weight.clone();
  auto w = d.weight.clone();
  const auto bad = d.input.clone().index_put_({6}, kNum);
  EXPECT_THROWS(c10::IndexError, mybag::embedding_bag(bad, w, d.offsets, 1.0, 2.0, false, "sum"),
                "input");
  EXPECT_EQUAL(w, original);
  EXPECT_THROWS(c10::Error,
                mybag::embedding_bag(d.input, w, torch::tensor({0, 5, 3}), 1.0, 2.0, false, "sum"),
                "offsets");
  EXPECT_EQUAL(w, original);
  EXPECT_THROWS(c10::NotImplementedError,
                mybag::embedding_bag(d.input, w, d.offsets, 1.0, 2.0, false, "mean", false,
                                     torch::rand({13})),
                "per_sample_weights");
  EXPECT_EQUAL(w, original);
  EXPECT_THROWS(c10::ValueError,
                mybag::embedding_bag(d.input, w, d.offsets, 1.0, 2.0, false, "avg"), "mode");
  EXPECT_EQUAL(w, original);
  EXPECT_THROWS(c10::Error,
                mybag::embedding_bag(d.input, w, d.offsets, 1.0, 2.0, false, "sum", false, {},
                                     false, kNum + 3),
                "padding_idx");
  EXPECT_EQUAL(w, original);
  // The same call with good input does renormalize (so the checks above have teeth).
  mybag::embedding_bag(d.input, w, d.offsets, 1.0, 2.0, false, "sum");
  EXPECT(!torch::equal(w, original));
}

}  // namespace

int main() {
  RUN(test_parity_grid);
  RUN(test_default_mode_is_mean);
  RUN(test_reductions_by_hand);
  RUN(test_empty);
  RUN(test_sparse_gradient);
  RUN(test_scale_grad_by_freq);
  RUN(test_max_norm);
  RUN(test_half_precision);
  RUN(test_max_nan_propagates);
  RUN(test_deterministic);
  RUN(test_no_grad_and_grad_fn);
  RUN(test_double_backward);
  RUN(test_errors);
  RUN(test_failed_max_norm_leaves_weight);
  return check::report("test_functional");
}
