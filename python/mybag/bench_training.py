"""The training-step suite of the benchmark, ``python -m mybag.bench --suite train``.

Times whole training steps of an embedding table, forward + backward + optimizer update, for
each optimizer (sgd, adagrad, rowwise_adagrad, adam): mybag's ``FusedEmbeddingBag`` (the update
fused into the backward) against torch's sparse module with the matching ``torch.optim``
optimizer, torch's dense module with its optimizer and, when ``fbgemm_gpu`` imports beside
torch, FBGEMM's ``SplitTableBatchedEmbeddingBagsCodegen`` with its fused optimizer on the CPU.
Each case first checks that one fused step gives the reference step's table and state (torch
sparse + torch.optim; for rowwise_adagrad, which torch lacks, the written-out update); a case
where it does not is reported, not timed. The steps are then timed interleaved (``bench.
interleave``) and their medians compared, with the fused step's bandwidth over its byte floor
next to the copy bandwidth measured in the same run. From Python: ``benchmark(quick=True)``
returns the report, ``run(quick=True)`` its rows. See docs/benchmarks.md, "Training steps".
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import importlib.util
import math
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import mybag
from mybag import bench
from mybag.bench import MismatchError, NoCaseError, Row, Written

__all__ = ["MismatchError", "NoCaseError", "TrainCase", "benchmark", "cases_for", "grid", "run"]

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
# The same hyperparameters for every implementation (weight decay 0, lr_decay 0, momentum 0).
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.01},
    "adagrad": {"lr": 0.01, "eps": 1e-10},
    "rowwise_adagrad": {"lr": 0.01, "eps": 1e-10},
    "adam": {"lr": 1e-3, "eps": 1e-8, "betas": (0.9, 0.999)},
}
# The torch.optim optimizer each side runs. torch has no row-wise Adagrad: its closest, the
# element-wise torch.optim.Adagrad, stands in (same traffic but for a (rows, D) state where the
# row-wise one keeps (rows,)), and the check uses the written-out update instead.
TORCH_SPARSE = {"sgd": "SGD", "adagrad": "Adagrad", "rowwise_adagrad": "Adagrad",
                "adam": "SparseAdam"}  # fmt: skip
TORCH_DENSE = {"sgd": "SGD", "adagrad": "Adagrad", "rowwise_adagrad": "Adagrad", "adam": "Adam"}
# FBGEMM's CPU TBE: the exact (deduplicated) optimizers; it has no Adam on the CPU.
FBGEMM_OPTIM = {"sgd": "EXACT_SGD", "adagrad": "EXACT_ADAGRAD",
                "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD"}  # fmt: skip
# FusedEmbeddingBag's state buffers (docs: shared notes, fused optimizer API), float32 per row.
STATE = {"sgd": (), "adagrad": ("sum",), "rowwise_adagrad": ("sum",),
         "adam": ("exp_avg", "exp_avg_sq")}  # fmt: skip
# Comparisons checked against the reference where they compute the same update. Not dense Adam:
# torch.optim.Adam adds eps to sqrt(v / (1 - beta2^step)), SparseAdam to sqrt(v), which differ
# by several percent where a row's gradient nearly cancels, and Adam moves untouched rows from
# the second step on; nor, for rowwise_adagrad, torch's element-wise Adagrad.
SAME_UPDATE = {"torch_dense": ("sgd", "adagrad"),
               "fbgemm": ("sgd", "adagrad", "rowwise_adagrad")}  # fmt: skip
IMPLEMENTATIONS = ("mybag", "torch_sparse", "torch_dense", "fbgemm")

BATCH = 4096  # bags per step: a training batch
DRAM_ROWS, CACHE_ROWS = 1_000_000, 10_000
# A table of at most this many bytes counts as cache-resident (the machines here have 32 MiB of
# L3; the state and the batch need room too); larger ones as DRAM-resident.
CACHE_BYTES = 16 * 2**20
# Per grid: timed steps per implementation and case, the seconds past which a case stops adding
# rounds (after at least 5), the MiB of the copy ceiling (bench.copy_bandwidth). One warm-up
# round: the check has already run every implementation once.
SETTINGS = {
    "full": {"repeats": 15, "budget_s": 3.0, "copy_mb": 256, "warmup": 1},
    "quick": {"repeats": 5, "budget_s": 0.5, "copy_mb": 128, "warmup": 1},
    "tiny": {"repeats": 3, "budget_s": 0.1, "copy_mb": 8, "warmup": 1},
}
# The check after one step, float32 tables: weights to rtol and atol * sqrt(entries of the row
# most looked up), as sums of that many gradients round differently in each implementation;
# state (squares of gradients, moments) to its rtol and atol * entries.
TOLERANCE = {"weight": (1e-5, 1e-6), "state": (1e-4, 1e-6)}
CHUNK_ROWS = 1 << 16  # rows compared at a time: no table-sized temporaries
# Goals of the fused step (issue 14): speed-up over torch sparse + the torch.optim optimizer on
# the base cases, 1M x64, batch 4096, bags of 20, uniform and Zipf indices.
GOALS = {"sgd": 3.0, "adagrad": 8.0, "adam": 4.0}
MIN_SPEEDUP = 1.5  # over torch sparse, every case
MIN_FRAC_COPY = 0.7  # of the copy bandwidth over the byte floor, DRAM-resident tables


@dataclasses.dataclass(frozen=True)
class TrainCase:
    """One training-step case; ``name`` reads like ``train adam sum 1M x64 L20 B4096 zipf``."""

    optimizer: str  # one of OPTIMIZERS
    rows: int
    dim: int
    bag_size: int
    bags: int = BATCH
    dist: str = "uniform"  # or "zipf"
    mode: str = "sum"  # or "mean"

    @property
    def name(self) -> str:
        return (f"train {self.optimizer} {self.mode} {bench.rows_label(self.rows)} x{self.dim} "
                f"L{self.bag_size} B{self.bags} {self.dist}")  # fmt: skip

    @property
    def table(self) -> str:
        """"cache" or "dram": where the float32 table lives during the step."""
        return "cache" if self.rows * self.dim * 4 <= CACHE_BYTES else "dram"

    def lookups(self) -> bench.Case:
        """The forward suite's case with this case's lookups: ``bench.make_inputs`` builds its
        table (seeded, shared by the cases of one size), indices, offsets and bag gradients."""
        return bench.Case("fwd+bwd sparse", self.mode, "f32", self.rows, self.dim,
                          self.bag_size, self.bags, self.dist)  # fmt: skip


def grid(size: str = "full") -> list[TrainCase]:
    """The cases of ``size``: "full" (46: every optimizer on a DRAM-resident and a cached table,
    uniform and Zipf indices, bags of 1, 20, 150, D 16-256, sum and mean), "quick" (16: every
    optimizer on 1M x64 and 10k x64, L20, B4096, uniform and Zipf) or "tiny" (four 1000-row
    cases, one per optimizer, that run in seconds, for tests of the program itself)."""
    if size == "tiny":
        return [TrainCase("sgd", 1000, 16, 5, 32),
                TrainCase("adagrad", 1000, 16, 5, 32, dist="zipf"),
                TrainCase("rowwise_adagrad", 1000, 16, 5, 32, mode="mean"),
                TrainCase("adam", 1000, 16, 5, 32, dist="zipf")]  # fmt: skip
    cases: dict[str, TrainCase] = {}

    def add(rows: int = DRAM_ROWS, dim: int = 64, bag_size: int = 20, **extra: Any) -> None:
        for optimizer in OPTIMIZERS:
            case = TrainCase(optimizer, rows, dim, bag_size, **extra)
            cases.setdefault(case.name, case)

    for rows in (DRAM_ROWS, CACHE_ROWS):  # the base cases: the goals are measured on 1M x64
        for dist in ("uniform", "zipf"):
            add(rows, dist=dist)
    if size == "full":
        for bag_size in (1, 150):
            add(bag_size=bag_size)
        # D 256 in DRAM on 250k rows: 256 MiB, as 1M x64; at 1M rows the dense torch step alone
        # takes seconds and the four copies of table and state would not fit a small machine.
        for rows, dim in ((DRAM_ROWS, 16), (DRAM_ROWS, 128), (250_000, 256), (CACHE_ROWS, 16),
                          (CACHE_ROWS, 256)):  # fmt: skip
            add(rows, dim)
        for optimizer in ("sgd", "adagrad"):
            case = TrainCase(optimizer, DRAM_ROWS, 64, 20, mode="mean")
            cases[case.name] = case
    return list(cases.values())


def cases_for(device: str = "cpu", quick: bool = False, tiny: bool = False,
              filter: str | None = None) -> list[TrainCase]:  # fmt: skip
    """The cases a run would time; raises ``NoCaseError`` if ``filter`` matches none of them,
    ``RuntimeError`` for ``device="cuda"`` without a GPU."""
    every = grid("tiny" if tiny else "quick" if quick else "full")
    return bench.select_cases(every, filter, quick, device, "--suite train")


# FBGEMM, optional: imported once, after a probe in a child process (a build made for another
# torch can abort the process that loads it, which must not take the benchmark down).
@functools.cache
def fbgemm() -> tuple[Any, str]:
    """(the fbgemm_gpu names the comparison needs, "") or (None, why it is left out)."""
    return _import_fbgemm()


def _import_fbgemm() -> tuple[Any, str]:
    if importlib.util.find_spec("fbgemm_gpu") is None:
        return None, "fbgemm_gpu is not installed (pip install fbgemm-gpu-cpu)"
    probe = ("import torch, fbgemm_gpu\n"
             "from fbgemm_gpu.split_table_batched_embeddings_ops_training import "
             "SplitTableBatchedEmbeddingBagsCodegen")  # fmt: skip
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, "importing fbgemm_gpu took over 300 s in a probe process"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return None, f"fbgemm_gpu does not import beside torch {torch.__version__}: {last}"
    try:
        import fbgemm_gpu
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            BoundsCheckMode,
            ComputeDevice,
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except Exception as error:  # noqa: BLE001 (any failure leaves the comparison out, saying why)
        return None, f"fbgemm_gpu does not import: {type(error).__name__}: {error}"
    names = {"TBE": SplitTableBatchedEmbeddingBagsCodegen, "OptimType": EmbOptimType,
             "BoundsCheckMode": BoundsCheckMode, "ComputeDevice": ComputeDevice,
             "EmbeddingLocation": EmbeddingLocation, "PoolingMode": PoolingMode,
             "version": getattr(fbgemm_gpu, "__version__", "?")}  # fmt: skip
    return names, ""


@dataclasses.dataclass
class Side:
    """One implementation of the training step, on its own copy of the table."""

    step: Callable[[], object]  # one whole step: forward, backward, update
    weight: Callable[[], Tensor]  # the table as it is now
    state: Callable[[], dict[str, Tensor]]  # its optimizer state, by FusedEmbeddingBag's names
    steps: Callable[[], int] = lambda: -1  # updates counted so far, where the side counts them


def mybag_side(case: TrainCase, x: bench.Inputs) -> Side:
    """``mybag.FusedEmbeddingBag`` (looked up at call time, so that a test can substitute it)."""
    module = mybag.FusedEmbeddingBag(case.rows, case.dim, mode=case.mode,
                                     _weight=x.weight.clone(), optimizer=case.optimizer,
                                     **HYPERPARAMETERS[case.optimizer])  # fmt: skip

    def step() -> None:
        module(x.input, x.offsets).backward(x.grad_output)  # updates the table in place

    return Side(step, lambda: module.weight.detach(),
                lambda: {name: getattr(module, name) for name in STATE[case.optimizer]},
                lambda: int(module.step))  # fmt: skip


def torch_optimizer(case: TrainCase, sparse: bool, params: list[Tensor]) -> torch.optim.Optimizer:
    """The torch.optim optimizer of ``case`` for torch's sparse or dense module."""
    name = (TORCH_SPARSE if sparse else TORCH_DENSE)[case.optimizer]
    hyper = dict(HYPERPARAMETERS[case.optimizer])
    if name in ("SGD", "Adagrad"):
        hyper.pop("betas", None)
    if name == "SGD":
        hyper.pop("eps", None)
    return getattr(torch.optim, name)(params, **hyper)


