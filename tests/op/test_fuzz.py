"""Differential fuzzing of mybag.embedding_bag (hypothesis).

Every example draws a random call (shape, mode, weight dtype, index dtypes, 1-D input with
offsets holding empty and long bags or 2-D input, include_last_offset, padding_idx,
per_sample_weights, max_norm/norm_type, scale_grad_by_freq, sparse, weight values with or without
ties) and checks forward, the weight gradient and the per_sample_weights gradient:

- always against the hand-computed reference in conftest.py (float64, one bag at a time);
- against torch.nn.functional.embedding_bag wherever docs/spec.md says torch is right (not: CPU
  scale_grad_by_freq gradients, torch#190063; sparse + scale_grad_by_freq, which torch rejects;
  include_last_offset with offsets[-1] != len(input); NaN in max mode; ties in max mode);
- against itself: a second identical call gives the same bits (docs/spec.md §5, determinism).

Budget: the "ci" profile (default) runs a bounded, derandomized number of examples, so CI is
reproducible. A long campaign (docs/reliability.md):

    MYBAG_FUZZ_PROFILE=campaign MYBAG_FUZZ_EXAMPLES=100000 python -m pytest tests/op/test_fuzz.py

The campaign profile is randomized and keeps hypothesis' example database (.hypothesis/), so a
failure found once is replayed first on the next run.
"""

from __future__ import annotations

import math
import os

import mybag
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    Case,
    assert_close,
    bag_positions,
    dense,
    reference_embedding_bag,
    reference_psw_grad,
    reference_renorm,
    reference_weight_grad,
    run_embedding_bag,
)
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st

# ---------------------------------------------------------------------------------------------
# Profiles (registered here, applied per test: loading one globally would change other files).

_SUPPRESS = [
    HealthCheck.function_scoped_fixture,  # `device` is a parametrization, not per-example state
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
]


def _examples(default: int) -> int:
    return int(os.environ.get("MYBAG_FUZZ_EXAMPLES", default))


