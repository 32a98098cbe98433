"""What the run prints and writes: table, summary, machine info, CSV, JSON (plot: plot.py)."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
from typing import Any

import torch

# Printed columns: (header, result key, format).
_COLUMNS = (
    ("torch ms", "torch_ms", "{:9.3f}"),
    ("mybag ms", "mybag_ms", "{:9.3f}"),
    ("speed-up", "speedup", "{:7.2f}x"),
    ("(of minima)", "speedup_min", "{:7.2f}x"),
    ("torch GB/s", "torch_gbps", "{:9.1f}"),
    ("mybag GB/s", "mybag_gbps", "{:9.1f}"),
    ("gather GB/s", "gather_gbps", "{:9.1f}"),
    ("mybag/gather", "mybag_frac_gather", "{:8.2f}"),
    ("mybag/copy", "mybag_frac_copy", "{:8.2f}"),
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers depend on: hardware, threads, versions, date."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
    else:
        info["device_name"] = info["cpu"]
    return info


def table(results: list[dict[str, Any]]) -> str:
    """Fixed-width text table, one line per case."""
    width = max([len("case")] + [len(r["case"]) for r in results])
    header = f"{'case':<{width}} " + " ".join(f"{h:>12}" for h, _, _ in _COLUMNS)
    lines = [header, "-" * len(header)]
    for r in results:
        cells = " ".join(f"{fmt.format(r[key]):>12}" for _, key, fmt in _COLUMNS)
        lines.append(f"{r['case']:<{width}} {cells}")
    return "\n".join(lines)


def summary(results: list[dict[str, Any]], mismatches: list[str]) -> dict[str, Any]:
    """Geometric-mean speed-up, the slowest case, and the cases where mybag loses."""
    speedups = [r["speedup"] for r in results]
    out: dict[str, Any] = {"cases": len(results), "mismatches": mismatches}
    if speedups:
        worst = min(results, key=lambda r: r["speedup"])
        out["geomean_speedup"] = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
        out["min_speedup"] = worst["speedup"]
        out["min_speedup_case"] = worst["case"]
        out["below_1"] = [(r["case"], r["speedup"]) for r in results if r["speedup"] < 1.0]
    return out


def summary_text(s: dict[str, Any], ceilings: dict[str, Any]) -> str:
    lines = [f"copy ceiling: {ceilings['copy_gbps']:.1f} GB/s (read + write)"]
    if "geomean_speedup" in s:
        lines.append(f"cases: {s['cases']}, geometric-mean speed-up: {s['geomean_speedup']:.2f}x")
        lines.append(f"minimum speed-up: {s['min_speedup']:.2f}x ({s['min_speedup_case']})")
        lines.append(f"cases below 1.0x: {len(s['below_1'])}")
        lines += [f"  {speedup:5.2f}x  {name}" for name, speedup in s["below_1"]]
    if s["mismatches"]:
        lines.append(f"MISMATCHES (not timed): {len(s['mismatches'])}")
        lines += ["  " + m.replace("\n", "\n    ") for m in s["mismatches"]]
    return "\n".join(lines)


def write_csv(path: str, results: list[dict[str, Any]]) -> None:
    if not results:
        open(path, "w").close()
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)


def write_json(path: str, document: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(document, f, indent=1)
        f.write("\n")
