"""What only CUDA has: the value-check switch (tested on every machine, GPU or not) and, on a
GPU, determinism, hot rows against the CPU, bfloat16 max backward, side streams, CUDA graph
capture, out-of-range indices contained with the checks off, and the quantized kernel's load
widths (a table at any alignment).

Everything else runs on CUDA through the ``device`` fixture in the operator's property files
(tests/op/): parity (with CUDA against CPU), gradients, errors (CUDA errors read like the CPU's),
... ; tests/op/test_opcheck.py checks that each op with a CPU kernel has a CUDA kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys

import mybag
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    FLOAT_DTYPES,
    MODES,
    assert_close,
    make_case,
    random_grad,
    requires_cuda,
)

# ---------------------------------------------------------------------------------------------
# Without a GPU


def test_value_check_switch_sets_and_restores():
    assert mybag.cuda_value_checks_enabled()
    assert mybag.set_cuda_value_checks(False) is True
    try:
        assert not mybag.cuda_value_checks_enabled()
        with mybag.cuda_value_checks(True):
            assert mybag.cuda_value_checks_enabled()
        assert not mybag.cuda_value_checks_enabled()
    finally:
        assert mybag.set_cuda_value_checks(True) is False
    with pytest.raises(RuntimeError, match="boom"), mybag.cuda_value_checks(False):
        raise RuntimeError("boom")
    assert mybag.cuda_value_checks_enabled()


def test_value_check_switch_reads_the_environment():
    code = "import mybag; print(mybag.cuda_value_checks_enabled())"
    for value, expected in [("0", "False"), ("1", "True")]:
        env = dict(os.environ, MYBAG_CUDA_VALUE_CHECKS=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out[-1] == expected, (value, out)


def test_value_check_switch_is_scriptable():
    @torch.jit.script
    def toggle(enabled: bool) -> bool:
        return torch.ops.mybag._set_cuda_value_checks(enabled)

    assert toggle(False) is True
    assert toggle(True) is False


# ---------------------------------------------------------------------------------------------
# On a GPU

def _hot_row_case(mode, dtype, device, seed=0):
    """Zipf-like input: row 7 is a third of all entries (many chunks in the backward), other
    rows repeat a few times; offsets with empty and long bags."""
    g = torch.Generator().manual_seed(seed)
    n = 6000
    input = torch.randint(0, 500, (n,), generator=g)
    input[torch.rand(n, generator=g) < 0.33] = 7
    cuts = torch.sort(torch.randint(0, n, (199,), generator=g)).values
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), cuts])
    weight = torch.randn(500, 96, generator=g).to(dtype)
    psw = torch.rand(n, generator=g).to(dtype) if mode == "sum" else None
    return input.to(device), offsets.to(device), weight.to(device), psw


@requires_cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d)[6:])
def test_cuda_is_deterministic(mode, dtype):
    """Same bits on every run: forward, dense and sparse gradients, per_sample_weights grads."""
    input, offsets, weight, psw = _hot_row_case(mode, dtype, "cuda")
    psw = None if psw is None else psw.cuda()
    grad_output = random_grad((offsets.numel(), 96), dtype, "cuda")

    def run(sparse):
        w = weight.clone().requires_grad_(True)
        p = None if psw is None else psw.clone().requires_grad_(True)
        out = mybag.embedding_bag(input, w, offsets, mode=mode, sparse=sparse,
                                  per_sample_weights=p)
        out.backward(grad_output)
        grad = w.grad.coalesce().values() if sparse else w.grad
        return [out, grad] + ([p.grad] if p is not None else [])

    for sparse in [False] if mode == "max" else [False, True]:
        first, second = run(sparse), run(sparse)
        for a, b in zip(first, second):
            assert torch.equal(a, b)


@requires_cuda
@pytest.mark.parametrize("mode", MODES)
def test_cuda_hot_rows_match_cpu(mode):
    input, offsets, weight, psw = _hot_row_case(mode, torch.float64, "cpu")
    grad_output = random_grad((offsets.numel(), 96), torch.float64)
    results = []
    for device in ["cpu", "cuda"]:
        w = weight.to(device).requires_grad_(True)
        out = mybag.embedding_bag(input.to(device), w, offsets.to(device), mode=mode,
                                  per_sample_weights=None if psw is None else psw.to(device))
        out.backward(grad_output.to(device))
        results.append((out.detach().cpu(), w.grad.cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-12, atol=1e-12)


@requires_cuda
def test_bfloat16_max_backward_on_cuda():
    """torch's CUDA max backward has no bfloat16 kernel; mybag's matches its float32 result."""
    input, offsets, _, _ = _hot_row_case("max", torch.float32, "cuda")
    # Small integers are exact in bfloat16, so both dtypes pick the same winners.
    weight = torch.randint(-100, 100, (500, 96), generator=torch.Generator().manual_seed(1))
    weight = weight.float().cuda()
    grad_output = random_grad((offsets.numel(), 96), torch.bfloat16, "cuda").float()
    grads = []
    for dtype in [torch.float32, torch.bfloat16]:
        w = weight.to(dtype).requires_grad_(True)
        mybag.embedding_bag(input, w, offsets, mode="max").backward(grad_output.to(dtype))
        grads.append(w.grad.float())
    # Sums of the same bfloat16 values: float32 accumulation, one rounding to bfloat16.
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-2, atol=1e-2)


@requires_cuda
@pytest.mark.parametrize("mode", MODES)
def test_results_right_on_a_side_stream(mode):
    input, offsets, weight, psw = _hot_row_case(mode, torch.float32, "cuda")
    psw = None if psw is None else psw.cuda()
    expected = mybag.embedding_bag(input, weight, offsets, mode=mode, per_sample_weights=psw)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        w = weight.clone().requires_grad_(True)
        out = mybag.embedding_bag(input, w, offsets, mode=mode, per_sample_weights=psw)
        out.sum().backward()
    stream.synchronize()
    assert torch.equal(out, expected)
    reference = weight.clone().requires_grad_(True)
    mybag.embedding_bag(input, reference, offsets, mode=mode, per_sample_weights=psw).sum().backward()
    assert torch.equal(w.grad, reference.grad)


@requires_cuda
@pytest.mark.parametrize("mode", MODES)
def test_cuda_graph_capture_of_forward_with_checks_off(mode):
    input, offsets, weight, psw = _hot_row_case(mode, torch.float32, "cuda")
    psw = None if psw is None else psw.cuda()
    static_input = input.clone()
    f = lambda: mybag.embedding_bag(static_input, weight, offsets, mode=mode,
                                    per_sample_weights=psw)
    with mybag.cuda_value_checks(False):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            f()  # warm-up outside the graph, as CUDA graphs need
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = f()
    for seed in range(3):
        new_input = torch.randint(0, weight.shape[0], input.shape,
                                  generator=torch.Generator().manual_seed(seed)).cuda()
        static_input.copy_(new_input)
        graph.replay()
        expected = mybag.embedding_bag(new_input, weight, offsets, mode=mode,
                                       per_sample_weights=psw)
        assert torch.equal(static_out, expected)


@requires_cuda
def test_capture_skips_the_checks_on_its_own():
    """With the switch on, a capture still works: the sync-needing checks stand down."""
    case = make_case(mode="sum", device="cuda")
    f = lambda: mybag.embedding_bag(case.input, case.weight, case.offsets, mode="sum")
    f()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = f()
    graph.replay()
    assert torch.equal(out, f())


@requires_cuda
@pytest.mark.parametrize("mode", MODES)
def test_checks_off_contains_bad_indices(mode):
    """With checks off, out-of-range indices are skipped like padding, bad offsets clamped;
    nothing is read or written out of bounds (compute-sanitizer checks the latter)."""
    weight = torch.randn(10, 8, device="cuda", requires_grad=True)
    input = torch.tensor([1, 10, 2, -5, 3, 1_000_000], device="cuda")
    offsets = torch.tensor([0, 2, 4], device="cuda")
    with mybag.cuda_value_checks(False):
        out = mybag.embedding_bag(input, weight, offsets, mode=mode,
                                  sparse=mode != "max")
        out.sum().backward()
        torch.cuda.synchronize()
    # The same as if the bad entries were padding rows.
    good = torch.tensor([1, 0, 2, 0, 3, 0], device="cuda")
    w2 = weight.detach().clone()
    w2[0] = 0.0
    expected = F.embedding_bag(good, w2, offsets, mode=mode, padding_idx=0)
    assert_close(out.detach(), expected)
    grad = weight.grad.to_dense() if weight.grad.is_sparse else weight.grad
    assert grad[[0, 4, 5, 6, 7, 8, 9]].abs().sum() == 0
    assert grad[[1, 2, 3]].abs().sum() > 0
    with mybag.cuda_value_checks(False):
        bad_offsets = torch.tensor([0, 9, 1], device="cuda")
        mybag.embedding_bag(input.clamp(0, 9), weight, bad_offsets, mode=mode)
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# The quantized forward's CUDA kernel: its load width depends on the table's alignment, which
# only CUDA has (tests/op/test_quantized.py covers its values on every device).


def _quantized_case(bits, dim, rows=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    packed = mybag.quantize_rowwise(torch.randn(rows, dim, generator=g), bits)
    input = torch.randint(0, rows, (300,), generator=g)
    offsets = torch.tensor([0, 0, 7, 40, 41, 150, 299])
    return packed, input, offsets


@requires_cuda
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dim", [2, 6, 8, 14, 24, 56, 100, 120, 130, 248, 512])
@pytest.mark.parametrize("shift", [0, 1, 2, 4, 8, 12])
@pytest.mark.parametrize("mode", MODES)
def test_quantized_any_table_alignment_matches_cpu(bits, dim, shift, mode):
    """The kernel reads rows 16, 8, 4 or 1 bytes at a time, by the table's base address and row
    length: a table starting `shift` bytes into a buffer gets each width; every one gives the
    CPU's bits."""
    packed, input, offsets = _quantized_case(bits, dim)
    buffer = torch.zeros(packed.numel() + shift, dtype=torch.uint8, device="cuda")
    table = buffer[shift:].view(packed.shape)
    table.copy_(packed)
    psw = torch.rand(input.shape) if mode == "sum" else None
    expected = mybag.quantized_embedding_bag(input, packed, bits, offsets, mode=mode,
                                             per_sample_weights=psw, padding_idx=3)
    out = mybag.quantized_embedding_bag(input.cuda(), table, bits, offsets.cuda(), mode=mode,
                                        per_sample_weights=None if psw is None else psw.cuda(),
                                        padding_idx=3)
    assert torch.equal(out.cpu(), expected)