def torch_side(case: TrainCase, x: bench.Inputs, sparse: bool) -> Side:
    """torch's nn.EmbeddingBag (sparse or dense gradient) and its torch.optim optimizer."""
    module = torch.nn.EmbeddingBag(case.rows, case.dim, mode=case.mode, sparse=sparse,
                                   _weight=x.weight.clone())  # fmt: skip
    optimizer = torch_optimizer(case, sparse, [module.weight])

    def step() -> None:
        optimizer.zero_grad()  # set_to_none: the dense side allocates a new gradient every step
        module(x.input, x.offsets).backward(x.grad_output)
        optimizer.step()

    def state() -> dict[str, Tensor]:
        held = optimizer.state[module.weight]
        return {name: held[name] for name in STATE[case.optimizer] if name in held}

    return Side(step, lambda: module.weight.detach(), state)


def fbgemm_side(case: TrainCase, x: bench.Inputs, names: Any) -> Side:
    """FBGEMM's table-batched embedding bag with one table in host memory, computed on the CPU,
    its optimizer fused into the backward; indices checked (a bad one raises, as in mybag)."""
    hyper = HYPERPARAMETERS[case.optimizer]
    tbe = names["TBE"](
        [(case.rows, case.dim, names["EmbeddingLocation"].HOST, names["ComputeDevice"].CPU)],
        optimizer=getattr(names["OptimType"], FBGEMM_OPTIM[case.optimizer]),
        learning_rate=hyper["lr"], eps=hyper.get("eps", 1e-8),
        pooling_mode=getattr(names["PoolingMode"], case.mode.upper()),
        bounds_check_mode=names["BoundsCheckMode"].FATAL, device="cpu",
    )  # fmt: skip
    tbe.split_embedding_weights()[0].copy_(x.weight)
    # FBGEMM's offsets end with the number of indices (include_last_offset).
    offsets = torch.cat([x.offsets, x.offsets.new_tensor([x.input.numel()])])

    def step() -> None:
        tbe(x.input, offsets).backward(x.grad_output)

    def state() -> dict[str, Tensor]:
        return {name: s for name, s in zip(STATE[case.optimizer], tbe.split_optimizer_states()[0])}

    return Side(step, lambda: tbe.split_embedding_weights()[0], state)


