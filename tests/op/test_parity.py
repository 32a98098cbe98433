"""Forward and backward parity of mybag.embedding_bag with torch.nn.functional.embedding_bag and
with the reference in conftest.py (written from docs/spec.md).

Where mybag deliberately differs from torch (include_last_offset with offsets[-1] < len(input),
NaN in max mode, 2-D input with no columns, zero bags with a non-empty input) the tests compare
with the hand-computed reference only.
"""

import inspect
import itertools
import random
import zlib

import mybag
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    INDEX_DTYPES,
    MODES,
    Case,
    assert_close,
    dense,
    make_case,
    non_padding_count,
    random_grad,
    reference_embedding_bag,
    reference_psw_grad,
    reference_renorm,
    reference_weight_grad,
    requires_cuda,
    run_mybag,
    run_torch,
)

# Outputs of half types may differ from torch's by a rounding more (torch's own accumulation
# order), so those comparisons get twice the tolerance. Gradients of half types sum several
# rounded products (torch rounds every one to half), so they get four times the tolerance, and
# are compared with torch run on a float32 copy (torch's half backward loses more than that).
TORCH_SCALE = {torch.float64: 1.0, torch.float32: 1.0, torch.float16: 2.0, torch.bfloat16: 2.0}
GRAD_SCALE = {torch.float64: 1.0, torch.float32: 1.0, torch.float16: 4.0, torch.bfloat16: 4.0}


def check_against_reference(case: Case, result, grad_output, msg, scale_grad_by_freq=False):
    """Output, weight gradient (dense form) and per_sample_weights gradient against conftest's
    reference, for the weight the call used (``result.weight``, renormed if max_norm was set)."""
    dtype = case.weight.dtype
    expected = reference_embedding_bag(case.input, result.weight, case.offsets, **case.kwargs())
    assert result.output.shape == expected.shape, msg
    assert_close(result.output, expected, msg=msg)
    if grad_output is None:
        return
    expected_grad = reference_weight_grad(
        grad_output,
        case.input,
        result.weight,
        case.offsets,
        scale_grad_by_freq=scale_grad_by_freq,
        **case.kwargs(),
    )
    weight_grad = result.weight_grad
    assert weight_grad is not None, msg
    assert weight_grad.shape == case.weight.shape, msg
    if weight_grad.is_sparse:
        weight_grad = weight_grad.coalesce().to_dense()
    assert_close(weight_grad, expected_grad.to(dtype), scale=GRAD_SCALE[dtype],
                 msg=msg + " [weight grad]")
    if case.per_sample_weights is not None:
        expected_psw = reference_psw_grad(
            grad_output,
            case.input,
            result.weight,
            case.offsets,
            case.include_last_offset,
            case.padding_idx,
        )
        assert result.psw_grad is not None, msg
        assert result.psw_grad.shape == case.per_sample_weights.shape, msg
        assert_close(result.psw_grad, expected_psw.to(dtype), scale=GRAD_SCALE[dtype],
                     msg=msg + " [psw grad]")


def check_against_torch(mine, theirs, dtype, msg, theirs_upcast=None):
    """mybag's Result against torch's on the same inputs; ``theirs_upcast``: torch's Result on
    float32 copies, which the gradients of half types are compared with instead."""
    scale = TORCH_SCALE[dtype]
    assert_close(mine.output, theirs.output, scale=scale, msg=msg)
    assert_close(mine.weight, theirs.weight, scale=scale, msg=msg + " [weight after]")
    grads = theirs if theirs_upcast is None else theirs_upcast
    scale = GRAD_SCALE[dtype]
    if grads.weight_grad is not None:
        mg, tg = mine.weight_grad, grads.weight_grad.to(dtype)
        assert mg.is_sparse == tg.is_sparse, msg
        if tg.is_sparse:
            mg, tg = mg.coalesce().to_dense(), tg.coalesce().to_dense()
        assert_close(mg, tg, scale=scale, msg=msg + " [weight grad]")
    if grads.psw_grad is not None:
        assert_close(mine.psw_grad, grads.psw_grad.to(dtype), scale=scale,
                     msg=msg + " [psw grad]")


