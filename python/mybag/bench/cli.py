"""Command line of ``python -m mybag.bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mybag.bench import api


# Preformatted (RawDescriptionHelpFormatter), so wrapped for an 80-column terminal.
_DESCRIPTION = """\
Times PyTorch's torch.nn.functional.embedding_bag and mybag.embedding_bag
side by side on a grid of cases (table size, embedding width, bag size,
mode, dtype; forward, and forward + backward). Each case first checks that
mybag gives torch's answer; only then are the two timed, call by call in
turn, and their median times compared. It prints one line per case (times,
speed-up = torch time / mybag time, bandwidths) and a summary.
See docs/benchmarks.md."""

_EPILOG = """\
files:
  With --out DIR it writes DIR/results.csv, DIR/results.json (every figure,
  the settings and the machine) and DIR/speedup.png (the speed-up per case;
  needs matplotlib), and prints the path of each file it writes.
  --replot DIR redraws DIR/speedup.png from DIR/results.json.

exit status:
  0  every case ran (or --list, --replot succeeded)
  1  mybag's answer differed from torch's on some case (listed under
     MISMATCHES, not timed), or --replot could not draw the plot
  2  a wrong command line, a --filter that matches no case, --device cuda
     without a GPU, or no results.json for --replot"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mybag.bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a ~20-case subset, under a minute")
    parser.add_argument(
        "--filter", metavar="TEXT", help="only the cases whose name contains TEXT (see --list)"
    )
    parser.add_argument("--repeats", type=int, metavar="N", help="timed calls per implementation")
    parser.add_argument("--threads", type=int, metavar="N", help="torch.set_num_threads(N)")
    parser.add_argument("--out", metavar="DIR", help="write results.csv, results.json, speedup.png")
    parser.add_argument(
        "--replot", metavar="DIR",
        help="run nothing: redraw speedup.png from DIR/results.json (into --out DIR if given)",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    # Three tiny cases in about a second, for the program's own tests; not a benchmark.
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _fail(message: str) -> int:
    print(f"python -m mybag.bench: {message}", file=sys.stderr)
    return 2


def _report_written(written: api.Written) -> None:
    for path in written.files:
        print(f"wrote {path}")
    for note in written.notes:
        print(note, file=sys.stderr)


def _replot(directory: str, out: str | None) -> int:
    try:
        written = api.replot(directory, out)
    except FileNotFoundError as error:
        return _fail(f"--replot: {error.strerror}: {error.filename}")
    _report_written(written)
    return 0 if written.files else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; exit status 1 if mybag gave a wrong answer on some case, 2 if the
    command line selects nothing to run."""
    args = parse_args(argv)
    if args.replot:
        return _replot(args.replot, args.out)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return _fail("--device cuda, but torch sees no GPU")
    try:
        cases = api.cases_for(args.device, args.quick, args.tiny, args.filter)
    except api.NoCaseError as error:
        return _fail(str(error))
    if args.list:
        for case in cases:
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
        _report_written(api.write_outputs(report, args.out))
    return 1 if report["summary"]["mismatches"] else 0
