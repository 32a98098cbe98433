"""Faults: an exception anywhere in forward or backward leaves the weight, its gradient and the
optimizer state as they were, and the library keeps working in the same process (and the same
CUDA context).

Faults simulated:
- bad input in forward (an index out of range, decreasing offsets), with and without max_norm;
- a hook on the output raising during backward (before mybag's backward runs);
- a hook on the weight raising during backward (after mybag's backward computed the gradient,
  before it is accumulated);
- torch.autograd.grad with a grad_output of the wrong shape;
- the internal backward ops called with a wrong-shaped or wrong-dtype gradient;
- out of memory, honestly: a table of 2**50 rows viewed from one real row (an expanded
  weight) runs forward fine, and its dense gradient (2**50 x D) cannot be allocated, so the
  backward raises from the allocator (2**50 * 16 bytes is past the 47-bit address space, so
  this fails under any overcommit setting and never touches memory); and the internal dense
  backward asked for num_weights = 2**50.
"""

from __future__ import annotations

import copy

import pytest
import torch

import mybag
from conftest import assert_close, reference_embedding_bag

ALLOWED = (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError)
HUGE = 2**50


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def snapshot(weight, optimizer):
    return (weight.detach().clone(),
            None if weight.grad is None else weight.grad.detach().clone(),
            copy.deepcopy(optimizer.state_dict()))


def assert_same(weight, optimizer, snap, msg=""):
    w, g, state = snap
    assert torch.equal(weight.detach(), w), "weight changed " + msg
    if g is None:
        assert weight.grad is None, "a gradient appeared " + msg
    else:
        assert torch.equal(weight.grad, g), "weight.grad changed " + msg
    now = optimizer.state_dict()
    assert now["param_groups"] == state["param_groups"]
    assert now["state"].keys() == state["state"].keys()
    for k, v in state["state"].items():
        for name, t in v.items():
            other = now["state"][k][name]
            if isinstance(t, torch.Tensor):
                assert torch.equal(other, t), f"optimizer state {name} changed " + msg
            else:
                assert other == t, f"optimizer state {name} changed " + msg


def good_batch(device):
    inp = torch.tensor([1, 2, 4, 4, 0, 3], device=device)
    offs = torch.tensor([0, 2, 5], device=device)
    return inp, offs


def train_step(weight, optimizer, inp, offs, **kwargs):
    optimizer.zero_grad(set_to_none=False)
    out = mybag.embedding_bag(inp, weight, offs, **kwargs)
    (out * torch.arange(1, out.numel() + 1, device=out.device).view_as(out)).sum().backward()
    optimizer.step()


FAULTS = ["bad_index", "decreasing_offsets", "bad_index_max_norm", "output_hook",
          "weight_hook", "autograd_grad_wrong_shape", "oom_dense_backward"]


def make_optimizer(name, params):
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.Adam(params, lr=0.01)


def inject(fault, weight, device):
    inp, offs = good_batch(device)
    if fault == "bad_index":
        mybag.embedding_bag(torch.tensor([1, 99], device=device), weight, offs[:1], mode="sum")
    elif fault == "decreasing_offsets":
        mybag.embedding_bag(inp, weight, torch.tensor([0, 3, 2], device=device), mode="sum")
    elif fault == "bad_index_max_norm":
        mybag.embedding_bag(torch.tensor([1, 2, -1], device=device), weight, offs[:1],
                            max_norm=0.1, mode="sum")
    elif fault == "output_hook":
        out = mybag.embedding_bag(inp, weight, offs, mode="mean")

        def boom(grad):
            raise RuntimeError("simulated failure in a hook on the output")

        out.register_hook(boom)
        out.sum().backward()
    elif fault == "weight_hook":
        def boom(grad):
            raise RuntimeError("simulated failure in a hook on the weight")

        handle = weight.register_hook(boom)
        try:
            mybag.embedding_bag(inp, weight, offs, mode="sum").sum().backward()
        finally:
            handle.remove()
    elif fault == "autograd_grad_wrong_shape":
        out = mybag.embedding_bag(inp, weight, offs, mode="sum")
        torch.autograd.grad(out, weight, torch.ones(out.shape[0] + 1, out.shape[1],
                                                    device=device))
    elif fault == "oom_dense_backward":
        # A table of HUGE rows sharing one real row (stride 0): the forward reads row 0 only;
        # the backward has to allocate a dense (HUGE, D) gradient and cannot.
        huge = weight[:1].expand(HUGE, weight.shape[1])
        out = mybag.embedding_bag(torch.tensor([0, HUGE - 1], device=device), huge,
                                  torch.tensor([0], device=device), mode="sum")
        assert_close(out, 2 * weight[:1].detach())
        out.sum().backward()
    else:
        raise ValueError(fault)


@pytest.mark.parametrize("optimizer_name", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("fault", FAULTS)
def test_fault_leaves_weight_grad_and_optimizer_state_alone(device, optimizer_name, fault):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(5, 4, device=device) * 3)
    optimizer = make_optimizer(optimizer_name, [weight])
    inp, offs = good_batch(device)
    # A twin trained the same way with no fault: the faulty run must end where it ends.
    twin = torch.nn.Parameter(weight.detach().clone())
    twin_opt = make_optimizer(optimizer_name, [twin])
    for w, opt in ((weight, optimizer), (twin, twin_opt)):
        train_step(w, opt, inp, offs, mode="mean")  # optimizer state exists now
    sync(device)
    snap = snapshot(weight, optimizer)

    with pytest.raises(ALLOWED) as info:
        inject(fault, weight, device)
    sync(device)
    assert str(info.value).strip()
    assert_same(weight, optimizer, snap, f"after {fault}: {info.value}")

    # The library, autograd and the optimizer keep working, and the run is the twin's.
    for w, opt in ((weight, optimizer), (twin, twin_opt)):
        train_step(w, opt, inp, offs, mode="sum", max_norm=2.0)
        train_step(w, opt, inp, offs, mode="max")
    sync(device)
    assert torch.equal(weight.detach(), twin.detach())
    assert torch.equal(weight.grad, twin.grad)


