"""``python -m mybag``: runs the README's examples through mybag and torch side by side, then
checks mybag against ``torch.nn.functional.embedding_bag`` over a grid of small cases.

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
from mybag._library import build_note

NUM_EMBEDDINGS = 10
EMBEDDING_DIM = 5
PADDING_IDX = 3
MODES = ("sum", "mean", "max")
FORMS = ("1-D", "1-D CSR", "2-D")
DTYPES = (torch.float32, torch.float64)


def seed_examples() -> None:
    """The README's two example calls, through mybag and through torch, printed side by side."""
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
    note = build_note()
    return f"{', '.join(devices) or 'none'} ({gpu})" + (f"; build: {note}" if note else "")


# The help is the first thing a new user reads: plain words, what runs, what the output and the
# exit status mean. Kept as preformatted paragraphs (RawDescriptionHelpFormatter).
DESCRIPTION = """\
Checks that mybag computes the same results as PyTorch's own embedding_bag.

It does two things:

1. Runs the two example calls from the README ("Usage") through mybag
   (torch.ops.mybag.embedding_bag) and through PyTorch
   (torch.nn.functional.embedding_bag) side by side, and prints both
   results one after the other so that you can compare them by eye.

2. Compares mybag with PyTorch automatically over a grid of small random
   cases: every mode (sum, mean, max), three ways of passing the indices
   (1-D with offsets, 1-D with include_last_offset=True, 2-D), with and
   without padding_idx and per_sample_weights, in float32 and float64.
   For each case it compares the output (forward) and the gradients
   (of the weight and of per_sample_weights) with torch.testing.assert_close.
"""

EPILOG = """\
output:
  A first line with the versions of mybag and torch and the library file
  that was loaded, then which devices (CPU, CUDA) have mybag kernels.
  Then the two examples, then one line per case: "ok" when mybag matches
  PyTorch, "FAIL" followed by what differed, and the case's settings
  ("input=1-D CSR" is 1-D input with include_last_offset=True). The last
  line counts the cases that match, e.g. "parity: 48/48 cases match ...".

exit status:
  0  every case matches PyTorch
  1  at least one case differs or raised an error (see its FAIL line)
  2  the command line was wrong

To time mybag against PyTorch instead, run: python -m mybag.bench --help
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mybag",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help='leave out the "ok" lines of matching cases'
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cases (step 2)")
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