def run_torch_checked(case, grad_output, **extra):
    """torch's Result and, for half types, torch's Result on float32 copies (for gradients)."""
    theirs = run_torch(case, grad_output, **extra)
    upcast = None
    if case.weight.dtype in HALF_DTYPES and grad_output is not None:
        upcast = run_torch(case, grad_output, upcast=torch.float32, **extra)
    return theirs, upcast


# ---------------------------------------------------------------------------------------------
# The API itself


def test_signature_matches_torch():
    mine = inspect.signature(mybag.embedding_bag).parameters
    theirs = inspect.signature(F.embedding_bag).parameters
    assert list(mine) == list(theirs)
    for name in theirs:
        assert mine[name].default == theirs[name].default, name


def test_default_mode_is_mean():
    case = make_case(mode="mean", seed=3)
    expected = F.embedding_bag(case.input, case.weight, case.offsets)
    assert_close(mybag.embedding_bag(case.input, case.weight, case.offsets), expected)
    assert_close(torch.ops.mybag.embedding_bag(case.input, case.weight, case.offsets), expected)


def test_op_and_function_agree_with_keywords():
    case = make_case(mode="sum", psw=True, padding_idx=2, include_last_offset=True, seed=4)
    kwargs = case.kwargs()
    a = mybag.embedding_bag(case.input, case.weight, case.offsets, **kwargs)
    b = torch.ops.mybag.embedding_bag(case.input, case.weight, case.offsets, **kwargs)
    c = F.embedding_bag(case.input, case.weight, case.offsets, **kwargs)
    assert torch.equal(a, b)
    assert_close(a, c)


# ---------------------------------------------------------------------------------------------
# Seed examples (the original issue)

# The 6 x 3 table (python -m mybag prints the same examples).
SEED_WEIGHT = [[0.1, 0.2, 0.3], [0.0, 0.1, 0.0], [0.4, 0.0, 0.5],
               [0.2, 0.3, 0.1], [0.7, 0.9, 0.8], [0, 0, 0]]
SEED_EXPECTED = [[0.2000, 0.0500, 0.2500], [0.3333, 0.4667, 0.4000]]


def test_seed_example_1d():
    weight = torch.tensor(SEED_WEIGHT)
    input, offsets = torch.tensor([1, 2, 0, 3, 4]), torch.tensor([0, 2])
    out = torch.ops.mybag.embedding_bag(input, weight, offsets, mode="mean")
    torch.testing.assert_close(out, F.embedding_bag(input, weight, offsets, mode="mean"))
    torch.testing.assert_close(out, torch.tensor(SEED_EXPECTED), atol=1e-4, rtol=0)


