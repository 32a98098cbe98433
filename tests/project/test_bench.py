"""Tests of the benchmark program (python -m mybag.bench), not of mybag's speed.

They run the hidden ``--tiny`` grid (three cases of a 1000-row table, about a second) through
the command line and through the Python API, and check the figures' arithmetic, the files
written, and that a wrong answer from mybag is caught before it is timed.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys

import mybag
import mybag.bench
import pytest
import torch
from mybag import bench

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _check_rows(rows: list[dict], names: list[str]) -> None:
    assert [r["case"] for r in rows] == names
    for r in rows:
        torch_ms, mybag_ms = float(r["torch_ms"]), float(r["mybag_ms"])
        assert torch_ms > 0 and mybag_ms > 0 and float(r["gather_ms"]) > 0
        assert float(r["speedup"]) == pytest.approx(torch_ms / mybag_ms, rel=1e-12)
        assert float(r["speedup_min"]) == pytest.approx(
            float(r["torch_min_ms"]) / float(r["mybag_min_ms"]), rel=1e-12
        )
        assert 0 < float(r["torch_min_ms"]) <= torch_ms and 0 < float(r["mybag_min_ms"]) <= mybag_ms
        assert int(r["bytes"]) > 0 and int(r["runs"]) >= 3
        for key in ("torch_gbps", "mybag_gbps"):
            assert float(r[key]) == pytest.approx(int(r["bytes"]) / float(r[key[:-4] + "ms"]) / 1e6)
        for key in ("torch_frac_gather", "mybag_frac_gather", "torch_frac_copy", "mybag_frac_copy"):
            # Above 1 is possible (cache reuse beats the ceilings), far above is a bug.
            assert 0 < float(r[key]) < 50, (r["case"], key, r[key])
        assert float(r["mybag_frac_copy"]) == pytest.approx(
            float(r["mybag_gbps"]) / float(r["copy_gbps"])
        )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mybag.bench", *args],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _named_files(stdout: str) -> list[str]:
    return [line[len("wrote ") :] for line in stdout.splitlines() if line.startswith("wrote ")]


def _check_png(path) -> None:
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 600 <= width <= 3000 and 200 <= height <= 6000, (width, height)
    if importlib.util.find_spec("PIL") is not None:  # matplotlib's own dependency
        from PIL import Image

        with Image.open(path) as image:
            image.verify()  # the whole file decodes, not just its header


def test_command_line_writes_csv_json_and_plot(tmp_path):
    out = tmp_path / "bench"
    names = [c.name for c in bench.select(bench.grid("tiny"), "f32", "cpu")]
    assert len(names) == 3
    done = _bench("--tiny", "--filter", "f32", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "geometric-mean speed-up" in done.stdout
    assert "3/3" in done.stderr  # the progress bar reached the end
    # Every file the run leaves behind is named in its output, by a path that exists.
    named = _named_files(done.stdout)
    assert sorted(os.path.basename(p) for p in named) == sorted(os.listdir(out))
    assert all(os.path.isfile(p) for p in named)
    expected = ["results.csv", "results.json"] + (["speedup.png"] if HAS_MATPLOTLIB else [])
    assert sorted(os.listdir(out)) == expected

    with open(out / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    _check_rows(csv_rows, names)

    document = json.loads((out / "results.json").read_text())
    _check_rows(document["results"], names)
    machine = document["machine"]
    assert machine["torch"] == torch.__version__
    assert machine["torch_threads"] >= 1 and machine["cpu"] and machine["date"]
    ceilings = document["ceilings"]
    assert ceilings["copy_gbps"] == max(ceilings["copy_gbps_start"], ceilings["copy_gbps_end"]) > 0
    speedups = [r["speedup"] for r in document["results"]]
    summary = document["summary"]
    assert summary["geomean_speedup"] == pytest.approx(
        math.exp(sum(map(math.log, speedups)) / len(speedups))
    )
    assert summary["min_speedup"] == min(speedups)
    assert [name for name, _ in summary["below_1"]] == [
        r["case"] for r in document["results"] if r["speedup"] < 1
    ]
    assert summary["mismatches"] == []
    if HAS_MATPLOTLIB:
        _check_png(out / "speedup.png")


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the plot needs matplotlib")
def test_replot_redraws_the_plot_from_saved_results(tmp_path):
    saved, other = tmp_path / "saved", tmp_path / "other"
    saved.mkdir()
    report = mybag.bench.benchmark(tiny=True, filter="fwd", repeats=3)
    (saved / "results.json").write_text(json.dumps(report))
    done = _bench("--replot", str(saved), "--out", str(other))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _named_files(done.stdout) == [str(other / "speedup.png")]
    _check_png(other / "speedup.png")
    assert os.listdir(saved) == ["results.json"]  # nothing run, nothing else written

    missing = _bench("--replot", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "results.json" in missing.stderr


def test_without_matplotlib_the_csv_and_json_are_written_and_a_stale_plot_removed(
    tmp_path, monkeypatch
):
    report = mybag.bench.benchmark(tiny=True, filter="fwd sum", repeats=3)
    (tmp_path / "speedup.png").write_bytes(PNG_SIGNATURE)  # from an earlier run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    written = mybag.bench.write_outputs(report, str(tmp_path))
    assert [os.path.basename(p) for p in written.files] == ["results.csv", "results.json"]
    assert sorted(os.listdir(tmp_path)) == ["results.csv", "results.json"]
    (note,) = written.notes
    assert "matplotlib is not installed" in note and "removed the old" in note


@pytest.mark.parametrize("extra", [[], ["--list"]])
def test_a_filter_matching_no_case_fails_and_says_how_to_see_the_names(capsys, extra):
    status = bench.main(["--tiny", "--filter", "no such case", "--no-progress", *extra])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""  # no empty table that looks like a successful run
    assert "no case name contains 'no such case'" in captured.err
    assert "python -m mybag.bench --list" in captured.err
    assert bench.grid("tiny")[0].name in captured.err  # an example of what names look like
    with pytest.raises(mybag.bench.NoCaseError, match="no such case"):
        mybag.bench.run(tiny=True, filter="no such case")


def _rows(*speedups: float) -> list[dict]:
    base = {"pass": "fwd", "mode": "sum", "dtype": "f32", "padding_idx": None,
            "torch_frac_gather": 0.5, "mybag_frac_gather": 0.6}  # fmt: skip
    return [{**base, "case": f"case {i}", "speedup": s} for i, s in enumerate(speedups)]


def test_plot_axis_is_ticked_around_1x():
    assert bench.speedup_ticks(0.1, 30) == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20]
    low, high = bench.speedup_limits([1.1, 1.2])
    assert low <= 0.5 and high >= 2  # both sides of 1x always show
    low, high = bench.speedup_limits([0.3, 22.8])
    assert low < 0.3 and high > 22.8


def test_plot_groups_cases_by_what_they_exercise():
    rows = [{"pass": p, "mode": m, "dtype": d, "padding_idx": pad}
            for p, m, d, pad in [("fwd", "sum", "f32", None), ("fwd", "max", "f64", None),
                                 ("fwd", "mean", "bf16", 0), ("fwd+bwd sparse", "sum", "f32", 0),
                                 ("fwd+bwd dense", "max", "f32", None)]]  # fmt: skip
    assert [bench.case_group(r) for r in rows] == [
        "forward, sum, float32",
        "forward, max",
        "forward, padding_idx",
        "training step: forward + backward, sparse gradient",
        "forward + backward, dense gradient",
    ]


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the plot needs matplotlib")
def test_plot_bars_start_at_1x_and_labels_are_legible():
    import matplotlib.pyplot as plt

    fig = bench.make_figure(_rows(4.0, 0.5), "title")
    try:
        left = fig.axes[0]
        (bars,) = left.containers
        spans = sorted(sorted((p.get_x(), p.get_x() + p.get_width())) for p in bars)
        # A bar spans 1x to its speed-up: to the right when faster, to the left when slower.
        assert spans == [[0.5, 1.0], [1.0, 4.0]]
        assert left.get_xscale() == "log"
        assert {"0.5x", "1x", "2x"} <= {t.get_text() for t in left.get_xticklabels()}
        assert "torch time / mybag time" in left.get_xlabel()
        assert all(t.get_fontsize() >= 9 for t in left.get_yticklabels())
        assert all(ax.get_title() for ax in fig.axes)
    finally:
        plt.close(fig)


def test_list_prints_the_selected_cases(capsys):
    assert bench.main(["--tiny", "--filter", "max", "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["fwd max f32 1k x16 L5 uniform pad"]


def test_api_returns_one_row_per_case():
    rows = mybag.bench.run(tiny=True, repeats=3)
    _check_rows(rows, [c.name for c in bench.grid("tiny")])
    assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd sparse"}


def _wrong_by(factor: float):
    real = mybag.embedding_bag

    def wrong(*args, **kwargs):
        return real(*args, **kwargs) * factor

    return wrong


@pytest.mark.parametrize("which", ["fwd sum", "fwd+bwd sparse"])
def test_a_wrong_answer_is_caught_before_timing(monkeypatch, which):
    # Forward: the output is off; fwd+bwd: the output's gradient (so the weight's) is off.
    monkeypatch.setattr(mybag, "embedding_bag", _wrong_by(1.5))
    with pytest.raises(mybag.bench.MismatchError, match="differs from torch"):
        mybag.bench.run(tiny=True, filter=which, repeats=3)


def test_mismatches_are_listed_and_the_exit_status_is_1(monkeypatch, capsys):
    monkeypatch.setattr(mybag, "embedding_bag", _wrong_by(-1.0))
    report = mybag.bench.benchmark(tiny=True, filter="fwd sum", on_mismatch="skip")
    assert report["results"] == []
    assert len(report["summary"]["mismatches"]) == 1
    assert bench.main(["--tiny", "--filter", "fwd sum", "--no-progress"]) == 1
    assert "MISMATCHES (not timed): 1" in capsys.readouterr().out


def test_an_exception_from_mybag_is_reported(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(mybag, "embedding_bag", broken)
    with pytest.raises(mybag.bench.MismatchError, match="kernel exploded"):
        mybag.bench.run(tiny=True, filter="fwd sum", repeats=3)


def test_grids_cover_the_axes():
    full, quick = bench.grid(), bench.grid("quick")
    assert 60 <= len(full) <= 120 and 15 <= len(quick) <= 25
    for cases in (full, quick):
        assert len({c.name for c in cases}) == len(cases)
        assert {c.mode for c in cases} == {"sum", "mean", "max"}
        assert {c.dtype for c in cases} == {"f32", "bf16", "f16", "f64"}
        assert {c.pass_ for c in cases} == {"fwd", "fwd+bwd dense", "fwd+bwd sparse"}
        assert {c.dist for c in cases} == {"uniform", "zipf"}
        assert any(c.padding for c in cases) and any(c.per_sample_weights for c in cases)
        assert not any(c.pass_ == "fwd+bwd sparse" and c.mode == "max" for c in cases)
        assert not any(c.per_sample_weights and c.mode != "sum" for c in cases)
    assert {c.dim for c in full} == {16, 64, 128, 512}
    assert {c.bag_size for c in full} == {1, 20, 150}
    assert {c.rows for c in full} == {10_000, 1_000_000}
    itemsize = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8}
    assert max(c.rows * c.dim * itemsize[c.dtype] for c in full) <= 2 * 2**30
    assert "fwd sum f32 1M x128 L20 uniform" in {c.name for c in full}
    assert all(c.dtype != "f64" for c in bench.select(full, None, "cuda"))
    assert all("zipf" in c.name for c in bench.select(full, "zipf", "cpu"))


def test_zipf_indices_are_skewed_and_scattered():
    generator = torch.Generator().manual_seed(0)
    drawn = bench.zipf_indices(10_000, 100_000, generator)
    assert drawn.min() >= 0 and drawn.max() < 10_000
    counts = torch.bincount(drawn, minlength=10_000).sort(descending=True).values
    # The hottest row alone takes about 1 / H(10^4, 1.05) ~ 11% of the draws; uniform: 0.01%.
    assert counts[0] > 0.05 * drawn.numel()
    assert counts[:100].sum() > 0.4 * drawn.numel()
    hottest = torch.bincount(drawn).topk(10).indices
    assert hottest.max() > 1000  # permuted: the hot rows are not the first ones


def test_byte_model():
    case = bench.Case("fwd", "sum", "f32", 1000, 16, 5, 32, padding=True)
    x = bench.make_inputs(case, "cpu")
    used = int((x.input != x.padding_idx).sum())
    assert 0 < used < 160
    forward = used * 16 * 4 + 32 * 16 * 4 + 160 * 8 + 32 * 8
    assert bench.case_bytes(case, x) == forward
    dense = bench.Case("fwd+bwd dense", "sum", "f32", 1000, 16, 5, 32)
    x = bench.make_inputs(dense, "cpu")
    assert bench.case_bytes(dense, x) == (160 + 32 + 32 + 1000) * 16 * 4 + 160 * 8 + 32 * 8


def test_main_help_says_what_the_command_does():
    done = subprocess.run(
        [sys.executable, "-m", "mybag", "--help"],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse rewraps; compare words
    for phrase in [
        "example calls from the README",
        "torch.nn.functional.embedding_bag",
        "side by side",
        "the output (forward) and the gradients",
        "sum, mean, max",
        '"ok" when mybag matches',
        '"FAIL"',
        "exit status",
        "0 every case matches",
        "1 at least one case differs",
    ]:
        assert phrase in text, phrase
    assert "issue" not in text  # the project's history, not the user's concern