def rowwise_reference(case: TrainCase, x: bench.Inputs) -> tuple[Tensor, dict[str, Tensor]]:
    """The table and state after one rowwise_adagrad step, written out (torch has none): on
    torch's coalesced sparse gradient g of each touched row r, sum[r] += mean(g_r^2);
    w_r -= lr * g_r / (sqrt(sum[r]) + eps)."""
    hyper = HYPERPARAMETERS["rowwise_adagrad"]
    leaf = x.weight.detach().requires_grad_()  # shares the table, which this does not change
    F.embedding_bag(x.input, leaf, x.offsets, mode=case.mode, sparse=True).backward(x.grad_output)
    grad = leaf.grad.coalesce()
    rows, g = grad.indices()[0], grad.values()
    total = torch.zeros(case.rows, dtype=g.dtype, device=g.device)
    total[rows] = (g * g).mean(1)
    weight = x.weight.clone()
    weight[rows] -= hyper["lr"] * g / (total[rows].sqrt() + hyper["eps"]).unsqueeze(1)
    return weight, {"sum": total}


def difference(what: str, actual: Tensor, expected: Tensor, rtol: float, atol: float) -> str:
    """"" if ``actual`` is close to ``expected`` (compared CHUNK_ROWS rows at a time), else what
    differs: torch.testing.assert_close's account of the first chunk that does."""
    if actual.shape != expected.shape:
        return f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    for start in range(0, max(1, expected.shape[0]), CHUNK_ROWS):
        end = min(start + CHUNK_ROWS, expected.shape[0])
        try:
            torch.testing.assert_close(actual[start:end].detach(), expected[start:end],
                                       rtol=rtol, atol=atol, check_device=False)  # fmt: skip
        except AssertionError as error:
            return f"{what} differs (in rows {start}-{end - 1}):\n{error}"
    return ""


