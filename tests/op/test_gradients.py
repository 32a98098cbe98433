"""Gradients of mybag.embedding_bag: gradcheck, scale_grad_by_freq (against a hand reference: CPU
torch is wrong there, pytorch/pytorch#190063), sparse gradients, determinism, and a sparse SGD
training loop that must track torch's.
"""

import mybag
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    Case,
    assert_close,
    make_case,
    non_padding_count,
    random_grad,
    reference_psw_grad,
    reference_weight_grad,
    run_mybag,
    run_torch,
)

MODE_PSW = [("sum", False), ("sum", True), ("mean", False), ("max", False)]
MODE_PSW_NO_MAX = MODE_PSW[:3]

# ---------------------------------------------------------------------------------------------
# gradcheck (float64)


@pytest.mark.parametrize("mode,psw", MODE_PSW)
@pytest.mark.parametrize("form,ilo", [("1d", False), ("1d", True), ("2d", False)])
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_gradcheck(device, mode, psw, form, ilo, padding_idx):
    # distinct: no ties in max mode, so the winners do not move under perturbation.
    case = make_case(mode=mode, form=form, include_last_offset=ilo, padding_idx=padding_idx,
                     psw=psw, dtype=torch.float64, num_embeddings=8, dim=3, num_bags=4, max_bag=4,
                     empty_bags=form == "1d", distinct=True, seed=11, device=device,
                     padding_fraction=0.3)
    weight = case.weight.clone().requires_grad_()
    inputs = [weight]
    if psw:
        inputs.append(case.per_sample_weights.clone().requires_grad_())

    def fn(w, p=None):
        return mybag.embedding_bag(
            case.input,
            w,
            case.offsets,
            mode=mode,
            per_sample_weights=p,
            include_last_offset=ilo,
            padding_idx=padding_idx,
        )

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# scale_grad_by_freq: against the hand reference


