"""Scale: nothing is silently truncated to 32 bits.

Default run (memory-careful; tables come from torch.empty, so only the rows a test touches are
ever resident):
- a 2**22 x 640 float16 table (2.7e9 elements > 2**31, 5 GiB virtual): forward in every mode,
  max_norm writing rows past element 2**31, the sparse gradient and the per_sample_weights
  gradient, with int32 and int64 indices, against torch and a few-row reference;
- one bag of 10**6 entries, and 10**6 bags, forward and dense backward against torch;
- int32 indices at their limit: a 2**31-row table (D = 1, float16: 4 GiB virtual) read at rows
  2**31 - 1 and 2**31 - 2, forward and sparse backward; 2**31 itself is rejected (int64).

MYBAG_SCALE=1 adds the tests that need more than ~8 GiB resident or a minute: the dense
gradient of the 2**22 x 640 table (5 GiB zeroed), max mode backward on it, and int32 offsets at
their limit (an input of 2**31 - 1 entries, 8 GiB). docs/reliability.md records a run.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch
import torch.nn.functional as F

import mybag
from conftest import assert_close

SCALE = os.environ.get("MYBAG_SCALE") == "1"
needs_scale = pytest.mark.skipif(not SCALE, reason="set MYBAG_SCALE=1: needs > 8 GiB resident "
                                 "memory or > 60 s (run before each release; docs/reliability.md)")

BIG_ROWS, BIG_DIM = 2**22, 640  # 2_684_354_560 elements
INT32_ROWS = 2**31


def _cuda_room(nbytes):
    if not torch.cuda.is_available():
        return False
    free, _ = torch.cuda.mem_get_info()
    return free > nbytes * 1.3


def _device_ok(device, nbytes):
    if device == "cuda" and not _cuda_room(nbytes):
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB free on the GPU")


def _free(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def big_table(device, rows_to_fill, seed=0, rows=BIG_ROWS, dim=BIG_DIM, dtype=torch.float16):
    """An uninitialized (rows, dim) table with known values in ``rows_to_fill`` only."""
    w = torch.empty(rows, dim, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(seed)
    vals = torch.randn(len(rows_to_fill), dim, generator=g).to(dtype).to(device)
    w[torch.tensor(rows_to_fill, device=device)] = vals
    return w, vals


# Rows whose first element lies past 2**31 (and past 2**32) elements: row * 640 > 2**31.
HIGH_ROWS = [0, 1, 3_355_444, 2**22 - 2, 2**22 - 1, 2**21 + 17]


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_table_over_2_31_elements_forward_and_sparse_backward(device, index_dtype):
    _device_ok(device, BIG_ROWS * BIG_DIM * 2)
    assert BIG_ROWS * BIG_DIM > 2**31
    assert HIGH_ROWS[2] * BIG_DIM > 2**31
    w, vals = big_table(device, HIGH_ROWS)
    small = vals.double()  # the reference reads these rows only
    pos = {r: k for k, r in enumerate(HIGH_ROWS)}
    inp = torch.tensor([3_355_444, 2**22 - 1, 0, 2**22 - 1, 2**21 + 17, 1, 2**22 - 2],
                       dtype=index_dtype, device=device)
    offs = torch.tensor([0, 2, 2, 5], dtype=index_dtype, device=device)
    bags = [[3_355_444, 2**22 - 1], [], [0, 2**22 - 1, 2**21 + 17], [1, 2**22 - 2]]
    g = torch.Generator().manual_seed(1)
    psw = torch.randn(len(inp), generator=g).half().to(device)
    grad = torch.randn(len(bags), BIG_DIM, generator=g).half().to(device)

    for mode in ("sum", "mean", "max"):
        out = mybag.embedding_bag(inp, w, offs, mode=mode)
        expected = torch.zeros(len(bags), BIG_DIM, dtype=torch.float64)
        for b, rows in enumerate(bags):
            if rows:
                block = small[[pos[r] for r in rows]]
                expected[b] = {"sum": block.sum(0), "mean": block.mean(0),
                               "max": block.max(0).values}[mode]
        assert_close(out, expected.half(), msg=mode)
        theirs = F.embedding_bag(inp.long(), w, offs.long(), mode=mode)
        assert_close(out, theirs, scale=2.0, msg=mode + " vs torch")

    # Sparse gradient (sum, with per_sample_weights) and the per_sample_weights gradient.
    wl = w.requires_grad_(True)
    p = psw.clone().requires_grad_(True)
    out = mybag.embedding_bag(inp, wl, offs, mode="sum", sparse=True, per_sample_weights=p)
    out.backward(grad)
    sg = wl.grad.coalesce()
    assert sg.shape == (BIG_ROWS, BIG_DIM)
    got_rows = sg.indices()[0].tolist()
    assert sorted(got_rows) == sorted(set(inp.tolist()))
    flat_bag = [b for b, rows in enumerate(bags) for _ in rows]
    for row, value in zip(got_rows, sg.values()):
        want = sum(grad[flat_bag[i]].double() * psw[i].double()
                   for i, r in enumerate(inp.tolist()) if r == row)
        assert_close(value, want.half(), scale=4.0, msg=f"sparse grad row {row}")
    for i, r in enumerate(inp.tolist()):
        want = torch.dot(grad[flat_bag[i]].double().cpu(), small[pos[r]])
        assert_close(p.grad[i], want.half(), scale=4.0, msg=f"psw grad entry {i}")
    wl.requires_grad_(False)
    wl.grad = None

    # max_norm rewrites rows past element 2**31, and only those.
    sentinel_row = 2**22 - 3
    w[sentinel_row] = 7.0
    before = w[torch.tensor(HIGH_ROWS, device=device)].clone()
    mybag.embedding_bag(inp, w, offs, mode="sum", max_norm=1.0)
    after = w[torch.tensor(HIGH_ROWS, device=device)]
    for k, r in enumerate(HIGH_ROWS):
        norm = before[k].double().norm()
        want = before[k].double() * (1.0 / (norm + 1e-7)) if (r in pos and r in inp.tolist()
                                                               and norm > 1.0) else before[k]
        assert_close(after[k], want.half(), scale=2.0, msg=f"renorm row {r}")
    assert torch.all(w[sentinel_row] == 7.0)
    del w, wl, sg
    _free(device)


@needs_scale
@pytest.mark.parametrize("mode", ["sum", "max"])
def test_table_over_2_31_elements_dense_backward(device, mode):
    _device_ok(device, BIG_ROWS * BIG_DIM * 2 * 2)
    w, vals = big_table(device, HIGH_ROWS)
    w.requires_grad_(True)
    inp = torch.tensor([2**22 - 1, 3_355_444, 2**22 - 1, 1], device=device)
    offs = torch.tensor([0, 2], device=device)
    out = mybag.embedding_bag(inp, w, offs, mode=mode)
    grad = torch.randn(2, BIG_DIM).half().to(device)
    out.backward(grad)
    gw = w.grad
    assert gw.shape == (BIG_ROWS, BIG_DIM) and not gw.is_sparse
    pos = {r: k for k, r in enumerate(HIGH_ROWS)}
    if mode == "sum":
        assert_close(gw[2**22 - 1], grad[0] + grad[1], scale=2.0)
        assert_close(gw[3_355_444], grad[0])
        assert_close(gw[1], grad[1])
    else:
        bag0 = vals[[pos[2**22 - 1], pos[3_355_444]]].float()
        winner0 = torch.where(bag0[0] >= bag0[1], 2**22 - 1, 3_355_444)
        for d in range(0, BIG_DIM, 37):
            assert gw[int(winner0[d]), d] == grad[0, d] + (
                grad[1, d] if (int(winner0[d]) == 2**22 - 1 and
                               vals[pos[2**22 - 1], d] >= vals[pos[1], d]) else 0)
    touched = torch.tensor([2**22 - 1, 3_355_444, 1], device=device)
    mask = torch.ones(BIG_ROWS, dtype=torch.bool, device=device)
    mask[touched] = False
    # Every other row (sampled in blocks, cheap) is exactly zero.
    for start in (0, 2**21, 3_355_000, 2**22 - 1000):
        block = gw[start:start + 1000][mask[start:start + 1000]]
        assert torch.count_nonzero(block) == 0
    del w, gw
    _free(device)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bag_of_a_million_entries(device, mode):
    n = 10**6
    g = torch.Generator().manual_seed(2)
    w64 = torch.randn(1000, 8, generator=g, dtype=torch.float64)
    inp = torch.randint(0, 1000, (n,), generator=g)
    offs = torch.tensor([0, 0, n])  # an empty bag, the big one, an empty last bag
    w = w64.detach().clone().to(device).requires_grad_(True)
    out = mybag.embedding_bag(inp.to(device), w, offs.to(device), mode=mode)
    block = w64[inp]
    big = {"sum": block.sum(0), "mean": block.mean(0), "max": block.max(0).values}[mode]
    expected = torch.stack([torch.zeros(8, dtype=torch.float64), big,
                            torch.zeros(8, dtype=torch.float64)])
    assert_close(out, expected, scale=100.0)  # 1e6 float64 additions
    grad = torch.randn(3, 8, generator=g, dtype=torch.float64)
    out.backward(grad.to(device))
    tw = w64.clone().requires_grad_(True)
    F.embedding_bag(inp, tw, offs, mode=mode).backward(grad)
    assert_close(w.grad, tw.grad, scale=100.0)
    counts = torch.bincount(inp, minlength=1000).double()
    if mode != "max":
        want = counts[:, None] * grad[1][None] / (n if mode == "mean" else 1)
        assert_close(w.grad, want, scale=100.0)


@pytest.mark.parametrize("form", ["1d", "2d"])
def test_a_million_bags(device, form):
    b = 10**6
    g = torch.Generator().manual_seed(3)
    w64 = torch.randn(5000, 4, generator=g, dtype=torch.float64)
    if form == "1d":
        inp = torch.randint(0, 5000, (2 * b,), generator=g)
        offs = torch.arange(0, 2 * b, 2)
        offs[b // 2] = offs[b // 2 - 1]  # one empty bag in the middle
    else:
        inp = torch.randint(0, 5000, (b, 2), generator=g)
        offs = None
    grad = torch.randn(b, 4, generator=g, dtype=torch.float64)
    for mode in ("sum", "max"):
        w = w64.detach().clone().to(device).requires_grad_(True)
        out = mybag.embedding_bag(inp.to(device), w, None if offs is None else offs.to(device),
                                  mode=mode)
        tw = w64.clone().requires_grad_(True)
        theirs = F.embedding_bag(inp, tw, offs, mode=mode)
        assert out.shape == (b, 4)
        assert_close(out, theirs)
        out.backward(grad.to(device))
        theirs.backward(grad)
        assert_close(w.grad, tw.grad, scale=10.0)
    _free(device)


def test_int32_indices_at_their_limit(device):
    # 2**31 rows of one float16: 4 GiB of address space, a few pages resident.
    _device_ok(device, INT32_ROWS * 2)
    top = 2**31 - 1
    rows = [0, 5, top - 1, top]
    w, vals = big_table(device, rows, rows=INT32_ROWS, dim=1)
    inp = torch.tensor([top, 5, top - 1, top, 0], dtype=torch.int32, device=device)
    offs = torch.tensor([0, 2, 4], dtype=torch.int32, device=device)
    v = {r: vals[k].double().cpu() for k, r in enumerate(rows)}
    out = mybag.embedding_bag(inp, w, offs, mode="sum")
    expected = torch.stack([v[top] + v[5], v[top - 1] + v[top], v[0]])
    assert_close(out, expected.half())
    out = mybag.embedding_bag(inp, w, offs, mode="max", padding_idx=-1)  # padding = row top
    expected = torch.stack([v[5], v[top - 1], v[0]])
    assert_close(out, expected.half())
    # Sparse backward: the rows come back as int64 indices, untruncated.
    wl = w.requires_grad_(True)
    mybag.embedding_bag(inp, wl, offs, mode="mean", sparse=True).backward(
        torch.ones(3, 1, dtype=torch.float16, device=device))
    sg = wl.grad.coalesce()
    assert sg.indices()[0].tolist() == [0, 5, top - 1, top]
    assert_close(sg.values().flatten(), torch.tensor([1.0, 0.5, 0.5, 1.0]).half())
    wl.requires_grad_(False)
    # One past the limit is out of range (int64 index; an int32 cannot hold it).
    with pytest.raises(IndexError):
        mybag.embedding_bag(torch.tensor([2**31], device=device), w,
                            torch.tensor([0], device=device))
    with pytest.raises(IndexError):
        mybag.embedding_bag(torch.tensor([-(2**31)], dtype=torch.int32, device=device), w,
                            torch.tensor([0], dtype=torch.int32, device=device))
    del w, wl, sg
    _free(device)


@needs_scale
def test_int32_offsets_at_their_limit(device):
    # An input of 2**31 - 1 int32 entries (8 GiB) in bags whose offsets reach 2**31 - 1.
    n = 2**31 - 1
    _device_ok(device, n * 4 * 2)
    w = torch.tensor([[1.0], [2.0]], dtype=torch.float64, device=device)
    inp = torch.zeros(n, dtype=torch.int32, device=device)
    inp[-3:] = 1
    offs = torch.tensor([0, n - 3, n - 1, n], dtype=torch.int32, device=device)
    out = mybag.embedding_bag(inp, w, offs, mode="sum")
    assert out[:, 0].tolist() == [float(n - 3), 4.0, 2.0, 0.0]
    out = mybag.embedding_bag(inp, w, offs, mode="mean", include_last_offset=True)
    assert out[:, 0].tolist() == [1.0, 2.0, 2.0]
    del inp
    _free(device)
