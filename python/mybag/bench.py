"""Times PyTorch's torch.nn.functional.embedding_bag and mybag.embedding_bag
side by side on a grid of cases (table size, embedding width, bag size,
mode, dtype; forward, and forward + backward). Each case first checks that
mybag gives torch's answer; only then are the two timed, call by call in
turn, and their median times compared. It prints one line per case (times,
speed-up = torch time / mybag time, bandwidths) and a summary. From Python,
mybag.bench.run(quick=True) returns one dict per case and
mybag.bench.benchmark(quick=True) the whole report.

--suite train times training steps instead (forward, backward, optimizer
update: sgd, adagrad, rowwise_adagrad, adam) of mybag.FusedEmbeddingBag, whose
update is fused into the backward, against torch's sparse and dense modules
with torch.optim and, when fbgemm_gpu imports, FBGEMM's fused CPU step; each
case first checks one fused step against torch's (mybag.bench_training).

--suite serve times inference lookups of row-wise quantized tables (int8,
int4; mode sum): mybag.quantized_embedding_bag against torch's quantized ops
on the same packed table, F.embedding_bag on the float32 and float16 tables,
mybag.embedding_bag on the float32 one and, when fbgemm_gpu imports, FBGEMM's
quantized CPU lookup, on DRAM-resident and cached tables; each time comes with
its max abs error against the float64 result of the unquantized table, and
each case first checks mybag's output against torch's (mybag.bench_serving).
See docs/benchmarks.md."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

import mybag

Row = dict[str, Any]  # one case's figures, as printed and written to CSV/JSON
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "f64": torch.float64}
# (rtol, atol for a bag of one entry) per dtype; atol grows with sqrt(bag size) since sums of L
# rows round differently in each implementation. Loose for the half types: this check guards
# against timing a wrong answer, the tests check exactness.
TOLERANCES = {"f64": (1e-9, 1e-9), "f32": (1e-4, 1e-5), "f16": (1e-2, 5e-3), "bf16": (5e-2, 2e-2)}
ZIPF_EXPONENT = 1.05  # about what embedding lookups in recommendation data show
PADDING_FRACTION = 0.1  # of the entries, replaced by padding_idx in the "pad" cases
# Per grid: timed calls per implementation and case; the time per case past which a case stops
# adding rounds (after at least 5); MiB copied by the copy ceiling.
SETTINGS = {
    "full": {"repeats": 25, "budget_s": 4.0, "copy_mb": 256},
    "quick": {"repeats": 10, "budget_s": 0.6, "copy_mb": 128},
    "tiny": {"repeats": 3, "budget_s": 0.1, "copy_mb": 8},  # --tiny: the program's own tests
}


class NoCaseError(ValueError):
    """The filter matches no case of the grid: running would time nothing and look like success."""


class MismatchError(AssertionError):
    """mybag's answer differs from torch's on some case: its timing would mean nothing."""


# The cases: one base case and variations along each axis, not the cross product. Both sides get
# the same arguments, so the options whose meaning differs on purpose (include_last_offset,
# scale_grad_by_freq with sparse=True; see the README, "Differences from torch") are left out.
@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case; ``name`` reads like ``fwd sum f32 1M x128 L20 uniform``."""

    pass_: str  # "fwd", "fwd+bwd dense" or "fwd+bwd sparse"
    mode: str
    dtype: str  # a key of DTYPES
    rows: int
    dim: int
    bag_size: int
    bags: int
    dist: str = "uniform"  # or "zipf"
    padding: bool = False
    per_sample_weights: bool = False

    @property
    def name(self) -> str:
        extras = (" pad" if self.padding else "") + (" psw" if self.per_sample_weights else "")
        return (f"{self.pass_} {self.mode} {self.dtype} {rows_label(self.rows)} x{self.dim} "
                f"L{self.bag_size} {self.dist}{extras}")  # fmt: skip


def rows_label(rows: int) -> str:
    """A table's row count as case names write it: 1000000 -> "1M", 10000 -> "10k"."""
    units = [(f"{rows // n}{u}", n) for u, n in (("M", 10**6), ("k", 10**3))]
    return next((s for s, n in units if rows >= n and rows % n == 0), str(rows))