def test_seed_example_2d_padding():
    weight = torch.tensor(SEED_WEIGHT)
    input = torch.tensor([[1, 2, 5], [0, 3, 4]])
    out = torch.ops.mybag.embedding_bag(input, weight, mode="mean", padding_idx=5)
    torch.testing.assert_close(out, F.embedding_bag(input, weight, mode="mean", padding_idx=5))
    torch.testing.assert_close(out, torch.tensor(SEED_EXPECTED), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# The parity grid: forward, weight gradient and per_sample_weights gradient, against torch and
# against the reference.

MODE_PSW = [("sum", False), ("sum", True), ("mean", False), ("max", False)]
# max mode rejects sparse=True (a ValueError, tested in test_gradients.py): never generated.
MODE_SPARSE = [("sum", False), ("sum", True), ("mean", False), ("mean", True), ("max", False)]
MODE_PSW_SPARSE = [(m, p, sp) for (m, p) in MODE_PSW for sp in (False, True)
                   if not (m == "max" and sp)]
PADDINGS = {"nopad": None, "pad3": 3, "pad-2": -2}
DIMS = [1, 3, 16, 33]


def _grid():
    rng = random.Random(20240611)
    params = []
    axes = itertools.product(
        MODE_PSW,
        ["1d", "2d"],
        [False, True],
        PADDINGS.items(),
        FLOAT_DTYPES,
        INDEX_DTYPES.items(),
        [False, True],
    )
    for i, ((mode, psw), form, ilo, (pad_name, pad), dtype, (idx_name, idx), empty) in enumerate(
        axes
    ):
        dim = rng.choice(DIMS)
        num_bags = rng.choice([1, 3, 6])
        num_embeddings = rng.choice([20, 35, 50])
        ident = (
            f"{mode}{'-psw' if psw else ''}-{form}-{'ilo' if ilo else 'noilo'}-{pad_name}-"
            f"{str(dtype)[6:]}-{idx_name}-{'empty' if empty else 'full'}-D{dim}-B{num_bags}"
        )
        params.append(
            pytest.param(
                mode, psw, form, ilo, pad, dtype, idx, empty, dim, num_bags, num_embeddings, i,
                id=ident,
            )
        )
    return params


@pytest.mark.parametrize(
    "mode,psw,form,ilo,padding_idx,dtype,index_dtypes,empty,dim,num_bags,num_embeddings,seed",
    _grid(),
)
def test_parity_grid(
    device, mode, psw, form, ilo, padding_idx, dtype, index_dtypes, empty, dim, num_bags,
    num_embeddings, seed,
):
    case = make_case(
        mode=mode,
        form=form,
        include_last_offset=ilo,
        padding_idx=padding_idx,
        psw=psw,
        dtype=dtype,
        index_dtypes=index_dtypes,
        empty_bags=empty,
        num_embeddings=num_embeddings,
        dim=dim,
        num_bags=num_bags,
        seed=seed,
        device=device,
    )
    msg = case.describe()
    grad_output = random_grad((case.num_bags, dim), dtype, device, seed=seed + 1)
    mine = run_mybag(case, grad_output)
    theirs, theirs_upcast = run_torch_checked(case, grad_output)

    assert mine.output.shape == (case.num_bags, dim), msg
    assert mine.output.dtype == dtype and mine.output.device.type == device, msg
    assert mine.weight_grad.layout == torch.strided, msg
    assert mine.weight_grad.dtype == dtype, msg
    assert torch.equal(mine.weight, case.weight), "weight modified without max_norm: " + msg
    check_against_reference(case, mine, grad_output, msg)
    check_against_torch(mine, theirs, dtype, msg, theirs_upcast)


# ---------------------------------------------------------------------------------------------
# max_norm: the renormed weight, the output and the gradients, against torch and the reference.


def _renorm_case(mode, form, dtype, padding_idx, norm_type, device, seed):
    num_embeddings, dim = 30, 8
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_embeddings, dim, generator=g, dtype=torch.float64)
    w = w / w.norm(p=norm_type, dim=1, keepdim=True)
    # Norms well away from max_norm=1: some rows stay, some are scaled down.
    small = torch.rand(num_embeddings, 1, generator=g, dtype=torch.float64) * 0.4 + 0.2
    big = torch.rand(num_embeddings, 1, generator=g, dtype=torch.float64) * 3.5 + 1.5
    pick = torch.rand(num_embeddings, 1, generator=g) < 0.5
    w = w * torch.where(pick, small, big)
    # Only rows 0..19 are referenced; rows 20.. (all big) must stay untouched.
    w[20:] *= 4
    case = make_case(
        mode=mode,
        form=form,
        padding_idx=padding_idx,
        psw=mode == "sum",
        dtype=dtype,
        num_embeddings=20,
        dim=dim,
        num_bags=5,
        seed=seed,
        device=device,
    )
    case.weight = w.to(dtype).to(device)
    return case


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["1d", "2d"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("padding_idx", [None, 4])
@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.5])
def test_max_norm(device, mode, form, dtype, padding_idx, norm_type):
    seed = zlib.crc32(f"{mode}{form}{dtype}{padding_idx}{norm_type}".encode()) % 1000
    case = _renorm_case(mode, form, dtype, padding_idx, norm_type, device, seed)
    msg = case.describe() + f" max_norm=1 norm_type={norm_type}"
    original = case.weight.clone()
    grad_output = random_grad((case.num_bags, case.weight.shape[1]), dtype, device, seed=seed)
    mine = run_mybag(case, grad_output, max_norm=1.0, norm_type=norm_type)
    theirs = run_torch(case, grad_output, max_norm=1.0, norm_type=norm_type)
    theirs_upcast = None
    if dtype in HALF_DTYPES:
        # Gradients for the weight mybag renormed (a float32 renorm could break a tie of the
        # half values differently in max mode).
        theirs_upcast = run_torch(case, grad_output, weight=mine.weight, upcast=torch.float32)

    expected_weight = reference_renorm(original, case.input, 1.0, norm_type)
    assert_close(mine.weight, expected_weight, scale=2.0, msg=msg + " [renormed weight]")
    referenced = set(case.input.flatten().tolist())
    assert any(
        original[r].double().norm(p=norm_type) > 1.0 for r in referenced
    ), "the case must renorm something"
    untouched = [r for r in range(original.shape[0]) if r not in referenced]
    assert torch.equal(mine.weight[untouched], original[untouched]), msg
    check_against_reference(case, mine, grad_output, msg)
    check_against_torch(mine, theirs, dtype, msg, theirs_upcast)


