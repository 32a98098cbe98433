// mybag's C++ API of the row-wise quantized embedding bag (mybag::quantize_rowwise,
// mybag::dequantize_rowwise, mybag::quantized_embedding_bag, mybag::QuantizedEmbeddingBag):
// packing byte for byte against torch's prepack ops; every mode, layout, index dtype,
// per_sample_weights dtype, padding_idx and output dtype against
// torch::nn::functional::embedding_bag in double over the table unpacked here from its bytes;
// sums bit for bit against torch's quantized ops; then the module against the functional form,
// its buffer and defaults, from_float (a table, torch::nn::EmbeddingBag and mybag::EmbeddingBag,
// max_norm), torch::save / torch::load, clone(), to(), errors and pretty_print.
#include <ATen/core/dispatch/Dispatcher.h>
#include <mybag/mybag.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "check.h"

namespace F = torch::nn::functional;
using torch::Tensor;

namespace {

constexpr int64_t kNum = 10;
constexpr int64_t kDim = 6;  // even: 4 bits hold two values a byte

// A table with a constant row (scale 0 for 8 bits, the 1.0 fallback for 4) and values of both
// signs and several magnitudes.
Tensor make_table(uint64_t seed, torch::Dtype dtype = torch::kFloat) {
  torch::manual_seed(seed);
  auto table = torch::randn({kNum, kDim}) * 2 + 0.5;
  table[4].fill_(0.75);
  return table.to(dtype);
}

// The packed table's values in double, unpacked here from its bytes (not by
// mybag::dequantize_rowwise), in torch's layouts: q * scale + bias.
Tensor reference_table(const Tensor& packed, int64_t bits) {
  const auto p = packed.contiguous();
  const int64_t rows = p.size(0);
  const int64_t columns = p.size(1);
  const int64_t dim = bits == 8 ? columns - 8 : (columns - 4) * 2;
  auto table = torch::empty({rows, dim}, torch::kDouble);
  auto out = table.accessor<double, 2>();
  const uint8_t* data = p.data_ptr<uint8_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = data + r * columns;
    double scale, bias;
    if (bits == 8) {
      float scale_bias[2];
      std::memcpy(scale_bias, row + dim, sizeof(scale_bias));
      scale = scale_bias[0];
      bias = scale_bias[1];
    } else {
      c10::Half scale_bias[2];
      std::memcpy(scale_bias, row + dim / 2, sizeof(scale_bias));
      scale = static_cast<float>(scale_bias[0]);
      bias = static_cast<float>(scale_bias[1]);
    }
    for (int64_t d = 0; d < dim; ++d) {
      const int q = bits == 8 ? row[d] : (row[d / 2] >> (4 * (d % 2))) & 0x0F;
      out[r][d] = q * scale + bias;
    }
  }
  return table;
}

// torch's own packing, through the dispatcher (the ops torch.ops.quantized.* call).
Tensor torch_prepack(const Tensor& weight, int64_t bits) {
  if (bits == 8) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("quantized::embedding_bag_byte_prepack", "")
                         .typed<Tensor(const Tensor&)>();
    return op.call(weight);
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantized::embedding_bag_4bit_prepack", "")
                       .typed<Tensor(const Tensor&, bool, int64_t, double)>();
  return op.call(weight, /*optimized_qparams=*/false, /*nbins=*/200, /*ratio=*/0.16);
}

// torch's quantized embedding bag (it sums whatever the mode).
Tensor torch_quantized_sum(const Tensor& packed, int64_t bits, const Tensor& input,
                           const Tensor& offsets, const std::optional<Tensor>& psw,
                           bool include_last_offset) {
  static auto byte_op = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("quantized::embedding_bag_byte_rowwise_offsets", "")
                            .typed<Tensor(const Tensor&, const Tensor&,
                                          const std::optional<Tensor>&, bool, int64_t, bool,
                                          const std::optional<Tensor>&,
                                          const std::optional<Tensor>&, bool)>();
  static auto four_bit_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("quantized::embedding_bag_4bit_rowwise_offsets", "")
          .typed<Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, bool,
                        int64_t, bool, const std::optional<Tensor>&,
                        const std::optional<Tensor>&, bool)>();
  const auto& op = bits == 8 ? byte_op : four_bit_op;
  return op.call(packed, input, offsets, /*scale_grad_by_freq=*/false, /*mode=*/0,
                 /*pruned_weights=*/false, psw, /*compressed_indices_mapping=*/std::nullopt,
                 include_last_offset);
}

struct ModeCase {
  const char* name;
  mybag::Mode mode;
  torch::nn::EmbeddingBagMode torch_mode;
};

const std::vector<ModeCase>& all_modes() {
  static const std::vector<ModeCase> modes = {{"sum", mybag::Mode::Sum, torch::kSum},
                                              {"mean", mybag::Mode::Mean, torch::kMean},
                                              {"max", mybag::Mode::Max, torch::kMax}};
  return modes;
}

