"""Runs the cases: builds the inputs, checks mybag against torch, then times both."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import mybag
from mybag.bench import timing
from mybag.bench.grid import Case
from mybag.bench.inputs import Inputs, TableCache, make_inputs
from mybag.bench.progress import Progress
from mybag.bench.traffic import case_bytes

# (rtol, atol for a bag of one entry) per dtype; atol grows with sqrt(bag size) since sums
# of L rows round differently in each implementation. Loose for the half types: this check
# guards against timing a wrong answer, the tests check exactness.
_TOLERANCES = {
    "f64": (1e-9, 1e-9),
    "f32": (1e-4, 1e-5),
    "f16": (1e-2, 5e-3),
    "bf16": (5e-2, 2e-2),
}


class MismatchError(AssertionError):
    """mybag's answer differs from torch's on some case: its timing would mean nothing."""


def _embedding_bag(fn: Callable[..., Tensor], case: Case, x: Inputs, weight: Tensor) -> Tensor:
    return fn(
        x.input,
        weight,
        x.offsets,
        mode=case.mode,
        sparse=case.pass_ == "fwd+bwd sparse",
        per_sample_weights=x.per_sample_weights,
        padding_idx=x.padding_idx,
    )


def _mybag_fn(*args: Any, **kwargs: Any) -> Tensor:
    # Looked up at call time, so that a test can substitute mybag.embedding_bag.
    return mybag.embedding_bag(*args, **kwargs)


def _calls(case: Case, x: Inputs) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    """The timed calls for torch and mybag, and what to run untimed before each."""
    if case.pass_ == "fwd":

        def forward(fn: Callable[..., Tensor]) -> Callable[[], object]:
            def call() -> object:
                with torch.no_grad():
                    return _embedding_bag(fn, case, x, x.weight)

            return call

        return {"torch": forward(F.embedding_bag), "mybag": forward(_mybag_fn)}, lambda: None

    leaf = x.weight.detach().requires_grad_()

    def step(fn: Callable[..., Tensor]) -> Callable[[], object]:
        def call() -> object:
            _embedding_bag(fn, case, x, leaf).backward(x.grad_output)
            return leaf.grad

        return call

    def reset() -> None:
        leaf.grad = None  # a fresh gradient every step, as after optimizer.zero_grad()

    return {"torch": step(F.embedding_bag), "mybag": step(_mybag_fn)}, reset


def _comparable(t: Tensor) -> Tensor:
    # Sparse gradients are coalesced in float64 (torch's is uncoalesced, and summing its
    # duplicates in a half type would add rounding of its own), never densified: a dense copy
    # of a 1M x 512 gradient in float64 is 4 GiB. Half types are compared in float64.
    t = t.detach()
    if t.is_sparse:
        return t.to(torch.float64).coalesce()
    return t.to(torch.float64) if t.dtype in (torch.float16, torch.bfloat16) else t


def check(
    case: Case, x: Inputs, calls: dict[str, Callable[[], object]], reset: Callable[[], None]
) -> None:
    """Raises MismatchError unless mybag's result (output or weight gradient) matches torch's."""
    results = {}
    for name, call in calls.items():
        reset()
        try:
            out = call()
        except Exception as error:  # any failure is reported as a mismatch
            raise MismatchError(
                f"{case.name}: {name} raised {type(error).__name__}: {error}"
            ) from error
        if not isinstance(out, Tensor):
            raise MismatchError(f"{case.name}: {name} produced no tensor")
        results[name] = out
    expected, actual = results["torch"], results["mybag"]
    if expected.is_sparse != actual.is_sparse:
        raise MismatchError(
            f"{case.name}: gradient layout differs: torch {expected.layout}, mybag {actual.layout}"
        )
    rtol, atol = _TOLERANCES[case.dtype]
    try:
        torch.testing.assert_close(
            _comparable(actual),
            _comparable(expected),
            rtol=rtol,
            atol=atol * math.sqrt(case.bag_size),
        )
    except AssertionError as error:
        what = "output" if case.pass_ == "fwd" else "weight gradient"
        raise MismatchError(f"{case.name}: mybag's {what} differs from torch's:\n{error}") from None


def measure(
    case: Case,
    x: Inputs,
    *,
    device: str,
    repeats: int,
    budget_s: float,
    copy_gbps: float,
) -> dict[str, Any]:
    """Checks, then times torch, mybag and the gather ceiling interleaved; one result row."""
    calls, reset = _calls(case, x)
    check(case, x, calls, reset)
    gather, gather_bytes = timing.gather_call(x.weight, x.used_entries)
    samples = timing.interleave(
        {**calls, "gather": gather},
        device=device,
        repeats=repeats,
        budget_s=budget_s,
        before=reset,
    )
    t_torch, t_mybag, t_gather = (timing.median(samples[k]) for k in ("torch", "mybag", "gather"))
    nbytes = case_bytes(case, x)
    torch_gbps, mybag_gbps = nbytes / t_torch / 1e9, nbytes / t_mybag / 1e9
    gather_gbps = gather_bytes / t_gather / 1e9
    return {
        "case": case.name,
        "pass": case.pass_,
        "mode": case.mode,
        "dtype": case.dtype,
        "rows": case.rows,
        "dim": case.dim,
        "bag_size": case.bag_size,
        "bags": case.bags,
        "dist": case.dist,
        "padding_idx": x.padding_idx,
        "per_sample_weights": case.per_sample_weights,
        "bytes": nbytes,
        "runs": len(samples["torch"]),
        "torch_ms": t_torch * 1e3,
        "mybag_ms": t_mybag * 1e3,
        "speedup": t_torch / t_mybag,
        # Fastest calls, as a cross-check of the medians: noise only adds time, so a ratio of
        # minima far from the ratio of medians marks a noisy case.
        "torch_min_ms": min(samples["torch"]) * 1e3,
        "mybag_min_ms": min(samples["mybag"]) * 1e3,
        "speedup_min": min(samples["torch"]) / min(samples["mybag"]),
        "torch_gbps": torch_gbps,
        "mybag_gbps": mybag_gbps,
        "gather_ms": t_gather * 1e3,
        "gather_gbps": gather_gbps,
        "copy_gbps": copy_gbps,
        "torch_frac_gather": torch_gbps / gather_gbps,
        "mybag_frac_gather": mybag_gbps / gather_gbps,
        "torch_frac_copy": torch_gbps / copy_gbps,
        "mybag_frac_copy": mybag_gbps / copy_gbps,
    }


def run_cases(
    cases: list[Case],
    *,
    device: str,
    repeats: int,
    budget_s: float,
    copy_gbps: float,
    progress: Progress | None = None,
    on_mismatch: str = "raise",
) -> tuple[list[dict[str, Any]], list[str]]:
    """Result rows in the grid's order, and the mismatch messages.

    Cases run grouped by table (each table is built once) but are reported in grid order.
    ``on_mismatch="raise"`` raises MismatchError at the first wrong answer; ``"skip"``
    records the message, skips timing that case and goes on.
    """
    tables = TableCache()
    order = sorted(range(len(cases)), key=lambda i: cases[i].table_key)
    rows: dict[int, dict[str, Any]] = {}
    mismatches: list[str] = []
    for i in order:
        case = cases[i]
        if progress is not None:
            progress.step(case.name)
        x = make_inputs(case, device, tables)
        try:
            rows[i] = measure(
                case, x, device=device, repeats=repeats, budget_s=budget_s, copy_gbps=copy_gbps
            )
        except MismatchError as error:
            if on_mismatch == "raise":
                raise
            mismatches.append(str(error))
    if progress is not None:
        progress.close()
    return [rows[i] for i in sorted(rows)], mismatches