def test_max_norm_renorms_referenced_padding_row():
    case = make_case(mode="sum", padding_idx=2, num_embeddings=10, dim=4, seed=5)
    case.weight = case.weight * 10
    assert 2 in case.input.tolist()
    mine = run_mybag(case, max_norm=1.0)
    theirs = run_torch(case, max_norm=1.0)
    assert_close(mine.weight, theirs.weight)
    torch.testing.assert_close(mine.weight[2].norm(), torch.tensor(1.0), rtol=1e-5, atol=1e-5)


def test_max_norm_in_place_on_the_given_tensor():
    case = make_case(mode="mean", num_embeddings=10, dim=4, seed=6)
    weight = case.weight * 10
    before = weight.clone()
    mybag.embedding_bag(case.input, weight, case.offsets, max_norm=1.0)
    assert_close(weight, reference_renorm(before, case.input, 1.0))
    assert not torch.equal(weight, before)


# ---------------------------------------------------------------------------------------------
# Where mybag differs from torch: compare with the reference only.


@pytest.mark.parametrize("mode,sparse", MODE_SPARSE)
def test_include_last_offset_last_bag_ends_at_len_input(device, mode, sparse):
    weight = torch.randn(10, 4, dtype=torch.float64, device=device)
    input = torch.tensor([1, 2, 3, 4, 5, 6, 7], device=device)
    offsets = torch.tensor([0, 2, 3], device=device)  # offsets[-1] = 3 < 7: bags [0:2], [2:7]
    case = Case(input, offsets, weight, None, mode=mode, include_last_offset=True)
    grad_output = random_grad((2, 4), torch.float64, device)
    mine = run_mybag(case, grad_output, sparse=sparse)
    assert mine.output.shape == (2, 4)
    expected_last = {
        "sum": weight[3:8].sum(0),
        "mean": weight[3:8].mean(0),
        "max": weight[3:8].max(0).values,
    }[mode]
    assert_close(mine.output[1], expected_last)
    check_against_reference(case, mine, grad_output, case.describe())


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("where", ["first", "middle", "last", "alone"])
def test_max_mode_nan_anywhere_gives_nan(device, dtype, where):
    weight = torch.randn(8, 3, dtype=torch.float64).to(dtype).to(device)
    weight[5, 1] = float("nan")
    bag0 = {"first": [5, 1, 2], "middle": [1, 5, 2], "last": [1, 2, 5], "alone": [5]}[where]
    input = torch.tensor(bag0 + [3, 4], device=device)
    offsets = torch.tensor([0, len(bag0)], device=device)
    out = mybag.embedding_bag(input, weight, offsets, mode="max")
    assert torch.isnan(out[0, 1]), out
    assert not torch.isnan(out[0, [0, 2]]).any(), out
    expected = reference_embedding_bag(input, weight, offsets, mode="max")
    assert_close(out, expected)


