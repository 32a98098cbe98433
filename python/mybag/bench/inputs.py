"""Builds one case's tensors: the table, indices (uniform or Zipf), offsets, options.

Both implementations receive these very tensors, so neither gets a warmer cache or a
friendlier layout than the other.
"""

from __future__ import annotations

import dataclasses
import zlib

import torch
from torch import Tensor

from mybag.bench.grid import Case

DTYPES = {
    "f32": torch.float32,
    "bf16": torch.bfloat16,
    "f16": torch.float16,
    "f64": torch.float64,
}

# Exponent of the Zipf law: about what embedding lookups in recommendation data show
# (a few rows take most of the traffic, a long tail is touched once or never).
ZIPF_EXPONENT = 1.05

# Fraction of entries replaced by padding_idx in the padding cases.
PADDING_FRACTION = 0.1


@dataclasses.dataclass
class Inputs:
    """The arguments of one case, on the benchmark's device."""

    weight: Tensor
    input: Tensor
    offsets: Tensor
    per_sample_weights: Tensor | None
    padding_idx: int | None
    # Entries that are not padding_idx: the rows a kernel must actually read.
    used_entries: Tensor
    grad_output: Tensor | None


class TableCache:
    """Keeps the most recent table so that consecutive cases on one table build it once.

    Only one is kept: the largest tables are 2 GiB and the machine is shared.
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._table: Tensor | None = None

    def get(self, case: Case, device: str) -> Tensor:
        key = (*case.table_key, device)
        if key != self._key:
            self._table = None  # free the old table before allocating the new one
            generator = torch.Generator().manual_seed(1234)
            # uniform_ rather than randn: several times faster for a 2 GiB table, and the
            # values (no ties, no NaN) exercise the kernels the same way.
            table = torch.empty(case.rows, case.dim).uniform_(-1.0, 1.0, generator=generator)
            self._table = table.to(device=device, dtype=DTYPES[case.dtype])
            self._key = key
        assert self._table is not None
        return self._table


def zipf_indices(rows: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` row indices drawn from a Zipf law over ``rows`` ranks (P(rank k) ~ 1/k^s).

    Inverse CDF: the cumulative weights of the ranks, searched with uniform draws. The ranks
    are then mapped through a random permutation, so the hot rows are scattered over the
    table as in real data, not packed into its first cache lines.
    """
    ranks = torch.arange(1, rows + 1, dtype=torch.float64)
    cdf = torch.cumsum(ranks.pow(-ZIPF_EXPONENT), 0)
    cdf /= cdf[-1].clone()
    draws = torch.rand(count, dtype=torch.float64, generator=generator)
    rank = torch.searchsorted(cdf, draws).clamp_(max=rows - 1)
    permutation = torch.randperm(rows, generator=generator)
    return permutation[rank]


def make_inputs(case: Case, device: str, tables: TableCache) -> Inputs:
    """The case's tensors, reproducible: the seed is derived from the case's name."""
    generator = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    count = case.bags * case.bag_size
    if case.dist == "zipf":
        indices = zipf_indices(case.rows, count, generator)
    else:
        indices = torch.randint(0, case.rows, (count,), generator=generator)
    padding_idx = None
    if case.padding:
        padding_idx = case.rows // 2
        pad = torch.rand(count, generator=generator) < PADDING_FRACTION
        indices[pad] = padding_idx
    used = indices if padding_idx is None else indices[indices != padding_idx]
    offsets = torch.arange(0, count, case.bag_size, dtype=torch.int64)
    weight = tables.get(case, device)
    psw = None
    if case.per_sample_weights:
        psw = torch.rand(count, generator=generator).to(device=device, dtype=weight.dtype)
    grad_output = None
    if case.pass_ != "fwd":
        grad_output = torch.randn(case.bags, case.dim, generator=generator)
        grad_output = grad_output.to(device=device, dtype=weight.dtype)
    return Inputs(
        weight=weight,
        input=indices.to(device),
        offsets=offsets.to(device),
        per_sample_weights=psw,
        padding_idx=padding_idx,
        used_entries=used.to(device),
        grad_output=grad_output,
    )
