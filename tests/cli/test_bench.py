"""`fertk bench` through Typer's test runner: tiny model budget, JSON, files, compare, errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fertk.cli import app

runner = CliRunner()
TINY = ["--models", "fer-cnn:paper", "--backends", "torch-cpu,trt", "--batches", "1,2", "--precisions", "fp32",
        "--budget-s", "0.05", "--threads", "1"]


def test_quick_like_run_prints_json_and_writes_files(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--quick", *TINY, "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)              # --json: data only on stdout
    assert data["schema"] == "fertk-bench/1" and data["config"]["quick"] is True
    assert data["machine"]["cpu"]["model"] and data["machine"]["bench_threads"] == 1
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert {(r["backend"], r["batch"]) for r in ok} == {("torch-cpu", 1), ("torch-cpu", 2)}
    for row in ok:
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["parity_passed"]
    skipped = [r for r in data["rows"] if r["backend"] == "trt"]
    assert skipped and all(r["status"] in ("skipped", "ok") for r in skipped)
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".json", ".png"]
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert saved["rows"] == data["rows"]
    # The answer to "which backend should I run?": here only eager ran, so eager it is.
    (rec,) = data["recommendations"]
    assert (rec["model"], rec["backend"], rec["precision"], rec["batch"]) == ("fer-cnn:paper", "torch-cpu", "fp32", 2)
    assert rec["speedup_vs_eager"] == 1.0 and saved["recommendations"] == data["recommendations"]


def test_table_and_compare(tmp_path: Path) -> None:
    previous = tmp_path / "previous.json"
    first = runner.invoke(app, ["bench", *TINY, "--batches", "1", "--json"])
    assert first.exit_code == 0, first.output
    previous.write_text(first.stdout)
    result = runner.invoke(app, ["bench", *TINY, "--batches", "1", "--compare", str(previous)])
    assert result.exit_code == 0, result.output
    assert "fertk bench" in result.stdout and "torch-cpu" in result.stdout
    assert "compared with the previous run" in result.stdout
    assert "Recommended here" in result.stdout and "fer-cnn:paper on cpu: torch-cpu fp32" in result.stdout
    assert "not measured here" in result.stdout or "trt" in result.stdout


def test_errors_are_one_line(tmp_path: Path) -> None:
    bad = runner.invoke(app, ["bench", "--models", "resnet"])
    assert bad.exit_code == 2 and "unknown bench model" in bad.output and "fer-cnn:paper" in bad.output
    weights = runner.invoke(app, ["bench", "--weights", "no-equals-sign"])
    assert weights.exit_code == 2 and "MODEL=PATH" in weights.output
    missing = runner.invoke(app, ["bench", *TINY, "--compare", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "do not exist" in missing.output


def test_list() -> None:
    result = runner.invoke(app, ["bench", "--list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "fer-cnn:paper" in data["models"] and "ort-cpu" in data["backends"]
