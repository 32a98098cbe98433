"""The inference suite of the benchmark, ``python -m mybag.bench --suite serve``.

Times row-wise quantized embedding bags (int8 and int4, mode sum), the lookups of a served
model: ``mybag.quantized_embedding_bag`` against torch's quantized ops
(``torch.ops.quantized.embedding_bag_byte_rowwise_offsets`` / ``embedding_bag_4bit_rowwise_
offsets``) on the very same packed table (torch's ``embedding_bag_byte_prepack`` /
``embedding_bag_4bit_prepack``), against ``F.embedding_bag`` on the unquantized float32 table
and on its float16 copy, against ``mybag.embedding_bag`` on the float32 table and, when
``fbgemm_gpu`` imports beside torch, against FBGEMM's quantized inference lookup on the CPU
(``IntNBitTableBatchedEmbeddingBagsCodegen``). Every implementation reads the same rows. Each
case first checks mybag's output against torch's quantized op (and every quantized output
against the float64 sum of its own table's dequantized rows); a case where mybag's differs is
reported, not timed. Beside each time the report gives the largest absolute error of that
output against the float64 ``F.embedding_bag`` of the unquantized table, and the fraction of the
copy bandwidth that mybag's time reaches over the case's byte floor (packed rows read, output
written, indices read). The goals of issue 15 are evaluated at the end. From Python:
``benchmark(quick=True)`` returns the report, ``run(quick=True)`` its rows. See
docs/benchmarks.md, "Serving".
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import mybag
from mybag import bench, bench_training
from mybag.bench import MismatchError, NoCaseError, Row, Written

__all__ = ["MismatchError", "NoCaseError", "ServeCase", "benchmark", "cases_for", "grid", "run"]

BITS = (8, 4)
# mybag_q is mybag's quantized op; torch_q torch's on the same packed table; torch_f32, torch_f16
# and mybag_f32 the float lookups of the unquantized table; fbgemm FBGEMM's quantized lookup.
IMPLEMENTATIONS = ("mybag_q", "torch_q", "torch_f32", "torch_f16", "mybag_f32", "fbgemm")
QUANTIZED = ("mybag_q", "torch_q", "fbgemm")
DRAM_ROWS, CACHE_ROWS = 1_000_000, 10_000
# A packed table of at most this many bytes counts as cache-resident (32 MiB of L3 here; the
# float tables of the same rows need not fit: only the quantized lookups are the subject).
CACHE_BYTES = 16 * 2**20
# Each call reads about this many bytes of int8 rows (bags sized to fit, a power of two): a few
# MB, a serving batch's worth, and well past the cache for the 1M-row tables.
CALL_BYTES = 4 * 2**20
# Per grid: timed calls per implementation and case, the seconds past which a case stops adding
# rounds (after at least 5), the MiB of the copy ceiling (bench.copy_bandwidth), warm-up rounds.
SETTINGS = {
    "full": {"repeats": 60, "budget_s": 3.0, "copy_mb": 256, "warmup": 2},
    "quick": {"repeats": 15, "budget_s": 0.6, "copy_mb": 128, "warmup": 2},
    "tiny": {"repeats": 3, "budget_s": 0.1, "copy_mb": 8, "warmup": 1},
}
# The check of a quantized output: (rtol, atol for a bag of one entry); atol grows with
# sqrt(bag size), as float32 sums of L rows round differently in each order. mybag's sum is meant
# to equal torch's bit for bit (``identical`` in the results says whether it does).
TOLERANCE = (1e-5, 1e-5)
# Goals of the quantized lookups (issue 15): speed-ups of mybag_q on DRAM-resident tables, uniform
# and Zipf indices, over torch's quantized op of the same bits and over torch float32.
GOALS = {8: {"torch_q": 1.5, "torch_f32": 2.0}, 4: {"torch_q": 1.5, "torch_f32": 2.5}}
MIN_SPEEDUP_INT8 = 1.0  # int8, every case: never slower than torch's int8 op


@dataclasses.dataclass(frozen=True)
class ServeCase:
    """One inference case; ``name`` reads like ``serve int8 1M x128 L20 B2048 zipf``."""

    bits: int  # 8 or 4
    rows: int
    dim: int
    bag_size: int
    bags: int
    dist: str = "uniform"  # or "zipf"

    @property
    def name(self) -> str:
        return (f"serve int{self.bits} {bench.rows_label(self.rows)} x{self.dim} "
                f"L{self.bag_size} B{self.bags} {self.dist}")  # fmt: skip

    @property
    def row_bytes(self) -> int:
        """Bytes of one packed row: D codes and float32 scale and bias (8 bits), or D/2 bytes of
        two codes and float16 scale and bias (4 bits); torch's layouts."""
        return self.dim + 8 if self.bits == 8 else self.dim // 2 + 4

    @property
    def table(self) -> str:
        """"cache" or "dram": where the packed table lives during the lookups."""
        return "cache" if self.rows * self.row_bytes <= CACHE_BYTES else "dram"

    def lookups(self) -> bench.Case:
        """The forward suite's case with this case's lookups: ``bench.make_inputs`` builds its
        float32 table (seeded, shared by the cases of one size) and its indices and offsets,
        the same for the int8 and the int4 case of a shape."""
        return bench.Case("fwd", "sum", "f32", self.rows, self.dim, self.bag_size, self.bags,
                          self.dist)  # fmt: skip


