#include "mybag/cuda/value_checks.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>

#include <limits>

#include "mybag/checks.h"
#include "mybag/cuda/launch.cuh"
#include "mybag/cuda_value_checks.h"

namespace mybag::cuda {
namespace {

// Slots of the status array: the first position of each kind of bad value (kNone if none).
enum Slot { kBadIndex = 0, kBadFirstOffset, kDecreasingOffset, kOffsetPastEnd, kSlots };
constexpr unsigned long long kNone = std::numeric_limits<unsigned long long>::max();

__device__ inline void note(unsigned long long* status, Slot slot, int64_t position) {
  atomicMin(status + slot, static_cast<unsigned long long>(position));
}

// One pass over both arrays. Integer minima are exact whatever the order, so the report is the
// same every run: the first bad position of each kind, as the CPU's sequential checks find.
template <typename index_t>
__global__ void find_bad_values(const index_t* indices, int64_t num_indices,
                                const index_t* offsets, int64_t num_offsets, int64_t num_weights,
                                unsigned long long* status) {
  const int64_t total = num_indices > num_offsets ? num_indices : num_offsets;
  for (int64_t i = thread_item(); i < total; i += thread_stride()) {
    if (i < num_indices) {
      const int64_t index = indices[i];
      if (index < 0 || index >= num_weights) note(status, kBadIndex, i);
    }
    if (i < num_offsets) {
      const int64_t offset = offsets[i];
      if (i == 0 && offset != 0) note(status, kBadFirstOffset, 0);
      if (i > 0 && offset < static_cast<int64_t>(offsets[i - 1])) {
        note(status, kDecreasingOffset, i);
      }
      if (offset > num_indices) note(status, kOffsetPastEnd, i);
    }
  }
}

__global__ void find_bad_max_indices(const int64_t* winners, int64_t count, int64_t num_weights,
                                     unsigned long long* status) {
  for (int64_t i = thread_item(); i < count; i += thread_stride()) {
    if (winners[i] < -1 || winners[i] >= num_weights) note(status, kBadIndex, i);
  }
}

at::Tensor fresh_status(const at::Tensor& like) {
  // int64 storage read as unsigned: kNone is all bits set, i.e. -1.
  return at::full({kSlots}, -1, like.options().dtype(at::kLong));
}

unsigned long long* status_ptr(at::Tensor& status) {
  return reinterpret_cast<unsigned long long*>(status.mutable_data_ptr<int64_t>());
}

int64_t value_at(const at::Tensor& flat, int64_t position) {
  return flat[position].item<int64_t>();
}

}  // namespace

bool value_checks_active() {
  return cuda_value_checks_enabled() &&
         c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
}

void check_index_values(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                        int64_t num_weights) {
  if (!value_checks_active()) return;
  const auto flat_input = input.contiguous().view({-1});
  const bool has_offsets = input.dim() == 1 && offsets.has_value();
  const auto flat_offsets = has_offsets ? offsets->contiguous() : at::Tensor();
  const int64_t num_offsets = has_offsets ? flat_offsets.numel() : 0;
  const int64_t total = std::max<int64_t>(flat_input.numel(), num_offsets);
  if (total == 0) return;

  auto status = fresh_status(flat_input);
  const auto stream = current_stream();
  AT_DISPATCH_INDEX_TYPES(flat_input.scalar_type(), "mybag_check_index_values_cuda", [&] {
    find_bad_values<index_t><<<thread_grid(total), kThreadsPerBlock, 0, stream>>>(
        flat_input.const_data_ptr<index_t>(), flat_input.numel(),
        has_offsets ? flat_offsets.const_data_ptr<index_t>() : nullptr, num_offsets, num_weights,
        status_ptr(status));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // The one synchronization: the host needs the verdict before anything is written.
  const auto found = status.cpu();
  const auto* first = reinterpret_cast<const unsigned long long*>(found.const_data_ptr<int64_t>());
  // Reported in the CPU's order: indices, then the first offset, decreasing, past the end.
  if (first[kBadIndex] != kNone) {
    const auto i = static_cast<int64_t>(first[kBadIndex]);
    fail_index_out_of_range(i, value_at(flat_input, i), num_weights);
  }
  if (first[kBadFirstOffset] != kNone) {
    fail_first_offset(value_at(flat_offsets, 0));
  }
  if (first[kDecreasingOffset] != kNone) {
    const auto b = static_cast<int64_t>(first[kDecreasingOffset]);
    fail_decreasing_offsets(b, value_at(flat_offsets, b), value_at(flat_offsets, b - 1));
  }
  if (first[kOffsetPastEnd] != kNone) {
    const auto b = static_cast<int64_t>(first[kOffsetPastEnd]);
    fail_offset_past_end(b, value_at(flat_offsets, b), flat_input.numel());
  }
}

void check_max_indices_values(const at::Tensor& max_indices, int64_t num_weights) {
  if (!value_checks_active() || max_indices.numel() == 0) return;
  const auto winners = max_indices.contiguous().view({-1});
  auto status = fresh_status(winners);
  const auto stream = current_stream();
  find_bad_max_indices<<<thread_grid(winners.numel()), kThreadsPerBlock, 0, stream>>>(
      winners.const_data_ptr<int64_t>(), winners.numel(), num_weights, status_ptr(status));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto found = status.cpu();
  const auto first = static_cast<unsigned long long>(found.const_data_ptr<int64_t>()[kBadIndex]);
  if (first != kNone) {
    fail_max_index_out_of_range(value_at(winners, static_cast<int64_t>(first)), num_weights);
  }
}

}  // namespace mybag::cuda