def step_difference(case: TrainCase, side: Side, weight: Tensor, state: dict[str, Tensor],
                    counts: Tensor, with_state: bool = True) -> str:  # fmt: skip
    """"" if ``side``'s table (and state) equal the reference's after one step, else what
    differs. ``counts``: entries per row in the batch, which set the tolerances."""
    most = max(1, int(counts.max()))
    rtol, atol = TOLERANCE["weight"]
    problems = [difference("table", side.weight(), weight, rtol, atol * math.sqrt(most))]
    if with_state:
        rtol, atol = TOLERANCE["state"]
        have = side.state()
        for name, expected in state.items():
            if name not in have:
                problems.append(f"state {name!r}: missing")
            else:
                problems.append(difference(f"state {name!r}", have[name], expected, rtol,
                                           atol * most))  # fmt: skip
    return "\n".join(p for p in problems if p)


def step_bytes(case: TrainCase, x: bench.Inputs, unique_rows: int) -> int:
    """The fused step's byte floor: every touched row of the table and of the state read and
    written once, the bag gradients read, the output written, the indices and offsets read."""
    row = case.dim * x.weight.element_size()
    state_row = {"sgd": 0, "adagrad": case.dim * 4, "rowwise_adagrad": 4,
                 "adam": 2 * case.dim * 4}[case.optimizer]  # fmt: skip
    indices = sum(t.numel() * t.element_size() for t in (x.input, x.offsets))
    return 2 * unique_rows * (row + state_row) + 2 * case.bags * row + indices