enum class Layout { Offsets, IncludeLastOffset, TwoD };

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::Offsets: return "1-D + offsets";
    case Layout::IncludeLastOffset: return "1-D + offsets, include_last_offset";
    case Layout::TwoD: return "2-D";
  }
  return "?";
}

struct Batch {
  Tensor input, offsets, psw;
  bool include_last_offset = false;
};

// 4 bags of 12 entries: 1-D with offsets (bag 1 empty), the same with the end offset
// (include_last_offset), or 2-D (4, 3); a row repeated within a bag; with padding_idx, padding
// entries, and in 2-D a bag of padding only.
Batch make_batch(Layout layout, torch::Dtype index_dtype, std::optional<int64_t> padding_idx,
                 std::optional<torch::Dtype> psw_dtype, uint64_t seed) {
  torch::manual_seed(seed);
  Batch b;
  auto flat = torch::randint(0, kNum, {12}, torch::kLong);
  flat.index_put_({3}, flat[5].item<int64_t>());
  if (padding_idx) {
    for (const int64_t position : {1, 6, 7, 8}) flat.index_put_({position}, *padding_idx);
  }
  if (layout == Layout::TwoD) {
    b.input = flat.view({4, 3}).to(index_dtype);
  } else {
    b.input = flat.to(index_dtype);
    b.include_last_offset = layout == Layout::IncludeLastOffset;
    b.offsets = (b.include_last_offset ? torch::tensor({0, 3, 3, 7, 12}, torch::kLong)
                                       : torch::tensor({0, 3, 3, 7}, torch::kLong))
                    .to(index_dtype);
  }
  if (psw_dtype) b.psw = (torch::rand(b.input.sizes()) + 0.5).to(*psw_dtype);
  return b;
}

// F::embedding_bag in double over the table unpacked from the packed bytes.
Tensor reference_bag(const Tensor& packed, int64_t bits, const Batch& b,
                     const torch::nn::EmbeddingBagMode& mode,
                     std::optional<int64_t> padding_idx) {
  auto options = F::EmbeddingBagFuncOptions()
                     .mode(mode)
                     .include_last_offset(b.include_last_offset)
                     .padding_idx(padding_idx);
  if (b.offsets.defined()) options.offsets(b.offsets);
  if (b.psw.defined()) options.per_sample_weights(b.psw.to(torch::kDouble));
  return F::embedding_bag(b.input, reference_table(packed, bits), options);
}

std::optional<Tensor> optional_of(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

std::string padding_name(std::optional<int64_t> p) { return p ? std::to_string(*p) : "none"; }

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ",") + name;
  return out;
}

// An output against the double reference rounded to the output's dtype: float32 sums of a few
// values differ from double ones by the rounding of each addition; a float16 or bfloat16 output
// by one rounding of that.
void expect_matches_reference(const Tensor& actual, const Tensor& reference) {
  const auto expected = reference.to(actual.scalar_type());
  if (actual.scalar_type() == torch::kFloat) {
    EXPECT_CLOSE_TOL(actual, expected, 1e-5, 1e-5);
  } else {
    EXPECT_CLOSE(actual, expected);
  }
}

// ---------------------------------------------------------------------------------------------

void test_quantize_rowwise_matches_torch_prepack() {
  for (const int64_t bits : {8, 4}) {
    for (const auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
      SCOPE(bits, " bits, ", c10::toString(dtype));
      const auto table = make_table(1, dtype);
      const auto packed = mybag::quantize_rowwise(table, bits);
      EXPECT_EQ(packed.scalar_type(), torch::kByte);
      EXPECT_EQ(packed.size(1), bits == 8 ? kDim + 8 : kDim / 2 + 4);
      // The weight is packed as its float32 values.
      EXPECT_EQUAL(packed, torch_prepack(table.to(torch::kFloat), bits));
    }
    SCOPE(bits, " bits: a non-contiguous table, and the default bits");
    const auto transposed = make_table(2).t().contiguous().t();
    EXPECT(!transposed.is_contiguous());
    EXPECT_EQUAL(mybag::quantize_rowwise(transposed, bits),
                 torch_prepack(transposed.contiguous(), bits));
    if (bits == 8) {
      EXPECT_EQUAL(mybag::quantize_rowwise(transposed), torch_prepack(transposed.contiguous(), 8));
    }
  }
  {
    SCOPE("empty tables");
    EXPECT_EQUAL(mybag::quantize_rowwise(torch::zeros({0, kDim}), 8),
                 torch::zeros({0, kDim + 8}, torch::kByte));
  }
}

