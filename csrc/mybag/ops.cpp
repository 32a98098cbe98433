// Every mybag schema, defined once. Kernels register themselves in their own files.
//
// The public operator, mybag::embedding_bag, is CompositeImplicitAutograd (composite.cpp): it
// validates, renormalizes under no-grad when max_norm is set and calls the internal ops below.
// Only the internal ops have device kernels, a Meta kernel and (for the forward) autograd, so
// torch.compile and torch.export trace the public op down to these.
//
// Conventions of the internal ops:
//   input    1-D (N,) with 1-D offsets, or 2-D (B, L) with offsets None; int32 or int64, and the
//            same dtype as offsets (the public op promotes a mixed pair to int64).
//   mode     0 = sum, 1 = mean, 2 = max (torch's numbering).
//   padding_idx  as the user gave it (may be negative); kernels normalize it.
#include <torch/library.h>

TORCH_LIBRARY(mybag, m) {
  m.def(
      "embedding_bag(Tensor input, Tensor weight, Tensor? offsets=None, float? max_norm=None, "
      "float norm_type=2.0, bool scale_grad_by_freq=False, str mode=\"mean\", bool sparse=False, "
      "Tensor? per_sample_weights=None, bool include_last_offset=False, int? padding_idx=None) "
      "-> Tensor");

  // max_norm: scales in place every row referenced by `input` whose norm exceeds max_norm.
  // Validates input and offsets before it touches weight, so a call that fails changes nothing.
  m.def(
      "_embedding_bag_renorm_(Tensor(a!) weight, Tensor input, Tensor? offsets, "
      "bool include_last_offset, float max_norm, float norm_type) -> ()");

  // Returns the bags' reductions and, in max mode, the winning weight row of every (bag,
  // feature) (-1 for an empty bag); an empty tensor in the other modes. scale_grad_by_freq and
  // sparse only steer the backward, and are here so autograd can read them.
  m.def(
      "_embedding_bag_forward(Tensor weight, Tensor input, Tensor? offsets, "
      "Tensor? per_sample_weights, int mode, int? padding_idx, bool include_last_offset, "
      "bool scale_grad_by_freq, bool sparse) -> (Tensor output, Tensor max_indices)");

  // Dense gradient w.r.t. weight, (num_weights, D).
  m.def(
      "_embedding_bag_dense_backward(Tensor grad, Tensor input, Tensor? offsets, "
      "Tensor? per_sample_weights, Tensor max_indices, SymInt num_weights, int mode, "
      "int? padding_idx, bool include_last_offset, bool scale_grad_by_freq) -> Tensor");

  // One gradient row per entry of input, (N, D): what entry i adds to weight[input[i]]; zero
  // rows for padding. The sparse gradient is built from it.
  m.def(
      "_embedding_bag_per_entry_grad(Tensor grad, Tensor input, Tensor? offsets, "
      "Tensor? per_sample_weights, SymInt num_weights, int mode, int? padding_idx, "
      "bool include_last_offset, bool scale_grad_by_freq) -> Tensor");

  // Gradient w.r.t. per_sample_weights (sum mode), shaped like input.
  m.def(
      "_embedding_bag_per_sample_weights_backward(Tensor grad, Tensor weight, Tensor input, "
      "Tensor? offsets, int mode, int? padding_idx, bool include_last_offset) -> Tensor");

  // The embedding bag whose backward updates weight with an optimizer instead of returning its
  // gradient (mybag/optimizers.h). This op only computes the bags; its autograd node calls
  // _embedding_bag_fused_update_ in the backward, which writes weight, state and step.
  // state: [] for sgd, [sum] for adagrad (E, D) and rowwise_adagrad (E,), [exp_avg,
  // exp_avg_sq] for adam; step: int64 0-dim, the number of updates so far.
  m.def(
      "fused_embedding_bag(Tensor input, Tensor weight, Tensor[] state, Tensor step, "
      "Tensor? offsets=None, float? max_norm=None, float norm_type=2.0, "
      "bool scale_grad_by_freq=False, str mode=\"mean\", Tensor? per_sample_weights=None, "
      "bool include_last_offset=False, int? padding_idx=None, str optimizer=\"sgd\", "
      "float lr=0.001, float eps=1e-10, float beta1=0.9, float beta2=0.999, "
      "float weight_decay=0., float lr_decay=0.) -> Tensor");

  // The internal op that carries the fused backward (autograd.cpp), with the conventions of
  // _embedding_bag_forward.
  m.def(
      "_embedding_bag_fused_forward(Tensor weight, Tensor[] state, Tensor step, Tensor input, "
      "Tensor? offsets, Tensor? per_sample_weights, int mode, int? padding_idx, "
      "bool include_last_offset, bool scale_grad_by_freq, str optimizer, float lr, float eps, "
      "float beta1, float beta2, float weight_decay, float lr_decay) -> Tensor");

  // One optimizer step for the rows named by input (bag_mode is the mode's number; not "mode",
  // which torch.compile's functionalization of mutable ops takes for a keyword of its own): each touched row's whole gradient (as
  // _embedding_bag_dense_backward would give it) is formed and applied in one pass, never
  // materialized as a table. Increments step. Checks everything before it writes anything.
  m.def(
      "_embedding_bag_fused_update_(Tensor(a!) weight, Tensor(b!)[] state, Tensor(c!) step, "
      "Tensor grad, Tensor input, Tensor? offsets, Tensor? per_sample_weights, "
      "Tensor max_indices, int bag_mode, int? padding_idx, bool include_last_offset, "
      "bool scale_grad_by_freq, str optimizer, float lr, float eps, float beta1, float beta2, "
      "float weight_decay, float lr_decay) -> ()");

  // Row-wise quantized tables, in torch's packed layouts (mybag/quantized_rows.h): a uint8
  // tensor (num_embeddings, packed columns), each row its values then its scale and bias.
  // bits = 8: D bytes then float32 scale and bias (torch's embedding_bag_byte_prepack);
  // bits = 4: D / 2 bytes, two values a byte (the even column in the low nibble), then float16
  // scale and bias (embedding_bag_4bit_prepack). quantize_rowwise packs a float32, float16 or
  // bfloat16 table with torch's rounding, scale and bias, on any device.
  m.def("quantize_rowwise(Tensor weight, int bits=8) -> Tensor");

  // The embedding bag of the dequantized table (q * scale + bias per row), accumulated in
  // float32 and rounded once to output_dtype (float32 when None). No autograd: the table is
  // integer, and a per_sample_weights that requires grad is refused.
  m.def(
      "quantized_embedding_bag(Tensor input, Tensor packed_weight, int bits, "
      "Tensor? offsets=None, str mode=\"mean\", Tensor? per_sample_weights=None, "
      "bool include_last_offset=False, int? padding_idx=None, ScalarType? output_dtype=None) "
      "-> Tensor");

  // Its internal op, with the conventions of _embedding_bag_forward; per_sample_weights is
  // float32.
  m.def(
      "_quantized_embedding_bag_forward(Tensor packed_weight, Tensor input, Tensor? offsets, "
      "Tensor? per_sample_weights, int bits, int mode, int? padding_idx, "
      "bool include_last_offset, ScalarType output_dtype) -> Tensor");

  // A row-wise shard of a table (mybag/row_shard_entries.h, python/mybag/distributed/): the
  // rows [first_row, first_row + shard rows) of a table of num_weights rows, the whole batch on
  // every rank. The forward returns this rank's part of each bag, and in max mode the rows and
  // batch positions of its best entries (-1 for none); the parts of all ranks add up (sum,
  // mean) or combine (the three ops below, for max) to the unsharded result.
  m.def(
      "_embedding_bag_row_shard_forward(Tensor weight_shard, Tensor input, Tensor? offsets, "
      "Tensor? per_sample_weights, int mode, int? padding_idx, bool include_last_offset, "
      "int first_row, int num_weights) -> (Tensor output, Tensor max_indices, Tensor positions)");
  // Max over ranks from each rank's part (output, positions): keys (2, B, D) to reduce by MAX
  // over the ranks, then claims (B, D) to reduce by MIN, then the bags' maxima and this rank's
  // rows of them (-1 where another rank holds the winner).
  m.def("_embedding_bag_row_shard_max_keys(Tensor output, Tensor positions) -> Tensor");
  m.def(
      "_embedding_bag_row_shard_max_claims(Tensor output, Tensor positions, Tensor keys) "
      "-> Tensor");
  m.def(
      "_embedding_bag_row_shard_max_merge(Tensor output, Tensor positions, Tensor max_indices, "
      "Tensor keys, Tensor claims) -> (Tensor output, Tensor max_indices)");
  // The shard's dense gradient, (shard_rows, D), from the whole bags' gradient.
  m.def(
      "_embedding_bag_row_shard_backward(Tensor grad, Tensor input, Tensor? offsets, "
      "Tensor? per_sample_weights, Tensor max_indices, int mode, int? padding_idx, "
      "bool include_last_offset, bool scale_grad_by_freq, int first_row, int shard_rows, "
      "int num_weights) -> Tensor");
  // The shard's part of the per_sample_weights gradient (zeros for other shards' entries).
  m.def(
      "_embedding_bag_row_shard_per_sample_weights_backward(Tensor grad, Tensor weight_shard, "
      "Tensor input, Tensor? offsets, int mode, int? padding_idx, bool include_last_offset, "
      "int first_row, int num_weights) -> Tensor");
  // max_norm on the shard's referenced rows.
  m.def(
      "_embedding_bag_row_shard_renorm_(Tensor(a!) weight_shard, Tensor input, Tensor? offsets, "
      "bool include_last_offset, float max_norm, float norm_type, int first_row, "
      "int num_weights) -> ()");
  // The fused optimizer's step (_embedding_bag_fused_update_) on the shard's rows and state.
  m.def(
      "_embedding_bag_row_shard_fused_update_(Tensor(a!) weight_shard, Tensor(b!)[] state, "
      "Tensor(c!) step, Tensor grad, Tensor input, Tensor? offsets, Tensor? per_sample_weights, "
      "Tensor max_indices, int bag_mode, int? padding_idx, bool include_last_offset, "
      "bool scale_grad_by_freq, str optimizer, float lr, float eps, float beta1, float beta2, "
      "float weight_decay, float lr_decay, int first_row, int num_weights) -> ()");

  // The switch for the CUDA kernels' value checks (mybag/cuda_value_checks.h): turns them on
  // or off and returns the previous setting; and reads it.
  m.def("_set_cuda_value_checks(bool enabled) -> bool");
  m.def("_cuda_value_checks_enabled() -> bool");
}