def test_out_of_memory_in_backward_is_an_ordinary_error(device):
    w = torch.randn(3, 8, device=device, requires_grad=True)
    huge = w[:1].expand(HUGE, 8)
    out = mybag.embedding_bag(torch.tensor([0, 5, HUGE - 1], device=device), huge,
                              torch.tensor([0, 1], device=device), mode="mean")
    with pytest.raises(RuntimeError) as info:
        out.sum().backward()
    sync(device)
    message = str(info.value).lower()
    assert "memory" in message or "alloc" in message or "overflow" in message, message
    assert w.grad is None
    # sparse=True needs no dense table: the same call trains fine.
    out = mybag.embedding_bag(torch.tensor([0, 5, HUGE - 1], device=device), huge,
                              torch.tensor([0, 1], device=device), mode="mean", sparse=True)
    grad, = torch.autograd.grad(out.sum(), huge)
    assert grad.is_sparse and grad.shape == (HUGE, 8)
    assert_close(grad.coalesce().values().sum(0), torch.full((8,), 2.0, device=device))


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_internal_backward_ops_fail_cleanly(device, mode):
    w = torch.randn(6, 3, device=device)
    inp = torch.tensor([0, 5, 5, 2], device=device)
    offs = torch.tensor([0, 1], device=device)
    out, max_idx = torch.ops.mybag._embedding_bag_forward(w, inp, offs, None, mode, None, False,
                                                          False, False)
    grad = torch.ones_like(out)
    dense = torch.ops.mybag._embedding_bag_dense_backward
    calls = {
        "oom num_weights": lambda: dense(grad, inp, offs, None, max_idx, HUGE, mode, None, False,
                                         False),
        "overflowing num_weights": lambda: dense(grad, inp, offs, None, max_idx, 2**62, mode,
                                                 None, False, False),
        "negative num_weights": lambda: dense(grad, inp, offs, None, max_idx, -1, mode, None,
                                              False, False),
        "grad wrong shape": lambda: dense(grad[:1], inp, offs, None, max_idx, 6, mode, None,
                                          False, False),
        "grad integer dtype": lambda: dense(grad.long(), inp, offs, None, max_idx, 6, mode,
                                          None, False, False),
        "index past num_weights": lambda: dense(grad, inp, offs, None, max_idx, 5, mode, None,
                                                False, False),
    }
    if mode != 2:
        # HUGE entries (one real one, stride 0) in one bag: the (HUGE, D) result cannot exist.
        calls["per-entry oom"] = lambda: torch.ops.mybag._embedding_bag_per_entry_grad(
            grad[:1], inp[:1].expand(HUGE), torch.zeros(1, dtype=torch.long, device=device),
            None, 6, mode, None, False, False)
    else:
        calls["max_indices out of range"] = lambda: dense(grad, inp, offs, None, max_idx + 7, 6,
                                                          mode, None, False, False)
    for name, call in calls.items():
        try:
            call()
        except ALLOWED as e:
            assert str(e).strip(), name
        else:
            pytest.fail(f"{name}: no exception")
        sync(device)
    # Still works, and gives the same bits as before the faults.
    again = dense(grad, inp, offs, None, max_idx, 6, mode, None, False, False)
    first = dense(grad, inp, offs, None, max_idx, 6, mode, None, False, False)
    sync(device)
    assert torch.equal(again, first)


def test_bad_index_with_max_norm_leaves_weight_bitwise(device):
    # torch renormalizes first and fails afterwards (docs/spec.md §4); mybag validates first.
    w = (torch.randn(50, 16, device=device) * 10)
    before = w.clone()
    for bad in ([3, 50], [-1, 3], [3, 2**40]):
        for mode in ("sum", "mean", "max"):
            with pytest.raises(IndexError):
                mybag.embedding_bag(torch.tensor(bad, device=device), w,
                                    torch.tensor([0], device=device), max_norm=1.0, mode=mode)
            with pytest.raises(IndexError):
                mybag.embedding_bag(torch.tensor([bad], device=device), w, max_norm=1.0,
                                    mode=mode)
    sync(device)
    assert torch.equal(w, before)


def test_many_faults_then_correct_results(device):
    # 300 failing calls of every kind, interleaved with good ones: no state leaks between them.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 5, generator=g).to(device)
    inp = torch.randint(0, 20, (12,), generator=g).to(device)
    offs = torch.tensor([0, 4, 4, 9], device=device)
    expected = reference_embedding_bag(inp, w, offs, mode="mean")
    bad_calls = [
        lambda: mybag.embedding_bag(inp + 20, w, offs),
        lambda: mybag.embedding_bag(inp, w, offs.flip(0)),
        lambda: mybag.embedding_bag(inp, w, offs, mode="median"),
        lambda: mybag.embedding_bag(inp.float(), w, offs),
        lambda: mybag.embedding_bag(inp, w.long(), offs),
        lambda: mybag.embedding_bag(inp, w, offs, padding_idx=20),
        lambda: mybag.embedding_bag(inp, w, offs, per_sample_weights=torch.ones(3, device=device),
                                    mode="sum"),
    ]
    for k in range(300):
        with pytest.raises(ALLOWED):
            bad_calls[k % len(bad_calls)]()
        if k % 25 == 0:
            assert_close(mybag.embedding_bag(inp, w, offs), expected)
    sync(device)
    assert_close(mybag.embedding_bag(inp, w, offs), expected)