void test_dequantize_rowwise() {
  for (const int64_t bits : {8, 4}) {
    SCOPE(bits, " bits");
    const auto table = make_table(3);
    const auto packed = mybag::quantize_rowwise(table, bits);
    const auto values = mybag::dequantize_rowwise(packed, bits);
    EXPECT_EQ(values.scalar_type(), torch::kFloat);
    // q * scale + bias rounded once to float32.
    EXPECT_EQUAL(values, reference_table(packed, bits).to(torch::kFloat));
    // Within half a quantization step of the float table (a row's range over 255 or 15 steps;
    // 4 bits store scale and bias in float16, hence the extra margin).
    const auto range = std::get<0>(table.max(1)) - std::get<0>(table.min(1));
    const auto half_step = range / (bits == 8 ? 255.0 : 15.0) / 2 + (bits == 8 ? 1e-5 : 2e-2);
    EXPECT(((values - table).abs() <= half_step.unsqueeze(1)).all().item<bool>());
    // The constant row comes back exactly.
    EXPECT_EQUAL(values[4], table[4]);
    // A non-contiguous packed table: the same values.
    const auto strided = packed.t().contiguous().t();
    EXPECT_EQUAL(mybag::dequantize_rowwise(strided, bits), values);
  }
}

// Every mode x layout x index dtype x padding_idx x per_sample_weights x output dtype against
// torch's embedding_bag in double over the unpacked table.
void test_functional_matches_reference() {
  uint64_t seed = 10;
  for (const int64_t bits : {8, 4}) {
    const auto packed = mybag::quantize_rowwise(make_table(seed++), bits);
    for (const auto& m : all_modes()) {
      for (const auto layout : {Layout::Offsets, Layout::IncludeLastOffset, Layout::TwoD}) {
        for (const auto index_dtype : {torch::kInt, torch::kLong}) {
          for (const std::optional<int64_t> padding_idx : {std::optional<int64_t>(),
                                                           std::optional<int64_t>(2),
                                                           std::optional<int64_t>(-1)}) {
            std::vector<std::optional<torch::Dtype>> psw_dtypes = {std::nullopt};
            if (m.mode == mybag::Mode::Sum) {
              psw_dtypes.insert(psw_dtypes.end(), {torch::kFloat, torch::kHalf, torch::kBFloat16});
            }
            for (const auto psw_dtype : psw_dtypes) {
              SCOPE(bits, " bits, mode=", m.name, ", ", layout_name(layout), ", ",
                    c10::toString(index_dtype), ", padding_idx=", padding_name(padding_idx),
                    ", psw=", psw_dtype ? c10::toString(*psw_dtype) : "none");
              // The row padding_idx names (the op takes it negative too).
              const std::optional<int64_t> padding_row =
                  padding_idx ? std::optional<int64_t>((*padding_idx + kNum) % kNum)
                              : std::nullopt;
              const auto b = make_batch(layout, index_dtype, padding_row, psw_dtype, seed++);
              const auto expected = reference_bag(packed, bits, b, m.torch_mode, padding_row);
              for (const auto out : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
                SCOPE("output ", c10::toString(out));
                const auto actual = mybag::quantized_embedding_bag(
                    b.input, packed, bits, optional_of(b.offsets), m.name, optional_of(b.psw),
                    b.include_last_offset, padding_idx, out);
                EXPECT_EQ(actual.sizes(), torch::IntArrayRef({4, kDim}));
                EXPECT_EQ(actual.scalar_type(), out);
                expect_matches_reference(actual, expected);
                // The mode as an enum: the same call.
                EXPECT_EQUAL(mybag::quantized_embedding_bag(
                                 b.input, packed, bits, optional_of(b.offsets), m.mode,
                                 optional_of(b.psw), b.include_last_offset, padding_idx, out),
                             actual);
              }
            }
          }
        }
      }
    }
  }
  {
    SCOPE("defaults: mean, float32; output_dtype std::nullopt is float32");
    const auto packed = mybag::quantize_rowwise(make_table(30), 4);
    const auto input = torch::tensor({{0, 3}, {9, 9}}, torch::kLong);
    const auto actual = mybag::quantized_embedding_bag(input, packed, 4);
    EXPECT_EQ(actual.scalar_type(), torch::kFloat);
    expect_matches_reference(
        actual, reference_bag(packed, 4, Batch{input, {}, {}}, torch::kMean, std::nullopt));
  }
  {
    SCOPE("a table packed by torch's prepack op is read unchanged");
    const auto table = make_table(31);
    const auto b = make_batch(Layout::Offsets, torch::kLong, std::nullopt, std::nullopt, 32);
    for (const int64_t bits : {8, 4}) {
      EXPECT_EQUAL(mybag::quantized_embedding_bag(b.input, torch_prepack(table, bits), bits,
                                                  b.offsets, "max"),
                   mybag::quantized_embedding_bag(b.input, mybag::quantize_rowwise(table, bits),
                                                  bits, b.offsets, "max"));
    }
  }
  {
    SCOPE("per_sample_weights that require grad are taken under NoGradGuard");
    const auto packed = mybag::quantize_rowwise(make_table(33), 8);
    const auto b = make_batch(Layout::TwoD, torch::kLong, std::nullopt, torch::kFloat, 34);
    const auto psw = b.psw.clone().requires_grad_();
    torch::NoGradGuard no_grad;
    EXPECT_EQUAL(mybag::quantized_embedding_bag(b.input, packed, 8, std::nullopt, "sum", psw),
                 mybag::quantized_embedding_bag(b.input, packed, 8, std::nullopt, "sum", b.psw));
  }
}

