"""Command line of ``python -m mybag.bench``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mybag.bench import api


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mybag.bench",
        description="Times torch.nn.functional.embedding_bag and mybag.embedding_bag side by "
        "side (interleaved, medians) and reports speed-up, GB/s and fractions of the copy and "
        "gather bandwidth ceilings measured in the same run.",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a ~20-case subset, under a minute")
    parser.add_argument("--filter", metavar="SUBSTRING", help="only cases whose name contains it")
    parser.add_argument("--repeats", type=int, metavar="N", help="timed calls per implementation")
    parser.add_argument("--threads", type=int, metavar="N", help="torch.set_num_threads(N)")
    parser.add_argument("--out", metavar="DIR", help="write results.csv, results.json, speedup.png")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    # Three tiny cases in about a second, for the program's own tests; not a benchmark.
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; exit status 1 if mybag gave a wrong answer on some case."""
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("python -m mybag.bench: --device cuda, but torch sees no GPU", file=sys.stderr)
            return 2
    grid = api.grid_for(args.quick, args.tiny)
    if args.list:
        for case in api.select(grid, args.filter, args.device):
            print(case.name)
        return 0
    report = api.benchmark(
        device=args.device,
        quick=args.quick,
        tiny=args.tiny,
        filter=args.filter,
        repeats=args.repeats,
        progress=not args.no_progress,
        on_mismatch="skip",
    )
    print(api.format_report(report))
    if args.out:
        for note in api.write_outputs(report, args.out):
            print(note, file=sys.stderr)
        print(f"wrote {os.path.join(args.out, 'results.csv')} and results.json")
    return 1 if report["summary"]["mismatches"] else 0
