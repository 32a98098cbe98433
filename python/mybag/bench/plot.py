"""The plot, ``speedup.png``: how much faster or slower mybag is than torch, case by case.

Left panel: one bar per case from 1x (as fast as torch) to its speed-up on a log axis, so a bar
to the right means mybag is faster and a bar to the left slower, and 2x faster and 2x slower
are bars of the same length. Cases are grouped (and coloured) by what they exercise, the way
docs/benchmarks.md summarises them. Right panel: each side's bandwidth as a fraction of a plain
gather of the same rows, the closest thing to "as fast as the memory allows" for this kind of
operator.
"""

from __future__ import annotations

import math
from typing import Any

# Groups in plot order: the first whose test matches a result row takes it. Rows come from a
# run or from a saved results.json, so the tests read only the row's fields.
_GROUPS = (
    ("training step: forward + backward, sparse gradient",
     lambda r: r["pass"] == "fwd+bwd sparse"),
    ("forward + backward, dense gradient", lambda r: r["pass"] == "fwd+bwd dense"),
    ("forward, padding_idx", lambda r: r["padding_idx"] is not None),
    ("forward, max", lambda r: r["mode"] == "max"),
    ("forward, float64", lambda r: r["dtype"] == "f64"),
    ("forward, sum/mean, bfloat16/float16", lambda r: r["dtype"] in ("bf16", "f16")),
    ("forward, sum, float32", lambda r: r["mode"] == "sum"),
    ("forward, mean, float32", lambda r: True),
)  # fmt: skip
# Forward groups first: the order of the grid and of the docs' summary table.
_ORDER = (2, 3, 4, 5, 6, 7, 1, 0)
# One colour per entry of _GROUPS, the same in every plot.
_COLOURS = ("tab:cyan", "tab:olive", "tab:blue", "tab:orange", "tab:green", "tab:purple",
            "tab:brown", "tab:pink")  # fmt: skip

_NAME_PT = 10  # case names
_TEXT_PT = 11  # titles and axis labels
_INCH_PER_CASE = 0.26


def case_group(row: dict[str, Any]) -> str:
    """The group a result row belongs to (its heading in the plot)."""
    return next(label for label, test in _GROUPS if test(row))


