"""``python -m mybag.bench``: mybag against ``torch.nn.functional.embedding_bag``, side by side.

For every case of a grid (table size, embedding width D, bag size, uniform or Zipf indices,
mode, padding_idx, per_sample_weights, dtype; forward, forward + backward with a dense or a
sparse gradient), in one process:

1. builds the inputs once and gives both implementations the very same tensors;
2. checks that mybag's output (forward) or weight gradient (backward) equals torch's, with
   ``torch.testing.assert_close`` (loose for half types), so that a wrong answer is never timed;
3. calls torch, mybag and a gather ceiling in turn, call by call (warm-up first; forward under
   ``torch.no_grad()``; ``.grad = None`` before every training step), and takes medians;
4. reports torch and mybag times, the speed-up (torch time / mybag time), achieved GB/s under the
   byte model of :mod:`mybag.bench.traffic`, and that GB/s as a fraction of two ceilings
   measured in the same run (:mod:`mybag.bench.timing`): a large streaming copy, and a plain
   gather of exactly the rows the case reads.

Command line: ``python -m mybag.bench [--device cpu|cuda] [--quick] [--filter TEXT] [--list]
[--repeats N] [--threads N] [--out DIR] [--replot DIR]``; see ``--help`` and docs/benchmarks.md.
From Python::

    import mybag.bench
    rows = mybag.bench.run(device="cpu", quick=True)   # list of dicts, one per case
    report = mybag.bench.benchmark(quick=True)        # plus machine, ceilings, summary
"""

from mybag.bench.api import (
    NoCaseError,
    Written,
    benchmark,
    cases_for,
    format_report,
    grid_for,
    replot,
    run,
    select,
    write_outputs,
)
from mybag.bench.grid import Case
from mybag.bench.runner import MismatchError

__all__ = [
    "Case",
    "MismatchError",
    "NoCaseError",
    "Written",
    "benchmark",
    "cases_for",
    "format_report",
    "grid_for",
    "replot",
    "run",
    "select",
    "write_outputs",
]
