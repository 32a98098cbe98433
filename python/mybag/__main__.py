"""``python -m mybag``: runs the examples from the original issue through mybag and torch, then a
quick parity check against ``torch.nn.functional.embedding_bag``.

Exit status 0 when every case matches torch (output and gradients), 1 otherwise.
"""

import argparse
import itertools
import sys
import time
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import mybag  # noqa: F401  (loads the library that registers torch.ops.mybag)

NUM_EMBEDDINGS = 10
EMBEDDING_DIM = 5
PADDING_IDX = 3
MODES = ("sum", "mean", "max")
FORMS = ("1-D", "1-D CSR", "2-D")
DTYPES = (torch.float32, torch.float64)


def seed_examples() -> None:
    """The two calls from the issue, through mybag and through torch, printed side by side."""
    weight = torch.tensor(
        [
            [0.1, 0.2, 0.3],
            [0.0, 0.1, 0.0],
            [0.4, 0.0, 0.5],
            [0.2, 0.3, 0.1],
            [0.7, 0.9, 0.8],
            [0, 0, 0],
        ]
    )
    calls = [
        (
            "1-D input, offsets [0, 2], mode='mean'",
            dict(input=torch.tensor([1, 2, 0, 3, 4]), offsets=torch.tensor([0, 2])),
            dict(mode="mean"),
        ),
        (
            "2-D input, mode='mean', padding_idx=5",
            dict(input=torch.tensor([[1, 2, 5], [0, 3, 4]]), offsets=None),
            dict(mode="mean", padding_idx=5),
        ),
    ]
    for title, tensors, options in calls:
        print(f"== {title}")
        ours = torch.ops.mybag.embedding_bag(
            tensors["input"], weight, tensors["offsets"], **options
        )
        theirs = F.embedding_bag(tensors["input"], weight, tensors["offsets"], **options)
        print(f"torch.ops.mybag.embedding_bag:\n{ours}")
        print(f"torch.nn.functional.embedding_bag:\n{theirs}")
        print()


def _case_inputs(
    form: str, padding: bool, dtype: torch.dtype, generator: torch.Generator
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """A small table and bags that include repeated indices, padding entries (when a
    padding_idx is used) and, for 1-D input, an empty bag."""
    weight = torch.randn(NUM_EMBEDDINGS, EMBEDDING_DIM, dtype=dtype, generator=generator)
    if form == "2-D":
        input = torch.randint(0, NUM_EMBEDDINGS, (4, 3), generator=generator)
        input[0, 0] = input[0, 2] = 7  # the same row twice in one bag
        if padding:
            input[1, 1] = PADDING_IDX
            input[2, :] = PADDING_IDX  # a bag holding only padding
        offsets = None
    else:
        input = torch.randint(0, NUM_EMBEDDINGS, (12,), generator=generator)
        input[0] = input[2] = 7
        if padding:
            input[4] = input[8] = input[9] = PADDING_IDX
        offsets = torch.tensor([0, 3, 3, 7, 10])  # bag 1 is empty
        if form == "1-D CSR":  # include_last_offset=True: B + 1 offsets for B bags
            offsets = torch.tensor([0, 3, 3, 7, 10, 12])
    return input, offsets, weight


def _run_case(
    mode: str, form: str, padding: bool, weighted: bool, dtype: torch.dtype, seed: int
) -> Optional[str]:
    """Runs one case through both libraries; returns None on a match, else what differed."""
    generator = torch.Generator().manual_seed(seed)
    input, offsets, weight = _case_inputs(form, padding, dtype, generator)
    psw = torch.randn(input.shape, dtype=dtype, generator=generator) if weighted else None
    padding_idx = PADDING_IDX if padding else None

    results = []
    for function in (torch.ops.mybag.embedding_bag, F.embedding_bag):
        leaf_weight = weight.clone().requires_grad_(True)
        leaf_psw = psw.clone().requires_grad_(True) if psw is not None else None
        output = function(
            input,
            leaf_weight,
            offsets,
            mode=mode,
            per_sample_weights=leaf_psw,
            padding_idx=padding_idx,
            include_last_offset=(form == "1-D CSR"),
        )
        grad_output = torch.randn(
            output.shape, dtype=dtype, generator=torch.Generator().manual_seed(seed + 1)
        )
        output.backward(grad_output)
        results.append((output, leaf_weight.grad, leaf_psw.grad if leaf_psw is not None else None))

    (ours, theirs) = results
    for what, a, b in zip(("output", "weight.grad", "per_sample_weights.grad"), ours, theirs):
        try:
            torch.testing.assert_close(a, b)
        except AssertionError as error:
            first_line = str(error).strip().splitlines()[0]
            return f"{what} differs: {first_line}"
    return None


def parity(verbose: bool = True, seed: int = 0) -> Tuple[int, int]:
    """Compares mybag with torch over modes x input forms (1-D with offsets, 1-D with
    include_last_offset, 2-D) x padding_idx x per_sample_weights x dtypes, forward and
    backward. Returns (passed, total)."""
    passed = total = 0
    grid = itertools.product(MODES, FORMS, (False, True), (False, True), DTYPES)
    for index, (mode, form, padding, weighted, dtype) in enumerate(grid):
        if weighted and mode != "sum":
            continue  # per_sample_weights is defined for mode="sum" only
        total += 1
        label = (
            f"mode={mode:<4} input={form:<7} "
            f"padding_idx={str(PADDING_IDX if padding else None):<4} "
            f"per_sample_weights={'yes' if weighted else 'no ':<3} "
            f"dtype={str(dtype).replace('torch.', '')}"
        )
        try:
            problem = _run_case(mode, form, padding, weighted, dtype, seed + 10 * index)
        except Exception as error:  # a crash in one case must not hide the others
            problem = f"raised {type(error).__name__}: {error}"
        if problem is None:
            passed += 1
            if verbose:
                print(f"ok    {label}")
        else:
            print(f"FAIL  {label}: {problem}")
    return passed, total


def kernel_summary() -> str:
    """Which device kernels the loaded library registered, and whether a GPU is here to run the
    CUDA ones (the build may include them without one)."""
    registered = {
        key: any(name.startswith("mybag::")
                 for name in torch._C._dispatch_get_registrations_for_dispatch_key(key))
        for key in ("CPU", "CUDA")
    }
    devices = [key for key, present in registered.items() if present]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU visible"
    return f"{', '.join(devices) or 'none'} ({gpu})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mybag",
        description="Runs the issue's examples and a parity check of torch.ops.mybag."
        "embedding_bag against torch.nn.functional.embedding_bag (forward and gradients).",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print failing cases only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = parser.parse_args(argv)

    print(f"mybag {mybag.__version__}, torch {torch.__version__}, library {mybag.library_path()}")
    print(f"kernels: {kernel_summary()}")
    print()
    seed_examples()
    start = time.perf_counter()
    passed, total = parity(verbose=not args.quiet, seed=args.seed)
    elapsed = time.perf_counter() - start
    print()
    print(
        f"parity: {passed}/{total} cases match torch.nn.functional.embedding_bag "
        f"(forward and gradients, {elapsed:.1f} s)"
    )
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