def sides_for(case: TrainCase, x: bench.Inputs, device: str) -> tuple[dict[str, Side], str]:
    """Each implementation on its own copy of the case's table, and a note if FBGEMM failed to
    build its table ("" otherwise: where it is absent by design, ``comparisons`` says why)."""
    sides = {"mybag": mybag_side(case, x), "torch_sparse": torch_side(case, x, sparse=True),
             "torch_dense": torch_side(case, x, sparse=False)}  # fmt: skip
    names = fbgemm()[0] if device == "cpu" else None
    if names is not None and case.optimizer in FBGEMM_OPTIM:
        try:
            sides["fbgemm"] = fbgemm_side(case, x, names)
        except Exception as error:  # noqa: BLE001 (a comparison that cannot run is left out)
            return sides, f"fbgemm raised {type(error).__name__}: {error}; not timed"
    return sides, ""


def measure(case: TrainCase, x: bench.Inputs, device: str, settings: dict[str, Any]) -> Row:
    """Checks one fused step against the reference step, then times every implementation's
    steps interleaved. Raises MismatchError if mybag's step differs or raises."""
    counts = torch.bincount(x.used_entries, minlength=case.rows)
    unique_rows = int((counts > 0).sum())
    try:
        sides, note = sides_for(case, x, device)
        sides["mybag"].step()
    except Exception as error:  # any failure of mybag's step is reported as a mismatch
        raise MismatchError(f"{case.name}: mybag raised {type(error).__name__}: {error}") from error
    notes = [note] if note else []
    sides["torch_sparse"].step()  # the reference (or, for rowwise_adagrad, torch's closest)
    for name in [n for n in sides if n not in ("mybag", "torch_sparse")]:
        try:
            sides[name].step()
        except Exception as error:  # noqa: BLE001 (a comparison: left out, saying why)
            notes.append(f"{name} raised {type(error).__name__}: {error}; not timed")
            del sides[name]
    # The reference after one step: torch sparse + torch.optim, or the written-out row-wise one.
    if case.optimizer == "rowwise_adagrad":
        weight, state = rowwise_reference(case, x)
    else:
        reference = sides["torch_sparse"]
        weight, state = reference.weight(), reference.state()
    wrong = step_difference(case, sides["mybag"], weight, state, counts)
    if not wrong and sides["mybag"].steps() != 1:
        wrong = f"step counter: {sides['mybag'].steps()} after one step, expected 1"
    if wrong:
        message = f"{case.name}: mybag's step differs from the reference step:\n{wrong}"
        raise MismatchError(message)
    for name in [n for n in sides if case.optimizer in SAME_UPDATE.get(n, ())]:
        wrong = step_difference(case, sides[name], weight, state, counts, with_state=False)
        if wrong:  # a comparison doing other work than the reference: its time would mislead
            notes.append(f"{name} differs from the reference step, not timed:\n{wrong}")
            del sides[name]
    del weight, state
    samples = bench.interleave({name: side.step for name, side in sides.items()}, device,
                               settings["repeats"], settings["budget_s"],
                               warmup=settings["warmup"])  # fmt: skip
    ms = {name: statistics.median(samples[name]) * 1e3 if name in samples else None
          for name in IMPLEMENTATIONS}  # fmt: skip
    floor = step_bytes(case, x, unique_rows)

    def ratio(name: str) -> float | None:
        return None if ms[name] is None else ms[name] / ms["mybag"]

    return {
        "case": case.name, "suite": "train", "optimizer": case.optimizer, "mode": case.mode,
        "rows": case.rows, "dim": case.dim, "bag_size": case.bag_size, "bags": case.bags,
        "dist": case.dist, "table": case.table, "lookups": x.input.numel(),
        "unique_rows": unique_rows, "torch_sparse_optimizer": TORCH_SPARSE[case.optimizer],
        "torch_dense_optimizer": TORCH_DENSE[case.optimizer],
        "runs": len(samples["mybag"]),
        **{f"{name}_ms": ms[name] for name in IMPLEMENTATIONS},
        "mybag_min_ms": min(samples["mybag"]) * 1e3,
        "torch_sparse_min_ms": (min(samples["torch_sparse"]) * 1e3
                                if "torch_sparse" in samples else None),
        "speedup_sparse": ratio("torch_sparse"), "speedup_dense": ratio("torch_dense"),
        "speedup_fbgemm": ratio("fbgemm"),
        "speedup_sparse_min": (min(samples["torch_sparse"]) / min(samples["mybag"])
                               if "torch_sparse" in samples else None),
        "floor_bytes": floor, "mybag_gbps": floor / ms["mybag"] / 1e6,
        "notes": "; ".join(notes),
    }  # fmt: skip


