"""`run_bench` end to end on real models with tiny budgets (statistics checked, never timings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fertk.bench import BenchConfig, run_bench
from fertk.bench.results import BenchResults
from fertk.engines import backend_report
from fertk.core.errors import InvalidInputError

TINY = dict(budget_s=0.05, warmup_s=0.0, min_iterations=2, peak_budget_s=0.1)


def _sane(results: BenchResults) -> None:
    for row in results.ok_rows():
        assert row.batch is not None and row.items_per_s and row.items_per_s > 0
        assert row.p50_ms is not None and row.p95_ms is not None and row.p99_ms is not None
        assert 0 < row.p50_ms <= row.p95_ms <= row.p99_ms
        # Throughput is the median call's: items per call / median latency.
        assert row.items_per_s == pytest.approx(row.batch * row.items_per_sample / (row.p50_ms / 1e3))
        assert row.timing["iterations"] >= 2
        assert row.host_rss_peak_mib is not None and row.host_rss_peak_mib > 0


def test_fer_cnn_rows_with_parity_flops_and_unavailable_backends(tmp_path: Path) -> None:
    config = BenchConfig(models=("fer-cnn:paper",), backends=("torch-cpu", "ort-cpu", "torch-cuda", "trt"),
                         batches=(1, 3), precisions=("fp32", "int8"), threads=1, calibration_samples=48,
                         **TINY)
    results = run_bench(config, workdir=tmp_path)
    _sane(results)
    available = {r.name: r.available for r in backend_report()}
    measured = {(r.backend, r.precision, r.batch) for r in results.ok_rows()}
    assert {("torch-cpu", "fp32", 1), ("torch-cpu", "fp32", 3), ("ort-cpu", "fp32", 1), ("ort-cpu", "int8", 3)} <= measured
    # Rows that cannot run here appear once per backend, with the one-line reason.
    for backend, requires in (("torch-cuda", "torch-cuda"), ("trt", "trt")):
        if not available[requires]:
            (row,) = [r for r in results.rows if r.backend == backend]
            assert row.status == "skipped" and row.reason and row.batch is None
    for row in results.ok_rows():
        assert row.threads == 1                                   # torch and onnxruntime alike
        assert row.gflop_per_sample == pytest.approx(0.39663616)
        assert row.peak_gflops and row.pct_of_peak == pytest.approx(100 * row.gflops / row.peak_gflops)
        assert row.parity_argmax_agreement is not None
        if row.precision == "fp32":
            assert row.parity_passed and row.parity_max_abs < 1e-3
    ort = results.find("fer-cnn:paper", "ort-cpu", "fp32", 3)
    assert ort is not None and ort.engine["intra_op_threads"] == 1 and ort.engine["providers"] == ["CPUExecutionProvider"]
    eager = results.find("fer-cnn:paper", "torch-cpu", "fp32", 3)
    assert eager is not None and eager.speedup_vs_eager == 1.0
    assert ort.speedup_vs_eager == pytest.approx(ort.items_per_s / eager.items_per_s)
    int8 = results.find("fer-cnn:paper", "ort-cpu", "int8", 1)
    assert int8 is not None and int8.extra["int8_accuracy"]["samples"] > 0
    # Export and quantisation are timed apart from the rows.
    steps = [b["step"] for b in results.builds]
    assert "ONNX export + parity check" in steps and any(s.startswith("int8 graph") for s in steps)
    assert results.machine["bench_threads"] == 1 and results.peaks[0]["threads"] == 1
    assert results.flops["fer-cnn:paper"]["gflop_per_item"] == pytest.approx(0.39663616)


def test_pipeline_hand_loop_and_synth_rows(tmp_path: Path) -> None:
    config = BenchConfig(models=("pipeline:procedural", "synth:procedural"), backends=("torch-cpu", "hand-loop-cpu"),
                         batches=(2,), precisions=("fp32",), threads=1, **TINY)
    results = run_bench(config, workdir=tmp_path)
    _sane(BenchResults(rows=[r for r in results.rows if r.model.startswith("pipeline")]))
    engine = results.find("pipeline:procedural", "torch-cpu", "fp32", 2)
    loop = results.find("pipeline:procedural", "hand-loop-cpu", "fp32", 2)
    synth = results.find("synth:procedural", "torch-cpu", "fp32", 2)
    assert engine and loop and synth, [(r.model, r.backend, r.status, r.reason) for r in results.rows]
    assert engine.unit == "face" and engine.items_per_sample == 6
    assert engine.parity_passed
    assert engine.speedup_vs_hand_loop == pytest.approx(engine.items_per_s / loop.items_per_s)
    # The hand loop really wrote PNG files.
    assert list((tmp_path / "hand-loop" / "procedural").glob("*.png"))
    assert synth.items_per_s and synth.items_per_s > 0 and synth.extra["synth"]["faces"] >= 12
    assert synth.speedup_vs_hand_loop == pytest.approx(synth.items_per_s / loop.items_per_s)
    assert not any(r.model.startswith("synth") and r.backend == "hand-loop-cpu" for r in results.rows)


def test_bad_selections_are_refused_with_the_choices() -> None:
    with pytest.raises(InvalidInputError) as info:
        BenchConfig(models=("resnet",))
    assert "fer-cnn:paper" in (info.value.hint or "")
    with pytest.raises(InvalidInputError):
        BenchConfig(backends=("tpu",))
    with pytest.raises(InvalidInputError):
        BenchConfig(precisions=("fp8",))
    with pytest.raises(InvalidInputError):
        BenchConfig(batches=(0,))


@pytest.mark.gpu
def test_cuda_rows(tmp_path: Path) -> None:
    config = BenchConfig(models=("fer-cnn:paper", "pipeline:procedural"),
                         backends=("torch-cuda", "torch-cuda-graphs", "hand-loop-cuda"), batches=(1, 8),
                         precisions=("fp32", "fp16"), **TINY)
    results = run_bench(config, workdir=tmp_path)
    _sane(results)
    assert any(p["device"] == "cuda" and p["precision"] == "fp16" for p in results.peaks)
    assert {b["kind"] for b in results.bandwidth} == {"d2d", "h2d", "d2h"}
    for key in (("fer-cnn:paper", "torch-cuda", "fp16", 8), ("fer-cnn:paper", "torch-cuda-graphs", "fp32", 8),
                ("pipeline:procedural", "hand-loop-cuda", "fp32", 8)):
        row = results.find(*key)
        assert row is not None, key
        assert row.gpu_torch_peak_mib is not None and row.threads is None
    fp16 = results.find("fer-cnn:paper", "torch-cuda", "fp16", 8)
    assert fp16 is not None and fp16.parity_argmax_agreement is not None and fp16.timing["gpu_p50_ms"] is not None
    assert results.find("pipeline:procedural", "torch-cuda", "fp16", 8).speedup_vs_hand_loop  # type: ignore[union-attr]


@pytest.mark.gpu
@pytest.mark.trt
def test_tensorrt_rows(tmp_path: Path) -> None:
    config = BenchConfig(models=("fer-cnn:paper",), backends=("torch-cuda", "trt"), batches=(1, 8),
                         precisions=("fp32", "fp16", "int8"), calibration_samples=64, **TINY)
    results = run_bench(config, workdir=tmp_path)
    _sane(results)
    for precision in ("fp32", "fp16", "int8"):
        row = results.find("fer-cnn:paper", "trt", precision, 8)
        assert row is not None and row.open_s is not None and row.parity_argmax_agreement is not None


def test_a_precision_the_model_does_not_offer_is_one_skipped_row(tmp_path: Path) -> None:
    # The procedural renderer is float32 only: bf16 is a fact about the model, not a failure.
    config = BenchConfig(models=("procedural",), backends=("torch-cpu",), batches=(1, 2),
                         precisions=("fp32", "bf16"), threads=1, scale="small", parity=False, **TINY)
    results = run_bench(config, workdir=tmp_path)
    (skipped,) = [r for r in results.rows if r.precision == "bf16"]
    assert skipped.status == "skipped" and skipped.batch is None and "float32 only" in skipped.reason
    assert {r.batch for r in results.ok_rows()} == {1, 2}


def test_generator_int8_is_opt_in_and_each_model_is_checkpointed(tmp_path: Path) -> None:
    seen: list[int] = []
    config = BenchConfig(models=("fer-cnn:paper", "procedural"), backends=("ort-cpu",), batches=(1,),
                         precisions=("int8",), threads=1, scale="small", parity=False, calibration_samples=16,
                         **TINY)
    results = run_bench(config, workdir=tmp_path / "w", checkpoint=lambda so_far: seen.append(len(so_far.rows)))
    assert len(seen) == 2 and seen[-1] == len(results.rows)          # once per model, growing
    (gen,) = [r for r in results.rows if r.model == "procedural"]
    assert gen.status == "skipped" and "--int8-generators" in gen.reason
    assert results.find("fer-cnn:paper", "ort-cpu", "int8", 1) is not None


def test_quick_offers_no_row_that_cannot_work_and_recommends_a_backend_per_model(tmp_path: Path) -> None:
    """`fertk bench --quick` on a tiny budget: no error rows (the procedural pipeline's QDQ graph
    does not load in onnxruntime, so generator INT8 is not offered, with the reason), and the
    result ends with the backend + precision to run per model, with its speed-up over eager fp32."""
    from fertk.bench import quick_config
    from fertk.bench.results import Recommendation

    config = quick_config(batches=(1, 2), threads=1, calibration_samples=16, **TINY)
    assert config.int8_generators is False
    results = run_bench(config, workdir=tmp_path)
    assert not [(r.model, r.backend, r.precision, r.reason) for r in results.rows if r.status == "error"]
    (gen_int8,) = [r for r in results.rows if r.model == "pipeline:procedural" and r.precision == "int8"]
    assert gen_int8.status == "skipped" and "not offered" in gen_int8.reason and "--int8-generators" in gen_int8.reason
    recs = {r["model"]: Recommendation(**r) for r in results.recommendations}
    assert set(recs) == {"fer-cnn:paper", "pipeline:procedural"}
    for model, rec in recs.items():
        row = results.find(model, rec.backend, rec.precision, rec.batch)
        eager = results.find(model, "torch-cpu", "fp32", rec.batch)
        assert row is not None and eager is not None and rec.backend != "hand-loop-cpu"
        assert row.parity_passed and rec.speedup_vs_eager == pytest.approx(row.items_per_s / eager.items_per_s)
        # Nothing that passed parity at that batch was faster.
        rivals = [r for r in results.ok_rows() if r.model == model and r.batch == rec.batch and r.parity_passed]
        assert rec.items_per_s == max(r.items_per_s for r in rivals)
    assert results.to_dict()["recommendations"] == results.recommendations


def test_backend_names_match_fertk_info_and_the_old_spelling_is_accepted() -> None:
    from fertk.bench.backends import BACKENDS, get_backend

    rows = {r.name for r in backend_report()}
    # Every bench backend that is an engine row of `fertk info` is spelled as it is there.
    for backend in BACKENDS.values():
        if backend.engine != "hand-loop" and not backend.options.keys() - {"provider"}:
            assert backend.name in rows, backend.name
    assert get_backend("ort-trt") is BACKENDS["ort-tensorrt"]
    assert BenchConfig(backends=("ort-trt", "torch-cpu")).backends == ("ort-tensorrt", "torch-cpu")