// Sums (FBGEMM's order of operations) equal torch's quantized ops bit for bit.
void test_sums_equal_torch_quantized_ops() {
  uint64_t seed = 40;
  for (const int64_t bits : {8, 4}) {
    const auto packed = mybag::quantize_rowwise(make_table(seed++), bits);
    for (const auto layout : {Layout::Offsets, Layout::IncludeLastOffset}) {
      for (const auto index_dtype : {torch::kInt, torch::kLong}) {
        for (const bool psw : {false, true}) {
          SCOPE(bits, " bits, ", layout_name(layout), ", ", c10::toString(index_dtype),
                ", psw=", psw);
          const auto b = make_batch(layout, index_dtype, std::nullopt,
                                    psw ? std::optional(torch::kFloat) : std::nullopt, seed++);
          EXPECT_EQUAL(mybag::quantized_embedding_bag(b.input, packed, bits, b.offsets, "sum",
                                                      optional_of(b.psw), b.include_last_offset),
                       torch_quantized_sum(packed, bits, b.input, b.offsets, optional_of(b.psw),
                                           b.include_last_offset));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

void test_module_defaults_and_buffer() {
  {
    SCOPE("defaults");
    mybag::QuantizedEmbeddingBag bag(kNum, kDim);
    const auto& o = bag->options;
    EXPECT_EQ(o.bits(), 8);
    EXPECT(std::holds_alternative<torch::enumtype::kMean>(o.mode()));
    EXPECT(!o.include_last_offset());
    EXPECT(!o.padding_idx().has_value());
    EXPECT_EQ(o.output_dtype(), torch::kFloat);
    EXPECT_EQ(joined(bag->named_buffers().keys()), std::string("packed_weight"));
    EXPECT(bag->parameters().empty());
    EXPECT(bag->named_buffers()["packed_weight"].is_same(bag->packed_weight));
    EXPECT_EQ(bag->packed_weight.scalar_type(), torch::kByte);
    EXPECT_EQ(bag->packed_weight.sizes(), torch::IntArrayRef({kNum, kDim + 8}));
  }
  for (const int64_t bits : {8, 4}) {
    SCOPE(bits, " bits: N(0, 1) rows as torch::nn::EmbeddingBag draws them, padding row zero");
    torch::manual_seed(3);
    mybag::QuantizedEmbeddingBag bag(
        mybag::QuantizedEmbeddingBagOptions(kNum, kDim).bits(bits).padding_idx(-3));
    torch::manual_seed(3);
    mybag::EmbeddingBag plain(mybag::EmbeddingBagOptions(kNum, kDim).padding_idx(-3));
    EXPECT(bag->options.padding_idx() == std::optional<int64_t>(kNum - 3));
    EXPECT_EQ(bag->packed_weight.size(1), bits == 8 ? kDim + 8 : kDim / 2 + 4);
    EXPECT_EQUAL(bag->packed_weight, mybag::quantize_rowwise(plain->weight.detach(), bits));
    const auto table = bag->dequantize();
    EXPECT_EQUAL(table, mybag::dequantize_rowwise(bag->packed_weight, bits));
    EXPECT_EQUAL(table[kNum - 3], torch::zeros({kDim}));
  }
  {
    SCOPE("_packed_weight: used as the table, its storage");
    const auto packed = mybag::quantize_rowwise(make_table(4), 4);
    mybag::QuantizedEmbeddingBag bag(
        mybag::QuantizedEmbeddingBagOptions(kNum, kDim).bits(4)._packed_weight(packed));
    EXPECT_EQUAL(bag->packed_weight, packed);
    EXPECT(bag->packed_weight.data_ptr() == packed.data_ptr());
  }
}

// The module's forward is the functional form with its options, bit for bit; through AnyModule
// too (FORWARD_HAS_DEFAULT_ARGS).
void test_module_matches_functional() {
  uint64_t seed = 60;
  for (const int64_t bits : {8, 4}) {
    for (const auto& m : all_modes()) {
      for (const auto layout : {Layout::Offsets, Layout::IncludeLastOffset, Layout::TwoD}) {
        const bool psw = m.mode == mybag::Mode::Sum;
        const std::optional<int64_t> padding_idx =
            layout == Layout::Offsets ? std::nullopt : std::optional<int64_t>(7);
        const auto out = layout == Layout::TwoD ? torch::kBFloat16 : torch::kFloat;
        SCOPE(bits, " bits, mode=", m.name, ", ", layout_name(layout));
        mybag::QuantizedEmbeddingBag bag(mybag::QuantizedEmbeddingBagOptions(kNum, kDim)
                                             .bits(bits)
                                             .mode(m.torch_mode)
                                             .include_last_offset(
                                                 layout == Layout::IncludeLastOffset)
                                             .padding_idx(padding_idx)
                                             .output_dtype(out));
        const auto b = make_batch(layout, torch::kLong, padding_idx,
                                  psw ? std::optional(torch::kHalf) : std::nullopt, seed++);
        const auto actual = bag(b.input, b.offsets, b.psw);
        EXPECT_EQ(actual.scalar_type(), out);
        EXPECT_EQUAL(actual, mybag::quantized_embedding_bag(
                                 b.input, bag->packed_weight, bits, optional_of(b.offsets),
                                 m.name, optional_of(b.psw), b.include_last_offset, padding_idx,
                                 out));
        expect_matches_reference(
            actual, reference_bag(bag->packed_weight, bits, b, m.torch_mode, padding_idx));
        if (layout == Layout::TwoD && !psw) {
          torch::nn::AnyModule any(bag);
          EXPECT_EQUAL(any.forward(b.input), actual);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

void test_from_float() {
  {
    SCOPE("a table: the constructor's defaults, or the options given");
    const auto table = make_table(70);
    auto bag = mybag::QuantizedEmbeddingBag::from_float(table);
    EXPECT_EQ(bag->options.num_embeddings(), kNum);
    EXPECT_EQ(bag->options.embedding_dim(), kDim);
    EXPECT_EQ(bag->options.bits(), 8);
    EXPECT(std::holds_alternative<torch::enumtype::kMean>(bag->options.mode()));
    EXPECT(!bag->options.padding_idx().has_value());
    EXPECT_EQ(bag->options.output_dtype(), torch::kFloat);
    EXPECT_EQUAL(bag->packed_weight, mybag::quantize_rowwise(table, 8));
    // The module holds the table once: in its buffer, not in its options too.
    EXPECT(!bag->options._packed_weight().defined());

    auto four = mybag::QuantizedEmbeddingBag::from_float(
        table.to(torch::kBFloat16), mybag::QuantizedEmbeddingBagFromFloatOptions()
                                        .bits(4)
                                        .mode(torch::kMax)
                                        .include_last_offset(true)
                                        .padding_idx(-1)
                                        .output_dtype(torch::kHalf));
    EXPECT_EQ(four->options.bits(), 4);
    EXPECT(std::holds_alternative<torch::enumtype::kMax>(four->options.mode()));
    EXPECT(four->options.include_last_offset());
    EXPECT(four->options.padding_idx() == std::optional<int64_t>(kNum - 1));
    EXPECT_EQ(four->options.output_dtype(), torch::kHalf);
    EXPECT_EQUAL(four->packed_weight,
                 torch_prepack(table.to(torch::kBFloat16).to(torch::kFloat), 4));
  }
  const auto table_options = torch::nn::EmbeddingBagOptions(kNum, kDim)
                                 .mode(torch::kSum)
                                 .include_last_offset(true)
                                 .padding_idx(-2)
                                 .max_norm(1.5)
                                 .norm_type(2.0)
                                 .scale_grad_by_freq(true)
                                 .sparse(true);
  torch::manual_seed(71);
  torch::nn::EmbeddingBag torch_bag(table_options);
  torch::manual_seed(71);
  mybag::EmbeddingBag mybag_bag(table_options);
  const auto batch = make_batch(Layout::IncludeLastOffset, torch::kLong, kNum - 2, torch::kFloat,
                                72);
  for (const bool from_torch : {true, false}) {
    SCOPE(from_torch ? "from torch::nn::EmbeddingBag" : "from mybag::EmbeddingBag");
    const Tensor source = from_torch ? torch_bag->weight : mybag_bag->weight;
    const auto source_before = source.detach().clone();
    auto bag = from_torch ? mybag::QuantizedEmbeddingBag::from_float(torch_bag)
                          : mybag::QuantizedEmbeddingBag::from_float(mybag_bag);
    const auto& o = bag->options;
    EXPECT(std::holds_alternative<torch::enumtype::kSum>(o.mode()));
    EXPECT(o.include_last_offset());
    EXPECT(o.padding_idx() == std::optional<int64_t>(kNum - 2));
    EXPECT_EQ(o.bits(), 8);
    EXPECT_EQ(o.output_dtype(), torch::kFloat);
    // The source is not renormalized in place.
    EXPECT_EQUAL(source, source_before);
    // Every row renormalized as a lookup would: a lookup of every row by mybag's op on a copy.
    auto renormed = source_before.clone();
    {
      torch::NoGradGuard no_grad;
      mybag::embedding_bag(torch::arange(kNum), renormed, torch::tensor({0}, torch::kLong), 1.5);
    }
    EXPECT(!torch::equal(renormed, source_before));  // some row had a norm above 1.5
    EXPECT_EQUAL(bag->packed_weight, mybag::quantize_rowwise(renormed, 8));
    // ...which is torch's renormalization, and gives the float module's outputs up to
    // quantization: half a step (at most 2 * 1.5 / 255 / 2: every value is within +-1.5) times
    // a per-sample weight (< 1.5) for each of at most 5 entries of a bag.
    auto torch_renormed = source_before.clone();
    {
      torch::NoGradGuard no_grad;
      torch::embedding_renorm_(torch_renormed, torch::arange(kNum), 1.5, 2.0);
    }
    EXPECT_CLOSE(renormed, torch_renormed);
    const auto expected = (from_torch ? torch_bag(batch.input, batch.offsets, batch.psw)
                                      : mybag_bag(batch.input, batch.offsets, batch.psw))
                              .detach();
    EXPECT_CLOSE_TOL(bag(batch.input, batch.offsets, batch.psw), expected, 0,
                     5 * 1.5 * 1.5 / 255);
  }
  {
    SCOPE("options given replace the module's");
    auto bag = mybag::QuantizedEmbeddingBag::from_float(
        mybag_bag, mybag::QuantizedEmbeddingBagFromFloatOptions()
                       .bits(4)
                       .mode(torch::kMean)
                       .include_last_offset(false)
                       .padding_idx(0)
                       .output_dtype(torch::kBFloat16));
    EXPECT_EQ(bag->options.bits(), 4);
    EXPECT(std::holds_alternative<torch::enumtype::kMean>(bag->options.mode()));
    EXPECT(!bag->options.include_last_offset());
    EXPECT(bag->options.padding_idx() == std::optional<int64_t>(0));
    EXPECT_EQ(bag->options.output_dtype(), torch::kBFloat16);
    EXPECT_EQ(bag->packed_weight.size(1), kDim / 2 + 4);
  }
  {
    SCOPE("without max_norm the table is quantized as it is");
    torch::nn::EmbeddingBag plain(torch::nn::EmbeddingBagOptions(kNum, kDim));
    EXPECT_EQUAL(mybag::QuantizedEmbeddingBag::from_float(plain)->packed_weight,
                 mybag::quantize_rowwise(plain->weight.detach(), 8));
  }
}

// torch::save and torch::load: the table and the checks of bits, embedding_dim and shape.
void test_save_load() {
  auto saved = mybag::QuantizedEmbeddingBag::from_float(
      make_table(80), mybag::QuantizedEmbeddingBagFromFloatOptions().bits(4).mode(torch::kSum));
  std::stringstream checkpoint;
  torch::save(saved, checkpoint);
  const std::string bytes = checkpoint.str();
  {
    SCOPE("round trip");
    mybag::QuantizedEmbeddingBag loaded(
        mybag::QuantizedEmbeddingBagOptions(kNum, kDim).bits(4).mode(torch::kSum));
    EXPECT(!torch::equal(loaded->packed_weight, saved->packed_weight));
    std::stringstream in(bytes);
    torch::load(loaded, in);
    EXPECT_EQUAL(loaded->packed_weight, saved->packed_weight);
    EXPECT(loaded->named_buffers()["packed_weight"].is_same(loaded->packed_weight));
    const auto b = make_batch(Layout::Offsets, torch::kLong, std::nullopt, torch::kFloat, 81);
    EXPECT_EQUAL(loaded(b.input, b.offsets, b.psw), saved(b.input, b.offsets, b.psw));
  }
  {
    // 8 bits of embedding_dim 6 and 4 bits of 20 both take 14 columns.
    SCOPE("another bits with the same columns is refused and changes nothing");
    auto eight = mybag::QuantizedEmbeddingBag::from_float(make_table(82));
    std::stringstream eight_checkpoint;
    torch::save(eight, eight_checkpoint);
    mybag::QuantizedEmbeddingBag four(mybag::QuantizedEmbeddingBagOptions(kNum, 20).bits(4));
    EXPECT_EQ(four->packed_weight.size(1), eight->packed_weight.size(1));
    const auto before = four->packed_weight.clone();
    EXPECT_THROWS(c10::Error, torch::load(four, eight_checkpoint),
                  "the checkpoint holds a 8-bit table of embedding_dim 6, but this module has a "
                  "4-bit table of embedding_dim 20");
    EXPECT_EQUAL(four->packed_weight, before);
  }
  {
    SCOPE("another num_embeddings is refused and changes nothing");
    mybag::QuantizedEmbeddingBag more(
        mybag::QuantizedEmbeddingBagOptions(kNum + 1, kDim).bits(4));
    const auto before = more->packed_weight.clone();
    std::stringstream in(bytes);
    EXPECT_THROWS(c10::Error, torch::load(more, in), "packed_weight is Byte of shape [10, 7]",
                  "this module's is Byte of shape [11, 7]");
    EXPECT_EQUAL(more->packed_weight, before);
  }
}

void test_clone_and_to() {
  auto original = mybag::QuantizedEmbeddingBag::from_float(
      make_table(90), mybag::QuantizedEmbeddingBagFromFloatOptions().padding_idx(3));
  {
    SCOPE("clone: an independent copy");
    auto copy = std::dynamic_pointer_cast<mybag::QuantizedEmbeddingBagImpl>(original->clone());
    EXPECT(copy != nullptr);
    EXPECT_EQUAL(copy->packed_weight, original->packed_weight);
    EXPECT(copy->packed_weight.data_ptr() != original->packed_weight.data_ptr());
    EXPECT(copy->options.padding_idx() == std::optional<int64_t>(3));
    const auto before = original->packed_weight.clone();
    copy->packed_weight.zero_();
    EXPECT_EQUAL(original->packed_weight, before);
  }
  {
    SCOPE("to(dtype) keeps the uint8 table and the output dtype, as Python's .to(dtype)");
    const auto b = make_batch(Layout::TwoD, torch::kLong, std::nullopt, std::nullopt, 91);
    const auto expected = original(b.input);
    const auto before = original->packed_weight.clone();
    original->to(torch::kHalf);
    original->to(torch::kCPU, torch::kDouble);
    original->to(torch::kCPU);
    EXPECT_EQUAL(original->packed_weight, before);
    EXPECT(original->named_buffers()["packed_weight"].is_same(original->packed_weight));
    EXPECT_EQUAL(original(b.input), expected);
  }
}

// ---------------------------------------------------------------------------------------------

void test_errors() {
  const auto packed = mybag::quantize_rowwise(make_table(100), 8);
  const auto input = torch::tensor({{1, 2}}, torch::kLong);
  // The functional form: the same exception types as from Python.
  EXPECT_THROWS(c10::IndexError,
                mybag::quantized_embedding_bag(torch::tensor({{int64_t{1}, kNum}}), packed, 8),
                "input[1] = 10 is out of range");
  EXPECT_THROWS(c10::ValueError,
                mybag::quantized_embedding_bag(input, packed, 8, std::nullopt, "sun"),
                "mode has to be one of 'sum', 'mean' or 'max', but got 'sun'");
  EXPECT_THROWS(c10::NotImplementedError,
                mybag::quantized_embedding_bag(input, packed, 8, std::nullopt, "mean",
                                               torch::ones({1, 2})),
                "per_sample_weights is only supported with mode='sum'");
  EXPECT_THROWS(c10::Error,
                mybag::quantized_embedding_bag(input, packed, 8, std::nullopt, "sum",
                                               torch::ones({1, 2}).requires_grad_()),
                "per_sample_weights requires grad");
  EXPECT_THROWS(c10::Error,
                mybag::quantized_embedding_bag(input, packed, 8, std::nullopt, "mean",
                                               std::nullopt, false, kNum),
                "padding_idx has to be within");
  EXPECT_THROWS(c10::ValueError, mybag::quantized_embedding_bag(input, packed, 5),
                "bits has to be 8 or 4, but got 5");
  EXPECT_THROWS(c10::Error, mybag::quantized_embedding_bag(input, packed.to(torch::kFloat), 8),
                "packed_weight has to be uint8");
  EXPECT_THROWS(c10::ValueError,
                mybag::quantized_embedding_bag(input, packed.slice(1, 0, 8), 8),
                "so more than 8 columns");
  EXPECT_THROWS(c10::Error,
                mybag::quantized_embedding_bag(input, packed, 8, std::nullopt, "mean",
                                               std::nullopt, false, std::nullopt, torch::kDouble),
                "output_dtype has to be float32, float16 or bfloat16");
  EXPECT_THROWS(c10::ValueError,
                mybag::quantized_embedding_bag(input, packed, 8, torch::tensor({0})),
                "offsets has to be None when input is 2-D");
  EXPECT_THROWS(c10::ValueError, mybag::quantized_embedding_bag(torch::tensor({1, 2}), packed, 8),
                "offsets has to be a 1-D tensor when input is 1-D");
  EXPECT_THROWS(c10::Error,
                mybag::quantized_embedding_bag(torch::tensor({{1.0, 2.0}}), packed, 8),
                "input has to hold int32 or int64 indices");
  // quantize_rowwise and dequantize_rowwise.
  EXPECT_THROWS(c10::ValueError, mybag::quantize_rowwise(torch::randn({3, 5}), 4),
                "has to be even for 4 bits");
  EXPECT_THROWS(c10::ValueError, mybag::quantize_rowwise(torch::randn({3})),
                "weight has to be a 2-D tensor");
  EXPECT_THROWS(c10::Error, mybag::quantize_rowwise(torch::randn({3, 4}, torch::kDouble)),
                "weight has to be float32, float16 or bfloat16, but got Double");
  EXPECT_THROWS(c10::ValueError, mybag::quantize_rowwise(torch::randn({3, 4}), 2),
                "bits has to be 8 or 4, but got 2");
  EXPECT_THROWS(c10::ValueError, mybag::dequantize_rowwise(packed, 3),
                "dequantize_rowwise: bits has to be 8 or 4, but got 3");
  EXPECT_THROWS(c10::ValueError, mybag::dequantize_rowwise(packed.to(torch::kFloat)),
                "dequantize_rowwise: packed_weight has to be a 2-D uint8 tensor");
  EXPECT_THROWS(c10::ValueError, mybag::dequantize_rowwise(packed.slice(1, 0, 4), 4),
                "so more than 4 columns");

  // The module: its options when built (ValueError, as in Python), the op's at forward.
  const auto options = mybag::QuantizedEmbeddingBagOptions(kNum, kDim);
  using Options = mybag::QuantizedEmbeddingBagOptions;
  EXPECT_THROWS(c10::ValueError, mybag::QuantizedEmbeddingBag(Options(options).bits(3)),
                "mybag::QuantizedEmbeddingBag: bits has to be 8 or 4, but got 3");
  EXPECT_THROWS(c10::ValueError,
                mybag::QuantizedEmbeddingBag(Options(kNum, 5).bits(4)),
                "embedding_dim has to be even for 4 bits");
  EXPECT_THROWS(c10::ValueError,
                mybag::QuantizedEmbeddingBag(Options(options).output_dtype(torch::kDouble)),
                "output_dtype has to be torch::kFloat, torch::kHalf or torch::kBFloat16");
  EXPECT_THROWS(c10::ValueError,
                mybag::QuantizedEmbeddingBag(Options(options).padding_idx(kNum)),
                "padding_idx=10 is out of range");
  EXPECT_THROWS(c10::ValueError,
                mybag::QuantizedEmbeddingBag(Options(options).bits(4)._packed_weight(packed)),
                "_packed_weight has to be a uint8 tensor of shape (num_embeddings, "
                "embedding_dim / 2 + 4) = (10, 7), but got Byte of shape [10, 14]");
  EXPECT_THROWS(c10::ValueError, mybag::QuantizedEmbeddingBag::from_float(torch::randn({kDim})),
                "from_float: a table has to be 2-D");
  EXPECT_THROWS(c10::Error,
                mybag::QuantizedEmbeddingBag::from_float(
                    torch::randn({kNum, kDim}, torch::kDouble)),
                "weight has to be float32, float16 or bfloat16");
  mybag::QuantizedEmbeddingBag bag(Options(options).mode(torch::kSum));
  EXPECT_THROWS(c10::Error, bag(input, Tensor(), torch::ones({1, 2}).requires_grad_()),
                "per_sample_weights requires grad");
  EXPECT_THROWS(c10::IndexError, bag(torch::tensor({{0, -1}})), "is out of range");
}

void test_pretty_print() {
  std::ostringstream plain;
  plain << *mybag::QuantizedEmbeddingBag(kNum, kDim);
  EXPECT_EQ(plain.str(), std::string("mybag::QuantizedEmbeddingBag(num_embeddings=10, "
                                     "embedding_dim=6, bits=8, mode=mean)"));
  std::ostringstream full;
  full << *mybag::QuantizedEmbeddingBag(mybag::QuantizedEmbeddingBagOptions(kNum, kDim)
                                            .bits(4)
                                            .mode(torch::kSum)
                                            .include_last_offset(true)
                                            .padding_idx(-3)
                                            .output_dtype(torch::kHalf));
  EXPECT_EQ(full.str(),
            std::string("mybag::QuantizedEmbeddingBag(num_embeddings=10, embedding_dim=6, "
                        "bits=4, mode=sum, include_last_offset=true, padding_idx=7, "
                        "output_dtype=Half)"));
}

}  // namespace

int main() {
  RUN(test_quantize_rowwise_matches_torch_prepack);
  RUN(test_dequantize_rowwise);
  RUN(test_functional_matches_reference);
  RUN(test_sums_equal_torch_quantized_ops);
  RUN(test_module_defaults_and_buffer);
  RUN(test_module_matches_functional);
  RUN(test_from_float);
  RUN(test_save_load);
  RUN(test_clone_and_to);
  RUN(test_errors);
  RUN(test_pretty_print);
  return check::report("test_quantized");
}