def benchmark(device: str = "cpu", quick: bool = False, *, tiny: bool = False,
              filter: str | None = None, repeats: int | None = None, progress: bool = False,
              on_mismatch: str = "raise") -> dict[str, Any]:  # fmt: skip
    """Runs the training grid and returns ``{"machine", "settings", "ceilings", "comparisons",
    "results", "summary"}``, as ``bench.benchmark`` does for the forward suite.

    Raises ``NoCaseError`` if ``filter`` matches no case. ``on_mismatch="raise"`` raises
    ``MismatchError`` if mybag's step differs from the reference on any case; ``"skip"`` lists
    those cases in ``summary["mismatches"]`` and leaves them out. ``progress`` draws a bar with
    an ETA on stderr.
    """
    cases = cases_for(device, quick, tiny, filter)
    settings = dict(SETTINGS["tiny" if tiny else "quick" if quick else "full"])
    settings["repeats"] = repeats or settings["repeats"]
    names, fbgemm_why = fbgemm() if device == "cpu" else (None, "FBGEMM runs on the CPU only")
    copy_start = bench.copy_bandwidth(device, settings["copy_mb"])
    tables: dict = {}
    rows: dict[int, Row] = {}
    mismatches: list[str] = []
    start = time.perf_counter()
    table_of = [(c.rows, c.dim) for c in cases]  # cases grouped by table, each table built once
    with warnings.catch_warnings():
        # torch's sparse Adagrad builds its sparse tensors without invariant checks, and says so.
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        for done, i in enumerate(sorted(range(len(cases)), key=table_of.__getitem__)):
            if progress:
                bench._progress(done, len(cases), start, cases[i].name)
            try:
                x = bench.make_inputs(cases[i].lookups(), device, tables)
                rows[i] = measure(cases[i], x, device, settings)
            except MismatchError as error:
                if on_mismatch == "raise":
                    raise
                mismatches.append(str(error))
            finally:
                gc.collect()  # the last case's tables and states, before the next are built
    if progress:
        bench._progress(len(cases), len(cases), start, "done")
    copy_end = bench.copy_bandwidth(device, settings["copy_mb"])
    ceiling = max(copy_start, copy_end)
    results = [rows[i] for i in sorted(rows)]
    for row in results:
        row.update(copy_gbps=ceiling, mybag_frac_copy=row["mybag_gbps"] / ceiling)
    return {
        "machine": bench.machine_info(device),
        "settings": {**settings, "suite": "train", "quick": quick, "tiny": tiny,
                     "filter": filter},
        "ceilings": {"copy_gbps": ceiling, "copy_gbps_start": copy_start,
                     "copy_gbps_end": copy_end, "copy_mb": settings["copy_mb"]},
        "comparisons": comparisons(names, fbgemm_why),
        "results": results,
        "summary": summarize(results, mismatches),
    }  # fmt: skip