@requires_cuda
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("mode", MODES)
def test_quantized_checks_off_contains_bad_indices(bits, mode):
    """With checks off, out-of-range indices are skipped like padding and bad offsets clamped;
    nothing is read out of bounds (compute-sanitizer checks that)."""
    packed, input, offsets = _quantized_case(bits, 64)
    input = input.clamp(min=1)  # row 0 stands for the bad entries below
    bad = input.clone()
    bad[[5, 60, 200]] = torch.tensor([-1, 50, 10**9])
    with mybag.cuda_value_checks(False):
        out = mybag.quantized_embedding_bag(bad.cuda(), packed.cuda(), bits, offsets.cuda(),
                                            mode=mode)
        torch.cuda.synchronize()
    # The same as the bad entries naming a padding row (skipped, not counted).
    padded = input.clone()
    padded[[5, 60, 200]] = 0
    expected = mybag.quantized_embedding_bag(padded, packed, bits, offsets, mode=mode,
                                             padding_idx=0)
    assert torch.equal(out.cpu(), expected)
    with mybag.cuda_value_checks(False):
        bad_offsets = torch.tensor([0, 290, 1, 400], device="cuda")
        mybag.quantized_embedding_bag(input.cuda(), packed.cuda(), bits, bad_offsets, mode=mode)
        torch.cuda.synchronize()
