"""Tests of the benchmark's inference suite (python -m mybag.bench --suite serve), not of
mybag's speed.

They run the hidden ``--tiny`` grid (four 1000-row cases, int8 and int4, uniform and Zipf, a few
seconds) through the command line and through the Python API, and check the figures'
arithmetic (ratios, errors, byte floors), the files written, that a wrong output from mybag is
caught before it is timed, and that comparisons which cannot run, or compute something else,
are left out with the reason.
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
import torch.nn.functional as F
from mybag import bench, bench_serving
from mybag.bench_serving import ServeCase

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
TINY = [c.name for c in bench_serving.grid("tiny")]
IMPLEMENTATIONS = bench_serving.IMPLEMENTATIONS
PREPACK = {8: torch.ops.quantized.embedding_bag_byte_prepack,
           4: torch.ops.quantized.embedding_bag_4bit_prepack}  # fmt: skip
LOOKUP = {8: torch.ops.quantized.embedding_bag_byte_rowwise_offsets,
          4: torch.ops.quantized.embedding_bag_4bit_rowwise_offsets}  # fmt: skip


@pytest.fixture
def no_fbgemm(monkeypatch):
    """FBGEMM's comparison left out: faster, and the same whether fbgemm_gpu is installed."""
    monkeypatch.setattr(bench_serving, "fbgemm", lambda: (None, "left out by the test"))


def _number(value) -> float | None:
    """A figure from a result row, from the API (a float or None) or the CSV (text, "" for
    None)."""
    return None if value is None or value == "" else float(value)


def _errors(case: ServeCase) -> dict[str, float]:
    """Each implementation's max abs error on ``case``, computed here from scratch: against the
    float64 embedding_bag of the unquantized table."""
    x = bench.make_inputs(case.lookups(), "cpu")
    packed = PREPACK[case.bits](x.weight)
    exact = F.embedding_bag(x.input, x.weight.double(), x.offsets, mode="sum")
    outputs = {
        "mybag_q": mybag.quantized_embedding_bag(x.input, packed, case.bits, x.offsets,
                                                 mode="sum"),
        "torch_q": LOOKUP[case.bits](packed, x.input, x.offsets, mode=0),
        "torch_f32": F.embedding_bag(x.input, x.weight, x.offsets, mode="sum"),
        "torch_f16": F.embedding_bag(x.input, x.weight.half(), x.offsets, mode="sum"),
        "mybag_f32": mybag.embedding_bag(x.input, x.weight, x.offsets, mode="sum"),
    }  # fmt: skip
    return {name: float((out.double() - exact).abs().max()) for name, out in outputs.items()}


