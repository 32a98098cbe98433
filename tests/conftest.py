"""Shared fixtures and reference helpers for mybag's tests.

The reference here (``reference_embedding_bag``, ``reference_weight_grad``, ...) is written from
docs/spec.md in plain torch, in float64 on the CPU, one bag at a time: slow and obvious, so that
it can be trusted where mybag deliberately differs from torch (include_last_offset, NaN in max mode,
scale_grad_by_freq, sparse + scale_grad_by_freq).

Test modules (in tests/op, tests/frontends, tests/project) import the helpers with
``from conftest import ...``: no folder under tests/ has an ``__init__.py``, so pytest (default
"prepend" import mode) puts the directory of this conftest.py, ``tests/``, on ``sys.path``, and
each test file's own directory too (hence: no two test files may share a basename).
"""

from __future__ import annotations

import dataclasses

import mybag  # loads the library, registers torch.ops.mybag
import pytest
import torch
import torch.nn.functional as F

HAS_CUDA = torch.cuda.is_available()

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# Parametrize with these: "cuda" skips itself on machines without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _seed_torch():
    # Tests that draw from the global generator are reproducible one by one.
    torch.manual_seed(0)


MODES = ["sum", "mean", "max"]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF_DTYPES = (torch.float16, torch.bfloat16)

# name -> (input dtype, offsets dtype)
INDEX_DTYPES = {
    "i64": (torch.int64, torch.int64),
    "i32": (torch.int32, torch.int32),
    "i32_i64": (torch.int32, torch.int64),
    "i64_i32": (torch.int64, torch.int32),
}

# Tolerances for mybag against the float64 reference rounded to the weight's dtype (mybag
# accumulates half types in float32 and rounds once, so it stays within about one ulp).
_TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1.3e-6, "atol": 1e-5},
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
}


def tol(dtype: torch.dtype, scale: float = 1.0) -> dict:
    """rtol/atol for comparing values of ``dtype``; ``scale`` loosens both (e.g. against torch,
    whose half paths accumulate differently)."""
    t = _TOLERANCES[dtype]
    return {"rtol": t["rtol"] * scale, "atol": t["atol"] * scale}


def assert_close(actual, expected, dtype=None, scale=1.0, msg=None, check_dtype=True):
    """torch.testing.assert_close with tolerances chosen by ``dtype`` (default: expected's)."""
    if dtype is None:
        dtype = expected.dtype
    if check_dtype:
        assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}: {msg}"
    torch.testing.assert_close(
        actual.cpu().double(),
        expected.cpu().double(),
        equal_nan=True,
        msg=(lambda m: f"{m}\n{msg}") if msg else None,
        **tol(dtype, scale),
    )


# ---------------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass
class Case:
    """One embedding_bag call's tensors and options. ``input`` may be 1-D (with offsets) or 2-D."""

    input: torch.Tensor
    offsets: torch.Tensor | None
    weight: torch.Tensor
    per_sample_weights: torch.Tensor | None
    mode: str = "mean"
    include_last_offset: bool = False
    padding_idx: int | None = None

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def num_bags(self) -> int:
        return len(bag_positions(self.input, self.offsets, self.include_last_offset))

    def to(self, device, input_dtype=None, offsets_dtype=None) -> Case:
        """The same case with its tensors on ``device`` (index tensors optionally converted)."""
        input, offsets, psw = self.input, self.offsets, self.per_sample_weights
        if input_dtype is not None:
            input = input.to(input_dtype)
        if offsets is not None and offsets_dtype is not None:
            offsets = offsets.to(offsets_dtype)
        return dataclasses.replace(
            self,
            input=input.to(device),
            offsets=None if offsets is None else offsets.to(device),
            weight=self.weight.to(device),
            per_sample_weights=None if psw is None else psw.to(device),
        )

    def kwargs(self) -> dict:
        return {
            "mode": self.mode,
            "per_sample_weights": self.per_sample_weights,
            "include_last_offset": self.include_last_offset,
            "padding_idx": self.padding_idx,
        }

    def describe(self) -> str:
        return (
            f"mode={self.mode} input={self.input.tolist()} ({self.input.dtype}) "
            f"offsets={None if self.offsets is None else self.offsets.tolist()} "
            f"({None if self.offsets is None else self.offsets.dtype}) "
            f"weight={tuple(self.weight.shape)} {self.weight.dtype} "
            f"psw={self.per_sample_weights is not None} "
            f"include_last_offset={self.include_last_offset} padding_idx={self.padding_idx}"
        )