def grouped(results: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(group label, its rows in run order) for every group that has rows, in plot order."""
    by_label: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in _GROUPS}
    for row in results:
        by_label[case_group(row)].append(row)
    labels = [_GROUPS[i][0] for i in _ORDER]
    return [(label, by_label[label]) for label in labels if by_label[label]]


def speedup_limits(speedups: list[float]) -> tuple[float, float]:
    """Axis limits around 1x: at least 0.5x-2x, and room for the value printed by each bar."""
    margin = 1.6  # a log-axis factor wide enough for a label such as "22.80x"
    return min(0.5, min(speedups) / margin), max(2.0, max(speedups) * margin)


def speedup_ticks(low: float, high: float) -> list[float]:
    """The 1-2-5 series (..., 0.5, 1, 2, 5, 10, 20, ...) inside [low, high]."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        ticks += [m * 10.0**exponent for m in (1, 2, 5)]
    return [t for t in ticks if low <= t <= high]


def _x_label(value: float) -> str:
    return f"{value:g}x"


def _layout(groups) -> tuple[list[float], list[tuple[float, str]]]:
    """The y of each case and of each group's heading: a heading takes a row of its own above
    the group's cases, so it never overlaps a bar."""
    ys, headings, y = [], [], 0.0
    for label, members in groups:
        headings.append((y, label))
        ys += [y + 1 + i for i in range(len(members))]
        y += len(members) + 1
    return ys, headings


def _draw_speedups(ax, ys, rows, colours, low: float, high: float) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    y = ys
    speedups = [r["speedup"] for r in rows]
    # Drawn from 1x: the bar's length is the ratio, its side says who is faster.
    ax.barh(y, [s - 1.0 for s in speedups], left=1.0, color=colours, height=0.7)
    for i, s in zip(y, speedups):
        faster = s >= 1.0
        ax.text(s * 1.04 if faster else s / 1.04, i, f"{s:.2f}x", va="center",
                ha="left" if faster else "right", fontsize=_NAME_PT - 1)  # fmt: skip
    ax.axvspan(low, 1.0, color="0.93", zorder=0)
    ax.axvline(1.0, color="black", linewidth=1.2)
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(FixedLocator(speedup_ticks(low, high)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _x_label(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", labelsize=_NAME_PT, top=True, labeltop=True)
    ax.grid(axis="x", color="0.8", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("speed-up over torch (torch time / mybag time), log scale", fontsize=_TEXT_PT)
    ax.set_title("Speed-up of mybag over torch.nn.functional.embedding_bag\n"
                 "grey side: mybag slower | white side: mybag faster",
                 fontsize=_TEXT_PT + 1)  # fmt: skip


def _draw_gather(ax, ys, rows) -> None:
    y = ys
    height = 0.38
    ax.barh([i - height / 2 for i in y], [r["torch_frac_gather"] for r in rows], height,
            label="torch", color="0.6")  # fmt: skip
    ax.barh([i + height / 2 for i in y], [r["mybag_frac_gather"] for r in rows], height,
            label="mybag", color="tab:blue")  # fmt: skip
    ax.axvline(1.0, color="black", linewidth=1.2)
    ax.grid(axis="x", color="0.8", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(axis="x", labelsize=_NAME_PT, top=True, labeltop=True)
    ax.set_xlabel("bandwidth / bandwidth of a plain gather of the same rows\n"
                  "(1 = as fast as torch.index_select copying the rows the case reads;\n"
                  "above 1: rows re-read from cache)", fontsize=_TEXT_PT - 1)  # fmt: skip
    ax.set_title("Bandwidth compared with a plain gather of the same rows\n"
                 "(grey: torch, blue: mybag; higher is better)",
                 fontsize=_TEXT_PT + 1)  # fmt: skip


def _summary_line(results: list[dict[str, Any]]) -> str:
    speedups = [r["speedup"] for r in results]
    geomean = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
    slower = sum(s < 1.0 for s in speedups)
    return (f"{len(results)} cases, geometric-mean speed-up {geomean:.2f}x, "
            f"{slower} case{'s' if slower != 1 else ''} slower than torch")  # fmt: skip


def _tint(colour: str) -> tuple[float, float, float]:
    """A light, opaque version of ``colour`` (a translucent one would let the 1x line through)."""
    from matplotlib.colors import to_rgb

    return tuple(0.7 + 0.3 * c for c in to_rgb(colour))  # type: ignore[return-value]


def _headings(left, right, headings, colour_of) -> None:
    for y, label in headings:
        # Black on a tint of the group's colour: legible whatever the colour; drawn above the
        # 1x line, which crosses the heading's row.
        tint = {"facecolor": _tint(colour_of[label]), "edgecolor": "none", "pad": 2}
        left.text(0.01, y, label, transform=left.get_yaxis_transform(), va="center",
                  fontsize=_TEXT_PT, fontweight="bold", bbox=tint, zorder=5)  # fmt: skip
        for ax in (left, right):
            if y > 0:  # a line between groups
                ax.axhline(y - 0.5, color="0.5", linewidth=0.8)


def make_figure(results: list[dict[str, Any]], title: str):
    """The figure (a matplotlib Figure, left panel first in ``fig.axes``); needs results."""
    import matplotlib.pyplot as plt

    groups = grouped(results)
    rows = [row for _, members in groups for row in members]
    ys, headings = _layout(groups)
    colour_of = {label: _COLOURS[i] for i, (label, _) in enumerate(_GROUPS)}  # fixed per group
    colours = [colour_of[case_group(r)] for r in rows]
    fig, (left, right) = plt.subplots(
        1, 2, sharey=True, width_ratios=(3, 2), layout="constrained",
        figsize=(16, 2.2 + _INCH_PER_CASE * (len(rows) + len(groups))),
    )  # fmt: skip
    low, high = speedup_limits([r["speedup"] for r in rows])
    _draw_speedups(left, ys, rows, colours, low, high)
    _draw_gather(right, ys, rows)
    left.set_yticks(ys, [r["case"] for r in rows], fontsize=_NAME_PT)
    _headings(left, right, headings, colour_of)
    left.set_ylim(ys[-1] + 0.6, -0.6)  # first group on top, no empty margin
    fig.suptitle(f"{title}\n{_summary_line(results)}", fontsize=_TEXT_PT + 1)
    return fig


def write_plot(path: str, results: list[dict[str, Any]], title: str) -> str | None:
    """Writes the plot to ``path``; returns why not instead (no matplotlib, nothing timed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no speedup.png"
    if not results:
        return "no case was timed: no speedup.png"
    fig = make_figure(results, title)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None
