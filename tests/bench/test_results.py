"""Results schema: JSON round trip, loading errors, compare ratios and baseline speed-ups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fertk.bench.results import SCHEMA, BenchResults, BenchRow, compare_results, fill_speedups, load_results
from fertk.core.errors import InvalidInputError


def _row(model: str, backend: str, batch: int | None, items_per_s: float | None, *, precision: str = "fp32",
         device: str = "cpu", status: str = "ok", **extra: object) -> BenchRow:
    p50 = None if items_per_s is None or batch is None else batch / items_per_s * 1e3
    return BenchRow(model, backend, device, precision, batch, status=status, items_per_s=items_per_s, p50_ms=p50,
                    **extra)  # type: ignore[arg-type]


def test_json_round_trip(tmp_path: Path) -> None:
    results = BenchResults(
        rows=[_row("fer-cnn:paper", "torch-cpu", 8, 100.0, timing={"p50_ms": 80.0}, parity_max_abs=float("nan")),
              _row("fer-cnn:paper", "trt", None, None, status="skipped", reason="tensorrt is not installed")],
        config={"batches": [8]}, machine={"cpu": {"model": "x"}}, peaks=[{"device": "cpu", "gflops": 1.5}],
        flops={"fer-cnn:paper": {"gflop_per_item": 0.397}}, created="2026-01-01T00:00:00Z", seconds=1.0)
    path = results.save(tmp_path / "sub" / "r.json")
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA
    assert data["rows"][0]["parity_max_abs"] is None          # NaN is not JSON
    again = load_results(path)
    assert again.to_dict() == results.to_dict()
    assert again.rows[1].reason == "tensorrt is not installed" and not again.rows[1].ok
    # Unknown row keys survive in `extra` instead of failing an old reader.
    data["rows"][0]["new_field"] = 3
    assert BenchResults.from_dict(data).rows[0].extra["new_field"] == 3


def test_loading_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="do not exist"):
        load_results(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidInputError):
        load_results(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something-else", "rows": []}))
    with pytest.raises(InvalidInputError, match="not a fertk bench result"):
        load_results(other)
    with pytest.raises(InvalidInputError):
        BenchRow("m", "b", "cpu", "fp32", 1, status="great")


def test_compare_ratios() -> None:
    old = BenchResults(rows=[_row("m", "torch-cpu", 8, 100.0), _row("m", "ort-cpu", 8, 200.0),
                             _row("m", "gone", 8, 50.0), _row("m", "trt", None, None, status="skipped")])
    new = BenchResults(rows=[_row("m", "torch-cpu", 8, 150.0), _row("m", "ort-cpu", 8, 100.0),
                             _row("m", "fresh", 8, 10.0)])
    by_backend = {c.backend: c for c in compare_results(new, old)}
    assert by_backend["torch-cpu"].throughput_ratio == pytest.approx(1.5)
    assert by_backend["torch-cpu"].latency_ratio == pytest.approx(1 / 1.5)
    assert by_backend["ort-cpu"].throughput_ratio == pytest.approx(0.5)
    assert by_backend["fresh"].status == "new" and by_backend["fresh"].throughput_ratio is None
    assert by_backend["gone"].status == "gone" and by_backend["gone"].old_items_per_s == 50.0
    assert "trt" not in by_backend      # skipped rows are not compared
    # Another batch or precision is another row.
    other = BenchResults(rows=[_row("m", "torch-cpu", 16, 150.0), _row("m", "torch-cpu", 8, 1.0, precision="bf16")])
    assert {c.status for c in compare_results(other, old) if c.backend == "torch-cpu"} == {"new", "gone"}


def test_speedups_over_eager_and_the_hand_loop() -> None:
    rows = [
        _row("fer", "torch-cpu", 8, 100.0), _row("fer", "ort-cpu", 8, 300.0), _row("fer", "ort-cpu", 32, 400.0),
        _row("pipeline:gan", "torch-cpu", 1, 20.0), _row("pipeline:gan", "hand-loop-cpu", 1, 4.0),
        _row("pipeline:gan", "hand-loop-cpu", 8, 5.0), _row("synth:gan", "torch-cpu", 1, 15.0),
        _row("pipeline:gan", "torch-cuda", 1, 500.0, device="cuda"),
    ]
    fill_speedups(rows, eager_backends={"cpu": "torch-cpu", "cuda": "torch-cuda"},
                  hand_loop_backends={"cpu": "hand-loop-cpu"},
                  hand_loop_models={"pipeline:gan": "pipeline:gan", "synth:gan": "pipeline:gan"})
    speed = {(r.model, r.backend, r.batch): r for r in rows}
    assert speed[("fer", "torch-cpu", 8)].speedup_vs_eager == 1.0
    assert speed[("fer", "ort-cpu", 8)].speedup_vs_eager == pytest.approx(3.0)
    assert speed[("fer", "ort-cpu", 32)].speedup_vs_eager is None          # no eager row at batch 32
    assert speed[("fer", "ort-cpu", 8)].speedup_vs_hand_loop is None
    # Against the best hand-loop throughput of the same device (5 faces/s).
    assert speed[("pipeline:gan", "torch-cpu", 1)].speedup_vs_hand_loop == pytest.approx(4.0)
    assert speed[("synth:gan", "torch-cpu", 1)].speedup_vs_hand_loop == pytest.approx(3.0)
    assert speed[("pipeline:gan", "hand-loop-cpu", 1)].speedup_vs_hand_loop is None
    assert speed[("pipeline:gan", "torch-cuda", 1)].speedup_vs_hand_loop is None   # no CUDA hand loop here


def test_recommendation_is_the_fastest_row_that_passed_parity_against_eager_fp32() -> None:
    from fertk.bench.results import Recommendation, recommend

    eager = {"cpu": "torch-cpu"}
    rows = [
        _row("m", "torch-cpu", 1, 10.0, parity_passed=True), _row("m", "torch-cpu", 8, 20.0, parity_passed=True),
        _row("m", "ort-cpu", 1, 30.0, parity_passed=True), _row("m", "ort-cpu", 8, 50.0, parity_passed=True),
        # Faster, but its parity failed on one batch: never recommended, listed as not chosen.
        _row("m", "ort-cpu", 1, 40.0, precision="int8", parity_passed=True),
        _row("m", "ort-cpu", 8, 90.0, precision="int8", parity_passed=False),
        # The plain loop is a reference, not an engine; a 16-batch row without an eager twin.
        _row("m", "hand-loop-cpu", 8, 500.0), _row("m", "torch-cpu-cl", 16, 45.0, parity_passed=True),
        _row("m", "trt", None, None, status="skipped", reason="tensorrt is not installed"),
        _row("g", "torch-cpu", 2, 5.0, parity_passed=True), _row("g", "ort-cpu", 2, 4.0, parity_passed=True),
    ]
    fill_speedups(rows, eager_backends=eager, hand_loop_backends={}, hand_loop_models={})
    recs = {r.model: r for r in recommend(rows, eager_backends=eager, baseline_backends=("hand-loop-cpu",))}
    best = recs["m"]
    assert (best.backend, best.precision, best.batch) == ("ort-cpu", "fp32", 8)
    assert best.speedup_vs_eager == pytest.approx(2.5) and best.eager_items_per_s == 20.0
    assert best.excluded == ["ort-cpu int8: 4.50x but parity failed at batch 8"]
    assert "ort-cpu fp32" in best.line() and "2.50x torch eager fp32" in best.line()
    # Eager itself can be the answer, and says so.
    assert (recs["g"].backend, recs["g"].speedup_vs_eager) == ("torch-cpu", 1.0) and "fastest" in recs["g"].note
    assert Recommendation(**best.to_dict()) == best


def test_old_backend_spelling_in_saved_results_reads_as_today_s() -> None:
    data = BenchResults(rows=[_row("m", "ort-trt", None, None, status="skipped", device="cuda")]).to_dict()
    assert BenchResults.from_dict(data).rows[0].backend == "ort-tensorrt"
