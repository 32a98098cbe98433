"""The Python API: ``run(...)`` returns one result dict per case; ``benchmark(...)`` the
whole report (machine, ceilings, results, summary) that the command line prints and writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import torch

from mybag.bench import plot, report, timing
from mybag.bench.grid import Case, full_grid, quick_grid, select, tiny_grid
from mybag.bench.progress import Progress
from mybag.bench.runner import run_cases


@dataclasses.dataclass(frozen=True)
class Settings:
    repeats: int  # timed calls per implementation and case
    budget_s: float  # per case: stop adding runs past this (after at least 5)
    copy_mb: int  # size of the copy ceiling's source buffer


_SETTINGS = {
    "full": Settings(repeats=25, budget_s=4.0, copy_mb=256),
    "quick": Settings(repeats=10, budget_s=0.6, copy_mb=128),
    "tiny": Settings(repeats=3, budget_s=0.1, copy_mb=8),
}

__all__ = [
    "Case",
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


class NoCaseError(ValueError):
    """The filter matches no case of the grid: running would time nothing and look like success."""


class Written(NamedTuple):
    files: list[str]  # paths of the files written, in the order written
    notes: list[str]  # what was not written and why (e.g. no matplotlib)


def grid_for(quick: bool = False, tiny: bool = False) -> list[Case]:
    return tiny_grid() if tiny else quick_grid() if quick else full_grid()


def cases_for(
    device: str = "cpu", quick: bool = False, tiny: bool = False, filter: str | None = None
) -> list[Case]:
    """The cases a run would time; raises ``NoCaseError`` if ``filter`` matches none of them."""
    grid = grid_for(quick, tiny)
    cases = select(grid, filter, device)
    if not cases:
        raise NoCaseError(_no_case_message(grid, filter, device, quick))
    return cases


def _no_case_message(grid: list[Case], filter: str | None, device: str, quick: bool) -> str:
    available = select(grid, None, device)
    which = "--quick grid" if quick else "grid"
    examples = "\n".join(f"  {c.name}" for c in available[:4])
    return (
        f"no case name contains {filter!r} ({len(available)} cases in the {which} on {device}).\n"
        "--filter keeps the cases whose name contains the text exactly (case-sensitive).\n"
        f"Case names look like:\n{examples}\n"
        f"List them all with: python -m mybag.bench --list{' --quick' if quick else ''}"
    )


def benchmark(
    device: str = "cpu",
    quick: bool = False,
    *,
    tiny: bool = False,
    filter: str | None = None,
    repeats: int | None = None,
    progress: bool = False,
    on_mismatch: str = "raise",
) -> dict[str, Any]:
    """Runs the grid and returns ``{"machine", "settings", "ceilings", "results", "summary"}``.

    Raises ``NoCaseError`` if ``filter`` matches no case. ``on_mismatch="raise"`` raises
    ``MismatchError`` if mybag's answer differs from torch's on any case; ``"skip"`` lists those
    cases in ``summary["mismatches"]`` and leaves them out.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device")
    settings = _SETTINGS["tiny" if tiny else "quick" if quick else "full"]
    if repeats is not None:
        settings = dataclasses.replace(settings, repeats=repeats)
    cases = cases_for(device, quick, tiny, filter)
    copy_start = timing.copy_bandwidth(device, settings.copy_mb)
    results, mismatches = run_cases(
        cases,
        device=device,
        repeats=settings.repeats,
        budget_s=settings.budget_s,
        copy_gbps=copy_start,
        progress=Progress(len(cases)) if progress else None,
        on_mismatch=on_mismatch,
    )
    copy_end = timing.copy_bandwidth(device, settings.copy_mb)
    ceiling = max(copy_start, copy_end)
    for row in results:
        # The ceiling is the better of the two measurements: rescale the fractions to it.
        row["copy_gbps"] = ceiling
        row["torch_frac_copy"] = row["torch_gbps"] / ceiling
        row["mybag_frac_copy"] = row["mybag_gbps"] / ceiling
    return {
        "machine": report.machine_info(device),
        "settings": {
            **dataclasses.asdict(settings),
            "quick": quick,
            "tiny": tiny,
            "filter": filter,
        },
        "ceilings": {
            "copy_gbps": ceiling,
            "copy_gbps_start": copy_start,
            "copy_gbps_end": copy_end,
            "copy_mb": settings.copy_mb,
            "gather": "per case: see gather_gbps in each result",
        },
        "results": results,
        "summary": report.summary(results, mismatches),
    }


def run(
    device: str = "cpu",
    quick: bool = False,
    *,
    tiny: bool = False,
    filter: str | None = None,
    repeats: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One result dict per case (see ``benchmark``); raises ``MismatchError`` on a wrong answer."""
    report_ = benchmark(device, quick, tiny=tiny, filter=filter, repeats=repeats, progress=progress)
    return report_["results"]


def format_report(r: dict[str, Any]) -> str:
    m = r["machine"]
    head = (
        f"mybag.bench on {m['device_name']} "
        f"(threads: {m['torch_threads']}, {m['cpu_capability']}), torch {m['torch']}, {m['date']}"
    )
    return "\n\n".join(
        [head, report.table(r["results"]), report.summary_text(r["summary"], r["ceilings"])]
    )


def write_outputs(r: dict[str, Any], directory: str) -> Written:
    """Writes results.csv, results.json and speedup.png into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    csv_path = os.path.join(directory, "results.csv")
    json_path = os.path.join(directory, "results.json")
    report.write_csv(csv_path, r["results"])
    report.write_json(json_path, r)
    plotted = write_plot(r, directory)
    return Written([csv_path, json_path] + plotted.files, plotted.notes)


def write_plot(r: dict[str, Any], directory: str) -> Written:
    """Writes ``directory``/speedup.png from a report (a fresh run's or a saved results.json)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "speedup.png")
    m = r["machine"]
    threads = f"{m['torch_threads']} thread{'s' if m['torch_threads'] != 1 else ''}"
    title = (
        f"mybag vs torch embedding_bag, {m['device_name']}, {threads}, "
        f"torch {m['torch']}, {m['date']}"
    )
    problem = plot.write_plot(path, r["results"], title)
    if problem is None:
        return Written([path], [])
    if os.path.exists(path):  # an older plot would contradict the results just written
        os.remove(path)
        problem += f" (removed the old {path})"
    return Written([], [problem])


def replot(directory: str, out: str | None = None) -> Written:
    """Redraws speedup.png from ``directory``/results.json without running anything; into
    ``out`` if given, else next to the results."""
    with open(os.path.join(directory, "results.json")) as f:
        saved = json.load(f)
    return write_plot(saved, out or directory)