@pytest.mark.parametrize("mode", MODES)
def test_nan_in_padding_row_is_ignored(device, mode):
    weight = torch.randn(8, 3, device=device)
    weight[6] = float("nan")
    input = torch.tensor([1, 6, 2, 6, 3], device=device)
    offsets = torch.tensor([0, 3], device=device)
    out = mybag.embedding_bag(input, weight, offsets, mode=mode, padding_idx=6)
    assert not torch.isnan(out).any(), out
    assert_close(out, reference_embedding_bag(input, weight, offsets, mode=mode, padding_idx=6))


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_nan_propagates_in_sum_and_mean(device, mode):
    weight = torch.randn(8, 3, device=device)
    weight[4, 2] = float("nan")
    input = torch.tensor([1, 4, 2, 3], device=device)
    offsets = torch.tensor([0, 3], device=device)
    out = mybag.embedding_bag(input, weight, offsets, mode=mode)
    assert_close(out, F.embedding_bag(input, weight, offsets, mode=mode))
    assert torch.isnan(out[0, 2]) and not torch.isnan(out[1]).any()


# ---------------------------------------------------------------------------------------------
# Non-contiguous tensors


def _strided_weight(weight, kind):
    if kind == "transposed":
        out = weight.t().contiguous().t()
    elif kind == "row_step":
        big = torch.full((weight.shape[0] * 2, weight.shape[1]), 99.0, dtype=weight.dtype,
                         device=weight.device)
        big[::2] = weight
        out = big[::2]
    elif kind == "col_step":
        big = torch.full((weight.shape[0], weight.shape[1] * 2), 99.0, dtype=weight.dtype,
                         device=weight.device)
        big[:, 1::2] = weight
        out = big[:, 1::2]
    else:
        raise ValueError(kind)
    assert not out.is_contiguous() and torch.equal(out, weight)
    return out


def _strided_1d(x, filler):
    big = torch.empty(x.numel() * 2, dtype=x.dtype, device=x.device)
    big[::2] = x
    big[1::2] = filler
    out = big[::2]
    assert not out.is_contiguous() or x.numel() <= 1
    return out


@pytest.mark.parametrize("mode,psw,sparse", MODE_PSW_SPARSE)
@pytest.mark.parametrize("form", ["1d", "2d"])
@pytest.mark.parametrize("weight_kind", ["transposed", "row_step", "col_step"])
def test_non_contiguous(device, mode, psw, sparse, form, weight_kind):
    case = make_case(mode=mode, form=form, psw=psw, padding_idx=3, num_embeddings=12, dim=5,
                     num_bags=4, seed=7, device=device, include_last_offset=form == "1d")
    msg = case.describe() + f" weight={weight_kind}"
    strided = Case(
        input=(
            _strided_1d(case.input, 11 - case.input)
            if form == "1d"
            else case.input.t().contiguous().t()
        ),
        offsets=None if case.offsets is None else _strided_1d(case.offsets, 1000),
        weight=_strided_weight(case.weight, weight_kind),
        per_sample_weights=(
            None
            if case.per_sample_weights is None
            else (
                _strided_1d(case.per_sample_weights, 1000.0)
                if form == "1d"
                else case.per_sample_weights.t().contiguous().t()
            )
        ),
        **{k: v for k, v in case.kwargs().items() if k != "per_sample_weights"},
    )
    if form == "2d":
        assert not strided.input.is_contiguous()
    grad_output = random_grad((case.num_bags, 5), case.weight.dtype, device)

    # Run on the strided weight itself (no clone, which could make it contiguous).
    w = strided.weight.detach().requires_grad_()
    p = strided.per_sample_weights
    if p is not None:
        p = p.detach().requires_grad_()
    kwargs = strided.kwargs()
    kwargs["per_sample_weights"] = p
    out = mybag.embedding_bag(strided.input, w, strided.offsets, sparse=sparse, **kwargs)
    out.backward(grad_output)

    contiguous = run_mybag(case, grad_output, sparse=sparse)
    theirs = run_torch(case, grad_output, sparse=sparse)
    assert_close(out, contiguous.output, msg=msg)
    assert_close(out, theirs.output, msg=msg)
    mg = w.grad.coalesce().to_dense() if sparse else w.grad
    assert_close(mg, theirs.weight_grad.coalesce().to_dense() if sparse else theirs.weight_grad,
                 msg=msg)
    expected_grad = reference_weight_grad(grad_output, case.input, case.weight, case.offsets,
                                          **case.kwargs())
    assert_close(mg, expected_grad.float(), msg=msg)
    if p is not None:
        assert_close(p.grad, theirs.psw_grad, msg=msg)
    assert torch.equal(strided.weight, case.weight)


