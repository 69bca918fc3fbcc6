"""benchmarks/run_gpu.sh: the driver's pieces, then the whole script in --dry-run (CPU, tiny sizes)
with a forced missing package and a forced stage timeout, and once without --dry-run on a
machine with no GPU (every GPU stage skipped with its reason)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "run_gpu.sh"
STAGE_NAMES = ["env", "pytest", "bench-fer", "bench-gan-pipeline", "synth-gan", "synth-procedural",
               "bench-procedural-synth", "bench-gan-parts"]
STATUSES = {"ok", "partial", "failed", "timeout", "skipped"}


def _driver():
    spec = importlib.util.spec_from_file_location("fertk_run_gpu", REPO / "benchmarks" / "gpu" / "run_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run_gpu = _driver()


# -- pieces -----------------------------------------------------------------------------------------

def test_stage_limits_share_the_time_left_and_pass_on_what_is_unused() -> None:
    stages = list(run_gpu.STAGES)
    total = sum(s.weight for s in stages)
    bench = stages[2]
    assert run_gpu.stage_limit(bench, stages, 400.0) == pytest.approx(400.0 * bench.weight / total)
    # Later, with fewer stages left, the same time left buys a bigger share.
    assert run_gpu.stage_limit(bench, stages[2:], 400.0) > run_gpu.stage_limit(bench, stages, 400.0)
    # The env stage's floor, but never more than what is left; forced timeouts get 1 s.
    assert run_gpu.stage_limit(stages[0], stages, 400.0) == stages[0].floor_s
    assert run_gpu.stage_limit(stages[0], stages, 12.0) == 12.0
    assert run_gpu.stage_limit(bench, stages, -5.0) == 0.0
    assert run_gpu.stage_limit(bench, stages, 400.0, forced_timeout=True) == 1.0
    # However the time is split, the limits of a run never add up to more than what was left.
    left, used = 300.0, 0.0
    for i, stage in enumerate(stages):
        limit = run_gpu.stage_limit(stage, stages[i:], left - used)
        used += limit
    assert used <= 300.0 + 1e-9


def test_skip_reasons() -> None:
    bench, env = run_gpu.STAGES[2], run_gpu.STAGES[0]
    assert run_gpu.skip_reason(bench, 100, fertk_ok=False, cuda=True, dry=False).startswith("fertk does not import")
    assert run_gpu.skip_reason(bench, 100, fertk_ok=True, cuda=False, dry=False).startswith("no CUDA")
    assert run_gpu.skip_reason(bench, 100, fertk_ok=True, cuda=False, dry=True) is None
    assert run_gpu.skip_reason(bench, 2, fertk_ok=True, cuda=True, dry=False).startswith("budget spent")
    assert run_gpu.skip_reason(bench, 2, fertk_ok=True, cuda=True, dry=True) is None   # dry: a fifth of min_s
    assert run_gpu.skip_reason(bench, 0.5, fertk_ok=True, cuda=True, dry=False, forced_timeout=True) is None
    assert run_gpu.skip_reason(env, 100, fertk_ok=False, cuda=False, dry=False) is None


def test_rows_are_recovered_from_bench_progress_lines() -> None:
    text = "\n".join([
        "measuring the fp16 GEMM peak on cuda",
        "[fer-cnn:paper] torch-cuda fp16 batch 256: 61234.5 image/s, p50 4.18 ms",
        "[pipeline:gan] trt fp32,fp16,int8 batch None: skipped: tensorrt is not installed",
        "[pipeline:gan] torch-cuda-compile bf16 batch 8: error: RuntimeError: boom",
        "[synth:gan] torch-cuda fp32 batch 8: 812.0 face/s",
    ])
    rows = run_gpu.rows_from_log(text)
    assert [(r["model"], r["backend"], r["status"]) for r in rows] == [
        ("fer-cnn:paper", "torch-cuda", "ok"), ("pipeline:gan", "trt", "skipped"),
        ("pipeline:gan", "torch-cuda-compile", "error"), ("synth:gan", "torch-cuda", "ok")]
    assert rows[0]["items_per_s"] == 61234.5 and rows[0]["p50_ms"] == 4.18 and rows[0]["batch"] == 256
    assert rows[1]["batch"] is None and rows[1]["device"] == "cuda"
    assert rows[3]["p50_ms"] is None and rows[3]["unit"] == "face"


def test_rows_are_recovered_from_what_fertk_bench_prints_today() -> None:
    from typer.testing import CliRunner

    from fertk.cli import app

    result = CliRunner().invoke(app, ["bench", "--models", "fer-cnn:paper", "--backends", "torch-cpu,trt",
                                      "--batches", "1,2", "--precisions", "fp32", "--budget-s", "0.05",
                                      "--threads", "1", "--no-parity", "--json"])
    assert result.exit_code == 0, result.output
    measured = [(r["backend"], r["batch"], r["status"]) for r in json.loads(result.stdout)["rows"]]
    recovered = run_gpu.rows_from_log(result.stderr)
    assert sorted((r["backend"], r["batch"], r["status"]) for r in recovered) == sorted(measured)
    assert len(measured) >= 3   # two torch-cpu rows and the trt row that says why it did not run


def test_bench_figure_is_drawn_by_fertk_bench_report(tmp_path: Path) -> None:
    rows = [{"model": "fer-cnn:paper", "backend": "torch-cuda", "device": "cuda", "precision": p, "batch": b,
             "status": "ok", "items_per_s": 100.0 * b * (2 if p == "fp16" else 1), "unit": "image", "stage": "bench-fer"}
            for p in ("fp32", "fp16") for b in (1, 8, 64)]
    run = SimpleNamespace(python=sys.executable, stem="gpu-test")   # all the figure needs of a Run
    path = run_gpu.bench_figure(run, rows, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_junit_summary(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    path.write_text("""<?xml version="1.0"?><testsuites><testsuite>
      <testcase classname="a" name="ok"/>
      <testcase classname="a" name="bad"><failure message="assert 1 == 2"/></testcase>
      <testcase classname="b" name="trt"><skipped message="needs TensorRT and a CUDA device"/></testcase>
    </testsuite></testsuites>""")
    summary = run_gpu.parse_junit(path)
    assert (summary["tests"], summary["passed"], summary["failures"], summary["skipped"]) == (3, 1, 1, 1)
    assert summary["failed"][0]["test"] == "a::bad"
    assert summary["skipped_tests"][0]["message"].startswith("needs TensorRT")
    assert run_gpu.parse_junit(tmp_path / "absent.xml") == {"present": False}


def test_pytest_outcomes_from_verbose_lines() -> None:
    text = ("tests/a.py::test_one PASSED                 [ 33%]\n"
            "tests/a.py::test_two[cuda] FAILED           [ 66%]\n"
            "tests/b.py::test_trt SKIPPED (needs TensorRT) [100%]\n"
            "FAILED tests/a.py::test_two[cuda] - assert 1\n")
    got = run_gpu.outcomes_from_log(text)
    assert got["counts"] == {"PASSED": 1, "FAILED": 1, "SKIPPED": 1}
    assert got["failed"] == ["tests/a.py::test_two[cuda]"]


def test_synth_breakdown_splits_the_wall_time() -> None:
    result = {"seconds": 30.0, "faces_written": 60000, "faces_per_s": 6000.0, "engine_faces_per_s": 15000.0,
              "warmup_seconds": 12.0, "writer_cpu_us_per_face": 40.0}
    b = run_gpu.synth_breakdown(result)
    assert b["generation_loop_s"] == 10.0 and b["engine_s"] == 4.0 and b["warmup_compile_s"] == 12.0
    assert b["setup_s"] == 8.0 and b["outside_engine_in_loop_s"] == 6.0
    assert b["engine_share_of_loop"] == 0.4 and b["end_to_end_over_engine"] == 0.4


def test_committed_shards_of_a_killed_synth_run(tmp_path: Path) -> None:
    records = tmp_path / "ds" / ".fertk" / "records"
    records.mkdir(parents=True)
    for i, (faces, seconds) in enumerate([(600, 0.5), (600, 0.7)]):
        (records / f"shard-{i:06d}.json").write_text(json.dumps({"faces": faces, "seconds": seconds}))
    (records / "shard-000002.json").write_text("{not json")   # a torn write is ignored
    got = run_gpu.shard_records(tmp_path / "ds")
    assert (got["faces"], got["seconds"], got["faces_per_s"]) == (1200, 1.2, 1000.0)
    assert run_gpu.shard_records(tmp_path / "nothing")["shards"] == 0


def test_gpu_bench_stages_ask_for_what_fertk_bench_knows() -> None:
    """The GPU command lines, never run here, name real models, backends and precisions."""
    from fertk.bench import BenchConfig

    run = type("FakeRun", (), {"dry": False})()
    seen_backends = set()
    for stage in ("bench-fer", "bench-gan-pipeline", "bench-procedural-synth", "bench-gan-parts"):
        args = run_gpu.bench_args(run, stage)
        opts = dict(zip(args[::2], args[1::2]))
        config = BenchConfig(models=opts["--models"].split(","), backends=opts["--backends"].split(","),
                             batches=[int(b) for b in opts["--batches"].split(",")],
                             precisions=opts["--precisions"].split(","), budget_s=float(opts["--budget-s"]),
                             max_call_s=float(opts["--max-call-s"]))
        seen_backends |= set(config.backends)
        assert all(b.endswith("cuda") or "cuda-" in b or b in ("ort-tensorrt", "trt") for b in config.backends)
    assert {"torch-cuda", "torch-cuda-cl", "torch-cuda-graphs", "torch-cuda-compile", "hand-loop-cuda"} <= seen_backends
    assert "1024" in run_gpu.bench_args(run, "bench-fer")[run_gpu.bench_args(run, "bench-fer").index("--batches") + 1]


def test_arguments() -> None:
    args = run_gpu.parse_args(["--dry-run", "--stages", "bench-fer", "--out", "x"])
    assert [s.name for s in args.stage_list] == ["env", "bench-fer"] and args.budget_s == 240.0
    assert run_gpu.parse_args(["--out", "x"]).budget_s == 420.0
    with pytest.raises(SystemExit):
        run_gpu.parse_args(["--stages", "nope"])
    with pytest.raises(SystemExit):
        run_gpu.parse_args(["--budget-s", "5"])


# -- the whole script ---------------------------------------------------------------------------------

def _run_script(out: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full_env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": "", **env}
    tic = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=900)
    return proc, time.monotonic() - tic


def _report(out: Path) -> dict:
    reports = [p for p in out.glob("*.json")]
    assert len(reports) == 1, sorted(p.name for p in out.iterdir())
    return json.loads(reports[0].read_text())


def test_dry_run_runs_every_stage_within_budget_into_at_most_8_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    budget = 300
    proc, wall = _run_script(out, "--dry-run", "--budget-s", str(budget),
                             FERTK_GPU_FORCE_MISSING="platformdirs", FERTK_GPU_FORCE_TIMEOUT="bench-gan-parts")
    summary = [line for line in proc.stdout.splitlines() if line.lstrip("[ 0123456789.s]").startswith(
        ("== stage", *(f"{name}:" for name in STAGE_NAMES)))]
    assert proc.returncode == 0, "\n".join(summary) + proc.stderr[-3000:]
    assert wall < budget + 30
    files = sorted(p.name for p in out.iterdir())
    assert 3 <= len(files) <= 8 and all((out / f).is_file() for f in files)
    data = _report(out)
    assert sorted(data["files"]) == files
    assert data["schema"] == "fertk-gpu-run/1" and data["dry_run"] is True and data["complete"] is True
    assert data["seconds"] <= budget
    stem = data["files"][0][: -len(".json")]
    assert stem.startswith("dryrun-") and f"{stem}.log" in files and f"{stem}-pytest.xml" in files
    assert any(f.endswith(".png") for f in files)
    for name in (f for f in files if f.endswith(".png")):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stages = {s["name"]: s for s in data["stages"]}
    assert list(stages) == STAGE_NAMES
    # A killed stage may overrun its limit by the kill's grace periods (SIGINT, SIGTERM, SIGKILL).
    slack = 2 * run_gpu.KILL_GRACE_S + 2
    assert all(s["status"] in STATUSES and s["seconds"] <= s["limit_s"] + slack for s in stages.values())
    assert not [s for s in stages.values() if s["status"] == "failed"], stages
    # The forced branches: a missing package named with what to carry, a stage killed at 1 s.
    assert stages["env"]["status"] == "partial"
    assert "MISSING platformdirs" in proc.stdout and "benchmarks/gpu/wheels" in proc.stdout
    assert stages["bench-gan-parts"]["status"] == "timeout" and stages["bench-gan-parts"]["limit_s"] <= 1.0
    assert stages["bench-gan-parts"]["commands"][0]["timed_out"] is True
    # Every other stage ran: finished, or stopped by its share on a slow machine (never skipped or failed).
    for name in STAGE_NAMES[1:-1]:
        assert stages[name]["status"] in ("ok", "timeout"), stages[name]
    results = data["results"]
    assert results["env"]["report"]["fertk"]["ok"] is True
    if list((REPO / "benchmarks" / "gpu" / "wheels").glob("*.whl")):   # installed here: left out
        assert "not needed: platformdirs is installed" in proc.stdout
        assert "fertk-wheels-" not in results["env"]["report"]["pythonpath"]
    if stages["pytest"]["status"] == "ok":   # -m gpu on CPU: collected and skipped with the reason
        summary = results["pytest"]["summary"]
        assert summary["present"] and summary["skipped"] >= 1 and summary["failures"] == 0
    if stages["bench-fer"]["status"] == "ok":
        rows = results["bench-fer"]["bench"]["rows"]
        assert any(r["status"] == "ok" and r["device"] == "cpu" for r in rows)
        assert any(r["status"] == "skipped" and r["device"] == "cuda" for r in rows)   # CUDA rows say why
    if stages["synth-gan"]["status"] == "ok":
        runs = results["synth-gan"]["runs"]
        assert runs["gan-auto"]["result"]["faces_written"] == 8 * 6
        assert runs["gan-auto"]["breakdown"]["total_s"] > 0 and runs["gan-auto"]["usage"]["wall_s"] > 0
        assert Path(results["synth-gan"]["weights"]["generator_weights"]).name == "stylegan2-G.pt"
    if stages["synth-procedural"]["status"] == "ok":
        assert results["synth-procedural"]["runs"]["procedural-auto"]["result"]["faces_written"] == 20 * 6
    assert set(data["targets"]) >= {"fer_cnn_fp16_images_per_s", "pipeline_gan_fp16_vs_eager_fp32",
                                    "gan_identities_per_s_best", "flop_limit_identities_per_s"}
    if stages["bench-gan-pipeline"]["status"] == "ok":   # FLOPs per identity over the measured peak
        assert data["targets"]["flop_limit_identities_per_s"] > 0
        assert data["targets"]["pipeline_gan_vs_hand_loop"] > 0
    log = (out / f"{stem}.log").read_text()
    assert "== stage bench-fer" in log and "TIMED OUT" in log


def _make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel (module `name` with VALUE = 42), RECORD hashes included."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: fertk-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
        zf.writestr(f"{info}/RECORD", record)
    return path


def test_without_a_gpu_the_gpu_stages_skip_with_the_reason(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the real run would start")
    out = tmp_path / "out"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _make_wheel(wheels, "fertk_probe_wheel", "0.1")       # missing here: installed offline
    _make_wheel(wheels, "pytest", "0.0.1")                # installed here: left out, never shadows
    proc, _ = _run_script(out, "--budget-s", "90", "--stages", "env,pytest,synth-gan",
                          FERTK_GPU_WHEELS=str(wheels))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "carried wheels: fertk_probe_wheel-0.1-py3-none-any.whl (installed offline" in proc.stdout
    assert "carried wheel pytest-0.0.1-py3-none-any.whl not needed: pytest is installed" in proc.stdout
    data = _report(out)
    site = next(p for p in data["env"]["pythonpath"].split(os.pathsep) if "fertk-wheels-" in p)
    assert site  # the temp dir the wheel went into (removed when the script ends)
    stages = {s["name"]: s for s in data["stages"]}
    assert list(stages) == ["env", "pytest", "synth-gan"]
    assert stages["env"]["status"] == "partial"                     # CUDA is the missing piece
    assert "MISSING CUDA" in proc.stdout
    assert stages["pytest"]["status"] == stages["synth-gan"]["status"] == "skipped"
    assert stages["synth-gan"]["reason"].startswith("no CUDA device")
    assert data["dry_run"] is False and len(list(out.iterdir())) <= 8