def grid(size: str = "full") -> list[Case]:
    """The cases of ``size``: "full" (81), "quick" (21, smaller D and fewer lookups per call),
    or "tiny" (three 1000-row cases that run in a second, for tests of the program itself)."""
    if size == "tiny":
        return [Case("fwd", "sum", "f32", 1000, 16, 5, 32),
                Case("fwd", "max", "f32", 1000, 16, 5, 32, padding=True),
                Case("fwd+bwd sparse", "mean", "f32", 1000, 16, 5, 32, dist="zipf")]  # fmt: skip
    full = size == "full"
    small, large, base_dim = 10_000, 1_000_000, 128 if full else 64
    lookups = 65_536 if full else 16_384  # per call, whatever the bag size: comparable costs
    cases: dict[str, Case] = {}

    def add(pass_="fwd", mode="sum", dtype="f32", rows=large, dim=base_dim, bag_size=20, **extra):
        case = Case(pass_, mode, dtype, rows, dim, bag_size, max(64, lookups // bag_size), **extra)
        cases.setdefault(case.name, case)

    modes, tables = ("sum", "mean", "max"), (small, large)
    some_tables, some_modes = (tables, modes) if full else ((large,), ("sum", "max"))
    # Forward, float32: every mode over table sizes (in cache or not) and embedding widths.
    for rows in tables:
        for dim in (16, 64, 128, 512) if full else (64,):
            for mode in modes:
                add(mode=mode, rows=rows, dim=dim)
    for bag_size in (1, 150):
        for rows in some_tables:
            for mode in ("sum", "max") if full else ("sum",):
                add(mode=mode, rows=rows, bag_size=bag_size)
    # Zipf-skewed indices (a few hot rows dominate, as in recommendation models), padding_idx
    # and per_sample_weights (torch's scalar paths).
    for rows in some_tables:
        for mode in some_modes:
            add(mode=mode, rows=rows, dist="zipf")
    for rows in some_tables:
        for mode in some_modes:
            add(mode=mode, rows=rows, padding=True)
        add(rows=rows, per_sample_weights=True)
    for dtype in ("bf16", "f16", "f64"):
        for mode in modes if full else ("sum",):
            add(mode=mode, dtype=dtype)
        if full:
            add(dtype=dtype, rows=small, dim=64)
    # Forward + backward: a dense gradient (zero-filled, table-sized, every step), and a sparse
    # one (the training step of large embedding tables).
    for rows in some_tables:
        for mode in modes if full else ("sum",):
            add("fwd+bwd dense", mode=mode, rows=rows)
    add("fwd+bwd dense", mode="max", rows=small)
    for rows in some_tables:
        for mode in ("sum", "mean"):
            add("fwd+bwd sparse", mode=mode, rows=rows)
    add("fwd+bwd sparse", mode="mean", dist="zipf")
    if full:
        add("fwd", dist="zipf", bag_size=150)
        for dtype in ("bf16", "f64"):
            add("fwd+bwd dense", dtype=dtype)
        add("fwd+bwd dense", dist="zipf")
        add("fwd+bwd sparse", per_sample_weights=True)
        add("fwd+bwd sparse", mode="mean", padding=True)
        add("fwd+bwd sparse", dtype="bf16")
        add("fwd+bwd sparse", bag_size=150)
        add("fwd+bwd sparse", dim=512)
        # Combined cases, closer to real models.
        add(dtype="f16", dim=64, bag_size=150, dist="zipf", per_sample_weights=True)
        add(mode="mean", dtype="bf16", dist="zipf", padding=True)
        add("fwd+bwd sparse", dtype="bf16", dim=64, bag_size=150, dist="zipf",
            per_sample_weights=True)  # fmt: skip
    return list(cases.values())


def select(cases: list[Case], substring: str | None, device: str) -> list[Case]:
    """Cases whose name contains ``substring``; float64 only on the CPU (GPUs are slow at it)."""
    return [c for c in cases if (substring is None or substring in c.name)
            and (device == "cpu" or c.dtype != "f64")]  # fmt: skip


def cases_for(device: str = "cpu", quick: bool = False, tiny: bool = False,
              filter: str | None = None) -> list[Case]:  # fmt: skip
    """The cases a run would time; raises ``NoCaseError`` if ``filter`` matches none of them,
    ``RuntimeError`` for ``device="cuda"`` without a GPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no GPU")
    every = select(grid("tiny" if tiny else "quick" if quick else "full"), None, device)
    cases = select(every, filter, device)
    if not cases:
        raise no_case_error(filter, [c.name for c in every], quick, device)
    return cases


def no_case_error(filter: str | None, names: list[str], quick: bool, device: str,
                  suite: str = "") -> NoCaseError:  # fmt: skip
    """The error for a ``filter`` that matches none of ``names``, with examples and a hint to
    ``--list``; ``suite`` is the option that picks the grid, if any ("--suite train")."""
    options = " ".join(o for o in (suite, "--quick" if quick else "") if o)
    examples = "".join(f"\n  {name}" for name in names[:4])
    return NoCaseError(
        f"no case name contains {filter!r} ({len(names)} cases in the "
        f"{options + ' ' if options else ''}grid on {device}).\n"
        "--filter keeps the cases whose name contains the text exactly (case-sensitive).\n"
        f"Case names look like:{examples}\n"
        f"List them all with: python -m mybag.bench --list{' ' + options if options else ''}"
    )


def select_cases(every: list, filter: str | None, quick: bool, device: str, suite: str) -> list:
    """The cases of a suite's grid (``every``, objects with a ``name``) a run would time: those
    whose name contains ``filter``. Raises ``NoCaseError`` if none does, ``RuntimeError`` for
    ``device="cuda"`` without a GPU; ``suite`` is the option that picks the grid
    ("--suite train")."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no GPU")
    cases = [c for c in every if filter is None or filter in c.name]
    if not cases:
        raise no_case_error(filter, [c.name for c in every], quick, device, suite)
    return cases


def report_tail(summary: dict[str, Any]) -> list[str]:
    """The last lines of a suite's report: its notes and its mismatches (not timed)."""
    lines = []
    if summary["notes"]:
        lines.append(f"notes ({len(summary['notes'])}):")
        lines += ["  " + n.replace("\n", "\n    ") for n in summary["notes"]]
    if summary["mismatches"]:
        lines.append(f"MISMATCHES (not timed): {len(summary['mismatches'])}")
        lines += ["  " + m.replace("\n", "\n    ") for m in summary["mismatches"]]
    return lines


@dataclasses.dataclass
class Inputs:
    """One case's arguments. Both implementations get these very tensors, so neither gets a
    warmer cache or a friendlier layout than the other."""

    weight: Tensor
    input: Tensor
    offsets: Tensor
    per_sample_weights: Tensor | None
    padding_idx: int | None
    used_entries: Tensor  # entries that are not padding_idx: the rows a kernel must read
    grad_output: Tensor | None


def zipf_indices(rows: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` row indices drawn from a Zipf law over ``rows`` ranks (P(rank k) ~ 1/k^s), by
    inverse CDF; the ranks go through a random permutation, so the hot rows are scattered over
    the table as in real data, not packed into its first cache lines."""
    cdf = torch.cumsum(torch.arange(1, rows + 1, dtype=torch.float64).pow(-ZIPF_EXPONENT), 0)
    draws = torch.rand(count, dtype=torch.float64, generator=generator) * cdf[-1]
    rank = torch.searchsorted(cdf, draws).clamp_(max=rows - 1)
    return torch.randperm(rows, generator=generator)[rank]


def make_inputs(case: Case, device: str, tables: dict | None = None) -> Inputs:
    """The case's tensors, reproducible (seeded by the case's name). ``tables`` keeps the last
    table, so that consecutive cases on one table build it (up to 2 GiB) once."""
    tables = {} if tables is None else tables
    key = (case.rows, case.dim, case.dtype, device)
    if key not in tables:
        tables.clear()  # one table at a time: the machine is shared
        # uniform_ rather than randn: several times faster for 2 GiB, and no ties, no NaN.
        table = torch.empty(case.rows, case.dim)
        table.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(1234))
        tables[key] = table.to(device=device, dtype=DTYPES[case.dtype])
    weight = tables[key]
    generator = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    count = case.bags * case.bag_size
    if case.dist == "zipf":
        indices = zipf_indices(case.rows, count, generator)
    else:
        indices = torch.randint(0, case.rows, (count,), generator=generator)
    padding_idx = case.rows // 2 if case.padding else None
    if case.padding:
        indices[torch.rand(count, generator=generator) < PADDING_FRACTION] = padding_idx
    used = indices if padding_idx is None else indices[indices != padding_idx]

    def drawn(draw: Callable[..., Tensor], *shape: int) -> Tensor:
        return draw(*shape, generator=generator).to(device=device, dtype=weight.dtype)

    return Inputs(
        weight=weight,
        input=indices.to(device),
        offsets=torch.arange(0, count, case.bag_size, dtype=torch.int64, device=device),
        per_sample_weights=drawn(torch.rand, count) if case.per_sample_weights else None,
        padding_idx=padding_idx,
        used_entries=used.to(device),
        grad_output=drawn(torch.randn, case.bags, case.dim) if case.pass_ != "fwd" else None,
    )


def case_bytes(case: Case, x: Inputs) -> int:
    """The byte model, a floor whatever the kernel (see docs/benchmarks.md): rows gathered (used
    entries), output written (bags rows), input, offsets and per_sample_weights read; backward
    adds grad_output read (bags rows) and the gradient written: dense, the whole table (zeros
    included); sparse, used entries x (row + 8 index bytes). Both sides move the same bytes."""
    row = x.weight.shape[1] * x.weight.element_size()
    used = x.used_entries.numel()
    indices = [t for t in (x.input, x.offsets, x.per_sample_weights) if t is not None]
    total = (used + case.bags) * row + sum(t.numel() * t.element_size() for t in indices)
    if case.pass_ == "fwd+bwd dense":
        total += (case.bags + case.rows) * row
    elif case.pass_ == "fwd+bwd sparse":
        total += case.bags * row + used * (row + 8)
    return total


def interleave(calls: dict[str, Callable[[], object]], device: str, repeats: int,
               budget_s: float = math.inf, before: Callable[[], None] = lambda: None,
               warmup: int = 2) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per call of each of ``calls``, timed in turn, call by call, reversing the order
    every round, after ``warmup`` warm-up rounds. Other programs share the machine, so absolute
    times drift; this exposes every call to the same drift, so that ratios of medians hold even
    when the times do not. ``before`` runs untimed before every call. Past ``budget_s`` the loop
    stops early, but never before 5 rounds (or ``repeats``): slow cases get fewer samples."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    for round_ in range(-warmup, repeats):  # rounds below 0 warm up
        if round_ == 0:
            start = time.perf_counter()
        for name in list(calls) if round_ % 2 == 0 else reversed(calls):
            before()
            if device == "cuda":  # CUDA events around the call
                torch.cuda.synchronize()
                events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                events[0].record()
                calls[name]()
                events[1].record()
                events[1].synchronize()
                seconds = events[0].elapsed_time(events[1]) / 1e3
            else:
                begin = time.perf_counter()
                calls[name]()
                seconds = time.perf_counter() - begin
            if round_ >= 0:
                samples[name].append(seconds)
        if round_ + 1 >= min(5, repeats) and time.perf_counter() - start > budget_s:
            break
    return samples


def copy_bandwidth(device: str, megabytes: int) -> float:
    """The copy ceiling, GB/s: median of 10 ``dst.copy_(src)``, bytes read + written."""
    src = torch.ones(megabytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    samples = interleave({"copy": lambda: dst.copy_(src)}, device, repeats=10)["copy"]
    return 2 * src.numel() * 4 / statistics.median(samples) / 1e9


def check(case: Case, calls: dict[str, Callable[[], Tensor]], reset: Callable[[], None]) -> None:
    """Raises MismatchError unless mybag's result (output or weight gradient) matches torch's."""
    results = {}
    for name, call in calls.items():
        reset()
        try:
            results[name] = call()
        except Exception as error:  # any failure is reported as a mismatch
            message = f"{case.name}: {name} raised {type(error).__name__}: {error}"
            raise MismatchError(message) from error
        if not isinstance(results[name], Tensor):
            raise MismatchError(f"{case.name}: {name} produced no tensor")
    # Sparse gradients are coalesced in float64 (torch's is uncoalesced, and summing duplicates in
    # a half type would add rounding of its own), never densified (1M x 512 in float64 is 4 GiB);
    # half types are compared in float64.
    torch_, mybag_ = (results[k].detach() for k in ("torch", "mybag"))
    if torch_.is_sparse != mybag_.is_sparse:
        raise MismatchError(
            f"{case.name}: gradient layout differs: torch {torch_.layout}, mybag {mybag_.layout}"
        )
    if torch_.is_sparse or torch_.dtype in (torch.float16, torch.bfloat16):
        torch_, mybag_ = (t.to(torch.float64) for t in (torch_, mybag_))
    if torch_.is_sparse:
        torch_, mybag_ = torch_.coalesce(), mybag_.coalesce()
    rtol, atol = TOLERANCES[case.dtype]
    try:
        torch.testing.assert_close(mybag_, torch_, rtol=rtol, atol=atol * math.sqrt(case.bag_size))
    except AssertionError as error:
        what = "output" if case.pass_ == "fwd" else "weight gradient"
        raise MismatchError(f"{case.name}: mybag's {what} differs from torch's:\n{error}") from None


def measure(case: Case, x: Inputs, device: str, repeats: int, budget_s: float) -> Row:
    """Checks mybag against torch, then times torch, mybag and the gather ceiling interleaved.

    Forward calls run under no_grad; a training step runs forward + backward on a leaf copy of
    the table from ``.grad = None`` and returns the gradient. The gather ceiling is one
    ``torch.index_select`` of exactly the rows the case reads into a preallocated buffer,
    counted as rows read + rows written (see docs/benchmarks.md).
    """
    leaf = x.weight if case.pass_ == "fwd" else x.weight.detach().requires_grad_()

    def step(fn: Callable[..., Tensor]) -> Callable[[], Tensor]:
        def call() -> Tensor:
            with torch.set_grad_enabled(case.pass_ != "fwd"):
                out = fn(x.input, leaf, x.offsets, mode=case.mode, padding_idx=x.padding_idx,
                         sparse=case.pass_ == "fwd+bwd sparse",
                         per_sample_weights=x.per_sample_weights)  # fmt: skip
            if case.pass_ == "fwd":
                return out
            out.backward(x.grad_output)
            return leaf.grad

        return call

    def reset() -> None:
        leaf.grad = None  # a fresh gradient every step, as after optimizer.zero_grad()

    # mybag.embedding_bag is looked up at call time, so that a test can substitute it.
    calls = {"torch": step(F.embedding_bag),
             "mybag": step(lambda *args, **kwargs: mybag.embedding_bag(*args, **kwargs))}
    check(case, calls, reset)
    gathered = torch.empty(x.used_entries.numel(), x.weight.shape[1], dtype=x.weight.dtype,
                           device=x.weight.device)  # fmt: skip
    calls["gather"] = lambda: torch.index_select(x.weight, 0, x.used_entries, out=gathered)
    samples = interleave(calls, device, repeats, budget_s, before=reset)
    ms = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
    nbytes = case_bytes(case, x)
    gbps = {"torch": nbytes / ms["torch"] / 1e6, "mybag": nbytes / ms["mybag"] / 1e6,
            "gather": 2 * gathered.numel() * gathered.element_size() / ms["gather"] / 1e6}
    return {
        "case": case.name, "pass": case.pass_, "mode": case.mode, "dtype": case.dtype,
        "rows": case.rows, "dim": case.dim, "bag_size": case.bag_size, "bags": case.bags,
        "dist": case.dist, "padding_idx": x.padding_idx,
        "per_sample_weights": case.per_sample_weights, "bytes": nbytes,
        "runs": len(samples["torch"]), "torch_ms": ms["torch"], "mybag_ms": ms["mybag"],
        "speedup": ms["torch"] / ms["mybag"],
        # Fastest calls, as a cross-check of the medians: noise only adds time, so a ratio of
        # minima far from the ratio of medians marks a noisy case.
        "torch_min_ms": min(samples["torch"]) * 1e3, "mybag_min_ms": min(samples["mybag"]) * 1e3,
        "speedup_min": min(samples["torch"]) / min(samples["mybag"]),
        "torch_gbps": gbps["torch"], "mybag_gbps": gbps["mybag"],
        "gather_ms": ms["gather"], "gather_gbps": gbps["gather"],
        "torch_frac_gather": gbps["torch"] / gbps["gather"],
        "mybag_frac_gather": gbps["mybag"] / gbps["gather"],
    }  # fmt: skip


def benchmark(device: str = "cpu", quick: bool = False, *, tiny: bool = False,
              filter: str | None = None, repeats: int | None = None, progress: bool = False,
              on_mismatch: str = "raise") -> dict[str, Any]:  # fmt: skip
    """Runs the grid and returns ``{"machine", "settings", "ceilings", "results", "summary"}``.

    Raises ``NoCaseError`` if ``filter`` matches no case. ``on_mismatch="raise"`` raises
    ``MismatchError`` if mybag's answer differs from torch's on any case; ``"skip"`` lists those
    cases in ``summary["mismatches"]`` and leaves them out. ``progress`` draws a bar with an ETA
    on stderr (one line per case when stderr is not a terminal).
    """
    cases = cases_for(device, quick, tiny, filter)
    settings = dict(SETTINGS["tiny" if tiny else "quick" if quick else "full"])
    settings["repeats"] = repeats or settings["repeats"]
    copy_start = copy_bandwidth(device, settings["copy_mb"])
    tables: dict = {}
    rows: dict[int, Row] = {}
    mismatches: list[str] = []
    start = time.perf_counter()
    # Cases run grouped by table (each is built once) and are reported in the grid's order.
    table_of = [(c.rows, c.dim, c.dtype) for c in cases]
    for done, i in enumerate(sorted(range(len(cases)), key=table_of.__getitem__)):
        if progress:
            _progress(done, len(cases), start, cases[i].name)
        try:
            x = make_inputs(cases[i], device, tables)
            rows[i] = measure(cases[i], x, device, settings["repeats"], settings["budget_s"])
        except MismatchError as error:
            if on_mismatch == "raise":
                raise
            mismatches.append(str(error))
    if progress:
        _progress(len(cases), len(cases), start, "done")
    copy_end = copy_bandwidth(device, settings["copy_mb"])
    ceiling = max(copy_start, copy_end)  # what the machine *can* do
    results = [rows[i] for i in sorted(rows)]
    for row in results:
        row.update(copy_gbps=ceiling, torch_frac_copy=row["torch_gbps"] / ceiling,
                   mybag_frac_copy=row["mybag_gbps"] / ceiling)  # fmt: skip
    summary: dict[str, Any] = {"cases": len(results), "mismatches": mismatches}
    if results:
        worst = min(results, key=lambda r: r["speedup"])
        summary["geomean_speedup"] = geomean([r["speedup"] for r in results])
        summary["min_speedup"], summary["min_speedup_case"] = worst["speedup"], worst["case"]
        summary["below_1"] = [(r["case"], r["speedup"]) for r in results if r["speedup"] < 1.0]
    return {
        "machine": machine_info(device),
        "settings": {**settings, "quick": quick, "tiny": tiny, "filter": filter},
        "ceilings": {"copy_gbps": ceiling, "copy_gbps_start": copy_start,
                     "copy_gbps_end": copy_end, "copy_mb": settings["copy_mb"],
                     "gather": "per case: see gather_gbps in each result"},
        "results": results,
        "summary": summary,
    }  # fmt: skip


def _progress(done: int, total: int, start: float, label: str) -> None:
    """A progress bar on stderr with an ETA: redrawn in place on a terminal, else one line."""
    elapsed = time.perf_counter() - start
    bar = ("#" * (24 * done // total)).ljust(24, ".")
    eta = f" eta {elapsed / done * (total - done):4.0f}s" if done else ""
    line = f"[{bar}] {done}/{total} {elapsed:4.0f}s{eta}  {label}"
    if sys.stderr.isatty():
        line = "\r\033[K" + line + ("\n" if done == total else "")
    print(line, end="" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)


def run(device: str = "cpu", quick: bool = False, **options: Any) -> list[Row]:
    """``benchmark(...)["results"]``, one dict per case, for the same arguments; raises
    ``MismatchError`` on a wrong answer."""
    return benchmark(device, quick, **options)["results"]


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers depend on: hardware, threads, versions, date."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device, "cpu": cpu, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "python": platform.python_version(), "platform": platform.platform(),
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu,
    }  # fmt: skip


# Printed columns: (header, result key, format).
COLUMNS = (("torch ms", "torch_ms", "{:9.3f}"), ("mybag ms", "mybag_ms", "{:9.3f}"),
           ("speed-up", "speedup", "{:7.2f}x"), ("(of minima)", "speedup_min", "{:7.2f}x"),
           ("torch GB/s", "torch_gbps", "{:9.1f}"), ("mybag GB/s", "mybag_gbps", "{:9.1f}"),
           ("gather GB/s", "gather_gbps", "{:9.1f}"),
           ("mybag/gather", "mybag_frac_gather", "{:8.2f}"),
           ("mybag/copy", "mybag_frac_copy", "{:8.2f}"))  # fmt: skip


def table_lines(results: list[Row], columns: Sequence[tuple[str, str, str]],
                width: int = 12) -> list[str]:  # fmt: skip
    """The table: a header, a rule, one line per result (its case name, then ``columns``:
    (header, result key, format); a value of None prints as "-")."""
    name_width = max([len("case")] + [len(row["case"]) for row in results])
    header = f"{'case':<{name_width}} " + " ".join(f"{h:>{width}}" for h, _, _ in columns)
    lines = [header, "-" * len(header)]
    for row in results:
        cells = " ".join(f"{'-' if row[key] is None else fmt.format(row[key]):>{width}}"
                         for _, key, fmt in columns)  # fmt: skip
        lines.append(f"{row['case']:<{name_width}} {cells}")
    return lines


def format_report(r: dict[str, Any]) -> str:
    """The text the command line prints: a head line, the table (one line per case), summary."""
    m, s, results = r["machine"], r["summary"], r["results"]
    lines = [f"mybag.bench on {m['device_name']} (threads: {m['torch_threads']}, "
             + f"{m['cpu_capability']}), torch {m['torch']}, {m['date']}", ""]  # fmt: skip
    lines += table_lines(results, COLUMNS)
    lines += ["", f"copy ceiling: {r['ceilings']['copy_gbps']:.1f} GB/s (read + write)"]
    if "geomean_speedup" in s:
        lines.append(f"cases: {s['cases']}, geometric-mean speed-up: {s['geomean_speedup']:.2f}x")
        lines.append(f"minimum speed-up: {s['min_speedup']:.2f}x ({s['min_speedup_case']})")
        lines.append(f"cases below 1.0x: {len(s['below_1'])}")
        lines += [f"  {speedup:5.2f}x  {name}" for name, speedup in s["below_1"]]
    if s["mismatches"]:
        lines.append(f"MISMATCHES (not timed): {len(s['mismatches'])}")
        lines += ["  " + m.replace("\n", "\n    ") for m in s["mismatches"]]
    return "\n".join(lines)


class Written(NamedTuple):
    files: list[str]  # paths of the files written, in the order written
    notes: list[str]  # what was not written and why (e.g. no matplotlib)


Plotter = Callable[[dict[str, Any], str], Written]  # (report, directory) -> speedup.png written


def write_outputs(r: dict[str, Any], directory: str, plot: Plotter | None = None) -> Written:
    """Writes results.csv, results.json and speedup.png (drawn by ``plot``, ``write_plot``
    unless given) into ``directory``."""
    plot = plot or write_plot
    os.makedirs(directory, exist_ok=True)
    csv_path, json_path = (os.path.join(directory, f"results.{ext}") for ext in ("csv", "json"))
    with open(csv_path, "w", newline="") as f:
        if r["results"]:
            writer = csv.DictWriter(f, fieldnames=list(r["results"][0]))
            writer.writeheader()
            writer.writerows(r["results"])
    with open(json_path, "w") as f:
        f.write(json.dumps(r, indent=1) + "\n")
    plotted = plot(r, directory)
    return Written([csv_path, json_path] + plotted.files, plotted.notes)


def replot(directory: str, out: str | None = None) -> Written:
    """Redraws speedup.png from ``directory``/results.json without running anything; into
    ``out`` if given, else next to the results."""
    with open(os.path.join(directory, "results.json")) as f:
        r = json.load(f)
    suite = r.get("settings", {}).get("suite")
    if suite == "train":  # python -m mybag.bench --suite train
        from mybag import bench_training

        return bench_training.write_plot(r, out or directory)
    if suite == "serve":  # python -m mybag.bench --suite serve
        from mybag import bench_serving

        return bench_serving.write_plot(r, out or directory)
    return write_plot(r, out or directory)


# The plot, speedup.png. Left: one bar per case from 1x to its speed-up on a log axis (right of
# 1x: mybag faster; 2x faster and 2x slower are bars of the same length), grouped and coloured
# by what the cases exercise. Right: each side's GB/s over the gather ceiling's.
# GROUPS: (label, colour, pass, test) in plot order; a row goes to the first group of its pass
# whose test it passes. Rows come from a run or a saved results.json: tests read only its fields.
GROUPS = (
    ("forward, padding_idx", "tab:blue", "fwd", lambda r: r["padding_idx"] is not None),
    ("forward, max", "tab:orange", "fwd", lambda r: r["mode"] == "max"),
    ("forward, float64", "tab:green", "fwd", lambda r: r["dtype"] == "f64"),
    ("forward, sum/mean, bfloat16/float16", "tab:purple", "fwd", lambda r: "16" in r["dtype"]),
    ("forward, sum, float32", "tab:brown", "fwd", lambda r: r["mode"] == "sum"),
    ("forward, mean, float32", "tab:pink", "fwd", lambda r: True),
    ("forward + backward, dense gradient", "tab:olive", "fwd+bwd dense", lambda r: True),
    ("training step: forward + backward, sparse gradient", "tab:cyan", "fwd+bwd sparse",
     lambda r: True),
)  # fmt: skip
NAME_PT, TEXT_PT = 10, 11  # font sizes: case names; titles and axis labels


def case_group(row: Row) -> str:
    """The group a result row belongs to (its heading in the plot)."""
    return next(label for label, _, pass_, test in GROUPS if row["pass"] == pass_ and test(row))


def speedup_limits(speedups: list[float]) -> tuple[float, float]:
    """Axis limits around 1x: at least 0.5x-2x, and room for the value printed by each bar."""
    margin = 1.6  # a log-axis factor wide enough for a label such as "22.80x"
    return min(0.5, min(speedups) / margin), max(2.0, max(speedups) * margin)


def speedup_ticks(low: float, high: float) -> list[float]:
    """The 1-2-5 series (..., 0.5, 1, 2, 5, 10, 20, ...) inside [low, high]."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    return [t for e in decades for m in (1, 2, 5) if low <= (t := m * 10.0**e) <= high]


def make_figure(results: list[Row], title: str):
    """The figure (a matplotlib Figure, left panel first in ``fig.axes``); needs results."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    rows, ys, colours, headings = [], [], [], []  # a heading takes a row of its own, above
    for label, colour, _, _ in GROUPS:
        members = [r for r in results if case_group(r) == label]
        if members:
            headings.append((len(rows) + len(headings), label, colour))
            ys += [headings[-1][0] + 1 + i for i in range(len(members))]
            rows += members
            colours += [colour] * len(members)
    fig, (left, right) = plt.subplots(1, 2, sharey=True, width_ratios=(3, 2), layout="constrained",
                                      figsize=(16, 2.2 + 0.26 * (len(rows) + len(headings))))
    speedups = [r["speedup"] for r in rows]
    low, high = speedup_limits(speedups)
    left.barh(ys, [s - 1.0 for s in speedups], left=1.0, color=colours, height=0.7)
    for y, s in zip(ys, speedups):
        left.text(s * 1.04 if s >= 1 else s / 1.04, y, f"{s:.2f}x", va="center",
                  ha="left" if s >= 1 else "right", fontsize=NAME_PT - 1)
    left.axvspan(low, 1.0, color="0.93", zorder=0)
    left.set_xscale("log")
    left.set_xlim(low, high)
    left.xaxis.set_major_locator(FixedLocator(speedup_ticks(low, high)))
    left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    left.xaxis.set_minor_locator(NullLocator())
    left.set_xlabel("speed-up over torch (torch time / mybag time), log scale", fontsize=TEXT_PT)
    left.set_title("Speed-up of mybag over torch.nn.functional.embedding_bag\n"
                   "grey side: mybag slower | white side: mybag faster", fontsize=TEXT_PT + 1)
    h = 0.38
    right.barh([y - h / 2 for y in ys], [r["torch_frac_gather"] for r in rows], h, color="0.6")
    right.barh([y + h / 2 for y in ys], [r["mybag_frac_gather"] for r in rows], h, color="tab:blue")
    right.set_xlabel("bandwidth / bandwidth of a plain gather of the same rows\n"
                     "(1 = as fast as torch.index_select copying the rows the case reads;\n"
                     "above 1: rows re-read from cache)", fontsize=TEXT_PT - 1)
    right.set_title("Bandwidth compared with a plain gather of the same rows\n"
                    "(grey: torch, blue: mybag; higher is better)", fontsize=TEXT_PT + 1)
    for ax in (left, right):
        ax.axvline(1.0, color="black", linewidth=1.2)
        ax.grid(axis="x", color="0.8", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(axis="x", labelsize=NAME_PT, top=True, labeltop=True)
        for y, _, _ in headings[1:]:  # a line between groups
            ax.axhline(y - 0.5, color="0.5", linewidth=0.8)
    for y, label, colour in headings:  # black on an opaque tint: legible, above the 1x line
        tint = tuple(0.7 + 0.3 * c for c in to_rgb(colour))
        left.text(0.01, y, label, transform=left.get_yaxis_transform(), va="center", zorder=5,
                  fontsize=TEXT_PT, fontweight="bold",
                  bbox={"facecolor": tint, "edgecolor": "none", "pad": 2})
    left.set_yticks(ys, [r["case"] for r in rows], fontsize=NAME_PT)
    left.set_ylim(ys[-1] + 0.6, -0.6)  # first group on top, no empty margin
    slower = sum(s < 1.0 for s in speedups)
    fig.suptitle(f"{title}\n{len(rows)} cases, geometric-mean speed-up {geomean(speedups):.2f}x,"
                 f" {slower} case{'s' if slower != 1 else ''} slower than torch",
                 fontsize=TEXT_PT + 1)
    return fig  # fmt: skip


def forward_figure(r: dict[str, Any]):
    """The forward suite's figure for a report (see ``make_figure``)."""
    m = r["machine"]
    threads = f"{m['torch_threads']} thread{'s' if m['torch_threads'] != 1 else ''}"
    return make_figure(r["results"], f"mybag vs torch embedding_bag, {m['device_name']}, "
                                     f"{threads}, torch {m['torch']}, {m['date']}")  # fmt: skip


def suite_figure(results: list[Row], title: str, bars: Sequence[tuple[str, str, str]], *,
                 frac_key: str, speedup_label: str, left_title: str, frac_label: str,
                 min_speedup: float | None = None, min_frac: float | None = None):
    """The figure of the training and serving suites (a matplotlib Figure, left panel first in
    ``fig.axes``): per case, a bar from 1x to mybag's speed-up over each implementation of
    ``bars`` ((result key, label, colour); log axis, right of 1x: mybag faster), and on the right
    mybag's fraction of the copy bandwidth (``frac_key``). Dashed red lines mark the goals
    ``min_speedup`` and ``min_frac`` when given. Needs results."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ys = list(range(len(results)))
    fig, (left, right) = plt.subplots(1, 2, sharey=True, width_ratios=(3, 1), layout="constrained",
                                      figsize=(16, 2.4 + 0.42 * len(results)))  # fmt: skip
    values = [r[key] for r in results for key, _, _ in bars if r[key] is not None]
    low, high = speedup_limits(values)
    h = 0.8 / len(bars)
    for k, (key, label, colour) in enumerate(bars):
        shown = [(y + (k - 1) * h, r[key]) for y, r in zip(ys, results) if r[key] is not None]
        if shown:
            left.barh([y for y, _ in shown], [v - 1.0 for _, v in shown], left=1.0, height=h,
                      color=colour, label=f"over {label}")  # fmt: skip
            for y, v in shown:
                left.text(v * 1.03 if v >= 1 else v / 1.03, y, f"{v:.2f}x", va="center",
                          ha="left" if v >= 1 else "right", fontsize=NAME_PT - 2)
    left.axvspan(low, 1.0, color="0.93", zorder=0)
    if min_speedup is not None:
        left.axvline(min_speedup, color="tab:red", linewidth=0.8, linestyle="--")
    left.set_xscale("log")
    left.set_xlim(low, high)
    left.xaxis.set_major_locator(FixedLocator(speedup_ticks(low, high)))
    left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    left.xaxis.set_minor_locator(NullLocator())
    left.set_xlabel(speedup_label, fontsize=TEXT_PT)
    left.set_title(f"{left_title}\ngrey side: mybag slower | white side: mybag faster",
                   fontsize=TEXT_PT + 1)  # fmt: skip
    left.legend(loc="lower right", fontsize=NAME_PT)
    right.barh(ys, [r[frac_key] for r in results], 0.6,
               color=["tab:blue" if r["table"] == "dram" else "tab:cyan" for r in results])
    if min_frac is not None:
        right.axvline(min_frac, color="tab:red", linewidth=0.8, linestyle="--")
    right.set_xlabel(f"{frac_label}\ndark: table in DRAM, light: cached", fontsize=TEXT_PT - 1)
    right.set_title("Fraction of the copy bandwidth", fontsize=TEXT_PT + 1)
    for ax in (left, right):
        ax.axvline(1.0, color="black", linewidth=1.2)
        ax.grid(axis="x", color="0.8", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(axis="x", labelsize=NAME_PT, top=True, labeltop=True)
    left.set_yticks(ys, [r["case"] for r in results], fontsize=NAME_PT)
    left.set_ylim(ys[-1] + 0.6, -0.6)
    fig.suptitle(title, fontsize=TEXT_PT + 1)
    return fig


def write_plot(r: dict[str, Any], directory: str,
               draw: Callable[[dict[str, Any]], Any] | None = None) -> Written:  # fmt: skip
    """Writes ``directory``/speedup.png from a report (a fresh run's or a saved results.json),
    drawn by ``draw`` (``forward_figure`` unless given); if it cannot (no matplotlib, nothing
    timed), removes an older one, which would contradict the results, and says why."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "speedup.png")
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        why = "matplotlib is not installed (pip install matplotlib)"
    else:
        why = "" if r["results"] else "no case was timed"
    if why:
        if os.path.exists(path):
            os.remove(path)
            why += f" (removed the old {path})"
        return Written([], [f"{why}: no speedup.png"])
    fig = (draw or forward_figure)(r)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Written([path], [])


EPILOG = """\
exit status:
  0  every case ran (or --list, --replot succeeded)
  1  mybag's answer (--suite train: its step) differed from torch's on some
     case (listed under MISMATCHES, not timed), or --replot could not draw
     the plot
  2  a wrong command line, a --filter that matches no case, --device cuda
     without a GPU, or no results.json for --replot"""


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (see ``EPILOG``)."""
    parser = argparse.ArgumentParser(prog="python -m mybag.bench", description=__doc__,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--suite", choices=("fwd", "train", "serve"), default="fwd",
        help="fwd (default): embedding_bag, forward and forward + backward; train: training "
        "steps of FusedEmbeddingBag, the optimizer fused into the backward; serve: int8/int4 "
        "quantized lookups, mybag.quantized_embedding_bag (see above)")
    add("--device", choices=("cpu", "cuda"), default="cpu")
    add("--quick", action="store_true",
        help="a subset: 21 cases under a minute (fwd), 16 in 1-2 minutes (train), 16 in about "
        "a minute (serve)")
    add("--filter", metavar="TEXT", help="only the cases whose name contains TEXT (see --list)")
    add("--repeats", type=int, metavar="N", help="timed calls per implementation")
    add("--threads", type=int, metavar="N", help="torch.set_num_threads(N)")
    add("--out", metavar="DIR", help="write results.csv, results.json (every figure, the "
        "settings, the machine) and speedup.png (needs matplotlib); print each path written")
    add("--replot", metavar="DIR",
        help="run nothing: redraw speedup.png from DIR/results.json (into --out DIR if given)")
    add("--list", action="store_true", help="print the case names and exit")
    add("--no-progress", action="store_true", help="no progress bar on stderr")
    add("--tiny", action="store_true", help=argparse.SUPPRESS)  # 3 cases, for the tests
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"python -m mybag.bench: {message}", file=sys.stderr)
        return 2

    def report_written(written: Written) -> None:
        print("".join(f"wrote {path}\n" for path in written.files), end="")
        print("".join(f"{note}\n" for note in written.notes), end="", file=sys.stderr)

    if args.replot:
        try:
            written = replot(args.replot, args.out)
        except FileNotFoundError as error:
            return fail(f"--replot: {error.strerror}: {error.filename}")
        report_written(written)
        return 0 if written.files else 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite == "train":
        from mybag import bench_training as suite
    elif args.suite == "serve":
        from mybag import bench_serving as suite
    else:
        suite = sys.modules[__name__]
    try:
        cases = suite.cases_for(args.device, args.quick, args.tiny, args.filter)
    except (NoCaseError, RuntimeError) as error:
        return fail(str(error))
    if args.list:
        print("\n".join(case.name for case in cases))
        return 0
    report = suite.benchmark(args.device, args.quick, tiny=args.tiny, filter=args.filter,
                             repeats=args.repeats, progress=not args.no_progress,
                             on_mismatch="skip")  # fmt: skip
    print(suite.format_report(report))
    if args.out:
        report_written(suite.write_outputs(report, args.out))
    return 1 if report["summary"]["mismatches"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
