"""The switch for the CUDA kernels' value checks (indices in range, offsets well formed).

On the GPU, checking values costs one small device-to-host copy per call, which makes the host
wait for the stream and is not allowed while a CUDA graph is being captured. With the checks on
(the default), bad values raise the same exceptions as on the CPU and the CUDA context stays
usable. With them off, or while a CUDA graph is being captured (where the kernels skip them on
their own), nothing waits and bad values are contained instead: an index out of range is skipped
as if it were padding (it adds nothing and gets no gradient) and offsets are clamped into
``[0, len(input)]``. No kernel reads or writes out of bounds either way. The CPU always checks.

The switch is process-wide; ``MYBAG_CUDA_VALUE_CHECKS=0`` in the environment turns the checks
off from the start. C++ programs have the same switch in ``mybag/cuda_value_checks.h``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def cuda_value_checks_enabled() -> bool:
    """Whether the CUDA kernels check index and offset values (outside graph capture)."""
    return torch.ops.mybag._cuda_value_checks_enabled()


def set_cuda_value_checks(enabled: bool) -> bool:
    """Turns the CUDA value checks on or off for the whole process; returns the old setting."""
    return torch.ops.mybag._set_cuda_value_checks(bool(enabled))


@contextlib.contextmanager
def cuda_value_checks(enabled: bool) -> Iterator[None]:
    """Runs the block with the CUDA value checks on or off, then restores the old setting.

    Example: ``with mybag.cuda_value_checks(False): graph.capture_begin() ...``
    """
    previous = set_cuda_value_checks(enabled)
    try:
        yield
    finally:
        set_cuda_value_checks(previous)