# ---------------------------------------------------------------------------------------------
# Zero bags, empty input, empty bags, padding-only bags


@pytest.mark.parametrize("mode,sparse", MODE_SPARSE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("layout", ["1d_empty_offsets", "1d_ilo_single_offset", "2d_no_rows"])
def test_zero_bags(device, mode, sparse, dtype, layout):
    weight = torch.randn(7, 5, dtype=dtype, device=device, requires_grad=True)
    empty = torch.tensor([], dtype=torch.int64, device=device)
    input, offsets, ilo = {
        "1d_empty_offsets": (empty, empty, False),
        "1d_ilo_single_offset": (empty, torch.tensor([0], device=device), True),
        "2d_no_rows": (torch.zeros(0, 4, dtype=torch.int64, device=device), None, False),
    }[layout]
    out = mybag.embedding_bag(input, weight, offsets, mode=mode, include_last_offset=ilo,
                              sparse=sparse)
    assert out.shape == (0, 5) and out.dtype == dtype and out.device.type == device
    out.sum().backward()
    assert weight.grad is not None and weight.grad.shape == (7, 5)
    assert weight.grad.is_sparse == sparse
    assert torch.count_nonzero(weight.grad.to_dense()) == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ilo", [False, True])
def test_zero_bags_with_nonempty_input(device, mode, ilo):
    # B = 0 gives (0, D) (docs/spec.md §2) even when input has entries; they belong to no bag.
    # (torch's CPU backward returns uninitialized memory here.)
    weight = torch.randn(7, 5, device=device, requires_grad=True)
    input = torch.tensor([1, 2, 3], device=device)
    offsets = torch.tensor([0] if ilo else [], dtype=torch.int64, device=device)
    out = mybag.embedding_bag(input, weight, offsets, mode=mode, include_last_offset=ilo)
    assert out.shape == (0, 5)
    out.sum().backward()
    assert torch.count_nonzero(weight.grad) == 0


@pytest.mark.parametrize("mode,psw", MODE_PSW)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d)[6:])
def test_empty_input(device, mode, psw, dtype):
    weight = torch.randn(7, 5, dtype=torch.float64).to(dtype).to(device)
    input = torch.tensor([], dtype=torch.int64, device=device)
    offsets = torch.tensor([0, 0, 0], device=device)
    case = Case(input, offsets, weight,
                torch.tensor([], dtype=dtype, device=device) if psw else None, mode=mode)
    grad_output = random_grad((3, 5), dtype, device)
    mine = run_mybag(case, grad_output)
    theirs = run_torch(case, grad_output)
    assert mine.output.shape == (3, 5)
    assert torch.count_nonzero(mine.output) == 0
    assert torch.count_nonzero(mine.weight_grad) == 0
    if psw:
        assert mine.psw_grad.shape == (0,)
    check_against_torch(mine, theirs, dtype, case.describe())


@pytest.mark.parametrize("mode", MODES)
def test_all_bags_empty_1d(device, mode):
    # Empty input, offsets [0, 0, 0, 0]: four empty bags, or three with include_last_offset.
    weight = torch.randn(9, 4, device=device)
    input = torch.tensor([], dtype=torch.int64, device=device)
    for ilo in (False, True):
        offsets = torch.zeros(4, dtype=torch.int64, device=device)
        case = Case(input, offsets, weight, None, mode=mode, include_last_offset=ilo)
        grad_output = random_grad((case.num_bags, 4), torch.float32, device)
        mine = run_mybag(case, grad_output)
        assert mine.output.shape == (3 if ilo else 4, 4)
        assert torch.count_nonzero(mine.output) == 0
        assert torch.count_nonzero(mine.weight_grad) == 0
        check_against_torch(mine, run_torch(case, grad_output), torch.float32, case.describe())


