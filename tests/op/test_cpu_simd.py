"""The CPU's SIMD kernels against its portable loops and against torch.

The AVX2 kernels (csrc/mybag/cpu/forward_avx2.cpp) and the AVX-512 ones (forward_avx512.cpp, sum
and mean) add in the same order with the same operations as the portable loops
(forward_portable.cpp), so all must give the same bits. MYBAG_CPU_SIMD (see csrc/mybag/cpu/isa.h)
picks the kernels: "0" the portable loops, "avx2" the AVX2 kernels even on an AVX-512 CPU, unset
the best the CPU has. Subprocesses compute every case each way and the results are compared bit
for bit (on a CPU without AVX-512 the default and "avx2" runs are the same kernels). The cases cover the widths where the kernels change
shape (partial vectors, one and several column tiles of either kernel), strided tables, padding,
per_sample_weights, empty bags and NaN in max mode, in every dtype.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mybag

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DIMS = [1, 7, 8, 16, 33, 64, 65, 100, 129, 255, 256, 513]


def make_cases():
    gen = torch.Generator().manual_seed(1234)
    cases = []
    for dtype in DTYPES:
        for dim in DIMS:
            for mode in ["sum", "mean", "max"]:
                for variant in ["plain", "padding", "psw", "strided", "int32", "nan"]:
                    if variant == "psw" and mode != "sum":
                        continue
                    if variant == "nan" and mode != "max":
                        continue
                    rows = 50
                    weight = torch.randn(rows, dim, generator=gen).to(dtype)
                    if variant == "strided":
                        weight = torch.randn(dim, rows, generator=gen).to(dtype).t()
                    if variant == "nan":
                        weight[torch.rand(rows, dim, generator=gen) < 0.05] = float("nan")
                    # Bags of lengths 0 to 40, ties included (rows repeat).
                    lengths = torch.randint(0, 41, (12,), generator=gen)
                    lengths[3] = 0
                    n = int(lengths.sum())
                    input = torch.randint(0, rows, (n,), generator=gen)
                    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
                    padding_idx = None
                    if variant == "padding":
                        padding_idx = 3
                        input[::3] = 3
                    if variant == "int32":
                        input, offsets = input.int(), offsets.int()
                    psw = torch.rand(n, generator=gen).to(dtype) if variant == "psw" else None
                    name = f"{str(dtype)[6:]}-D{dim}-{mode}-{variant}"
                    cases.append((name, weight, input, offsets, mode, padding_idx, psw))
    return cases


def run_cases():
    """Forward outputs (and max winners, and sparse gradient values) of every case."""
    results = {}
    for name, weight, input, offsets, mode, padding_idx, psw in make_cases():
        out, max_indices = torch.ops.mybag._embedding_bag_forward(
            weight, input, offsets, psw, {"sum": 0, "mean": 1, "max": 2}[mode], padding_idx,
            False, False, False)
        results[name + "/out"] = out
        if mode == "max":
            results[name + "/winners"] = max_indices
        else:
            grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
            results[name + "/per_entry"] = torch.ops.mybag._embedding_bag_per_entry_grad(
                grad, input, offsets, psw, weight.shape[0], {"sum": 0, "mean": 1}[mode],
                padding_idx, False, False)
    return results


def bits(t):
    if t.is_floating_point():
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def results_with(simd_setting, path):
    """run_cases() in a subprocess with MYBAG_CPU_SIMD=simd_setting (None: unset)."""
    env = dict(os.environ)
    env.pop("MYBAG_CPU_SIMD", None)
    if simd_setting is not None:
        env["MYBAG_CPU_SIMD"] = simd_setting
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import mybag, test_cpu_simd; "
        "torch.save(test_cpu_simd.run_cases(), sys.argv[2])"
    )
    subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)), str(path)],
        env=env, check=True)
    return torch.load(path)


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    return results_with("0", tmp_path_factory.mktemp("simd") / "portable.pt")


@pytest.mark.parametrize("simd_setting", [None, "avx2"], ids=["best", "avx2"])
def test_simd_matches_portable_loops_bit_for_bit(portable, simd_setting, tmp_path):
    simd = results_with(simd_setting, tmp_path / "simd.pt")
    assert portable.keys() == simd.keys()
    mismatched = [k for k in simd if not torch.equal(bits(simd[k]), bits(portable[k]))]
    assert not mismatched, f"SIMD and portable results differ: {mismatched[:10]}"


@pytest.mark.parametrize("name, weight, input, offsets, mode, padding_idx, psw",
                         make_cases(), ids=lambda x: x if isinstance(x, str) else "")
def test_against_torch(name, weight, input, offsets, mode, padding_idx, psw):
    if "nan" in name:
        pytest.skip("torch keeps a NaN only when it comes first (docs/spec.md §3)")
    expected = F.embedding_bag(input.long(), weight, offsets.long(), mode=mode,
                               padding_idx=padding_idx, per_sample_weights=psw)
    got = mybag.embedding_bag(input, weight, offsets, mode=mode, padding_idx=padding_idx,
                              per_sample_weights=psw)
    tol = {torch.float16: 1e-2, torch.bfloat16: 2e-2}.get(weight.dtype)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("bad", [-1, 100])
def test_index_checked_in_kernel_names_first_bad_entry(mode, bad):
    # The SIMD kernels check indices as they read them; the error must still name the first bad
    # entry, whichever task met one first.
    weight = torch.randn(100, 33)
    input = torch.randint(0, 100, (4000,))
    input[2500] = bad
    input[3900] = 100
    offsets = torch.arange(0, 4000, 10)
    with pytest.raises((IndexError, RuntimeError), match="2500"):
        mybag.embedding_bag(input, weight, offsets, mode=mode)


def test_index_checked_when_no_bag_reads_it():
    weight = torch.randn(10, 4)
    with pytest.raises((IndexError, RuntimeError)):
        mybag.embedding_bag(torch.tensor([1, 12]), weight, torch.tensor([0]),
                            include_last_offset=True)
