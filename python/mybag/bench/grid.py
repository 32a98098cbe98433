"""The benchmark cases: one base case and variations along each axis, not the cross product.

Every case is timed through both ``torch.nn.functional.embedding_bag`` and
``mybag.embedding_bag`` with the same arguments, so the grid avoids the options whose meaning
differs on purpose (``include_last_offset``, ``scale_grad_by_freq`` with ``sparse=True``); see
the project's README, "Differences from torch".
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Pass = Literal["fwd", "fwd+bwd dense", "fwd+bwd sparse"]
Dist = Literal["uniform", "zipf"]

# Short dtype names used in case names and on the command line.
DTYPE_NAMES = ("f32", "bf16", "f16", "f64")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case; ``name`` reads like ``fwd sum f32 1M x128 L20 uniform``."""

    pass_: Pass
    mode: str
    dtype: str
    rows: int
    dim: int
    bag_size: int
    bags: int
    dist: Dist = "uniform"
    padding: bool = False
    per_sample_weights: bool = False

    @property
    def name(self) -> str:
        extras = (" pad" if self.padding else "") + (" psw" if self.per_sample_weights else "")
        return (
            f"{self.pass_} {self.mode} {self.dtype} {_rows_label(self.rows)} x{self.dim} "
            f"L{self.bag_size} {self.dist}{extras}"
        )

    @property
    def table_key(self) -> tuple[int, int, str]:
        """Cases with the same key share one table (building a 2 GiB table takes seconds)."""
        return (self.rows, self.dim, self.dtype)


def _rows_label(rows: int) -> str:
    for unit, size in (("M", 10**6), ("k", 10**3)):
        if rows >= size and rows % size == 0:
            return f"{rows // size}{unit}"
    return str(rows)


def _bags_for(bag_size: int, lookups: int) -> int:
    # A roughly constant number of lookups per call keeps every case's cost comparable.
    return max(64, lookups // bag_size)


def _grid(
    small: int, large: int, dims: tuple[int, ...], base_dim: int, lookups: int, full: bool
) -> list[Case]:
    cases: dict[str, Case] = {}

    def add(
        pass_: Pass = "fwd",
        mode: str = "sum",
        dtype: str = "f32",
        rows: int = large,
        dim: int = base_dim,
        bag_size: int = 20,
        **extra: object,
    ) -> None:
        case = Case(pass_, mode, dtype, rows, dim, bag_size, _bags_for(bag_size, lookups), **extra)  # type: ignore[arg-type]
        cases.setdefault(case.name, case)

    modes = ("sum", "mean", "max")
    tables = (small, large)
    # Forward, float32: every mode over table sizes (in cache or not) and embedding widths.
    for rows in tables:
        for dim in dims:
            for mode in modes:
                add(mode=mode, rows=rows, dim=dim)
    # Bag sizes.
    for bag_size in (1, 150):
        for rows in tables if full else (large,):
            for mode in ("sum", "max") if full else ("sum",):
                add(mode=mode, rows=rows, bag_size=bag_size)
    # Zipf-skewed indices: a few hot rows dominate, as in recommendation models.
    for rows in tables if full else (large,):
        for mode in modes if full else ("sum", "max"):
            add(mode=mode, rows=rows, dist="zipf")
    # padding_idx and per_sample_weights (torch's scalar paths).
    for rows in tables if full else (large,):
        for mode in modes if full else ("sum", "max"):
            add(mode=mode, rows=rows, padding=True)
        add(rows=rows, per_sample_weights=True)
    # dtypes.
    for dtype in ("bf16", "f16", "f64"):
        for mode in modes if full else ("sum",):
            add(mode=mode, dtype=dtype)
        if full:
            add(dtype=dtype, rows=small, dim=64)
    # Forward + backward, dense gradient (a zero-filled table-sized gradient every step).
    for rows in tables if full else (large,):
        for mode in modes if full else ("sum",):
            add("fwd+bwd dense", mode=mode, rows=rows)
    add("fwd+bwd dense", mode="max", rows=small)
    # Forward + backward, sparse gradient: the training step of large embedding tables.
    for rows in tables if full else (large,):
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


def full_grid() -> list[Case]:
    """About 90 cases: 10k-row tables (in cache) and 1M-row ones (up to 2 GiB), D 16-512."""
    return _grid(10_000, 1_000_000, (16, 64, 128, 512), 128, lookups=65_536, full=True)


def quick_grid() -> list[Case]:
    """A representative subset with smaller sizes: the whole run takes under a minute."""
    return _grid(10_000, 1_000_000, (64,), 64, lookups=16_384, full=False)


def tiny_grid() -> list[Case]:
    """Three tiny cases that run in a second: for tests of the program itself."""
    return [
        Case("fwd", "sum", "f32", 1000, 16, 5, 32),
        Case("fwd", "max", "f32", 1000, 16, 5, 32, padding=True),
        Case("fwd+bwd sparse", "mean", "f32", 1000, 16, 5, 32, dist="zipf"),
    ]


def select(cases: list[Case], substring: str | None, device: str) -> list[Case]:
    """Cases whose name contains ``substring``; float64 only on the CPU (GPUs are slow at it)."""
    chosen = [c for c in cases if substring is None or substring in c.name]
    return [c for c in chosen if device == "cpu" or c.dtype != "f64"]
