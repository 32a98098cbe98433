"""Load: concurrent callers, thread counts and memory over many calls.

- 8 Python threads x 50 forward+backward calls each, on shared inputs and a shared weight, get
  results bit-identical (torch.equal) to a single-threaded run;
- results (forward, dense, sparse and per_sample_weights gradients, every mode) are
  bit-identical under torch.set_num_threads(1) and (2) (mybag is deterministic by design);
- 10**4 small forward+backward calls after a warm-up leave the resident set flat (RSS from
  /proc/self/statm; the bound and the measured growth are in docs/reliability.md).
"""

from __future__ import annotations

import gc
import os
import threading

import pytest
import torch

import mybag
from conftest import make_case, random_grad

THREADS = 8
CALLS_PER_THREAD = 50
RSS_CALLS = 10_000
RSS_BOUND_MB = 20.0


def _cases(device):
    # Enough bags and columns that at::parallel_for splits the work (grain ~32K elements).
    out = []
    for k, (mode, psw, sparse) in enumerate([("sum", True, False), ("mean", False, True),
                                             ("max", False, False), ("sum", False, True),
                                             ("mean", False, False)]):
        case = make_case(mode=mode, psw=psw, padding_idx=3 if mode != "max" else None,
                         num_embeddings=500, dim=64, num_bags=600, max_bag=40, seed=k,
                         device=device, empty_bags=True)
        out.append((case, sparse))
    return out


def _run(case, sparse, grad):
    w = case.weight.detach().requires_grad_(True)
    psw = case.per_sample_weights
    if psw is not None:
        psw = psw.detach().requires_grad_(True)
    out = mybag.embedding_bag(case.input, w, case.offsets, mode=case.mode, sparse=sparse,
                              per_sample_weights=psw, padding_idx=case.padding_idx)
    inputs = [w] + ([psw] if psw is not None else [])
    grads = torch.autograd.grad(out, inputs, grad)
    result = [out.detach()] + [g.coalesce() if g.is_sparse else g for g in grads]
    return [torch.cat([t.indices().flatten().double(), t.values().flatten().double()])
            if t.is_sparse else t for t in result]


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_threads_get_identical_results(device):
    cases = _cases(device)
    grads = [random_grad((c.num_bags, c.weight.shape[1]), c.weight.dtype, device, seed=i)
             for i, (c, _) in enumerate(cases)]
    expected = [_run(c, s, g) for (c, s), g in zip(cases, grads)]
    if device == "cuda":
        torch.cuda.synchronize()
    failures = []
    counts = [0] * THREADS
    start = threading.Barrier(THREADS)

    def worker(t):
        try:
            start.wait()
            for k in range(CALLS_PER_THREAD):
                i = (t + k) % len(cases)
                got = _run(cases[i][0], cases[i][1], grads[i])
                if device == "cuda":
                    torch.cuda.synchronize()
                if not _equal(got, expected[i]):
                    failures.append((t, k, i))
                counts[t] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append((t, repr(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not failures, failures[:5]
    assert sum(counts) == THREADS * CALLS_PER_THREAD


def test_results_do_not_depend_on_num_threads(device):
    cases = _cases(device)
    grads = [random_grad((c.num_bags, c.weight.shape[1]), c.weight.dtype, device, seed=i)
             for i, (c, _) in enumerate(cases)]
    # A half table too (float accumulation, rounded once) and a long-bag case.
    half = make_case(mode="sum", dtype=torch.float16, num_embeddings=300, dim=48, num_bags=800,
                     max_bag=30, seed=11, device=device)
    cases.append((half, False))
    grads.append(random_grad((half.num_bags, 48), torch.float16, device, seed=11))
    old = torch.get_num_threads()
    try:
        results = {}
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            results[n] = [_run(c, s, g) for (c, s), g in zip(cases, grads)]
    finally:
        torch.set_num_threads(old)
    for n in (2, 4):
        for i, (a, b) in enumerate(zip(results[1], results[n])):
            assert _equal(a, b), f"case {i}: 1 thread vs {n} threads differ"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(os.environ.get("MYBAG_SANITIZED") == "1",
                    reason="ASan's quarantine holds freed memory: RSS says nothing under it")
def test_memory_flat_over_many_calls(device):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(100, 16, generator=g).to(device).requires_grad_(True)
    inp = torch.randint(0, 100, (40,), generator=g).to(device)
    offs = torch.tensor([0, 5, 5, 17, 30], device=device)
    psw = torch.rand(40, generator=g).to(device).requires_grad_(True)
    variants = [
        dict(mode="sum", per_sample_weights=psw),
        dict(mode="mean", sparse=True),
        dict(mode="max"),
        dict(mode="mean", scale_grad_by_freq=True, padding_idx=0),
    ]

    def step(k):
        out = mybag.embedding_bag(inp, w, offs, **variants[k % len(variants)])
        out.sum().backward()
        w.grad = None
        psw.grad = None
        if k % 50 == 0:  # and the error path, which must not leak either
            try:
                mybag.embedding_bag(inp + 100, w, offs)
            except IndexError:
                pass

    for k in range(1000):  # warm-up: allocator caches, lazy init
        step(k)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        cuda_before = torch.cuda.memory_allocated()
    before = _rss_mb()
    for k in range(RSS_CALLS):
        step(k)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= cuda_before
    growth = _rss_mb() - before
    print(f"\n[load:{device}] RSS {before:.1f} MB -> growth {growth:+.2f} MB over "
          f"{RSS_CALLS} forward+backward calls")
    assert growth < RSS_BOUND_MB, f"resident memory grew by {growth:.1f} MB"