settings.register_profile(
    "ci",
    max_examples=_examples(600),
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,
    suppress_health_check=_SUPPRESS,
    print_blob=True,
)
settings.register_profile(
    "campaign",
    max_examples=_examples(100_000),
    deadline=None,
    derandomize=False,
    suppress_health_check=_SUPPRESS,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
PROFILE = os.environ.get("MYBAG_FUZZ_PROFILE", "ci")


def fuzz_settings(scale: float = 1.0):
    """The selected profile; ``scale`` shrinks the ci budget for the slower tests."""
    base = settings.get_profile(PROFILE)
    if PROFILE == "ci" and "MYBAG_FUZZ_EXAMPLES" not in os.environ:
        return settings(base, max_examples=max(10, int(base.max_examples * scale)))
    return settings(base)


FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
MODE_INT = {"sum": 0, "mean": 1, "max": 2}
# Tolerance multipliers against torch (see test_parity.py: torch's half paths round more often).
TORCH_SCALE = {torch.float64: 1.0, torch.float32: 1.0, torch.float16: 2.0, torch.bfloat16: 2.0}
GRAD_SCALE = {torch.float64: 1.0, torch.float32: 1.0, torch.float16: 4.0, torch.bfloat16: 4.0}


# ---------------------------------------------------------------------------------------------
# The strategy


@st.composite
def calls(draw, device="cpu", allow_nan=False):
    """A random valid call: (Case, extra kwargs, description of what torch can be compared on)."""
    dtype = draw(st.sampled_from(FLOATS))
    mode = draw(st.sampled_from(["sum", "mean", "max"]))
    num = draw(st.one_of(st.integers(1, 12), st.integers(13, 400)))
    dim = draw(st.one_of(st.integers(1, 9), st.sampled_from([0, 16, 33, 64, 130])))
    input_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    offsets_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    form = draw(st.sampled_from(["1d", "1d", "2d"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)

    # Weight values: gaussian, or small integers (many ties, which matter in max mode).
    values = draw(st.sampled_from(["randn", "randn", "ties"]))
    if values == "randn":
        w = torch.randn(num, dim, generator=g, dtype=torch.float64)
    else:
        w = torch.randint(-3, 4, (num, dim), generator=g).double()
    w = w.to(dtype)
    if allow_nan and dim > 0 and draw(st.booleans()):
        k = draw(st.integers(1, 3))
        rows = torch.randint(0, num, (k,), generator=g)
        cols = torch.randint(0, dim, (k,), generator=g)
        w[rows, cols] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))

    # Bags: small ones, empty ones and now and then a long one.
    include_last_offset = False
    last_offset_short = False
    if form == "1d":
        sizes = draw(st.lists(
            st.one_of(st.integers(0, 4), st.just(0), st.integers(50, 300)), min_size=0,
            max_size=12))
        # Long bags are rare: at most one per example keeps the reference fast.
        seen_long = False
        for i, s in enumerate(sizes):
            if s >= 50:
                if seen_long:
                    sizes[i] = s % 5
                seen_long = True
        n = sum(sizes)
        starts = [0]
        for s in sizes[:-1]:
            starts.append(starts[-1] + s)
        if not sizes:
            starts = []
        include_last_offset = draw(st.booleans())
        if include_last_offset:
            # docs/spec.md §2: the last bag ends at len(input) whatever offsets[-1] says (torch
            # CPU reads offsets[-1]; only offsets[-1] == len(input) is comparable with torch).
            last = n
            if sizes and draw(st.integers(0, 4)) == 0:
                last = draw(st.integers(starts[-1], n))
                last_offset_short = last != n
            offsets = torch.tensor(starts + [last], dtype=torch.int64)
            if not sizes:
                offsets = torch.tensor([0], dtype=torch.int64)
        else:
            offsets = torch.tensor(starts, dtype=torch.int64)
        inp = torch.randint(0, num, (n,), generator=g)
    else:
        b = draw(st.integers(0, 7))
        length = draw(st.integers(0, 9))
        inp = torch.randint(0, num, (b, length), generator=g)
        offsets = None
        include_last_offset = draw(st.booleans())  # ignored for 2-D input (docs/spec.md §2)

    # Frequently repeated rows (scale_grad_by_freq, max ties, gradient accumulation).
    if inp.numel() and draw(st.booleans()):
        hot = torch.randint(0, num, (3,), generator=g)
        pick = torch.randint(0, 3, inp.shape, generator=g)
        mask = torch.rand(inp.shape, generator=g) < 0.5
        inp = torch.where(mask, hot[pick], inp)

    padding_idx = None
    if draw(st.booleans()):
        padding_idx = draw(st.integers(-num, num - 1))
        row = padding_idx % num
        if inp.numel():
            mask = torch.rand(inp.shape, generator=g) < draw(st.sampled_from([0.2, 0.5, 1.0]))
            inp = torch.where(mask, torch.full_like(inp, row), inp)

    psw = None
    if mode == "sum" and draw(st.booleans()):
        psw = torch.randn(inp.shape, generator=g, dtype=torch.float64).to(dtype)

    extra = {}
    if mode != "max":
        extra["scale_grad_by_freq"] = draw(st.booleans())
        extra["sparse"] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        extra["max_norm"] = draw(st.sampled_from([0.5, 1.0, 2.5, 0.0]))
        extra["norm_type"] = draw(st.sampled_from([2.0, 1.0, math.inf, 3.0]))

    case = Case(inp, offsets, w, psw, mode, include_last_offset, padding_idx).to(
        device, input_dtype, offsets_dtype)
    flags = {"values": values, "last_offset_short": last_offset_short, "seed": seed}
    return case, extra, flags


# Examples run per test (printed with -s; the figures in docs/reliability.md come from here).
COUNTS: dict = {}


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


def _report(name: str) -> None:
    print(f"\n[fuzz] {name}: {COUNTS.get(name, 0)} examples (profile {PROFILE})")


def describe(case: Case, extra: dict) -> str:
    return case.describe() + f" extra={extra}"


# ---------------------------------------------------------------------------------------------
# Checks


def _acc_scale(case: Case) -> float:
    """Tolerance multiplier for long sums: a bag of k entries (forward) or a row hit k times
    (backward) adds k float32 terms, whose rounding error grows with k (torch's too); 1 for
    short bags. A wrong row or a dropped entry is still off by O(1)."""
    if case.input.numel() == 0:
        return 1.0
    rows = int(torch.bincount(case.input.flatten().cpu().long()).max())
    bags = bag_positions(case.input.cpu(), None if case.offsets is None else case.offsets.cpu(),
                         case.include_last_offset)
    longest = max((len(b) for b in bags), default=0)
    return 1.0 + max(rows, longest) / 16.0


def dense64(grad: torch.Tensor) -> torch.Tensor:
    """The dense form of a gradient, summed in float64: a half sparse gradient's entries would
    otherwise be added up (by torch's coalesce) in half."""
    grad = grad.double()
    return grad.coalesce().to_dense() if grad.is_sparse else grad


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = dense(t) if t.is_sparse else t
    return t.detach().contiguous().view(torch.uint8) if t.numel() else t


def check_call(case: Case, extra: dict, flags: dict, device: str, against_torch=True):
    dtype = case.weight.dtype
    msg = describe(case, extra)
    try:
        note(msg)
    except Exception:  # noqa: BLE001, S110  (called outside hypothesis: the regression tests)
        pass
    g = torch.Generator().manual_seed(flags["seed"] + 1)
    num_bags = len(reference_embedding_bag(case.input, case.weight, case.offsets, **case.kwargs()))
    grad_output = torch.randn(num_bags, case.weight.shape[1], generator=g,
                              dtype=torch.float64).to(dtype).to(device)

    mine = run_embedding_bag(mybag.embedding_bag, case, grad_output, **extra)
    again = run_embedding_bag(mybag.embedding_bag, case, grad_output, **extra)
    if device == "cuda":
        torch.cuda.synchronize()

    # Determinism: bit-identical results from two identical calls.
    assert torch.equal(_bits(mine.output), _bits(again.output)), msg
    assert torch.equal(_bits(mine.weight_grad), _bits(again.weight_grad)), msg
    if mine.psw_grad is not None:
        assert torch.equal(_bits(mine.psw_grad), _bits(again.psw_grad)), msg

    # The input's weight is never written (run_embedding_bag works on a clone).
    sparse = extra.get("sparse", False)
    assert mine.weight_grad.is_sparse == sparse, msg
    assert mine.output.shape == (num_bags, case.weight.shape[1]), msg
    assert mine.output.dtype == dtype and mine.output.device.type == device, msg

    # Reference (conftest.py): the weight the forward used is mine.weight (renormed under max_norm).
    if "max_norm" in extra and case.weight.shape[1] == 0:
        assert mine.weight.shape == case.weight.shape, msg  # nothing to scale
    elif "max_norm" in extra:
        expected_w = reference_renorm(case.weight, case.input, extra["max_norm"],
                                      extra["norm_type"])
        assert_close(mine.weight, expected_w, scale=2.0, msg=msg + " [renormed weight]")
    expected = reference_embedding_bag(case.input, mine.weight, case.offsets, **case.kwargs())
    assert_close(mine.output, expected, scale=_acc_scale(case), msg=msg + " [output]")
    expected_grad = reference_weight_grad(
        grad_output, case.input, mine.weight, case.offsets, mode=case.mode,
        per_sample_weights=case.per_sample_weights, include_last_offset=case.include_last_offset,
        padding_idx=case.padding_idx, scale_grad_by_freq=extra.get("scale_grad_by_freq", False))
    assert_close(dense64(mine.weight_grad), expected_grad.to(dtype).double(),
                 dtype=dtype, scale=GRAD_SCALE[dtype] * _acc_scale(case),
                 msg=msg + " [weight grad]")
    if case.per_sample_weights is not None:
        expected_psw = reference_psw_grad(grad_output, case.input, mine.weight, case.offsets,
                                          case.include_last_offset, case.padding_idx)
        assert_close(mine.psw_grad, expected_psw.to(dtype), scale=GRAD_SCALE[dtype],
                     msg=msg + " [psw grad]")

    if not against_torch:
        return
    # torch, where docs/spec.md says it is right.
    if flags["last_offset_short"]:
        return
    if case.weight.shape[1] == 0:
        # torch fails on a (R, 0) table ("Expected i < index_size" internal assert on the CPU,
        # "cannot compute the inf norm on an empty tensor" with max_norm); mybag gives (B, 0).
        return
    if case.input.dim() == 2 and case.input.shape[1] == 0:
        return  # torch rejects or differs on (B, 0) inputs (see test_parity.py)
    if case.input.dim() == 1 and num_bags == 0 and case.input.numel() > 0:
        return
    if case.mode == "max" and flags["values"] == "ties" and case.weight.shape[1] > 0:
        compare_grad = False  # torch's tie-breaking in max mode is not specified
    else:
        compare_grad = True
    if extra.get("sparse") and extra.get("scale_grad_by_freq"):
        return  # torch rejects the pair (docs/spec.md §5)
    if extra.get("scale_grad_by_freq") and device == "cpu":
        compare_grad = False  # torch#190063
    theirs = run_embedding_bag(F.embedding_bag, case, grad_output, **extra)
    assert_close(mine.weight, theirs.weight, scale=TORCH_SCALE[dtype],
                 msg=msg + " [weight after vs torch]")
    ref = theirs
    if dtype in (torch.float16, torch.bfloat16):
        # torch's half paths accumulate in half (a long bag loses digits): compare with torch run
        # in float32 on the weight mybag used (already renormed, so without max_norm).
        no_renorm = {k: v for k, v in extra.items() if k not in ("max_norm", "norm_type")}
        ref = run_embedding_bag(F.embedding_bag, case, grad_output, weight=mine.weight,
                                upcast=torch.float32, **no_renorm)
    assert_close(mine.output, ref.output.to(dtype), scale=TORCH_SCALE[dtype] * _acc_scale(case),
                 msg=msg + " [output vs torch]")
    if compare_grad:
        assert_close(dense64(mine.weight_grad), dense64(ref.weight_grad).to(dtype).double(),
                     dtype=dtype, scale=GRAD_SCALE[dtype] * _acc_scale(case),
                     msg=msg + " [weight grad vs torch]")
        if case.per_sample_weights is not None:
            assert_close(mine.psw_grad, ref.psw_grad.to(dtype), scale=GRAD_SCALE[dtype],
                         msg=msg + " [psw grad vs torch]")


# ---------------------------------------------------------------------------------------------
# The fuzz tests


def test_fuzz_against_torch_and_reference(device):
    @fuzz_settings(1.0)
    @given(call=calls(device=device))
    def run(call):
        _count(f"against_torch[{device}]")
        case, extra, flags = call
        check_call(case, extra, flags, device)

    run()
    _report(f"against_torch[{device}]")


def test_fuzz_nan_and_inf_weights_against_reference(device):
    # NaN and +-inf in the table: compared with the reference only (torch keeps a NaN in
    # max mode only when it comes first in the bag).
    @fuzz_settings(0.25)
    @given(call=calls(device=device, allow_nan=True))
    def run(call):
        case, extra, flags = call
        _count(f"nan_inf[{device}]")
        check_call(case, extra, flags, device, against_torch=False)

    run()
    _report(f"nan_inf[{device}]")


def test_fuzz_public_op_equals_internal_ops(device):
    # The public op is a composite of the internal ones: calling those directly (forward, dense
    # and per-entry backward, per_sample_weights backward) gives the same bits.
    @fuzz_settings(0.25)
    @given(call=calls(device=device))
    def run(call):
        case, extra, flags = call
        assume("max_norm" not in extra)
        _count(f"internal_ops[{device}]")
        inp, offs = case.input, case.offsets
        if offs is not None and offs.dtype != inp.dtype:
            inp, offs = inp.long(), offs.long()
        mode = MODE_INT[case.mode]
        ilo = case.include_last_offset if inp.dim() == 1 else False
        sgf = extra.get("scale_grad_by_freq", False)
        out, max_idx = torch.ops.mybag._embedding_bag_forward(
            case.weight, inp, offs, case.per_sample_weights, mode, case.padding_idx, ilo, sgf,
            False)
        public = mybag.embedding_bag(case.input, case.weight, case.offsets, **case.kwargs(),
                                     scale_grad_by_freq=sgf)
        assert torch.equal(_bits(out), _bits(public)), describe(case, extra)
        g = torch.Generator().manual_seed(flags["seed"] + 2)
        grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(device)
        num = case.weight.shape[0]
        dense_grad = torch.ops.mybag._embedding_bag_dense_backward(
            grad, inp, offs, case.per_sample_weights, max_idx, num, mode, case.padding_idx, ilo,
            sgf)
        expected = reference_weight_grad(grad, case.input, case.weight, case.offsets,
                                         mode=case.mode, per_sample_weights=case.per_sample_weights,
                                         include_last_offset=case.include_last_offset,
                                         padding_idx=case.padding_idx, scale_grad_by_freq=sgf)
        dtype = case.weight.dtype
        assert_close(dense_grad, expected.to(dtype), scale=GRAD_SCALE[dtype] * _acc_scale(case),
                     msg=describe(case, extra))
        if case.mode != "max":
            per_entry = torch.ops.mybag._embedding_bag_per_entry_grad(
                grad, inp, offs, case.per_sample_weights, num, mode, case.padding_idx, ilo, sgf)
            assert per_entry.shape == (inp.numel(), case.weight.shape[1])
            rows = inp.reshape(-1).long()
            summed = torch.zeros(num, case.weight.shape[1], dtype=torch.float64, device=device)
            summed.index_add_(0, rows, per_entry.double())
            assert_close(summed.to(dtype), expected.to(dtype),
                         scale=GRAD_SCALE[dtype] * 2 * _acc_scale(case),
                         msg=describe(case, extra) + " [per-entry]")
        if case.mode == "sum":
            psw_grad = torch.ops.mybag._embedding_bag_per_sample_weights_backward(
                grad, case.weight, inp, offs, mode, case.padding_idx, ilo)
            expected_psw = reference_psw_grad(grad, case.input, case.weight, case.offsets,
                                              case.include_last_offset, case.padding_idx)
            assert_close(psw_grad, expected_psw.to(dtype), scale=GRAD_SCALE[dtype],
                         msg=describe(case, extra) + " [psw]")

    run()
    _report(f"internal_ops[{device}]")


def test_fuzz_strided_weight_and_indices(device):
    # Non-contiguous weight (a transposed or column-sliced view) and non-contiguous input and
    # offsets (every other element of a larger tensor): the same results as contiguous copies.
    @fuzz_settings(0.25)
    @given(call=calls(device=device), layout=st.sampled_from(["transpose", "slice"]),
           step=st.integers(2, 3))
    def run(call, layout, step):
        case, extra, _ = call
        assume("max_norm" not in extra)
        _count(f"strided[{device}]")
        w = case.weight
        if layout == "transpose":
            strided_w = w.t().contiguous().t()
        else:
            wide = torch.zeros(w.shape[0], w.shape[1] * step, dtype=w.dtype, device=device)
            wide[:, ::step] = w
            strided_w = wide[:, ::step]
        assert torch.equal(strided_w, w)

        def spread(t):
            if t is None:
                return None
            big = torch.zeros((t.shape[0] * step,) + tuple(t.shape[1:]), dtype=t.dtype,
                              device=device)
            big[::step] = t
            return big[::step]

        inp = spread(case.input)
        offs = spread(case.offsets)
        psw = spread(case.per_sample_weights)
        kwargs = case.kwargs()
        kwargs["per_sample_weights"] = psw
        strided = mybag.embedding_bag(inp, strided_w, offs, **kwargs)
        plain = mybag.embedding_bag(case.input, w, case.offsets, **case.kwargs())
        assert torch.equal(_bits(strided), _bits(plain)), describe(case, extra) + f" {layout}"

    run()
    _report(f"strided[{device}]")


# ---------------------------------------------------------------------------------------------
# Regression tests: one per bug the fuzzer found (docs/reliability.md), and fixed examples of the
# edges the strategy aims for, so that they run on every CI run whatever the profile draws.


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_long_bag_between_empty_bags(device, mode):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(50, 7, generator=g, dtype=torch.float64).to(device)
    inp = torch.randint(0, 50, (1000,), generator=g).to(device)
    offs = torch.tensor([0, 0, 0, 1000, 1000], device=device)
    case = Case(inp, offs, w, None, mode=mode)
    check_call(case, {}, {"values": "randn", "last_offset_short": False, "seed": 3}, device)


def test_sparse_scale_grad_by_freq_all_padding_bag(device):
    w = torch.randn(6, 3, dtype=torch.float64, device=device)
    inp = torch.tensor([2, 2, 5, 5, 1, 2], device=device)
    offs = torch.tensor([0, 2, 4], device=device)
    case = Case(inp, offs, w, None, mode="mean", padding_idx=-1)
    check_call(case, {"sparse": True, "scale_grad_by_freq": True},
               {"values": "randn", "last_offset_short": False, "seed": 5}, device)


@pytest.mark.parametrize("norm_type", [math.inf, -math.inf])
def test_renorm_inf_norm_with_nan_row_is_left_alone(device, norm_type):
    # Regression: found by test_fuzz_nan_and_inf_weights_against_reference in bf668a5, where
    # max_norm with norm_type=+-inf ignored a NaN in the row (std::max/std::min drop NaN) and
    # scaled [1.541, nan] to [0.5, nan]. torch (and docs/spec.md §4: only a row whose norm
    # *exceeds* max_norm is scaled; NaN exceeds nothing) leaves it as it is. Fixed by 13a25f1
    # (row_norm.h: a NaN wins the +-inf norm).
    w = torch.tensor([[1.541, math.nan], [3.0, 4.0]], device=device)
    theirs = w.clone()
    mybag.embedding_bag(torch.tensor([0, 1], device=device), w, torch.tensor([0], device=device),
                        max_norm=0.5, norm_type=norm_type, mode="sum")
    F.embedding_bag(torch.tensor([0, 1], device=device), theirs, torch.tensor([0], device=device),
                    max_norm=0.5, norm_type=norm_type, mode="sum")
    assert theirs[0, 0].item() == pytest.approx(1.541)
    torch.testing.assert_close(w, theirs, equal_nan=True)