def batch(dim: int, bag_size: int) -> int:
    """Bags per call: about CALL_BYTES of int8 rows, rounded to a power of two, at least 64."""
    return max(64, 2 ** round(math.log2(CALL_BYTES / (dim + 8) / bag_size)))


def grid(size: str = "full") -> list[ServeCase]:
    """The cases of ``size``: "full" (120: int8 and int4 on a DRAM-resident 1M-row and a cached
    10k-row table, D 32-512, bags of 1, 20 and 150, uniform and Zipf indices), "quick" (16: the
    goals' base cases, 1M x128 and 10k x128, L20, both bits and distributions, and D 32 and 512,
    bags of 1 and 150 on 1M rows) or "tiny" (four 1000-row cases that run in seconds, for tests
    of the program itself)."""
    if size == "tiny":
        return [ServeCase(8, 1000, 16, 5, 32), ServeCase(8, 1000, 16, 5, 32, "zipf"),
                ServeCase(4, 1000, 16, 5, 32), ServeCase(4, 1000, 16, 5, 32, "zipf")]  # fmt: skip
    cases: dict[str, ServeCase] = {}

    def add(rows: int = DRAM_ROWS, dim: int = 128, bag_size: int = 20, dist: str = "uniform"):
        for bits in BITS:
            case = ServeCase(bits, rows, dim, bag_size, batch(dim, bag_size), dist)
            cases.setdefault(case.name, case)

    if size == "full":
        for rows in (DRAM_ROWS, CACHE_ROWS):
            for dim in (32, 64, 128, 256, 512):
                for bag_size in (1, 20, 150):
                    for dist in ("uniform", "zipf"):
                        add(rows, dim, bag_size, dist)
        return list(cases.values())
    for rows in (DRAM_ROWS, CACHE_ROWS):
        for dist in ("uniform", "zipf"):
            add(rows, dist=dist)
    for dim in (32, 512):
        add(dim=dim)
    for bag_size in (1, 150):
        add(bag_size=bag_size)
    return list(cases.values())


def cases_for(device: str = "cpu", quick: bool = False, tiny: bool = False,
              filter: str | None = None) -> list[ServeCase]:  # fmt: skip
    """The cases a run would time; raises ``NoCaseError`` if ``filter`` matches none of them,
    ``RuntimeError`` for ``device="cuda"`` without a GPU."""
    every = grid("tiny" if tiny else "quick" if quick else "full")
    return bench.select_cases(every, filter, quick, device, "--suite serve")


# FBGEMM, optional. bench_training.fbgemm() probes the import in a child process first (a build
# made for another torch can abort the process that loads it); the inference names come after.
@functools.cache
def fbgemm() -> tuple[Any, str]:
    """(the fbgemm_gpu names the comparison needs, "") or (None, why it is left out)."""
    return _import_fbgemm()


def _import_fbgemm() -> tuple[Any, str]:
    training, why = bench_training.fbgemm()
    if training is None:
        return None, why
    try:
        from fbgemm_gpu.split_embedding_configs import SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
            IntNBitTableBatchedEmbeddingBagsCodegen,
        )
    except Exception as error:  # noqa: BLE001 (any failure leaves the comparison out, saying why)
        return None, f"fbgemm_gpu's inference lookup does not import: {type(error).__name__}: {error}"
    names = {"TBE": IntNBitTableBatchedEmbeddingBagsCodegen, "SparseType": SparseType,
             **{k: training[k] for k in ("BoundsCheckMode", "EmbeddingLocation", "PoolingMode",
                                         "version")}}  # fmt: skip
    return names, ""


