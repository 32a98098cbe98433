"""Tests of the benchmark's training-step suite (python -m mybag.bench --suite train), not of
mybag's speed.

They run the hidden ``--tiny`` training grid (four 1000-row cases, one per optimizer, a few
seconds) through the command line and through the Python API, and check the figures'
arithmetic, the files written, that a wrong fused step is caught before it is timed, and that
comparisons which cannot run, or compute something else, are left out with the reason.
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
import pytest
import torch
from mybag import bench, bench_training
from mybag.bench_training import TrainCase

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
TINY = [c.name for c in bench_training.grid("tiny")]
IMPLEMENTATIONS = ("mybag", "torch_sparse", "torch_dense", "fbgemm")


@pytest.fixture
def no_fbgemm(monkeypatch):
    """FBGEMM's comparison left out: faster, and the same whether fbgemm_gpu is installed."""
    monkeypatch.setattr(bench_training, "fbgemm", lambda: (None, "left out by the test"))


def _number(value) -> float | None:
    """A figure from a result row, from the API (a float or None) or the CSV (text, "" for
    None)."""
    return None if value is None or value == "" else float(value)


def _check_rows(rows: list[dict], names: list[str]) -> None:
    assert [r["case"] for r in rows] == names
    cases = {c.name: c for c in bench_training.grid("tiny")}
    for r in rows:
        case = cases[r["case"]]
        ms = {name: _number(r[f"{name}_ms"]) for name in IMPLEMENTATIONS}
        assert ms["mybag"] > 0 and ms["torch_sparse"] > 0 and ms["torch_dense"] > 0
        assert 0 < _number(r["mybag_min_ms"]) <= ms["mybag"]
        assert 0 < _number(r["torch_sparse_min_ms"]) <= ms["torch_sparse"]
        assert int(r["runs"]) >= 3
        for name, key in (("torch_sparse", "speedup_sparse"), ("torch_dense", "speedup_dense"),
                          ("fbgemm", "speedup_fbgemm")):  # fmt: skip
            if ms[name] is None:
                assert _number(r[key]) is None
            else:
                assert _number(r[key]) == pytest.approx(ms[name] / ms["mybag"], rel=1e-12)
        assert _number(r["speedup_sparse_min"]) == pytest.approx(
            _number(r["torch_sparse_min_ms"]) / _number(r["mybag_min_ms"]), rel=1e-12
        )
        # The byte floor, from the case's own lookups.
        x = bench.make_inputs(case.lookups(), "cpu")
        unique = int(x.input.unique().numel())
        assert int(r["unique_rows"]) == unique and int(r["lookups"]) == x.input.numel()
        state_row = {"sgd": 0, "adagrad": 16 * 4, "rowwise_adagrad": 4, "adam": 2 * 16 * 4}
        floor = (2 * unique * (16 * 4 + state_row[case.optimizer]) + 2 * case.bags * 16 * 4
                 + (x.input.numel() + x.offsets.numel()) * 8)  # fmt: skip
        assert int(r["floor_bytes"]) == floor
        assert _number(r["mybag_gbps"]) == pytest.approx(floor / ms["mybag"] / 1e6)
        assert _number(r["mybag_frac_copy"]) == pytest.approx(
            _number(r["mybag_gbps"]) / _number(r["copy_gbps"])
        )
        assert r["table"] == "cache" and r["optimizer"] == case.optimizer
        assert r["torch_sparse_optimizer"] == bench_training.TORCH_SPARSE[case.optimizer]
        assert r["torch_dense_optimizer"] == bench_training.TORCH_DENSE[case.optimizer]


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mybag.bench", "--suite", "train", *args],
        check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_command_line_writes_csv_json_and_plot(tmp_path):
    out = tmp_path / "train"
    done = _bench("--tiny", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4/4" in done.stderr  # the progress bar reached the end
    for text in ["mybag.bench --suite train", "vs sparse", "adam SparseAdam", "adam Adam",
                 "torch_sparse: nn.EmbeddingBag(sparse=True)", "torch has no row-wise Adagrad",
                 "fbgemm: ", "geometric-mean speed-up", "goals:"]:  # fmt: skip
        assert text in done.stdout, text
    lines = done.stdout.splitlines()
    named = [line[len("wrote ") :] for line in lines if line.startswith("wrote ")]
    assert sorted(os.path.basename(p) for p in named) == sorted(os.listdir(out))
    expected = ["results.csv", "results.json"] + (["speedup.png"] if HAS_MATPLOTLIB else [])
    assert sorted(os.listdir(out)) == expected

    with open(out / "results.csv") as f:
        _check_rows(list(csv.DictReader(f)), TINY)
    document = json.loads((out / "results.json").read_text())
    _check_rows(document["results"], TINY)
    assert document["settings"]["suite"] == "train" and document["settings"]["tiny"]
    assert document["machine"]["torch"] == torch.__version__
    ceilings = document["ceilings"]
    assert ceilings["copy_gbps"] == max(ceilings["copy_gbps_start"], ceilings["copy_gbps_end"]) > 0
    fbgemm_text = document["comparisons"]["fbgemm"]
    adam = next(r for r in document["results"] if r["optimizer"] == "adam")
    assert adam["fbgemm_ms"] is None  # FBGEMM's CPU TBE has no Adam
    if fbgemm_text.startswith("not run: "):  # no fbgemm_gpu here: left out, and the report says why
        assert all(r["fbgemm_ms"] is None for r in document["results"])
        assert "fbgemm: not run: " in done.stdout
    else:
        assert "SplitTableBatchedEmbeddingBagsCodegen" in fbgemm_text
        assert all(r["fbgemm_ms"] > 0 for r in document["results"] if r["optimizer"] != "adam")
    summary = document["summary"]
    assert summary["mismatches"] == [] and summary["cases"] == 4
    sgd = summary["geomean_by_optimizer"]["sgd"]
    assert sgd["speedup_sparse"] == pytest.approx(document["results"][0]["speedup_sparse"])
    if HAS_MATPLOTLIB:
        with open(out / "speedup.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_api_returns_one_row_per_case(no_fbgemm):
    report = bench_training.benchmark(tiny=True, repeats=3)
    _check_rows(report["results"], TINY)
    assert report["comparisons"]["fbgemm"] == "not run: left out by the test"
    assert all(r["fbgemm_ms"] is None and r["speedup_fbgemm"] is None for r in report["results"])
    text = bench_training.format_report(report)
    assert "fbgemm: not run: left out by the test" in text
    for name in TINY:
        assert name in text


def _wrong(change: str):
    """FusedEmbeddingBag with one thing wrong: its learning rate 1.5 times too large ("lr"), or
    raising in forward ("raise")."""
    real = mybag.FusedEmbeddingBag

    class Wrong(real):
        def __init__(self, *args, **kwargs):
            if change == "lr":
                kwargs["lr"] = kwargs["lr"] * 1.5
            super().__init__(*args, **kwargs)

        def forward(self, *args, **kwargs):
            if change == "raise":
                raise RuntimeError("kernel exploded")
            return super().forward(*args, **kwargs)

    return Wrong


@pytest.mark.parametrize("optimizer", bench_training.OPTIMIZERS)
def test_a_wrong_step_is_caught_before_timing(monkeypatch, no_fbgemm, optimizer):
    monkeypatch.setattr(mybag, "FusedEmbeddingBag", _wrong("lr"))
    real_interleave, timed = bench.interleave, []

    def interleave(calls, *args, **kwargs):
        timed.extend(name for name in calls if name != "copy")  # the copy ceiling is no step
        return real_interleave(calls, *args, **kwargs)

    monkeypatch.setattr(bench, "interleave", interleave)
    with pytest.raises(bench.MismatchError, match="differs from the reference step"):
        bench_training.run(tiny=True, filter=f"train {optimizer} ", repeats=3)
    assert timed == []  # no step was timed


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad", "adam"])
def test_a_wrong_state_is_caught(monkeypatch, no_fbgemm, optimizer):
    real = bench_training.mybag_side

    def state_off(case, x):  # the table right, the state off by a little
        side = real(case, x)
        state = side.state
        side.state = lambda: {name: t * 1.01 + 1e-3 for name, t in state().items()}
        return side

    monkeypatch.setattr(bench_training, "mybag_side", state_off)
    with pytest.raises(bench.MismatchError, match="state '(sum|exp_avg)' differs"):
        bench_training.run(tiny=True, filter=f"train {optimizer} ", repeats=3)


def test_an_exception_from_mybag_is_reported(monkeypatch, no_fbgemm):
    monkeypatch.setattr(mybag, "FusedEmbeddingBag", _wrong("raise"))
    with pytest.raises(bench.MismatchError, match="kernel exploded"):
        bench_training.run(tiny=True, filter="train sgd ", repeats=3)


def test_mismatches_are_listed_and_the_exit_status_is_1(monkeypatch, capsys, no_fbgemm):
    monkeypatch.setattr(mybag, "FusedEmbeddingBag", _wrong("lr"))
    report = bench_training.benchmark(tiny=True, filter="train sgd ", on_mismatch="skip")
    assert report["results"] == [] and len(report["summary"]["mismatches"]) == 1
    status = bench.main(["--suite", "train", "--tiny", "--filter", "train sgd ", "--no-progress"])
    assert status == 1
    assert "MISMATCHES (not timed): 1" in capsys.readouterr().out


def test_a_comparison_doing_other_work_is_left_out(monkeypatch, no_fbgemm):
    real = bench_training.torch_optimizer

    def dense_lr_doubled(case, sparse, params):
        optimizer = real(case, sparse, params)
        if not sparse:
            optimizer.param_groups[0]["lr"] *= 2
        return optimizer

    monkeypatch.setattr(bench_training, "torch_optimizer", dense_lr_doubled)
    (row,) = bench_training.run(tiny=True, filter="train sgd ", repeats=3)
    assert row["torch_dense_ms"] is None and row["speedup_dense"] is None
    assert row["torch_sparse_ms"] > 0  # the reference itself still runs
    assert "torch_dense differs from the reference step, not timed" in row["notes"]


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the plot needs matplotlib")
def test_replot_redraws_the_training_plot(tmp_path, no_fbgemm):
    saved = tmp_path / "saved"
    saved.mkdir()
    report = bench_training.benchmark(tiny=True, filter="train sgd ", repeats=3)
    (saved / "results.json").write_text(json.dumps(report))
    done = subprocess.run(
        [sys.executable, "-m", "mybag.bench", "--replot", str(saved)],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with open(saved / "speedup.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_list_and_filter(capsys):
    assert bench.main(["--suite", "train", "--tiny", "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == TINY
    assert bench.main(["--suite", "train", "--tiny", "--filter", "no such case"]) == 2
    err = capsys.readouterr().err
    assert "no case name contains 'no such case'" in err
    assert "python -m mybag.bench --list --suite train" in err
    with pytest.raises(bench.NoCaseError):
        bench_training.run(tiny=True, filter="no such case")


def test_grids_cover_the_axes():
    full, quick = bench_training.grid(), bench_training.grid("quick")
    assert 30 <= len(full) <= 60 and len(quick) <= 16
    assert {c.name for c in quick} <= {c.name for c in full}
    for cases in (full, quick):
        assert len({c.name for c in cases}) == len(cases)
        assert {c.optimizer for c in cases} == set(bench_training.OPTIMIZERS)
        assert {c.dist for c in cases} == {"uniform", "zipf"}
        assert {c.table for c in cases} == {"dram", "cache"}
        assert all(c.bags == 4096 for c in cases)
        for optimizer in bench_training.OPTIMIZERS:  # the goals' cases
            for dist in ("uniform", "zipf"):
                assert f"train {optimizer} sum 1M x64 L20 B4096 {dist}" in {c.name for c in cases}
    assert {c.dim for c in full} == {16, 64, 128, 256}
    assert {c.bag_size for c in full} == {1, 20, 150}
    assert {c.mode for c in full} == {"sum", "mean"}
    assert max(c.rows * c.dim * 4 for c in full) <= 512 * 2**20  # four copies fit a small machine
    assert [c.optimizer for c in bench_training.grid("tiny")] == list(bench_training.OPTIMIZERS)


def test_byte_floor():
    case = TrainCase("adam", 1000, 16, 5, 32)
    x = bench.make_inputs(case.lookups(), "cpu")
    assert bench_training.step_bytes(case, x, 100) == (
        2 * 100 * (16 * 4 + 2 * 16 * 4) + 2 * 32 * 16 * 4 + (160 + 32) * 8
    )
    sgd = TrainCase("sgd", 1000, 16, 5, 32)
    assert bench_training.step_bytes(sgd, x, 100) == 2 * 100 * 16 * 4 + 2 * 32 * 16 * 4 + 192 * 8


def _row(case: TrainCase, sparse: float, dense: float, fbgemm: float | None, frac: float) -> dict:
    return {"case": case.name, "optimizer": case.optimizer, "rows": case.rows, "dim": case.dim,
            "bag_size": case.bag_size, "bags": case.bags, "mode": case.mode,
            "table": case.table, "speedup_sparse": sparse, "speedup_dense": dense,
            "speedup_fbgemm": fbgemm, "mybag_frac_copy": frac, "notes": ""}  # fmt: skip


def test_summary_measures_the_goals():
    base = TrainCase("sgd", 1_000_000, 64, 20)
    rows = [_row(base, 3.5, 10.0, 2.0, 0.8),
            _row(TrainCase("sgd", 1_000_000, 64, 20, dist="zipf"), 2.5, 9.0, 0.9, 0.75),
            _row(TrainCase("adam", 1_000_000, 64, 20), 5.0, 12.0, None, 0.65),
            _row(TrainCase("adam", 10_000, 64, 20), 1.2, 3.0, None, 2.0)]  # fmt: skip
    summary = bench_training.summarize(rows, [])
    goals = {g["goal"].split(":")[0]: g for g in summary["goals"]}
    assert goals["sgd"]["value"] == 2.5 and not goals["sgd"]["met"]  # the Zipf case misses 3x
    assert goals["sgd"]["case"].endswith("zipf")
    assert goals["adam"]["value"] == 5.0 and goals["adam"]["met"]
    assert "adagrad" not in goals  # not measured in this run
    assert goals["every case"]["value"] == 1.2 and not goals["every case"]["met"]
    dram = goals["DRAM-resident tables"]  # the cached table's 2.0 does not count
    assert dram["value"] == 0.65 and not dram["met"]
    assert goals["faster than FBGEMM's fused CPU step where it runs"]["value"] == 0.9
    assert summary["below_min"] == [(rows[3]["case"], 1.2)]
    adam = summary["geomean_by_optimizer"]["adam"]
    assert adam["speedup_sparse"] == pytest.approx(math.sqrt(5.0 * 1.2))
    assert adam["speedup_fbgemm"] is None