def test_scale_grad_by_freq_torch_bug_190063_reproducer():
    # torch 2.13/2.14 CPU gives [0, 1, 0, 0.5] for column 0: row 3 divided by row 1's count.
    w = torch.ones(4, 3, requires_grad=True)
    idx = torch.tensor([1, 1, 3])
    mybag.embedding_bag(idx, w, torch.tensor([0]), mode="sum",
                        scale_grad_by_freq=True).sum().backward()
    assert w.grad[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert torch.equal(w.grad[:, 0:1].expand(4, 3), w.grad)


@pytest.mark.parametrize("mode,psw", MODE_PSW_NO_MAX)
@pytest.mark.parametrize("form,ilo", [("1d", False), ("1d", True), ("2d", False)])
@pytest.mark.parametrize("padding_idx", [None, 1, -1])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("index_dtypes", ["i64", "i32", "i32_i64"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["f32", "f64", "bf16"])
def test_scale_grad_by_freq(device, mode, psw, form, ilo, padding_idx, sparse, index_dtypes,
                            dtype):
    # Few rows, many entries: most indices repeat, within and across bags.
    case = make_case(mode=mode, form=form, include_last_offset=ilo, padding_idx=padding_idx,
                     psw=psw, dtype=dtype, index_dtypes=index_dtypes, num_embeddings=7, dim=5,
                     num_bags=6, max_bag=7, empty_bags=form == "1d", seed=13, device=device)
    msg = case.describe() + f" sparse={sparse}"
    grad_output = random_grad((case.num_bags, 5), dtype, device, seed=14)
    mine = run_mybag(case, grad_output, scale_grad_by_freq=True, sparse=sparse)
    assert mine.weight_grad.is_sparse == sparse, msg
    grad = mine.weight_grad.coalesce().to_dense() if sparse else mine.weight_grad
    assert grad.dtype == dtype and grad.shape == case.weight.shape
    expected = reference_weight_grad(grad_output, case.input, case.weight, case.offsets,
                                     scale_grad_by_freq=True, **case.kwargs())
    scale = 4.0 if dtype == torch.bfloat16 else 1.0
    assert_close(grad, expected.to(dtype), scale=scale, msg=msg)
    if psw:
        # scale_grad_by_freq leaves the per_sample_weights gradient alone.
        expected_psw = reference_psw_grad(grad_output, case.input, case.weight, case.offsets,
                                          ilo, padding_idx)
        assert_close(mine.psw_grad, expected_psw.to(dtype), scale=scale, msg=msg)
    if sparse:
        dense = run_mybag(case, grad_output, scale_grad_by_freq=True, sparse=False)
        assert_close(grad, dense.weight_grad, scale=scale, msg=msg)
    if device == "cuda" and not sparse:
        # torch's CUDA path is right (the CPU bug is CPU-only); torch rejects sparse here.
        theirs = run_torch(case, grad_output, scale_grad_by_freq=True)
        assert_close(grad, theirs.weight_grad, scale=scale, msg=msg)


def test_scale_grad_by_freq_counts_all_bags(device):
    # Row 2 occurs 3 times over two bags, row 4 once: the divisor counts the whole input.
    w = torch.zeros(6, 2, dtype=torch.float64, device=device, requires_grad=True)
    input = torch.tensor([2, 4, 2, 2], device=device)
    offsets = torch.tensor([0, 2], device=device)
    out = mybag.embedding_bag(input, w, offsets, mode="sum", scale_grad_by_freq=True)
    out.backward(torch.tensor([[1.0, 10.0], [100.0, 1000.0]], dtype=torch.float64,
                              device=device))
    expected = torch.zeros(6, 2, dtype=torch.float64)
    expected[2] = (torch.tensor([1.0, 10.0]) + 2 * torch.tensor([100.0, 1000.0])) / 3
    expected[4] = torch.tensor([1.0, 10.0])
    torch.testing.assert_close(w.grad.cpu(), expected)


@pytest.mark.parametrize("wanted", ["weight", "per_sample_weights"])
@pytest.mark.parametrize("sparse", [False, True])
def test_gradient_of_one_input_only(device, wanted, sparse):
    case = make_case(mode="sum", psw=True, padding_idx=4, dtype=torch.float64, device=device,
                     seed=22)
    w = case.weight.clone().requires_grad_(wanted == "weight")
    p = case.per_sample_weights.clone().requires_grad_(wanted == "per_sample_weights")
    out = mybag.embedding_bag(case.input, w, case.offsets, mode="sum", sparse=sparse,
                              per_sample_weights=p, padding_idx=4)
    grad_output = random_grad(out.shape, torch.float64, device, seed=23)
    out.backward(grad_output)
    if wanted == "weight":
        assert p.grad is None
        expected = reference_weight_grad(grad_output, case.input, case.weight, case.offsets,
                                         **case.kwargs())
        assert_close(w.grad.coalesce().to_dense() if sparse else w.grad, expected)
    else:
        assert w.grad is None
        expected = reference_psw_grad(grad_output, case.input, case.weight, case.offsets,
                                      False, 4)
        assert_close(p.grad, expected)


@pytest.mark.parametrize("mode,psw", MODE_PSW)
def test_non_contiguous_grad_output(device, mode, psw):
    case = make_case(mode=mode, psw=psw, padding_idx=0, dim=7, num_bags=6, seed=24,
                     device=device)
    grad_output = random_grad((7, case.num_bags), torch.float32, device, seed=25).t()
    assert not grad_output.is_contiguous()
    mine = run_mybag(case, grad_output)
    check = run_mybag(case, grad_output.contiguous())
    assert_close(mine.weight_grad, check.weight_grad)
    expected = reference_weight_grad(grad_output, case.input, case.weight, case.offsets,
                                     **case.kwargs())
    assert_close(mine.weight_grad, expected.float())
    if psw:
        expected_psw = reference_psw_grad(grad_output, case.input, case.weight, case.offsets,
                                          False, 0)
        assert_close(mine.psw_grad, expected_psw.float())


@pytest.mark.parametrize("option", ["sparse", "scale_grad_by_freq"])
def test_max_mode_rejects_sparse_and_scale_grad_by_freq(device, option):
    case = make_case(mode="max", device=device)
    with pytest.raises(ValueError, match=option):
        mybag.embedding_bag(case.input, case.weight, case.offsets, mode="max", **{option: True})


# ---------------------------------------------------------------------------------------------
# Sparse gradients: against torch's, and structure (COO, one row per non-padding entry)


@pytest.mark.parametrize("mode,psw", MODE_PSW_NO_MAX)
@pytest.mark.parametrize("form,ilo", [("1d", False), ("1d", True), ("2d", False)])
@pytest.mark.parametrize("padding_idx", [None, 3, -2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("index_dtypes", ["i64", "i32_i64"])
def test_sparse_gradient(device, mode, psw, form, ilo, padding_idx, dtype, index_dtypes):
    case = make_case(mode=mode, form=form, include_last_offset=ilo, padding_idx=padding_idx,
                     psw=psw, dtype=dtype, index_dtypes=index_dtypes, num_embeddings=25, dim=6,
                     num_bags=5, empty_bags=form == "1d", seed=15, device=device)
    msg = case.describe()
    grad_output = random_grad((case.num_bags, 6), dtype, device, seed=16)
    mine = run_mybag(case, grad_output, sparse=True)
    g = mine.weight_grad
    assert g.layout == torch.sparse_coo, msg
    assert g.shape == case.weight.shape and g.dtype == dtype and g.device.type == device, msg
    # One row per non-padding entry (uncoalesced is fine): the indices are exactly those entries.
    pad = None if padding_idx is None else padding_idx % case.num_embeddings
    entries = [i for i in case.input.flatten().tolist() if i != pad]
    assert g._nnz() == non_padding_count(case.input, case.offsets, ilo, padding_idx,
                                         case.num_embeddings) == len(entries), msg
    assert sorted(g._indices()[0].tolist()) == sorted(entries), msg
    assert g._values().shape == (len(entries), 6), msg

    scale = 4.0 if dtype in (torch.float16, torch.bfloat16) else 1.0
    expected = reference_weight_grad(grad_output, case.input, case.weight, case.offsets,
                                     **case.kwargs())
    assert_close(g.coalesce().to_dense(), expected.to(dtype), scale=scale, msg=msg)
    dense = run_mybag(case, grad_output)
    assert_close(g.coalesce().to_dense(), dense.weight_grad, scale=scale, msg=msg)
    theirs = run_torch(case, grad_output, sparse=True, upcast=torch.float32
                       if dtype in (torch.float16, torch.bfloat16) else None)
    assert_close(g.coalesce().to_dense(), theirs.weight_grad.coalesce().to_dense().to(dtype),
                 scale=scale, msg=msg)
    if psw:
        assert_close(mine.psw_grad, theirs.psw_grad.to(dtype), scale=scale, msg=msg)


def test_sparse_gradient_accumulates(device):
    # Two backward passes add up (the sparse grads are summed by autograd).
    case = make_case(mode="sum", seed=17, device=device, padding_idx=0)
    w = case.weight.clone().requires_grad_()
    for _ in range(2):
        mybag.embedding_bag(case.input, w, case.offsets, mode="sum", sparse=True,
                            padding_idx=0).sum().backward()
    expected = 2 * reference_weight_grad(torch.ones(case.num_bags, 16), case.input, case.weight,
                                         case.offsets, mode="sum", padding_idx=0)
    assert_close(w.grad.coalesce().to_dense(), expected.float())


# ---------------------------------------------------------------------------------------------
# Determinism: the same inputs give the same bits


def _big_case(mode, psw, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    num, dim, n, bags = 200, 64, 6000, 120
    # Zipf-like: a few hot rows occur very often (contended accumulation).
    ranks = torch.arange(1, num + 1, dtype=torch.float64)
    input = torch.multinomial(1.0 / ranks, n, replacement=True, generator=g)
    offsets = torch.sort(torch.randint(0, n, (bags - 1,), generator=g)).values
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), offsets])
    weight = torch.randn(num, dim, generator=g, dtype=torch.float64).to(dtype)
    p = torch.randn(n, generator=g, dtype=torch.float64).to(dtype) if psw else None
    return Case(input, offsets, weight, p, mode=mode, padding_idx=1).to(device)


@pytest.mark.parametrize(
    "mode,psw,sparse,scale_grad_by_freq",
    [(m, p, sp, sg) for (m, p) in MODE_PSW for sp in (False, True) for sg in (False, True)
     if m != "max" or not (sp or sg)],  # max mode rejects both (test_max_mode_rejects_...)
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_deterministic(device, mode, psw, sparse, scale_grad_by_freq, dtype):
    case = _big_case(mode, psw, dtype, device, seed=18)
    grad_output = random_grad((case.num_bags, 64), dtype, device, seed=19)
    runs = [run_mybag(case, grad_output, sparse=sparse, scale_grad_by_freq=scale_grad_by_freq)
            for _ in range(3)]
    first = runs[0]
    for other in runs[1:]:
        assert torch.equal(first.output, other.output)
        if sparse:
            assert torch.equal(first.weight_grad._indices(), other.weight_grad._indices())
            assert torch.equal(first.weight_grad._values(), other.weight_grad._values())
        else:
            assert torch.equal(first.weight_grad, other.weight_grad)
        if psw:
            assert torch.equal(first.psw_grad, other.psw_grad)
    # And they are right, not just repeatable (bf16 accuracy: test_half_accumulates_in_float32).
    if dtype == torch.float32:
        expected = reference_weight_grad(grad_output, case.input, case.weight, case.offsets,
                                         scale_grad_by_freq=scale_grad_by_freq, **case.kwargs())
        grad = first.weight_grad.coalesce().to_dense() if sparse else first.weight_grad
        torch.testing.assert_close(grad.double().cpu(), expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Half types accumulate in float32 and round once (docs/spec.md §3), forward and backward


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("form", ["1d", "2d"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_accumulates_in_float32(device, mode, form, dtype):
    # Row 0 (value 1) is in 300 bags of one entry each and wins all of them in max mode: its
    # gradient is 300 ones. Summed in bf16 (fp16) that sticks at 256 (2048 for 3000 ones);
    # summed in float32 and rounded once it is exact.
    count = 300 if dtype == torch.bfloat16 else 3000
    w = torch.tensor([[1.0], [0.0]], dtype=dtype, device=device, requires_grad=True)
    if form == "1d":
        input = torch.zeros(count, dtype=torch.int64, device=device)
        offsets = torch.arange(count, device=device)
    else:
        input = torch.zeros(count, 1, dtype=torch.int64, device=device)
        offsets = None
    mybag.embedding_bag(input, w, offsets, mode=mode).sum().backward()
    expected = torch.tensor(count, dtype=torch.float64).to(dtype).item()
    assert w.grad[0].item() == expected, (mode, w.grad[0].item(), expected)

    # Forward: one bag of `count` ones.
    out = mybag.embedding_bag(input.reshape(1, -1), w.detach(), mode="sum")
    assert out.item() == expected, out.item()
    # per_sample_weights gradient: a dot product over D = count features.
    wide = torch.ones(2, count, dtype=dtype, device=device)
    psw = torch.ones(1, dtype=dtype, device=device, requires_grad=True)
    mybag.embedding_bag(torch.tensor([0], device=device), wide, torch.tensor([0], device=device),
                        mode="sum", per_sample_weights=psw).sum().backward()
    assert psw.grad.item() == expected, psw.grad.item()


# ---------------------------------------------------------------------------------------------
# Training: sparse SGD steps track torch's


@pytest.mark.parametrize(
    "mode,psw,sparse",
    [(m, p, sp) for (m, p) in MODE_PSW_NO_MAX for sp in (True, False)] + [("max", False, False)],
)
def test_sgd_training_matches_torch(device, mode, psw, sparse):
    g = torch.Generator().manual_seed(20)
    num, dim = 40, 8
    init = torch.randn(num, dim, generator=g)
    w_mine = init.clone().to(device).requires_grad_()
    w_torch = init.clone().to(device).requires_grad_()
    opt_mine = torch.optim.SGD([w_mine], lr=0.1)
    opt_torch = torch.optim.SGD([w_torch], lr=0.1)
    for step in range(5):
        case = make_case(mode=mode, psw=psw, padding_idx=0, num_embeddings=num, dim=dim,
                         num_bags=8, max_bag=5, seed=100 + step, device=device,
                         empty_bags=step % 2 == 1)
        target = torch.randn(case.num_bags, dim, generator=g).to(device)
        for w, opt, fn in ((w_mine, opt_mine, mybag.embedding_bag),
                           (w_torch, opt_torch, F.embedding_bag)):
            opt.zero_grad()
            out = fn(case.input, w, case.offsets, mode=mode, sparse=sparse,
                     per_sample_weights=case.per_sample_weights, padding_idx=0)
            loss = ((out - target) ** 2).sum()
            loss.backward()
            assert w.grad.is_sparse == sparse
            opt.step()
        torch.testing.assert_close(w_mine.detach(), w_torch.detach(), msg=f"step {step}")
    assert not torch.equal(w_mine.detach().cpu(), init)
    # The padding row never moves.
    assert torch.equal(w_mine.detach()[0].cpu(), init[0])