def comparisons(names: Any, fbgemm_why: str) -> dict[str, str]:
    """What each column runs, in words (printed under the table and kept in results.json)."""
    sparse = ", ".join(f"{o} {TORCH_SPARSE[o]}" for o in OPTIMIZERS)
    dense = ", ".join(f"{o} {TORCH_DENSE[o]}" for o in OPTIMIZERS)
    fbgemm_text = (f"not run: {fbgemm_why}" if names is None else
                   f"fbgemm_gpu {names['version']} SplitTableBatchedEmbeddingBagsCodegen, one "
                   "table, EmbeddingLocation.HOST, ComputeDevice.CPU, OptimType: "
                   + ", ".join(f"{o} {FBGEMM_OPTIM[o]}" for o in FBGEMM_OPTIM)
                   + "; adam: none (FBGEMM's CPU TBE has no Adam)")  # fmt: skip
    return {
        "mybag": "mybag.FusedEmbeddingBag, the update fused into the backward",
        "torch_sparse": f"nn.EmbeddingBag(sparse=True) + torch.optim: {sparse} (torch has no "
                        "row-wise Adagrad: the element-wise one, its closest, is timed; the "
                        "check uses the written-out row-wise update)",
        "torch_dense": f"nn.EmbeddingBag(sparse=False) + torch.optim: {dense}",
        "fbgemm": fbgemm_text,
    }  # fmt: skip


def is_base(row: Row) -> bool:
    """A case the speed-up goals are measured on: 1M x64, batch 4096, bags of 20, sum."""
    return (row["rows"], row["dim"], row["bag_size"], row["bags"], row["mode"]) == (
        DRAM_ROWS, 64, 20, BATCH, "sum")  # fmt: skip


def summarize(results: list[Row], mismatches: list[str]) -> dict[str, Any]:
    """Speed-ups per optimizer and comparison, the cases below MIN_SPEEDUP, and the goals:
    ``goals`` lists (goal, target, worst value, worst case, met) for those the run measured."""
    summary: dict[str, Any] = {"cases": len(results), "mismatches": mismatches,
                               "notes": [f"{r['case']}: {r['notes']}" for r in results
                                         if r["notes"]]}  # fmt: skip
    if not results:
        return summary
    per_optimizer = {}
    for optimizer in OPTIMIZERS:
        mine = [r for r in results if r["optimizer"] == optimizer]
        if mine:
            per_optimizer[optimizer] = {
                key: bench.geomean(values) if (values := [r[key] for r in mine
                                                          if r[key] is not None]) else None
                for key in ("speedup_sparse", "speedup_dense", "speedup_fbgemm")
            }  # fmt: skip
    summary["geomean_by_optimizer"] = per_optimizer
    sparse = [r for r in results if r["speedup_sparse"] is not None]
    summary["below_min"] = [(r["case"], r["speedup_sparse"]) for r in sparse
                            if r["speedup_sparse"] < MIN_SPEEDUP]  # fmt: skip
    goals = []

    def goal(text: str, target: float, rows: list[Row], key: str) -> None:
        rows = [r for r in rows if r[key] is not None]
        if rows:
            worst = min(rows, key=lambda r: r[key])
            goals.append({"goal": text, "target": target, "value": worst[key],
                          "case": worst["case"], "met": worst[key] >= target})  # fmt: skip

    for optimizer, target in GOALS.items():
        base = [r for r in results if is_base(r) and r["optimizer"] == optimizer]
        goal(f"{optimizer}: >= {target:g}x torch sparse + torch.optim.{TORCH_SPARSE[optimizer]} "
             "(1M x64 L20 B4096, uniform and Zipf)", target, base, "speedup_sparse")  # fmt: skip
    goal(f"every case: >= {MIN_SPEEDUP:g}x torch sparse", MIN_SPEEDUP, results, "speedup_sparse")
    goal(f"DRAM-resident tables: >= {MIN_FRAC_COPY:.0%} of the copy bandwidth over the byte floor",
         MIN_FRAC_COPY, [r for r in results if r["table"] == "dram"], "mybag_frac_copy")
    goal("faster than FBGEMM's fused CPU step where it runs", 1.0, results, "speedup_fbgemm")
    summary["goals"] = goals
    return summary


def run(device: str = "cpu", quick: bool = False, **options: Any) -> list[Row]:
    """``benchmark(...)["results"]``, one dict per case; raises ``MismatchError`` on a wrong
    step."""
    return benchmark(device, quick, **options)["results"]


