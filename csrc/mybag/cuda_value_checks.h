// The switch for the CUDA kernels' value checks (indices in range, offsets well formed).
//
// On the GPU a check costs one small device-to-host copy, which synchronizes the host with the
// stream and is not allowed while a CUDA graph is being captured. With the checks on (the
// default) bad values raise the same exceptions as on the CPU. With them off, or during graph
// capture (where the kernels skip them on their own), nothing is synchronized and bad values are
// contained instead: an out-of-range index is skipped as if it were padding (it adds nothing and
// gets no gradient), and offsets are clamped into [0, len(input)]. No kernel ever reads or
// writes out of bounds either way. The CPU always checks: it needs no synchronization.
//
// The switch is process-wide. Its starting value comes from the environment variable
// MYBAG_CUDA_VALUE_CHECKS ("0" turns the checks off), read when the library loads.
#pragma once

namespace mybag {

bool cuda_value_checks_enabled();

// Turns the checks on or off and returns the previous setting.
bool set_cuda_value_checks(bool enabled);

}  // namespace mybag
