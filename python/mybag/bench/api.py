"""The Python API: ``run(...)`` returns one result dict per case; ``benchmark(...)`` the
whole report (machine, ceilings, results, summary) that the command line prints and writes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from mybag.bench import report, timing
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

__all__ = ["Case", "benchmark", "format_report", "grid_for", "run", "select", "write_outputs"]


def grid_for(quick: bool = False, tiny: bool = False) -> list[Case]:
    return tiny_grid() if tiny else quick_grid() if quick else full_grid()


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

    ``on_mismatch="raise"`` raises ``MismatchError`` if mybag's answer differs from torch's on
    any case; ``"skip"`` lists those cases in ``summary["mismatches"]`` and leaves them out.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device")
    settings = _SETTINGS["tiny" if tiny else "quick" if quick else "full"]
    if repeats is not None:
        settings = dataclasses.replace(settings, repeats=repeats)
    cases = select(grid_for(quick, tiny), filter, device)
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
        f"mybag.bench on {m['device_name']} (threads: {m['torch_threads']}, {m['cpu_capability']}), "
        f"torch {m['torch']}, {m['date']}"
    )
    return "\n\n".join(
        [head, report.table(r["results"]), report.summary_text(r["summary"], r["ceilings"])]
    )


def write_outputs(r: dict[str, Any], directory: str) -> list[str]:
    """Writes results.csv, results.json and speedup.png; returns notes (e.g. no matplotlib)."""
    os.makedirs(directory, exist_ok=True)
    report.write_csv(os.path.join(directory, "results.csv"), r["results"])
    report.write_json(os.path.join(directory, "results.json"), r)
    m = r["machine"]
    title = f"mybag vs torch embedding_bag, {m['device_name']}, torch {m['torch']}, {m['date']}"
    problem = report.write_plot(os.path.join(directory, "speedup.png"), r["results"], title)
    return [problem] if problem else []