# Printed columns: (header, result key, format).
COLUMNS = (("mybag ms", "mybag_ms", "{:.2f}"), ("sparse ms", "torch_sparse_ms", "{:.2f}"),
           ("dense ms", "torch_dense_ms", "{:.2f}"), ("fbgemm ms", "fbgemm_ms", "{:.2f}"),
           ("vs sparse", "speedup_sparse", "{:.2f}x"), ("vs dense", "speedup_dense", "{:.2f}x"),
           ("vs fbgemm", "speedup_fbgemm", "{:.2f}x"), ("floor MB", "floor_mb", "{:.2f}"),
           ("GB/s", "mybag_gbps", "{:.1f}"), ("of copy", "mybag_frac_copy", "{:.2f}"))  # fmt: skip


def format_report(r: dict[str, Any]) -> str:
    """The text the command line prints: a head line, the table, what each column runs, the
    speed-ups per optimizer, the goals, notes and mismatches."""
    m, s, results = r["machine"], r["summary"], r["results"]
    lines = [(f"mybag.bench --suite train on {m['device_name']} (threads: "
              f"{m['torch_threads']}, {m['cpu_capability']}), torch {m['torch']}, {m['date']}"),
             ("training step = forward + backward + optimizer update; speed-up = other's time / "
              "mybag's time; floor: bytes the fused step must move"), ""]  # fmt: skip
    shown = [{**row, "floor_mb": row["floor_bytes"] / 1e6} for row in results]
    lines += bench.table_lines(shown, COLUMNS, width=10)
    lines += ["", (f"copy ceiling: {r['ceilings']['copy_gbps']:.1f} GB/s (read + write); "
                   "'of copy' = mybag's GB/s over the byte floor / copy ceiling")]  # fmt: skip
    lines += [f"{name}: {text}" for name, text in r["comparisons"].items()]
    if results:
        lines += ["", f"cases: {s['cases']}; geometric-mean speed-up of mybag over"]
        for optimizer, means in s["geomean_by_optimizer"].items():
            cells = ", ".join(f"{key[8:]} {'-' if v is None else f'{v:.2f}x'}"
                              for key, v in means.items())  # fmt: skip
            lines.append(f"  {optimizer:<16} {cells}")
        lines.append(f"cases below {MIN_SPEEDUP:g}x torch sparse: {len(s['below_min'])}")
        lines += [f"  {speedup:5.2f}x  {name}" for name, speedup in s["below_min"]]
        lines.append("goals:")
        for g in s["goals"]:
            lines.append(f"  {'met    ' if g['met'] else 'NOT MET'} {g['goal']}: worst "
                         f"{g['value']:.2f} ({g['case']})")  # fmt: skip
    lines += bench.report_tail(s)
    return "\n".join(lines)


def write_outputs(r: dict[str, Any], directory: str) -> Written:
    """Writes results.csv, results.json and speedup.png into ``directory``."""
    return bench.write_outputs(r, directory, plot=write_plot)


def write_plot(r: dict[str, Any], directory: str) -> Written:
    """Writes ``directory``/speedup.png (see ``make_figure``) from a report, or says why not."""
    return bench.write_plot(r, directory, draw=figure)


def figure(r: dict[str, Any]):
    m = r["machine"]
    threads = f"{m['torch_threads']} thread{'s' if m['torch_threads'] != 1 else ''}"
    return make_figure(r["results"], f"training steps, mybag.FusedEmbeddingBag vs torch and "
                       f"FBGEMM, {m['device_name']}, {threads}, torch {m['torch']}, {m['date']}")


# The plot: per case, a bar from 1x to mybag's speed-up over each other implementation (log
# axis; right of 1x: mybag faster), and mybag's fraction of the copy bandwidth.
BARS = (("speedup_sparse", "torch sparse + torch.optim", "tab:blue"),
        ("speedup_dense", "torch dense + torch.optim", "0.55"),
        ("speedup_fbgemm", "FBGEMM fused (CPU)", "tab:orange"))  # fmt: skip


def make_figure(results: list[Row], title: str):
    """The figure (a matplotlib Figure, left panel first in ``fig.axes``); needs results."""
    return bench.suite_figure(
        results, title, BARS, frac_key="mybag_frac_copy",
        speedup_label="speed-up of mybag's fused step (other's step time / mybag's), log scale; "
        f"dashed: {MIN_SPEEDUP:g}x",
        left_title="Training step (forward + backward + update): mybag.FusedEmbeddingBag",
        frac_label="mybag's GB/s (byte floor) / copy GB/s",
        min_speedup=MIN_SPEEDUP, min_frac=MIN_FRAC_COPY)  # fmt: skip