def _check_rows(rows: list[dict], names: list[str]) -> None:
    assert [r["case"] for r in rows] == names
    cases = {c.name: c for c in bench_serving.grid("tiny")}
    for r in rows:
        case = cases[r["case"]]
        ms = {name: _number(r[f"{name}_ms"]) for name in IMPLEMENTATIONS}
        assert all(ms[name] > 0 for name in IMPLEMENTATIONS if name != "fbgemm")
        assert 0 < _number(r["mybag_q_min_ms"]) <= ms["mybag_q"]
        assert 0 < _number(r["torch_q_min_ms"]) <= ms["torch_q"]
        assert int(r["runs"]) >= 3
        # Ratios: other's time / mybag_q's, and torch_f32's time / each other's.
        assert _number(r["speedup_q"]) == pytest.approx(ms["torch_q"] / ms["mybag_q"], rel=1e-12)
        assert _number(r["speedup_q_min"]) == pytest.approx(
            _number(r["torch_q_min_ms"]) / _number(r["mybag_q_min_ms"]), rel=1e-12
        )
        if ms["fbgemm"] is None:
            assert _number(r["speedup_fbgemm"]) is None and _number(r["fbgemm_err"]) is None
        else:
            assert _number(r["speedup_fbgemm"]) == pytest.approx(ms["fbgemm"] / ms["mybag_q"])
        for name in IMPLEMENTATIONS:
            if name != "torch_f32":
                ratio = _number(r[f"f32_over_{name}"])
                if ms[name] is None:
                    assert ratio is None
                else:
                    assert ratio == pytest.approx(ms["torch_f32"] / ms[name], rel=1e-12)
        # Errors, against the float64 result of the unquantized table.
        for name, error in _errors(case).items():
            assert _number(r[f"{name}_err"]) == pytest.approx(error, rel=1e-12, abs=0), name
        assert _number(r["torch_f32_err"]) < 1e-5 < _number(r["torch_q_err"])
        if ms["fbgemm"] is not None and case.bits == 4:  # the same packed values as torch's
            assert _number(r["fbgemm_err"]) == _number(r["torch_q_err"])
        # The byte floor: packed rows read, float32 output written, int64 indices and offsets.
        row_bytes = 16 + 8 if case.bits == 8 else 8 + 4
        floor = case.bags * case.bag_size * (row_bytes + 8) + case.bags * (16 * 4 + 8)
        assert int(r["row_bytes"]) == row_bytes and int(r["floor_bytes"]) == floor
        assert int(r["lookups"]) == case.bags * case.bag_size
        for name in ("mybag_q", "torch_q"):
            gbps = _number(r[f"{name}_gbps"])
            assert gbps == pytest.approx(floor / ms[name] / 1e6)
            assert _number(r[f"{name}_frac_copy"]) == pytest.approx(gbps / _number(r["copy_gbps"]))
        assert r["table"] == "cache" and int(r["bits"]) == case.bits and r["dist"] == case.dist


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mybag.bench", "--suite", "serve", *args],
        check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_command_line_writes_csv_json_and_plot(tmp_path):
    out = tmp_path / "serve"
    done = _bench("--tiny", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4/4" in done.stderr  # the progress bar reached the end
    for text in ["mybag.bench --suite serve", "vs torch_q", "torch_q: torch.ops.quantized.",
                 "embedding_bag_4bit_prepack", "torch_f16: F.embedding_bag", "fbgemm: ",
                 "err: max |output - float64", "geometric means", "int8 cache", "int4 cache",
                 "goals:", "errors equal to torch's quantized ops'"]:  # fmt: skip
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
    assert document["settings"]["suite"] == "serve" and document["settings"]["tiny"]
    assert document["machine"]["torch"] == torch.__version__
    ceilings = document["ceilings"]
    assert ceilings["copy_gbps"] == max(ceilings["copy_gbps_start"], ceilings["copy_gbps_end"]) > 0
    fbgemm_text = document["comparisons"]["fbgemm"]
    if fbgemm_text.startswith("not run: "):  # no fbgemm_gpu here: left out, and the report says why
        assert all(r["fbgemm_ms"] is None for r in document["results"])
        assert "fbgemm: not run: " in done.stdout
    else:
        assert "IntNBitTableBatchedEmbeddingBagsCodegen" in fbgemm_text
        assert all(r["fbgemm_ms"] > 0 for r in document["results"])
    summary = document["summary"]
    assert summary["mismatches"] == [] and summary["cases"] == 4
    int8 = summary["geomean"]["int8 cache"]
    assert int8["speedup_q"] == pytest.approx(
        math.sqrt(document["results"][0]["speedup_q"] * document["results"][1]["speedup_q"])
    )
    assert summary["identical"][1] == 4
    if HAS_MATPLOTLIB:
        with open(out / "speedup.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_api_returns_one_row_per_case(no_fbgemm):
    report = bench_serving.benchmark(tiny=True, repeats=3)
    _check_rows(report["results"], TINY)
    assert report["comparisons"]["fbgemm"] == "not run: left out by the test"
    assert all(r["fbgemm_ms"] is None and r["speedup_fbgemm"] is None for r in report["results"])
    text = bench_serving.format_report(report)
    assert "fbgemm: not run: left out by the test" in text
    for name in TINY:
        assert name in text


def _wrong(change: str):
    """mybag.quantized_embedding_bag with one thing wrong: its output 0.1% too large ("scale")
    or raising ("raise"). Built on torch's op, so that it does not depend on mybag's."""

    def quantized_embedding_bag(input, packed_weight, bits, offsets=None, mode="mean", **kwargs):
        if change == "raise":
            raise RuntimeError("kernel exploded")
        return LOOKUP[bits](packed_weight, input, offsets, mode=0) * 1.001

    return quantized_embedding_bag


@pytest.mark.parametrize("bits", [8, 4])
def test_a_wrong_output_is_caught_before_timing(monkeypatch, no_fbgemm, bits):
    monkeypatch.setattr(mybag, "quantized_embedding_bag", _wrong("scale"), raising=False)
    real_interleave, timed = bench.interleave, []

    def interleave(calls, *args, **kwargs):
        timed.extend(name for name in calls if name != "copy")  # the copy ceiling is no lookup
        return real_interleave(calls, *args, **kwargs)

    monkeypatch.setattr(bench, "interleave", interleave)
    with pytest.raises(bench.MismatchError, match="mybag_q's output differs"):
        bench_serving.run(tiny=True, filter=f"serve int{bits} ", repeats=3)
    assert timed == []  # nothing was timed


def test_an_exception_from_mybag_is_reported(monkeypatch, no_fbgemm):
    monkeypatch.setattr(mybag, "quantized_embedding_bag", _wrong("raise"), raising=False)
    with pytest.raises(bench.MismatchError, match="mybag_q raised RuntimeError: kernel exploded"):
        bench_serving.run(tiny=True, filter="serve int8 ", repeats=3)


def test_mismatches_are_listed_and_the_exit_status_is_1(monkeypatch, capsys, no_fbgemm):
    monkeypatch.setattr(mybag, "quantized_embedding_bag", _wrong("scale"), raising=False)
    report = bench_serving.benchmark(tiny=True, filter="uniform", on_mismatch="skip")
    assert report["results"] == [] and len(report["summary"]["mismatches"]) == 2
    status = bench.main(["--suite", "serve", "--tiny", "--filter", "serve int4 1k x16 L5 B32 zipf",
                         "--no-progress"])  # fmt: skip
    assert status == 1
    assert "MISMATCHES (not timed): 1" in capsys.readouterr().out


def test_a_comparison_doing_other_work_is_left_out(monkeypatch, no_fbgemm):
    real = bench_serving.torch_quantized_op

    def doubled(bits):
        op = real(bits)
        return lambda *args, **kwargs: op(*args, **kwargs) * 2

    monkeypatch.setattr(bench_serving, "torch_quantized_op", doubled)
    (row,) = bench_serving.run(tiny=True, filter="serve int8 1k x16 L5 B32 uniform", repeats=3)
    assert row["torch_q_ms"] is None and row["speedup_q"] is None and row["torch_q_err"] is None
    assert row["mybag_q_ms"] > 0 and row["identical"] is None  # mybag_q: checked and timed
    assert "torch_q's output differs from the float64 sum of its table's dequantized rows" in (
        row["notes"]
    )


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the plot needs matplotlib")
def test_replot_redraws_the_serving_plot(tmp_path, no_fbgemm):
    saved = tmp_path / "saved"
    saved.mkdir()
    report = bench_serving.benchmark(tiny=True, filter="serve int4 ", repeats=3)
    (saved / "results.json").write_text(json.dumps(report))
    written = bench.replot(str(saved))
    assert written.files == [str(saved / "speedup.png")]
    with open(saved / "speedup.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_list_and_filter(capsys):
    assert bench.main(["--suite", "serve", "--tiny", "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == TINY
    assert bench.main(["--suite", "serve", "--tiny", "--filter", "no such case"]) == 2
    err = capsys.readouterr().err
    assert "no case name contains 'no such case'" in err
    assert "python -m mybag.bench --list --suite serve" in err
    with pytest.raises(bench.NoCaseError):
        bench_serving.run(tiny=True, filter="no such case")


def test_grids_cover_the_axes():
    full, quick = bench_serving.grid(), bench_serving.grid("quick")
    assert 60 <= len(full) <= 120 and len(quick) <= 16
    assert {c.name for c in quick} <= {c.name for c in full}
    for cases in (full, quick):
        names = {c.name for c in cases}
        assert len(names) == len(cases)
        assert {c.bits for c in cases} == {8, 4}
        assert {c.dist for c in cases} == {"uniform", "zipf"}
        assert {c.table for c in cases} == {"dram", "cache"}
        assert {c.rows for c in cases} == {1_000_000, 10_000}
        for bits in (8, 4):  # the goals' base cases
            for dist in ("uniform", "zipf"):
                assert f"serve int{bits} 1M x128 L20 B2048 {dist}" in names
        for c in cases:  # each call reads a few MB of int8 rows
            assert 2 * 2**20 <= c.bags * c.bag_size * (c.dim + 8) <= 8 * 2**20, c.name
            assert c.bags & (c.bags - 1) == 0  # a power of two
    assert {c.dim for c in full} >= {32, 128, 512}
    assert {c.bag_size for c in full} == {1, 20, 150}
    assert max(c.rows * c.dim * 4 for c in full) <= 2 * 2**30  # the float32 table: 2 GB at most
    assert [(c.bits, c.dist) for c in bench_serving.grid("tiny")] == [
        (8, "uniform"), (8, "zipf"), (4, "uniform"), (4, "zipf")]  # fmt: skip


def test_byte_floor():
    case = ServeCase(4, 1000, 16, 5, 32)
    x = bench.make_inputs(case.lookups(), "cpu")
    assert case.row_bytes == 12 and ServeCase(8, 1000, 16, 5, 32).row_bytes == 24
    assert bench_serving.case_bytes(case, x) == 160 * 12 + 32 * 16 * 4 + (160 + 32) * 8


def _row(case: ServeCase, vs_q: float, vs_f32: float, errors: tuple[float, float]) -> dict:
    return {"case": case.name, "bits": case.bits, "table": case.table, "speedup_q": vs_q,
            "f32_over_mybag_q": vs_f32, "f32_over_torch_q": 1.0, "speedup_fbgemm": None,
            "mybag_q_err": errors[0], "torch_q_err": errors[1],
            "identical": errors[0] == errors[1], "notes": ""}  # fmt: skip


def test_summary_measures_the_goals():
    rows = [_row(ServeCase(8, 1_000_000, 128, 20, 1024), 1.8, 2.5, (0.03, 0.03)),
            _row(ServeCase(8, 1_000_000, 128, 20, 1024, "zipf"), 1.4, 2.1, (0.03, 0.03)),
            _row(ServeCase(8, 10_000, 128, 20, 1024), 0.9, 1.2, (0.03, 0.03)),
            _row(ServeCase(4, 1_000_000, 128, 20, 1024), 1.6, 3.0, (0.5, 0.5)),
            _row(ServeCase(4, 10_000, 128, 20, 1024, "zipf"), 0.5, 0.7, (0.5, 0.25))]  # fmt: skip
    summary = bench_serving.summarize(rows, [])
    goals = {g["goal"].split(" (")[0]: g for g in summary["goals"]}
    int8_q = goals["int8: >= 1.5x torch's int8 op"]
    assert int8_q["value"] == 1.4 and not int8_q["met"] and int8_q["case"].endswith("zipf")
    assert goals["int8: >= 2x torch float32"]["met"]  # the cached table's 1.2 does not count
    every = goals["int8, every case: not slower than torch's int8 op"]
    assert every["value"] == 0.9 and not every["met"]
    assert goals["int4: >= 1.5x torch's 4-bit op"]["met"]
    assert goals["int4: >= 2.5x torch float32"]["value"] == 3.0
    errors = goals["errors equal to torch's quantized ops'"]
    assert errors["value"] == 0.25 and not errors["met"] and "in 1 of 5 cases" in errors["shown"]
    assert summary["below_torch_q"] == [(rows[2]["case"], 0.9), (rows[4]["case"], 0.5)]
    assert summary["identical"] == (4, 5)
    assert summary["geomean"]["int8 dram"]["speedup_q"] == pytest.approx(math.sqrt(1.8 * 1.4))
    assert summary["geomean"]["int4 cache"]["speedup_fbgemm"] is None