# The tables of one shape, built once for all its cases: the float16 copy of the float32 table,
# and per bits torch's packed table and FBGEMM's. Cases run grouped by (rows, dim, bits), and
# only the current shape's tables (and of those, the current bits') are kept: at 1M x512 the
# float32 table is 2 GB, float16 1 GB, packed int8 0.5 GB, FBGEMM's int8 0.5 GB.
TORCH_PREPACK = {8: "embedding_bag_byte_prepack", 4: "embedding_bag_4bit_prepack"}
TORCH_LOOKUP = {8: "embedding_bag_byte_rowwise_offsets", 4: "embedding_bag_4bit_rowwise_offsets"}


def torch_quantized_op(bits: int) -> Callable[..., Tensor]:
    """torch's quantized lookup for ``bits`` (looked up by ``measure`` at call time, so that a
    test can substitute it)."""
    return getattr(torch.ops.quantized, TORCH_LOOKUP[bits])


def derived_table(store: dict, what: str, case: ServeCase, weight: Tensor,
                  build: Callable[[], Any]) -> Any:  # fmt: skip
    """``store``'s ``what`` ("f16", "packed", "fbgemm") for ``case``'s shape (and bits, but for
    "f16"), built by ``build`` unless there; drops the tables of other shapes or bits first."""
    shape = (case.rows, case.dim, weight.device)
    if store.get("shape") != shape:
        store.clear()
        store["shape"] = shape
    key = what if what == "f16" else (what, case.bits)
    if key not in store:
        # One bits at a time: the other bits' tables go, and an older one of this kind.
        stale = [k for k in store if isinstance(k, tuple) and (what, case.bits) != k
                 and (k[0] == what or k[1] != case.bits)]  # fmt: skip
        for old in stale:
            del store[old]
        gc.collect()
        store[key] = build()
    return store[key]


def torch_packed(case: ServeCase, weight: Tensor) -> Tensor:
    """torch's packed table of ``weight`` (packed on the CPU: torch has no CUDA prepack)."""
    packed = getattr(torch.ops.quantized, TORCH_PREPACK[case.bits])(weight.cpu())
    return packed.to(weight.device)