@pytest.mark.parametrize("mode,sparse", MODE_SPARSE)
def test_2d_input_with_no_columns(device, mode, sparse):
    # (B, 0): B empty bags, zeros (beyond torch, which fails with "step must be nonzero").
    weight = torch.randn(9, 4, device=device, requires_grad=True)
    input = torch.zeros(3, 0, dtype=torch.int64, device=device)
    out = mybag.embedding_bag(input, weight, mode=mode, sparse=sparse)
    assert out.shape == (3, 4)
    assert torch.count_nonzero(out) == 0
    out.backward(torch.ones_like(out))
    assert torch.count_nonzero(weight.grad.to_dense()) == 0


@pytest.mark.parametrize("mode,psw,sparse", MODE_PSW_SPARSE)
@pytest.mark.parametrize("form", ["1d", "2d"])
@pytest.mark.parametrize("padding_idx", [2, -1])
def test_padding_only_bags(device, mode, psw, sparse, form, padding_idx):
    num = 6
    pad = padding_idx % num
    weight = torch.randn(num, 3, dtype=torch.float64, device=device)
    if form == "1d":
        input = torch.tensor([pad, pad, 1, pad, 3, pad, pad, pad], device=device)
        offsets = torch.tensor([0, 2, 5], device=device)  # bags: [p, p], [1, p, 3], [p, p, p]
        only_padding = [0, 2]
    else:
        input = torch.tensor([[pad, pad, pad], [1, pad, 3], [pad, pad, pad]], device=device)
        offsets = None
        only_padding = [0, 2]
    psw_t = torch.randn(input.shape, dtype=torch.float64, device=device) if psw else None
    case = Case(input, offsets, weight, psw_t, mode=mode, padding_idx=padding_idx)
    grad_output = random_grad((3, 3), torch.float64, device)
    mine = run_mybag(case, grad_output, sparse=sparse)
    msg = case.describe()
    assert torch.count_nonzero(mine.output[only_padding]) == 0, msg
    wg = mine.weight_grad.coalesce().to_dense() if sparse else mine.weight_grad
    assert torch.count_nonzero(wg[pad]) == 0, msg
    if sparse:
        assert mine.weight_grad.shape == (num, 3)
        assert mine.weight_grad._nnz() == non_padding_count(input, offsets, False, padding_idx,
                                                            num)
    if psw:
        assert torch.count_nonzero(mine.psw_grad.flatten()[input.flatten() == pad]) == 0, msg
    check_against_reference(case, mine, grad_output, msg)
    check_against_torch(mine, run_torch(case, grad_output, sparse=sparse), torch.float64, msg)


# ---------------------------------------------------------------------------------------------
# CUDA against CPU: every option and dtype, forward and backward (dense and sparse gradients,
# scale_grad_by_freq). Both devices are checked against the reference above; this pins them to
# each other (within twice the reference tolerance).


def _cuda_against_cpu_options():
    for mode in MODES:
        for dtype in FLOAT_DTYPES:
            for form in ["1d", "2d"]:
                yield mode, dtype, form, False, False
                if mode != "max":
                    yield mode, dtype, form, True, False   # sparse
                    yield mode, dtype, form, False, True   # scale_grad_by_freq
                    if mode == "sum":
                        yield mode, dtype, form, True, True


@requires_cuda
@pytest.mark.parametrize("mode,dtype,form,sparse,freq", list(_cuda_against_cpu_options()))
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_cuda_matches_cpu(mode, dtype, form, sparse, freq, padding_idx):
    case = make_case(mode=mode, form=form, dtype=dtype, padding_idx=padding_idx,
                     psw=(mode == "sum"), num_embeddings=40, dim=45, num_bags=9, max_bag=50,
                     empty_bags=True, seed=3)
    grad_output = random_grad((case.num_bags, 45), dtype)
    options = {"sparse": sparse, "scale_grad_by_freq": freq}
    cpu = run_mybag(case, grad_output, **options)
    gpu = run_mybag(case.to("cuda"), grad_output.cuda(), **options)
    for what in ["output", "weight_grad", "psw_grad"]:
        mine, ref = getattr(gpu, what), getattr(cpu, what)
        if ref is None:
            assert mine is None
            continue
        assert mine.device.type == "cuda"
        assert_close(dense(mine), dense(ref), dtype=dtype, scale=2.0, msg=what)