def make_case(
    mode: str = "sum",
    form: str = "1d",
    include_last_offset: bool = False,
    padding_idx: int | None = None,
    psw: bool = False,
    dtype: torch.dtype = torch.float32,
    index_dtypes=(torch.int64, torch.int64),
    empty_bags: bool = False,
    num_embeddings: int = 30,
    dim: int = 16,
    num_bags: int = 5,
    max_bag: int = 6,
    seed: int = 0,
    device="cpu",
    distinct: bool = False,
    padding_fraction: float = 0.25,
) -> Case:
    """A random case.

    form "1d": input (N,) with offsets; with include_last_offset offsets has B+1 entries, the last
    one equal to N (where torch and mybag agree). form "2d": input (B, max_bag), offsets None.
    empty_bags: 1-D: the first, a middle and the last bag are empty; 2-D: with a padding_idx, one
    row holds only padding. padding_idx: about ``padding_fraction`` of the entries are padding; the
    padding row keeps nonzero values, so a kernel that does not skip it shows. distinct: every
    weight value is distinct and well separated (no ties in max mode, for gradcheck).
    """
    if isinstance(index_dtypes, str):
        index_dtypes = INDEX_DTYPES[index_dtypes]
    input_dtype, offsets_dtype = index_dtypes
    g = torch.Generator().manual_seed(seed)

    if distinct:
        values = torch.randperm(num_embeddings * dim, generator=g).double() / 7.0 - 1.5
        weight = values.reshape(num_embeddings, dim)
    else:
        weight = torch.randn(num_embeddings, dim, generator=g, dtype=torch.float64)
    weight = weight.to(dtype)

    pad_row = None if padding_idx is None else padding_idx % num_embeddings

    if form == "1d":
        sizes = torch.randint(1, max_bag + 1, (num_bags,), generator=g)
        if empty_bags:
            sizes[0] = 0
            sizes[-1] = 0
            if num_bags >= 3:
                sizes[num_bags // 2] = 0
        n = int(sizes.sum())
        flat = torch.randint(0, num_embeddings, (n,), generator=g)
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
        if include_last_offset:
            offsets = torch.cat([starts, torch.tensor([n])])
        else:
            offsets = starts
        inp = flat
    elif form == "2d":
        inp = torch.randint(0, num_embeddings, (num_bags, max_bag), generator=g)
        offsets = None
    else:
        raise ValueError(form)

    if pad_row is not None and inp.numel() > 0:
        is_pad = torch.rand(inp.shape, generator=g) < padding_fraction
        inp = torch.where(is_pad, torch.full_like(inp, pad_row), inp)
        if form == "2d" and empty_bags:
            inp[min(1, inp.shape[0] - 1)] = pad_row

    per_sample_weights = None
    if psw:
        per_sample_weights = torch.randn(inp.shape, generator=g, dtype=torch.float64).to(dtype)

    case = Case(inp, offsets, weight, per_sample_weights, mode, include_last_offset, padding_idx)
    return case.to(device, input_dtype, offsets_dtype)


def random_grad(shape, dtype, device="cpu", seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)


# ---------------------------------------------------------------------------------------------
# Reference (docs/spec.md §2-§5), float64 on the CPU


def bag_positions(input, offsets=None, include_last_offset=False) -> list[list[int]]:
    """Positions in ``input.flatten()`` of each bag's entries. The last bag ends at len(input),
    with or without include_last_offset (docs/spec.md §2)."""
    if input.dim() == 2:
        b, length = input.shape
        return [list(range(i * length, (i + 1) * length)) for i in range(b)]
    n = input.numel()
    offs = [int(v) for v in offsets.tolist()]
    starts = offs[:-1] if include_last_offset else offs
    bags = []
    for i, s in enumerate(starts):
        e = starts[i + 1] if i + 1 < len(starts) else n
        bags.append(list(range(s, e)))
    return bags


def _pad_row(padding_idx, num_embeddings):
    return None if padding_idx is None else padding_idx % num_embeddings


def reference_renorm(weight, input, max_norm, norm_type=2.0) -> torch.Tensor:
    """The weight after max_norm (docs/spec.md §4), as a new tensor of weight's dtype (CPU)."""
    w = weight.detach().cpu().double().clone()
    for r in sorted(set(input.flatten().tolist())):
        norm = w[r].norm(p=norm_type)
        if norm > max_norm:
            w[r] *= max_norm / (norm + 1e-7)
    return w.to(weight.dtype)


def _bag_entries(input, offsets, include_last_offset, padding_idx, num_embeddings):
    """For each bag: list of (position, row) of its non-padding entries."""
    flat = input.flatten().cpu().tolist()
    pad = _pad_row(padding_idx, num_embeddings)
    out = []
    for positions in bag_positions(input.cpu(), None if offsets is None else offsets.cpu(),
                                   include_last_offset):
        out.append([(p, flat[p]) for p in positions if flat[p] != pad])
    return out


def _flat64(t):
    return None if t is None else t.detach().cpu().double().flatten()


def _max_winners(w64, rows):
    """Per feature, the index into ``rows`` of the first maximal value (NaN wins: the first NaN)."""
    vals = w64[rows]  # (k, D)
    nan = torch.isnan(vals)
    best = vals.max(0).values  # NaN-propagating
    is_best = (vals == best[None]) | (nan & torch.isnan(best)[None])
    return is_best.to(torch.int64).argmax(0)  # first maximal


def reference_embedding_bag(input, weight, offsets=None, mode="mean", per_sample_weights=None,
                            include_last_offset=False, padding_idx=None) -> torch.Tensor:
    """Forward per docs/spec.md §2-§3, in float64, returned in weight's dtype on the CPU."""
    num, dim = weight.shape
    w64 = weight.detach().cpu().double()
    psw = _flat64(per_sample_weights)
    bags = _bag_entries(input, offsets, include_last_offset, padding_idx, num)
    out = torch.zeros(len(bags), dim, dtype=torch.float64)
    for b, entries in enumerate(bags):
        if not entries:
            continue
        positions = [p for p, _ in entries]
        rows = [r for _, r in entries]
        vals = w64[rows]
        if mode == "sum":
            if psw is not None:
                vals = vals * psw[positions][:, None]
            out[b] = vals.sum(0)
        elif mode == "mean":
            out[b] = vals.sum(0) / len(rows)
        elif mode == "max":
            out[b] = vals.max(0).values  # NaN anywhere -> NaN (docs/spec.md §3)
        else:
            raise ValueError(mode)
    return out.to(weight.dtype)


def reference_weight_grad(grad_output, input, weight, offsets=None, mode="mean",
                          per_sample_weights=None, include_last_offset=False, padding_idx=None,
                          scale_grad_by_freq=False) -> torch.Tensor:
    """Dense gradient w.r.t. weight per docs/spec.md §5, float64 (num_embeddings, D) on the CPU.
    ``weight`` is the weight the forward used (after any renorm); max mode needs it."""
    num, dim = weight.shape
    w64 = weight.detach().cpu().double()
    g64 = grad_output.detach().cpu().double()
    psw = _flat64(per_sample_weights)
    bags = _bag_entries(input, offsets, include_last_offset, padding_idx, num)
    grad = torch.zeros(num, dim, dtype=torch.float64)
    for b, entries in enumerate(bags):
        if not entries:
            continue
        if mode == "max":
            rows = torch.tensor([r for _, r in entries])
            winners = _max_winners(w64, rows)  # (D,) positions in the bag
            grad.index_put_((rows[winners], torch.arange(dim)), g64[b], accumulate=True)
            continue
        for p, r in entries:
            if mode == "sum":
                grad[r] += g64[b] * (1.0 if psw is None else psw[p])
            else:
                grad[r] += g64[b] / len(entries)
    if scale_grad_by_freq:
        counts = torch.bincount(input.flatten().cpu().to(torch.int64), minlength=num).double()
        grad = grad / counts.clamp(min=1)[:, None]
    return grad


def reference_psw_grad(
    grad_output, input, weight, offsets=None, include_last_offset=False, padding_idx=None
) -> torch.Tensor:
    """Gradient w.r.t. per_sample_weights (sum mode), float64, shaped like input, on the CPU."""
    num = weight.shape[0]
    w64 = weight.detach().cpu().double()
    g64 = grad_output.detach().cpu().double()
    grad = torch.zeros(input.numel(), dtype=torch.float64)
    for b, entries in enumerate(
        _bag_entries(input, offsets, include_last_offset, padding_idx, num)
    ):
        for p, r in entries:
            grad[p] = torch.dot(g64[b], w64[r])
    return grad.reshape(input.shape)


def non_padding_count(input, offsets, include_last_offset, padding_idx, num_embeddings) -> int:
    return sum(len(e) for e in _bag_entries(input, offsets, include_last_offset, padding_idx,
                                            num_embeddings))


# ---------------------------------------------------------------------------------------------
# Running a case through mybag or torch


@dataclasses.dataclass
class Result:
    output: torch.Tensor
    weight: torch.Tensor  # the weight after the call (renormed by max_norm)
    weight_grad: torch.Tensor | None
    psw_grad: torch.Tensor | None


def run_embedding_bag(
    fn,
    case: Case,
    grad_output=None,
    weight=None,
    upcast: torch.dtype | None = None,
    **extra,
) -> Result:
    """Calls ``fn`` (mybag.embedding_bag or F.embedding_bag) on fresh leaf copies of the case's
    weight and per_sample_weights and, when ``grad_output`` is given, back-propagates it.
    ``upcast``: run on copies converted to that dtype (results stay in it). ``extra``: more
    keyword arguments (max_norm, norm_type, scale_grad_by_freq, sparse)."""
    w = (case.weight if weight is None else weight).detach().clone()
    psw = case.per_sample_weights
    psw = None if psw is None else psw.detach().clone()
    if upcast is not None:
        w = w.to(upcast)
        psw = None if psw is None else psw.to(upcast)
    w.requires_grad_(grad_output is not None)
    if psw is not None:
        psw.requires_grad_(grad_output is not None)
    kwargs = case.kwargs()
    kwargs["per_sample_weights"] = psw
    kwargs.update(extra)
    out = fn(case.input, w, case.offsets, **kwargs)
    if grad_output is not None:
        go = grad_output if upcast is None else grad_output.to(upcast)
        out.backward(go)
    return Result(
        output=out.detach(),
        weight=w.detach(),
        weight_grad=None if grad_output is None else w.grad,
        psw_grad=None if psw is None or grad_output is None else psw.grad,
    )


def run_mybag(case: Case, grad_output=None, **extra) -> Result:
    return run_embedding_bag(mybag.embedding_bag, case, grad_output, **extra)


def run_torch(case: Case, grad_output=None, **extra) -> Result:
    return run_embedding_bag(F.embedding_bag, case, grad_output, **extra)


def dense(grad: torch.Tensor) -> torch.Tensor:
    """The dense form of a (possibly sparse, possibly uncoalesced) gradient."""
    return grad.coalesce().to_dense() if grad.is_sparse else grad