def parts(packed_rows: Tensor, bits: int, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """(codes (n, D) uint8, scale (n, 1), bias (n, 1)) of rows in torch's packed layouts."""
    if bits == 8:
        codes, tail = packed_rows[:, :dim], packed_rows[:, dim:]
        scale_bias = tail.contiguous().view(torch.float32)
    else:
        pairs, tail = packed_rows[:, : dim // 2], packed_rows[:, dim // 2 :]
        codes = torch.stack((pairs & 15, pairs >> 4), -1).reshape(-1, dim)  # low nibble first
        scale_bias = tail.contiguous().view(torch.float16)
    return codes, scale_bias[:, :1], scale_bias[:, 1:2]


def bag_sums(rows: Tensor, case: ServeCase) -> Tensor:
    """Per bag, the float64 sum of ``rows`` (one per entry, in entry order; every bag holds
    ``bag_size`` entries)."""
    return rows.to(torch.float64).view(case.bags, case.bag_size, case.dim).sum(1)


def dequantized_sums(codes: Tensor, scale: Tensor, bias: Tensor, case: ServeCase) -> Tensor:
    """The float64 bag sums of rows dequantized as codes * scale + bias."""
    return bag_sums(codes.double() * scale.double() + bias.double(), case)


def fbgemm_lookup(names: Any, case: ServeCase, packed: Tensor) -> tuple[Any, Tensor | None]:
    """FBGEMM's quantized lookup of torch's packed table: (the TBE module, and for int8 the
    float16 scale and bias it keeps per row (its int8 rows hold them in half precision), None
    for int4, whose rows are torch's with scale and bias moved in front: the same values)."""
    sparse_type = names["SparseType"].INT8 if case.bits == 8 else names["SparseType"].INT4
    tbe = names["TBE"]([("table", case.rows, case.dim, sparse_type,
                         names["EmbeddingLocation"].HOST)], device="cpu",
                       pooling_mode=names["PoolingMode"].SUM,
                       output_dtype=names["SparseType"].FP32,
                       bounds_check_mode=names["BoundsCheckMode"].FATAL,
                       indices_dtype=torch.int64)  # fmt: skip
    tbe.initialize_weights()
    codes, scale_bias = tbe.split_embedding_weights()[0]
    code_bytes = case.row_bytes - (8 if case.bits == 8 else 4)
    codes.copy_(packed[:, :code_bytes])
    half = None
    if case.bits == 8:
        tail = packed[:, code_bytes:].contiguous().view(torch.float32)
        half = tail.to(torch.float16)
        scale_bias.copy_(half.view(torch.uint8))
    else:
        scale_bias.copy_(packed[:, code_bytes:])
    return tbe, half


def case_bytes(case: ServeCase, x: bench.Inputs) -> int:
    """The byte floor of a quantized lookup: every entry's packed row read, the float32 output
    written, the indices and offsets read."""
    indices = sum(t.numel() * t.element_size() for t in (x.input, x.offsets))
    return x.input.numel() * case.row_bytes + case.bags * case.dim * 4 + indices


def measure(case: ServeCase, x: bench.Inputs, device: str, settings: dict[str, Any],
            store: dict) -> Row:  # fmt: skip
    """Checks every quantized output, then times every implementation interleaved. Raises
    MismatchError if mybag's output differs from torch's quantized op's, or mybag raises."""
    packed = derived_table(store, "packed", case, x.weight, lambda: torch_packed(case, x.weight))
    half = derived_table(store, "f16", case, x.weight, lambda: x.weight.to(torch.float16))
    names = fbgemm()[0] if device == "cpu" else None
    notes: list[str] = []
    torch_op = torch_quantized_op(case.bits)
    calls: dict[str, Callable[[], Tensor]] = {
        # mybag's functions are looked up at call time, so that a test can substitute them.
        "mybag_q": lambda: mybag.quantized_embedding_bag(x.input, packed, case.bits, x.offsets,
                                                         mode="sum"),
        "torch_q": lambda: torch_op(packed, x.input, x.offsets, mode=0),
        "torch_f32": lambda: F.embedding_bag(x.input, x.weight, x.offsets, mode="sum"),
        "torch_f16": lambda: F.embedding_bag(x.input, half, x.offsets, mode="sum"),
        "mybag_f32": lambda: mybag.embedding_bag(x.input, x.weight, x.offsets, mode="sum"),
    }  # fmt: skip
    fbgemm_half = None
    if names is not None:
        try:
            tbe, fbgemm_half = derived_table(store, "fbgemm", case, x.weight,
                                             lambda: fbgemm_lookup(names, case, packed))
            # FBGEMM's offsets end with the number of indices (include_last_offset).
            ends = torch.cat([x.offsets, x.offsets.new_tensor([x.input.numel()])])
            calls["fbgemm"] = lambda: tbe(x.input, ends)
        except Exception as error:  # noqa: BLE001 (a comparison that cannot run is left out)
            notes.append(f"fbgemm raised {type(error).__name__} building its table: {error}; "
                         "not timed")  # fmt: skip
    # What each quantized output must be: the float64 bag sums of its table's dequantized rows.
    codes, scale, bias = parts(packed[x.input], case.bits, case.dim)
    expected = {"mybag_q": dequantized_sums(codes, scale, bias, case)}
    expected["torch_q"] = expected["mybag_q"]
    expected["fbgemm"] = (expected["mybag_q"] if fbgemm_half is None else dequantized_sums(
        codes, *fbgemm_half[x.input].double().split(1, 1), case))  # fmt: skip
    del codes, scale, bias
    exact = bag_sums(x.weight[x.input], case)  # the float64 result of the unquantized table
    rtol, atol = TOLERANCE[0], TOLERANCE[1] * math.sqrt(case.bag_size)
    outputs: dict[str, Tensor] = {}
    with torch.no_grad():
        for name in list(calls):
            try:
                outputs[name] = calls[name]()
            except Exception as error:
                if name == "mybag_q":  # any failure of mybag's is reported as a mismatch
                    raise MismatchError(f"{case.name}: mybag_q raised {type(error).__name__}: "
                                        f"{error}") from error  # fmt: skip
                notes.append(f"{name} raised {type(error).__name__}: {error}; not timed")
                del calls[name]
    if not isinstance(outputs["mybag_q"], Tensor):
        raise MismatchError(f"{case.name}: mybag_q produced no tensor")
    wrong = []
    for name in [n for n in QUANTIZED if n in outputs]:
        try:
            torch.testing.assert_close(outputs[name].double(), expected[name], rtol=rtol,
                                       atol=atol)  # fmt: skip
        except AssertionError as error:
            text = (f"{name}'s output differs from the float64 sum of its table's dequantized "
                    f"rows:\n{error}")  # fmt: skip
            wrong.append((name, text))
    if "torch_q" in outputs and "torch_q" not in dict(wrong):  # torch's op, where it is right
        try:
            torch.testing.assert_close(outputs["mybag_q"], outputs["torch_q"], rtol=rtol,
                                       atol=atol)  # fmt: skip
        except AssertionError as error:
            wrong.append(("mybag_q", f"mybag_q's output differs from torch_q's:\n{error}"))
    mine = [text for name, text in wrong if name == "mybag_q"]
    if mine:
        raise MismatchError(f"{case.name}: " + "\n".join(mine))
    for name, text in wrong:  # a comparison doing other work: its time would mislead
        notes.append(f"{text}\nnot timed")
        del calls[name], outputs[name]
    errors = {name: float((out.double() - exact).abs().max()) for name, out in outputs.items()}
    identical = (bool(torch.equal(outputs["mybag_q"], outputs["torch_q"]))
                 if "torch_q" in outputs else None)  # fmt: skip
    q_max_diff = (float((outputs["mybag_q"] - outputs["torch_q"]).abs().max())
                  if "torch_q" in outputs else None)  # fmt: skip
    del outputs, expected, exact
    with torch.no_grad():
        samples = bench.interleave(calls, device, settings["repeats"], settings["budget_s"],
                                   warmup=settings["warmup"])  # fmt: skip
    ms = {name: statistics.median(samples[name]) * 1e3 if name in samples else None
          for name in IMPLEMENTATIONS}  # fmt: skip
    floor = case_bytes(case, x)

    def over(numerator: str, denominator: str) -> float | None:
        if ms[numerator] is None or ms[denominator] is None:
            return None
        return ms[numerator] / ms[denominator]

    def gbps(name: str) -> float | None:
        return None if ms[name] is None else floor / ms[name] / 1e6

    return {
        "case": case.name, "suite": "serve", "bits": case.bits, "rows": case.rows,
        "dim": case.dim, "bag_size": case.bag_size, "bags": case.bags, "dist": case.dist,
        "table": case.table, "lookups": x.input.numel(), "row_bytes": case.row_bytes,
        "runs": len(samples["mybag_q"]),
        **{f"{name}_ms": ms[name] for name in IMPLEMENTATIONS},
        **{f"{name}_err": errors.get(name) for name in IMPLEMENTATIONS},
        "mybag_q_min_ms": min(samples["mybag_q"]) * 1e3,
        "torch_q_min_ms": min(samples["torch_q"]) * 1e3 if "torch_q" in samples else None,
        # mybag_q against torch's quantized op and FBGEMM's: other's time / mybag's.
        "speedup_q": over("torch_q", "mybag_q"),
        "speedup_q_min": (min(samples["torch_q"]) / min(samples["mybag_q"])
                          if "torch_q" in samples else None),
        "speedup_fbgemm": over("fbgemm", "mybag_q"),
        # Every implementation against torch float32: torch_f32's time / its time.
        **{f"f32_over_{name}": over("torch_f32", name) for name in IMPLEMENTATIONS
           if name != "torch_f32"},
        "identical": identical, "q_max_diff": q_max_diff,
        "floor_bytes": floor, "mybag_q_gbps": gbps("mybag_q"), "torch_q_gbps": gbps("torch_q"),
        "notes": "; ".join(notes),
    }  # fmt: skip


def benchmark(device: str = "cpu", quick: bool = False, *, tiny: bool = False,
              filter: str | None = None, repeats: int | None = None, progress: bool = False,
              on_mismatch: str = "raise") -> dict[str, Any]:  # fmt: skip
    """Runs the inference grid and returns ``{"machine", "settings", "ceilings", "comparisons",
    "results", "summary"}``, as ``bench.benchmark`` does for the forward suite.

    Raises ``NoCaseError`` if ``filter`` matches no case. ``on_mismatch="raise"`` raises
    ``MismatchError`` if mybag's output differs from torch's quantized op's on any case;
    ``"skip"`` lists those cases in ``summary["mismatches"]`` and leaves them out. ``progress``
    draws a bar with an ETA on stderr.
    """
    cases = cases_for(device, quick, tiny, filter)
    settings = dict(SETTINGS["tiny" if tiny else "quick" if quick else "full"])
    settings["repeats"] = repeats or settings["repeats"]
    names, fbgemm_why = fbgemm() if device == "cpu" else (None, "FBGEMM runs on the CPU only")
    copy_start = bench.copy_bandwidth(device, settings["copy_mb"])
    tables: dict = {}  # bench.make_inputs's float32 table
    store: dict = {}  # the tables derived from it (derived_table)
    rows: dict[int, Row] = {}
    mismatches: list[str] = []
    start = time.perf_counter()
    # Cases grouped by table shape, then bits: each table is built once.
    order = sorted(range(len(cases)), key=lambda i: (cases[i].rows, cases[i].dim, -cases[i].bits))
    for done, i in enumerate(order):
        if progress:
            bench._progress(done, len(cases), start, cases[i].name)
        if store.get("shape", (None, None))[:2] != (cases[i].rows, cases[i].dim):
            store.clear()  # before the next float table is built: one shape's tables at a time
            gc.collect()
        try:
            x = bench.make_inputs(cases[i].lookups(), device, tables)
            rows[i] = measure(cases[i], x, device, settings, store)
        except MismatchError as error:
            if on_mismatch == "raise":
                raise
            mismatches.append(str(error))
        finally:
            gc.collect()
    store.clear()
    tables.clear()
    gc.collect()
    if progress:
        bench._progress(len(cases), len(cases), start, "done")
    copy_end = bench.copy_bandwidth(device, settings["copy_mb"])
    ceiling = max(copy_start, copy_end)
    results = [rows[i] for i in sorted(rows)]
    for row in results:
        row["copy_gbps"] = ceiling
        for name in ("mybag_q", "torch_q"):
            gbps = row[f"{name}_gbps"]
            row[f"{name}_frac_copy"] = None if gbps is None else gbps / ceiling
    return {
        "machine": bench.machine_info(device),
        "settings": {**settings, "suite": "serve", "quick": quick, "tiny": tiny,
                     "filter": filter},
        "ceilings": {"copy_gbps": ceiling, "copy_gbps_start": copy_start,
                     "copy_gbps_end": copy_end, "copy_mb": settings["copy_mb"]},
        "comparisons": comparisons(names, fbgemm_why),
        "results": results,
        "summary": summarize(results, mismatches),
    }  # fmt: skip


def comparisons(names: Any, fbgemm_why: str) -> dict[str, str]:
    """What each column runs, in words (printed under the table and kept in results.json)."""
    fbgemm_text = (f"not run: {fbgemm_why}" if names is None else
                   f"fbgemm_gpu {names['version']} IntNBitTableBatchedEmbeddingBagsCodegen, one "
                   "table, EmbeddingLocation.HOST, on the CPU, SparseType.INT8 / INT4, output "
                   "FP32, indices checked (BoundsCheckMode.FATAL); int4: torch's packed rows "
                   "with scale and bias moved in front (the same values); int8: the same codes, "
                   "scale and bias rounded to float16 (FBGEMM keeps them so), hence an error of "
                   "its own")  # fmt: skip
    return {
        "mybag_q": "mybag.quantized_embedding_bag(input, packed, bits, offsets, mode='sum') on "
                   "torch's packed table",
        "torch_q": "torch.ops.quantized.embedding_bag_byte_rowwise_offsets / "
                   "embedding_bag_4bit_rowwise_offsets(mode=0, sum) on the table packed by "
                   "embedding_bag_byte_prepack / embedding_bag_4bit_prepack",
        "torch_f32": "F.embedding_bag(mode='sum') on the unquantized float32 table",
        "torch_f16": "F.embedding_bag(mode='sum') on the table in float16 (float16 output)",
        "mybag_f32": "mybag.embedding_bag(mode='sum') on the unquantized float32 table",
        "fbgemm": fbgemm_text,
        "err": "max |output - float64 F.embedding_bag over the unquantized float32 table|",
    }  # fmt: skip


def summarize(results: list[Row], mismatches: list[str]) -> dict[str, Any]:
    """Geometric-mean speed-ups per bits and table, the int8 cases slower than torch's int8
    op, and the goals: ``goals`` lists (goal, target, worst value, worst case, met, shown) for
    those the run measured."""
    summary: dict[str, Any] = {"cases": len(results), "mismatches": mismatches,
                               "notes": [f"{r['case']}: {r['notes']}" for r in results
                                         if r["notes"]]}  # fmt: skip
    if not results:
        return summary
    means = {}
    for bits in BITS:
        for table in ("dram", "cache"):
            mine = [r for r in results if r["bits"] == bits and r["table"] == table]
            if mine:
                means[f"int{bits} {table}"] = {
                    key: bench.geomean(values) if (values := [r[key] for r in mine
                                                              if r[key] is not None]) else None
                    for key in ("speedup_q", "f32_over_mybag_q", "f32_over_torch_q",
                                "speedup_fbgemm")
                }  # fmt: skip
    summary["geomean"] = means
    summary["below_torch_q"] = [(r["case"], r["speedup_q"]) for r in results
                                if r["speedup_q"] is not None and r["speedup_q"] < 1.0]
    with_torch = [r for r in results if r["identical"] is not None]
    summary["identical"] = (sum(r["identical"] for r in with_torch), len(with_torch))
    goals = []

    def goal(text: str, target: float, rows: list[Row], key: str) -> None:
        rows = [r for r in rows if r[key] is not None]
        if rows:
            worst = min(rows, key=lambda r: r[key])
            goals.append({"goal": text, "target": target, "value": worst[key],
                          "case": worst["case"], "met": worst[key] >= target,
                          "shown": f"{worst[key]:.2f}x"})  # fmt: skip

    op = {8: "int8 op", 4: "4-bit op"}
    for bits, targets in GOALS.items():
        dram = [r for r in results if r["bits"] == bits and r["table"] == "dram"]
        goal(f"int{bits}: >= {targets['torch_q']:g}x torch's {op[bits]} (DRAM-resident tables, "
             "uniform and Zipf)", targets["torch_q"], dram, "speedup_q")  # fmt: skip
        goal(f"int{bits}: >= {targets['torch_f32']:g}x torch float32 (DRAM-resident tables, "
             "uniform and Zipf)", targets["torch_f32"], dram, "f32_over_mybag_q")  # fmt: skip
        if bits == 8:
            goal(f"int8, every case: not slower than torch's int8 op (>= "
                 f"{MIN_SPEEDUP_INT8:g}x)", MIN_SPEEDUP_INT8,
                 [r for r in results if r["bits"] == 8], "speedup_q")  # fmt: skip
    # Errors: mybag_q's must equal torch_q's (the same packed table, the same formula).
    compared = [r for r in results if r["mybag_q_err"] is not None and r["torch_q_err"] is not None]
    if compared:
        gap = {r["case"]: abs(r["mybag_q_err"] - r["torch_q_err"]) for r in compared}
        worst = max(compared, key=lambda r: gap[r["case"]])
        differ = sum(g > 0 for g in gap.values())
        goals.append({"goal": "errors equal to torch's quantized ops' (same packed table, same "
                              "formula)", "target": 0.0, "value": gap[worst["case"]],
                      "case": worst["case"], "met": differ == 0,
                      "shown": f"|mybag_q err - torch_q err| {gap[worst['case']]:.3g}, in "
                               f"{differ} of {len(compared)} cases nonzero"})  # fmt: skip
    summary["goals"] = goals
    return summary


def run(device: str = "cpu", quick: bool = False, **options: Any) -> list[Row]:
    """``benchmark(...)["results"]``, one dict per case; raises ``MismatchError`` on a wrong
    output."""
    return benchmark(device, quick, **options)["results"]


# Printed columns: (header, result key, format); the time cells read "ms (max abs error)". In
# results.csv/json only: torch_q's ratio over torch_f32 (f32_over_torch_q), the GB/s.
COLUMNS = (*((name, f"{name}_cell", "{}") for name in IMPLEMENTATIONS),
           ("vs torch_q", "speedup_q", "{:.2f}x"), ("vs f32", "f32_over_mybag_q", "{:.2f}x"),
           ("floor MB", "floor_mb", "{:.2f}"), ("of copy", "mybag_q_frac_copy", "{:.2f}"))


def cell(ms: float | None, err: float | None) -> str | None:
    """A time and its error as the table prints them: ``0.714 (3.9e-02)``."""
    return None if ms is None else f"{ms:.3f} ({err:.1e})"


def format_report(r: dict[str, Any]) -> str:
    """The text the command line prints: a head line, the table, what each column runs, the
    speed-ups per bits and table, the goals, notes and mismatches."""
    m, s, results = r["machine"], r["summary"], r["results"]
    lines = [(f"mybag.bench --suite serve on {m['device_name']} (threads: "
              f"{m['torch_threads']}, {m['cpu_capability']}), torch {m['torch']}, {m['date']}"),
             ("quantized embedding bags, mode sum; each cell: median ms (max abs error); "
              "vs torch_q / vs f32 = torch_q's / torch_f32's time over mybag_q's; floor: bytes "
              "mybag_q must move"),
             ""]  # fmt: skip
    shown = [{**row, "floor_mb": row["floor_bytes"] / 1e6,
              **{f"{n}_cell": cell(row[f"{n}_ms"], row[f"{n}_err"]) for n in IMPLEMENTATIONS}}
             for row in results]  # fmt: skip
    lines += bench.table_lines(shown, COLUMNS, width=16)
    lines += ["", (f"copy ceiling: {r['ceilings']['copy_gbps']:.1f} GB/s (read + write); "
                   "'of copy' = mybag_q's GB/s over the byte floor / copy ceiling")]  # fmt: skip
    lines += [f"{name}: {text}" for name, text in r["comparisons"].items()]
    if results:
        lines += ["", f"cases: {s['cases']}; geometric means"]
        for group, means in s["geomean"].items():
            cells = ", ".join(f"{label} {'-' if means[key] is None else f'{means[key]:.2f}x'}"
                              for key, label in (("speedup_q", "mybag_q vs torch_q"),
                                                 ("f32_over_mybag_q", "mybag_q vs f32"),
                                                 ("f32_over_torch_q", "torch_q vs f32"),
                                                 ("speedup_fbgemm", "mybag_q vs fbgemm")))
            lines.append(f"  {group:<11} {cells}")
        same, compared = s["identical"]
        lines.append(f"mybag_q's output equal to torch_q's bit for bit: {same} of {compared} "
                     "cases")  # fmt: skip
        lines.append(f"cases where mybag_q is slower than torch_q: {len(s['below_torch_q'])}")
        lines += [f"  {speedup:5.2f}x  {name}" for name, speedup in s["below_torch_q"]]
        lines.append("goals:")
        for g in s["goals"]:
            lines.append(f"  {'met    ' if g['met'] else 'NOT MET'} {g['goal']}: worst "
                         f"{g['shown']} ({g['case']})")  # fmt: skip
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
    return make_figure(r["results"], f"quantized lookups, mybag.quantized_embedding_bag vs torch "
                       f"and FBGEMM, {m['device_name']}, {threads}, torch {m['torch']}, "
                       f"{m['date']}")  # fmt: skip


# The plot: per case, a bar from 1x to mybag_q's speed-up over each other implementation (log
# axis; right of 1x: mybag faster), and mybag_q's fraction of the copy bandwidth.
BARS = (("speedup_q", "torch's quantized op (same bits)", "tab:blue"),
        ("f32_over_mybag_q", "torch float32", "0.55"),
        ("speedup_fbgemm", "FBGEMM quantized (CPU)", "tab:orange"))  # fmt: skip


def make_figure(results: list[Row], title: str):
    """The figure (a matplotlib Figure, left panel first in ``fig.axes``); needs results."""
    return bench.suite_figure(
        results, title, BARS, frac_key="mybag_q_frac_copy",
        speedup_label="speed-up of mybag's quantized lookup (other's time / mybag's), log scale",
        left_title="Quantized embedding bags (sum): mybag.quantized_embedding_bag",
        frac_label="mybag_q's GB/s (byte floor) / copy GB/s")  # fmt: skip
