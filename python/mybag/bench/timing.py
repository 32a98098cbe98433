"""Interleaved timing and the two bandwidth ceilings measured in the same run.

Other programs share the machine, so absolute times drift from second to second. Calling the
implementations in turn, call by call (and reversing the order every round, so neither always
runs right after the other), exposes both to the same drift; the median of each then gives a
ratio that holds even when the times do not.

Ceilings:
    copy    ``dst.copy_(src)`` of a buffer far larger than the last-level cache: streaming
            bandwidth, counted as bytes read + bytes written. Measured at the start and the
            end of the run; the larger median is used (a ceiling is what the machine *can* do).
    gather  one ``torch.index_select`` of exactly the rows the case reads (padding entries
            left out), in the case's order, into a preallocated ``(entries, D)`` buffer;
            counted as rows read + rows written. Embedding_bag must read the same rows (with
            the same cache reuse, for small tables and Zipf indices), so its GB/s over this
            figure says how close it comes to a plain gather of its data. It is timed per case,
            interleaved with the two implementations, so it sees the same noise. (Chunking the
            gather into a cache-sized buffer would count reads alone, but every chunk is a
            parallel region and, on a loaded machine, each waits for a scheduler tick: one
            call is the more robust ceiling.)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor


def time_once(fn: Callable[[], object], device: str) -> float:
    """Seconds one call of ``fn`` takes; on CUDA measured with events around the call."""
    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def interleave(
    calls: dict[str, Callable[[], object]],
    *,
    device: str,
    repeats: int,
    warmup: int = 2,
    budget_s: float = float("inf"),
    before: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Times every call in ``calls`` ``repeats`` times, alternating between them call by call.

    ``before`` runs untimed before every call (e.g. resetting ``.grad``). Past ``budget_s``
    seconds the loop stops early, but never before 5 rounds (or ``repeats`` if fewer): slow
    cases get fewer samples rather than taking minutes.
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            if before is not None:
                before()
            calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            if before is not None:
                before()
            samples[name].append(time_once(calls[name], device))
        if round_ + 1 >= min(5, repeats) and time.perf_counter() - start > budget_s:
            break
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def copy_bandwidth(device: str, megabytes: int, repeats: int = 10) -> float:
    """Streaming copy bandwidth, GB/s: ``dst.copy_(src)``, bytes read + written."""
    numel = megabytes * 2**20 // 4
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    samples = interleave({"copy": lambda: dst.copy_(src)}, device=device, repeats=repeats)
    return 2 * src.numel() * src.element_size() / median(samples["copy"]) / 1e9


def gather_call(weight: Tensor, rows: Tensor) -> tuple[Callable[[], object], int]:
    """The gather ceiling's call for these rows of ``weight``, and the bytes it is counted as."""
    out = torch.empty(rows.numel(), weight.shape[1], dtype=weight.dtype, device=weight.device)
    moved = 2 * rows.numel() * weight.shape[1] * weight.element_size()
    return (lambda: torch.index_select(weight, 0, rows, out=out)), moved
