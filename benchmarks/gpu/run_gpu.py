"""The GPU run in one command (driven by benchmarks/run_gpu.sh): stages as subprocesses under one
time budget, merged into at most 8 files.

    python3 benchmarks/gpu/run_gpu.py [--dry-run] [--budget-s 420] [--stages a,b] [--out DIR]

Stages, in order (see benchmarks/README.md, "GPU run"): env, pytest, bench-fer, bench-gan-pipeline,
synth-gan, synth-procedural, bench-procedural-synth, bench-gan-parts. Each stage gets a share of
the time left (its weight over the weights of the stages still to run, so time a stage does not
use goes to the later ones), is killed with its process group when it runs past it, and keeps
what it had written: `fertk bench` saves its rows after every model (the partial JSON) and prints
one progress line per row (parsed back when even that is missing); synth commits shards with
their timings. A few seconds are held back for the report, so the whole command ends before the
budget. The report is rewritten after every stage, so a kill from outside still leaves one.

Outputs (at most 8, into --out / $OUT / benchmarks/results): <stem>.json (everything: environment,
stage statuses, bench rows, synth results, targets), <stem>.log (this run's and every stage's
output), <stem>-pytest.xml (junit), and up to three PNGs (<stem>-bench.png, -synth.png,
-stages.png). <stem> is gpu-<card>-<date>, or dryrun-<cpu>-<date> for --dry-run.

--dry-run runs every stage on CPU at tiny sizes (small-scale generators, batches 1-2, a few
identities), so every branch of this script runs in CI. Test hooks (environment variables):
FERTK_GPU_FORCE_MISSING=pkg,... (the env stage reports them missing) and
FERTK_GPU_FORCE_TIMEOUT=stage,... (those stages get a 1-second limit and are killed).

Only the standard library is imported here (matplotlib for the PNGs, lazily): torch and fertk run
in the stage subprocesses, so a hung CUDA call can always be killed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

SCHEMA = "fertk-gpu-run/1"
REPO = Path(__file__).resolve().parents[2]
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
LOG_STAGE_BYTES = 2 * 2**20          # at most this much of one stage's output goes into the log
KILL_GRACE_S = 3.0                   # SIGINT (pytest writes its junit, synth its usage), SIGTERM, SIGKILL
# Targets the run reports against (recorded, not asserted): issue #14.
TARGETS = {
    "pipeline_gan_fp16_vs_eager_fp32": 10.0,     # fused fp16 GAN pipeline over torch eager fp32, same card
    "gan_identities_per_s": 2000.0,              # StyleGAN2-256 + StarGAN-128, one H100/H200
    "fer_cnn_fp16_images_per_s": 50000.0,
}
CUDA_BENCH = "torch-cuda,torch-cuda-cl,torch-cuda-graphs,torch-cuda-compile,ort-cuda,ort-trt,trt"


@dataclass
class Stage:
    """One stage: a weight (its share of the time left), the commands, and how to read the results."""

    name: str
    weight: float
    what: str
    needs_fertk: bool = True
    needs_cuda: bool = True            # skipped (with the reason) on a machine without CUDA, unless --dry-run
    min_s: float = 10.0                # less time left than this: skipped as "budget spent"
    floor_s: float = 0.0               # the limit is at least this (when that much is left)


@dataclass
class StageResult:
    """What happened in one stage (JSON-able)."""

    name: str
    what: str
    status: str = "pending"            # ok | failed | timeout | skipped | partial
    reason: str = ""
    limit_s: float = 0.0
    seconds: float = 0.0
    commands: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


class Run:
    """The run's state: options, clock, work dir, log and results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = bool(args.dry_run)
        self.started = time.monotonic()
        self.budget = float(args.budget_s)
        # Held back for the report (and the outer guard's slack): never less than 5 s.
        self.reserve = max(5.0, 0.04 * self.budget)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="fertk-gpu-run-", dir=args.workdir))
        self.python = sys.executable
        self.created = datetime.now(timezone.utc)
        self.forced_timeout = _csv(os.environ.get("FERTK_GPU_FORCE_TIMEOUT", ""))
        self.stem = f"{'dryrun' if self.dry else 'gpu'}-{_slug(platform.processor() or platform.machine())}-" \
                    f"{self.created:%Y-%m-%d}"
        self.log_path = self.out / f"{self.stem}.log"
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.results: dict[str, StageResult] = {}
        self.env: dict[str, Any] = {}
        self.cuda = False
        self.fertk_ok = False

    # -- clock -------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds the stages may still use (the report's reserve excluded)."""
        return self.budget - self.reserve - self.elapsed()

    # -- output ------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {message}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def rename_for_card(self, card: str) -> None:
        """Name the outputs after the GPU once the env stage knows it."""
        new_stem = f"{'dryrun' if self.dry else 'gpu'}-{_slug(card)}-{self.created:%Y-%m-%d}"
        if new_stem == self.stem:
            return
        self.log.close()
        new_log = self.out / f"{new_stem}.log"
        os.replace(self.log_path, new_log)
        self.stem, self.log_path = new_stem, new_log
        self.log = open(self.log_path, "a", encoding="utf-8")

    # -- subprocesses ------------------------------------------------------------------------------
    def command(self, result: StageResult, argv: list[str], *, deadline: float, stdout_path: Path | None = None,
                env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run argv in its own process group until `deadline` (monotonic); stderr (and stdout unless
        captured to a file) into the log. Returns the command's record (rc, seconds, timed_out)."""
        record: dict[str, Any] = {"argv": [_short(a) for a in argv], "rc": None, "seconds": 0.0, "timed_out": False}
        result.commands.append(record)
        limit = deadline - time.monotonic()
        if limit <= 0.5:
            record["timed_out"] = True
            record["reason"] = "no time left in the stage"
            return record
        self.say(f"$ {' '.join(record['argv'])}  (limit {limit:.0f} s)")
        capture = tempfile.NamedTemporaryFile("w+b", dir=self.work, prefix="out-", delete=False)
        out_fh = open(stdout_path, "wb") if stdout_path is not None else capture
        # Dry run: one thread per process. On a small shared CI machine OpenMP threads spinning at
        # barriers against busy neighbours turn milliseconds into seconds; sizes are tiny anyway.
        dry_env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if self.dry else {}
        full_env = {**os.environ, **dry_env, **(env or {})}
        tic = time.monotonic()
        try:
            proc = subprocess.Popen(argv, cwd=REPO, stdout=out_fh, stderr=capture, stdin=subprocess.DEVNULL,
                                    env=full_env, start_new_session=True, preexec_fn=_default_sigint)
        except OSError as exc:
            record["rc"], record["reason"] = 127, f"cannot start: {exc}"
            capture.close()
            return record
        try:
            record["rc"] = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            record["timed_out"] = True
            _kill_group(proc)
            record["rc"] = proc.returncode
        except BaseException:   # the outer guard's SIGTERM (KeyboardInterrupt): no stage outlives the run
            _kill_group(proc)
            raise
        record["seconds"] = round(time.monotonic() - tic, 2)
        if stdout_path is not None:
            out_fh.close()
        capture.flush()
        capture.seek(0)
        text = capture.read(LOG_STAGE_BYTES).decode("utf-8", "replace")
        capture.close()
        os.unlink(capture.name)
        record["output_tail"] = text[-1500:]
        self.log.write(text if text.endswith("\n") or not text else text + "\n")
        if len(text.encode("utf-8", "replace")) >= LOG_STAGE_BYTES:
            self.log.write(f"[... output of this command cut at {LOG_STAGE_BYTES} bytes]\n")
        self.log.flush()
        self.say(f"  -> rc {record['rc']} in {record['seconds']:.1f} s" + ("  (TIMED OUT, killed)" if record["timed_out"] else ""))
        result.data.setdefault("_texts", []).append(text)
        return record

    def fertk(self, *args: str) -> list[str]:
        return [self.python, "-m", "fertk", *args]


def _default_sigint() -> None:
    """In the child: SIGINT back to its default (a background shell may have ignored it), so Python
    turns it into KeyboardInterrupt and the child can finish its files."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the stage's process group (the child leads it): SIGINT, then SIGTERM, then SIGKILL,
    a grace period apart; at most ~2 x KILL_GRACE_S."""
    for sig, grace in ((signal.SIGINT, KILL_GRACE_S), (signal.SIGTERM, KILL_GRACE_S / 2)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    try:   # the leader is gone (or stuck): no child of it may linger
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _csv(text: str) -> set[str]:
    return {part.strip() for part in text.split(",") if part.strip()}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "unknown"


def _short(arg: str) -> str:
    return str(arg).replace(str(REPO) + "/", "")


# -- stages -----------------------------------------------------------------------------------------

STAGES = (
    Stage("env", 2, "environment check: python, torch, CUDA, GPU, packages, fertk from the checkout",
          needs_fertk=False, needs_cuda=False, min_s=3, floor_s=45),
    Stage("pytest", 12, "pytest -m gpu: every CUDA test (TensorRT ones skip with their reason)", needs_cuda=True),
    Stage("bench-fer", 15, "fertk bench fer-cnn:paper, batches 1-1024, CUDA backends x fp32/fp16/bf16"),
    Stage("bench-gan-pipeline", 20, "fertk bench pipeline:gan (fused graph) + the plain loop, CUDA backends"),
    Stage("synth-gan", 24, "fertk synth StyleGAN2 + StarGAN at paper sizes (random official-format weights), "
                           "--backend auto"),
    Stage("synth-procedural", 11, "fertk synth --n 100000 --device cuda (procedural), --backend auto"),
    Stage("bench-procedural-synth", 10, "fertk bench pipeline:procedural, synth:procedural, synth:gan"),
    Stage("bench-gan-parts", 6, "fertk bench stargan and stylegan2 alone, CUDA backends"),
)


def stage_env(run: Run, result: StageResult, deadline: float) -> None:
    path = run.work / "env.json"
    env = {"FERTK_GPU_NEED_CUDA": "0" if run.dry else "1", "FERTK_GPU_WORKDIR": str(run.work)}
    record = run.command(result, [run.python, str(REPO / "benchmarks/gpu/envcheck.py")], deadline=deadline,
                         stdout_path=path, env=env)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        result.status = "timeout" if record["timed_out"] else "failed"
        result.reason = f"the environment check gave no report ({type(exc).__name__})"
        return
    run.env = report
    run.fertk_ok = bool(report.get("fertk", {}).get("ok"))
    run.cuda = bool(report.get("torch", {}).get("cuda_available"))
    for line in report.get("lines", []):
        run.say(line)
    gpu = report.get("torch", {}).get("gpu") or {}
    if run.cuda and gpu.get("name"):
        run.rename_for_card(gpu["name"])
    result.data = {"report": report}
    problems = [line for line in report.get("lines", []) if line.startswith("MISSING")]
    result.status = "ok" if not problems else "partial"
    result.reason = f"{len(problems)} missing piece(s)" if problems else "all present"


def stage_pytest(run: Run, result: StageResult, deadline: float) -> None:
    junit = run.work / "pytest.xml"
    paths = ["tests/bench/test_peak.py", "tests/engines/test_torch_engine.py"] if run.dry else ["tests"]
    argv = [run.python, "-m", "pytest", "-m", "gpu", "-v", "-rs", "-p", "no:cacheprovider",
            f"--junitxml={junit}", *paths]
    record = run.command(result, argv, deadline=deadline)
    text = "".join(result.data.pop("_texts", []))
    summary = parse_junit(junit)
    result.data = {"junit": str(junit), "summary": summary, "outcomes_from_log": outcomes_from_log(text)}
    if record["timed_out"]:
        result.status, result.reason = "timeout", "pytest ran past its share; the junit file is what finished"
    elif record["rc"] in (0, 5):   # 5: nothing collected (all deselected)
        result.status = "ok"
        result.reason = _junit_line(summary)
    else:
        result.status, result.reason = "failed", f"pytest rc {record['rc']}: {_junit_line(summary)}"


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts and the failed / skipped test names with their messages."""
    if not path.is_file():
        return {"present": False}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"present": True, "error": f"unreadable junit: {exc}"}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skipped = [], []
    for case in root.iter("testcase"):
        counts["tests"] += 1
        name = f"{case.get('classname')}::{case.get('name')}"
        for child in case:
            if child.tag in ("failure", "error"):
                counts["failures" if child.tag == "failure" else "errors"] += 1
                failed.append({"test": name, "message": (child.get("message") or "")[:300]})
            elif child.tag == "skipped":
                counts["skipped"] += 1
                skipped.append({"test": name, "message": (child.get("message") or "")[:200]})
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"present": True, **counts, "failed": failed, "skipped_tests": skipped[:100]}


PYTEST_LINE = re.compile(r"^(?P<test>\S+::\S+) (?P<outcome>PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def outcomes_from_log(text: str) -> dict[str, Any]:
    """Per-test outcomes from `pytest -v` lines (what a killed pytest had finished)."""
    outcomes: dict[str, str] = {}
    for line in text.splitlines():
        match = PYTEST_LINE.match(line.strip())
        if match:
            outcomes[match["test"]] = match["outcome"]
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return {"counts": counts, "failed": sorted(t for t, o in outcomes.items() if o in ("FAILED", "ERROR"))}


def _junit_line(summary: dict[str, Any]) -> str:
    if not summary.get("present"):
        return "no junit file"
    return f"{summary.get('passed', 0)} passed, {summary.get('failures', 0)} failed, " \
           f"{summary.get('errors', 0)} errors, {summary.get('skipped', 0)} skipped"


def bench_args(run: Run, stage: str) -> list[str]:
    """`fertk bench` options of a bench stage (GPU sizes, or tiny CPU ones under --dry-run)."""
    if run.dry:
        # CUDA backends are listed so their "no CUDA" rows show up; bf16 on the FER CNN only.
        common = ["--budget-s", "0.05", "--max-call-s", "2", "--scale", "small", "--threads", "1"]
        return {
            "bench-fer": ["--models", "fer-cnn:paper", "--backends", "torch-cpu,torch-cuda,torch-cuda-graphs,ort-cuda,trt",
                          "--batches", "1,2", "--precisions", "fp32,bf16", *common],
            "bench-gan-pipeline": ["--models", "pipeline:gan", "--backends", "torch-cpu,hand-loop-cpu,torch-cuda",
                                   "--batches", "1", "--precisions", "fp32", *common],
            "bench-procedural-synth": ["--models", "pipeline:procedural,synth:procedural", "--backends",
                                       "torch-cpu", "--batches", "2", "--precisions", "fp32", *common],
            "bench-gan-parts": ["--models", "stargan,stylegan2", "--backends", "torch-cpu", "--batches", "1",
                                "--precisions", "fp32", *common],
        }[stage]
    common = ["--budget-s", "0.3", "--max-call-s", "3", "--precisions", "fp32,fp16,bf16"]
    return {
        # Compile last: its builds cost most and the guard may stop the stage there.
        "bench-fer": ["--models", "fer-cnn:paper", "--backends", CUDA_BENCH,
                      "--batches", "1,8,32,128,256,512,1024", *common],
        "bench-gan-pipeline": ["--models", "pipeline:gan", "--backends",
                               "torch-cuda,hand-loop-cuda,torch-cuda-graphs,torch-cuda-cl,torch-cuda-compile,"
                               "ort-cuda,ort-tensorrt,trt", "--batches", "1,8,32,128", *common],
        "bench-procedural-synth": ["--models", "pipeline:procedural,synth:procedural,synth:gan", "--backends",
                                   "torch-cuda,hand-loop-cuda,torch-cuda-graphs,torch-cuda-compile",
                                   "--batches", "8,128,1024", *common],
        "bench-gan-parts": ["--models", "stargan,stylegan2", "--backends",
                            "torch-cuda,torch-cuda-graphs,torch-cuda-cl,torch-cuda-compile", "--batches",
                            "1,8,32,128", *common],
    }[stage]


# A `row` progress event as `fertk bench` prints it ("row " is the event's kind; older runs had none).
ROW_LINE = re.compile(r"^(?:row )?\[(?P<model>[^\]]+)\] (?P<backend>\S+) (?P<precision>\S+) batch (?P<batch>\d+|None): "
                      r"(?:(?P<items>[0-9.]+) (?P<unit>\w+)/s(?:, p50 (?P<p50>[0-9.]+) ms)?|(?P<status>skipped|error): "
                      r"(?P<reason>.*))$")


def rows_from_log(text: str) -> list[dict[str, Any]]:
    """Bench rows rebuilt from `fertk bench` progress lines (when the stage was killed mid-model)."""
    rows = []
    for line in text.splitlines():
        match = ROW_LINE.match(line.strip())
        if not match:
            continue
        g = match.groupdict()
        row: dict[str, Any] = {"model": g["model"], "backend": g["backend"], "precision": g["precision"],
                               "batch": None if g["batch"] == "None" else int(g["batch"]), "from_log": True}
        if g["items"] is not None:
            row.update(status="ok", items_per_s=float(g["items"]), unit=g["unit"],
                       p50_ms=float(g["p50"]) if g["p50"] else None)
        else:
            row.update(status=g["status"], reason=g["reason"])
        row["device"] = "cuda" if "cuda" in row["backend"] or row["backend"] in ("trt", "ort-trt", "ort-tensorrt") else "cpu"
        rows.append(row)
    return rows


def stage_bench(run: Run, result: StageResult, deadline: float) -> None:
    out = run.work / result.name
    out.mkdir(parents=True, exist_ok=True)
    record = run.command(result, run.fertk("bench", "--out", str(out), *bench_args(run, result.name)),
                         deadline=deadline, stdout_path=run.work / f"{result.name}.table.txt")
    finals = sorted(p for p in out.glob("*.json") if not p.name.endswith(".partial.json"))
    partials = sorted(out.glob("*.partial.json"))
    texts = "".join(result.data.pop("_texts", []))
    source, bench = None, None
    for path, kind in [(p, "complete") for p in finals] + [(p, "partial (saved after the last finished model)")
                                                          for p in partials]:
        try:
            bench = json.loads(path.read_text())
            source = kind
            break
        except (OSError, json.JSONDecodeError):
            continue
    log_rows = rows_from_log(texts)
    data: dict[str, Any] = {"args": bench_args(run, result.name)}
    if bench is not None:
        saved = {(r["model"], r["backend"], r["precision"], r["batch"]) for r in bench.get("rows", [])}
        extra = [r for r in log_rows if (r["model"], r["backend"], r["precision"], r["batch"]) not in saved]
        data.update(source=source, bench=bench, rows_from_log=extra)
    else:
        data.update(source="progress lines only" if log_rows else "nothing", rows_from_log=log_rows)
    result.data = data
    ok_rows = [r for r in (bench or {}).get("rows", []) + data["rows_from_log"] if r.get("status") == "ok"]
    if record["timed_out"]:
        result.status = "timeout"
        result.reason = f"killed at its limit; kept {len(ok_rows)} measured rows ({data['source']})"
    elif record["rc"] != 0:
        tail = (record.get("output_tail") or "").strip().splitlines()
        result.status = "failed"
        result.reason = f"fertk bench rc {record['rc']}" + (f": {tail[-1][:200]}" if tail else "")
    else:
        result.status, result.reason = "ok", f"{len(ok_rows)} measured rows"


def synth_breakdown(result: dict[str, Any]) -> dict[str, Any]:
    """Where a synth run's wall time went, from its SynthResult."""
    seconds = float(result.get("seconds") or 0.0)
    faces = int(result.get("faces_written") or 0)
    fps, engine_fps = float(result.get("faces_per_s") or 0.0), float(result.get("engine_faces_per_s") or 0.0)
    warmup = float(result.get("warmup_seconds") or 0.0)
    loop = faces / fps if fps else 0.0
    engine = faces / engine_fps if engine_fps else 0.0
    return {
        "total_s": round(seconds, 3),
        "setup_s": round(max(0.0, seconds - warmup - loop), 3),   # build the graph, open the engine, card
        "warmup_compile_s": round(warmup, 3),                    # torch.compile / graph capture, before the clock
        "generation_loop_s": round(loop, 3),                     # what faces/s is measured over
        "engine_s": round(engine, 3),                            # engine calls alone (inside the loop)
        "outside_engine_in_loop_s": round(max(0.0, loop - engine), 3),  # seed plan, queue waits, last shards' writes
        "engine_share_of_loop": round(engine / loop, 3) if loop else None,
        "writer_cpu_us_per_face": result.get("writer_cpu_us_per_face"),
        "end_to_end_over_engine": round(fps / engine_fps, 3) if engine_fps else None,
    }


def shard_records(root: Path) -> dict[str, Any]:
    """Committed shards of a (possibly killed) synth run: faces and seconds from their records."""
    records = sorted((root / ".fertk" / "records").glob("*.json")) if root.is_dir() else []
    faces = seconds = 0.0
    for path in records:
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        faces += float(rec.get("faces", 0) or 0)
        seconds += float(rec.get("seconds", 0) or 0)
    return {"shards": len(records), "faces": int(faces), "seconds": round(seconds, 3),
            "faces_per_s": round(faces / seconds, 1) if seconds else None}


def run_synth(run: Run, result: StageResult, deadline: float, label: str, synth_args: list[str]) -> dict[str, Any]:
    """One `fertk synth ... --json` through probe.py (peak GPU memory); its result, usage and breakdown."""
    out = run.work / f"synth-{label}"
    usage_path = run.work / f"synth-{label}-usage.json"
    stdout = run.work / f"synth-{label}.json"
    argv = [run.python, str(REPO / "benchmarks/gpu/probe.py"), str(usage_path), "--",
            "synth", "--out", str(out), "--json", *synth_args]
    record = run.command(result, argv, deadline=deadline, stdout_path=stdout)
    result.data.pop("_texts", None)
    entry: dict[str, Any] = {"args": synth_args, "rc": record["rc"], "timed_out": record["timed_out"]}
    try:
        entry["usage"] = json.loads(usage_path.read_text())
    except (OSError, json.JSONDecodeError):
        entry["usage"] = None
    try:
        synth = json.loads(stdout.read_text())
        entry["result"] = synth
        entry["breakdown"] = synth_breakdown(synth)
        card = Path(synth.get("card") or "")
        if card.is_file():
            card_data = json.loads(card.read_text())
            entry["card_engine"] = card_data.get("engine")
            entry["card_precision"] = card_data.get("precision")
    except (OSError, json.JSONDecodeError, ValueError):
        entry["result"] = None
        entry["committed"] = shard_records(out)   # what a killed run finished
    shutil.rmtree(out, ignore_errors=True)         # 100,000 identities are GBs of shards: results only
    return entry


def device_of(run: Run) -> str:
    return "cpu" if run.dry else "cuda"


def auto_backend(run: Run) -> str:
    """--backend auto on the GPU; torch under --dry-run (auto on CPU exports the graph to ONNX first,
    tens of seconds on a small CPU; the GPU decision itself is unit-tested in tests/engines/test_choice.py)."""
    return "torch" if run.dry else "auto"


def stage_synth_procedural(run: Run, result: StageResult, deadline: float) -> None:
    n, shard, workers = (20, 10, 1) if run.dry else (100_000, 10_000, max(1, min(8, (os.cpu_count() or 2) // 2)))
    args = ["--n", str(n), "--device", device_of(run), "--backend", auto_backend(run), "--shard-size", str(shard),
            "--workers", str(workers)]
    entry = run_synth(run, result, deadline, "procedural", args)
    result.data = {"runs": {"procedural-auto": entry}}
    _synth_status(result, [entry])


def stage_synth_gan(run: Run, result: StageResult, deadline: float) -> None:
    scale = "small" if run.dry else "paper"
    weights_dir = run.work / f"gan-weights-{scale}"
    stdout = run.work / "make-weights.json"
    record = run.command(result, [run.python, str(REPO / "benchmarks/gpu/make_weights.py"), str(weights_dir), scale],
                         deadline=deadline, stdout_path=stdout)
    result.data.pop("_texts", None)
    try:
        weights = json.loads(stdout.read_text())
    except (OSError, json.JSONDecodeError):
        result.status = "timeout" if record["timed_out"] else "failed"
        result.reason = "writing the random official-format weights failed"
        return
    n, shard, workers = (8, 4, 1) if run.dry else (2048, 256, max(1, min(8, (os.cpu_count() or 2) // 2)))
    base = ["--generator", "stylegan2", "--generator-weights", weights["generator_weights"],
            "--translator-weights", weights["translator_weights"], "--device", device_of(run),
            "--shard-size", str(shard), "--workers", str(workers)]
    # First the reference, cheap and sure to finish: torch eager fp32 on a few batches (what fertk
    # synth did before --backend auto); then auto, which compiles (the rest of the stage's time).
    eager_n = 8 if run.dry else 256
    runs = {"gan-eager-fp32": run_synth(run, result, deadline, "gan-eager",
                                        ["--n", str(eager_n), "--backend", "torch", "--precision", "fp32",
                                         "--no-compile", "--batch", "32", *base])}
    runs["gan-auto"] = run_synth(run, result, deadline, "gan-auto",
                                 ["--n", str(n), "--backend", auto_backend(run), *base])
    result.data = {"weights": weights, "runs": runs}
    auto, eager = runs["gan-auto"].get("result"), runs["gan-eager-fp32"].get("result")
    if auto and eager and eager.get("faces_per_s"):
        result.data["auto_over_eager_fp32"] = round(auto["faces_per_s"] / eager["faces_per_s"], 2)
    _synth_status(result, list(runs.values()))


def _synth_status(result: StageResult, entries: list[dict[str, Any]]) -> None:
    done = [e for e in entries if e.get("result")]
    if any(e["timed_out"] for e in entries):
        result.status = "timeout"
        result.reason = f"{len(done)} of {len(entries)} synth runs finished; a killed one keeps its committed shards"
    elif len(done) < len(entries):
        bad = next(e for e in entries if not e.get("result"))
        result.status, result.reason = "failed", f"fertk synth rc {bad['rc']}"
    else:
        result.status = "ok"
        result.reason = "; ".join(f"{e['result']['faces_per_s']:,.0f} faces/s end to end, engine "
                                  f"{e['result']['engine_faces_per_s']:,.0f}" for e in done)


RUNNERS: dict[str, Callable[[Run, StageResult, float], None]] = {
    "env": stage_env, "pytest": stage_pytest, "bench-fer": stage_bench, "bench-gan-pipeline": stage_bench,
    "synth-gan": stage_synth_gan, "synth-procedural": stage_synth_procedural,
    "bench-procedural-synth": stage_bench, "bench-gan-parts": stage_bench,
}


# -- the report -------------------------------------------------------------------------------------

def all_bench_rows(results: dict[str, StageResult]) -> list[dict[str, Any]]:
    rows = []
    for res in results.values():
        bench = res.data.get("bench") or {}
        rows += [{**r, "stage": res.name} for r in bench.get("rows", [])]
        rows += [{**r, "stage": res.name} for r in res.data.get("rows_from_log", [])]
    return rows


def _best(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    pool = [r for r in rows if r.get("status") == "ok" and r.get("items_per_s")
            and all((r.get(k) in v) if isinstance(v, (set, tuple)) else r.get(k) == v for k, v in match.items())]
    return max(pool, key=lambda r: r["items_per_s"]) if pool else None


def _brief(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = ("model", "backend", "precision", "batch", "items_per_s", "unit", "p50_ms", "parity_max_abs",
            "parity_passed", "pct_of_peak", "speedup_vs_eager", "speedup_vs_hand_loop", "gpu_torch_peak_mib")
    return {k: row.get(k) for k in keys if k in row}


def targets(run: Run) -> dict[str, Any]:
    """The issue's targets against what ran (None where the rows did not run)."""
    rows = all_bench_rows(run.results)
    device = "cpu" if run.dry else "cuda"
    reduced = ("fp16", "bf16")
    fer = _best(rows, model="fer-cnn:paper", device=device, precision="fp16") if not run.dry else \
        _best(rows, model="fer-cnn:paper", device=device)
    fused = _best(rows, model="pipeline:gan", device=device, precision=reduced if not run.dry else ("fp32", "bf16"))
    fused = fused if fused is None or not fused["backend"].startswith("hand-loop") else None
    if run.dry and fused is None:   # CPU: whatever the fused graph ran in
        pool = [r for r in rows if r.get("model") == "pipeline:gan" and r.get("device") == device
                and r.get("status") == "ok" and not r["backend"].startswith("hand-loop") and r.get("items_per_s")]
        fused = max(pool, key=lambda r: r["items_per_s"]) if pool else None
    eager = _best(rows, model="pipeline:gan", backend="torch-cuda" if not run.dry else "torch-cpu", precision="fp32")
    loop = _best(rows, model="pipeline:gan", backend="hand-loop-cuda" if not run.dry else "hand-loop-cpu")
    out: dict[str, Any] = {"targets": TARGETS, "device": device}
    out["fer_cnn_fp16_best"] = _brief(fer)
    out["fer_cnn_fp16_images_per_s"] = fer["items_per_s"] if fer else None
    out["pipeline_gan_best"] = _brief(fused)
    out["pipeline_gan_eager_fp32_best"] = _brief(eager)
    out["pipeline_gan_hand_loop_best"] = _brief(loop)
    out["pipeline_gan_fp16_vs_eager_fp32"] = round(fused["items_per_s"] / eager["items_per_s"], 2) \
        if fused and eager else None
    out["pipeline_gan_vs_hand_loop"] = round(fused["items_per_s"] / loop["items_per_s"], 2) if fused and loop else None
    ids = [fused["items_per_s"] / 6.0] if fused else []
    synth = run.results.get("synth-gan")
    auto = ((synth.data.get("runs") or {}).get("gan-auto") or {}).get("result") if synth else None
    if auto and auto.get("faces_per_s"):
        out["synth_gan_auto_identities_per_s"] = round(auto["faces_per_s"] / len(auto.get("emotions") or [0] * 6), 1)
        out["synth_gan_auto_engine_identities_per_s"] = round(
            auto["engine_faces_per_s"] / len(auto.get("emotions") or [0] * 6), 1)
        ids.append(out["synth_gan_auto_engine_identities_per_s"])
    out["gan_identities_per_s_best"] = round(max(ids), 1) if ids else None
    # The FLOP limit: dense GFLOP per identity (bench's count) over the measured bf16 GEMM peak.
    gflop = peak = None
    for res in run.results.values():
        bench = res.data.get("bench") or {}
        entry = (bench.get("flops") or {}).get("pipeline:gan") or {}
        gflop = gflop or entry.get("gflop_per_item")
        for p in bench.get("peaks", []):
            if p.get("device") == device and p.get("precision") == ("bf16" if not run.dry else "fp32") and p.get("gflops"):
                peak = max(peak or 0.0, p["gflops"])
    out["pipeline_gan_gflop_per_identity"] = round(gflop, 3) if gflop else None
    out["gemm_peak_gflops_used"] = peak
    out["flop_limit_identities_per_s"] = round(peak / gflop, 1) if gflop and peak else None
    for key, goal in TARGETS.items():
        value = out.get({"gan_identities_per_s": "gan_identities_per_s_best"}.get(key, key))
        out[f"{key}_met"] = None if value is None or run.dry else bool(value >= goal)
    return out


def write_report(run: Run, *, final: bool) -> Path:
    """The merged JSON (rewritten after every stage); with final, the PNGs and the junit copy too."""
    data = {
        "schema": SCHEMA,
        "created": run.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dry_run": run.dry,
        "budget_s": run.budget,
        "reserve_s": round(run.reserve, 1),
        "seconds": round(run.elapsed(), 2),
        "complete": final,
        "argv": sys.argv[1:],
        "machine": {"host_cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "env": run.env,
        "stages": [{k: v for k, v in asdict(r).items() if k != "data"} for r in run.results.values()],
        "results": {name: {k: v for k, v in r.data.items() if k != "_texts"} for name, r in run.results.items()},
        "targets": targets(run),
        "files": [],
    }
    files = [f"{run.stem}.json", run.log_path.name]
    if final:
        junit = run.work / "pytest.xml"
        if junit.is_file():
            shutil.copyfile(junit, run.out / f"{run.stem}-pytest.xml")
            files.append(f"{run.stem}-pytest.xml")
        try:
            files += [p.name for p in make_plots(run, data)]
        except Exception as exc:  # noqa: BLE001 - figures are a view of the JSON, never worth the results
            data["plot_error"] = f"{type(exc).__name__}: {exc}"[:300]
    data["files"] = files[:MAX_FILES]
    path = run.out / f"{run.stem}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    if tmp.stat().st_size > MAX_FILE_BYTES:   # keep under what comes back: drop the bulky per-row detail
        for res in data["results"].values():
            for row in (res.get("bench") or {}).get("rows", []):
                for key in ("timing", "memory", "engine"):
                    row.pop(key, None)
        tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)
    return path


def make_plots(run: Run, data: dict[str, Any]) -> list[Path]:
    """Up to three PNGs: bench throughput per batch, synth speeds and time split, stage timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    rows = [r for r in all_bench_rows(run.results) if r.get("status") == "ok" and r.get("items_per_s") and r.get("batch")]
    if rows:
        try:
            made.append(bench_figure(run, rows, run.out / f"{run.stem}-bench.png"))
        except (OSError, subprocess.SubprocessError) as exc:  # the other figures still get drawn
            tail = getattr(exc, "stderr", "") or ""
            data["bench_plot_error"] = (f"{type(exc).__name__}: {exc} {tail[-300:]}")[:500]
    made += synth_figure(run, plt) + stages_figure(run, data["stages"], plt)
    return made


def synth_figure(run: Run, plt: Any) -> list[Path]:
    """<stem>-synth.png: faces/s end to end and in the engine alone, and where each synth run's time went."""
    synth_runs = {}
    for name in ("synth-procedural", "synth-gan"):
        res = run.results.get(name)
        for label, entry in ((res.data.get("runs") or {}) if res else {}).items():
            if entry.get("breakdown"):
                synth_runs[label] = entry
    if synth_runs:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
        labels = list(synth_runs)
        e2e = [synth_runs[k]["result"]["faces_per_s"] for k in labels]
        eng = [synth_runs[k]["result"]["engine_faces_per_s"] for k in labels]
        xs = range(len(labels))
        ax1.bar([x - 0.2 for x in xs], e2e, 0.4, label="end to end")
        ax1.bar([x + 0.2 for x in xs], eng, 0.4, label="engine alone")
        ax1.set_xticks(list(xs), labels, fontsize=8)
        ax1.set_yscale("log")
        ax1.set_ylabel("faces / s")
        ax1.legend(fontsize=7)
        parts = ("setup_s", "warmup_compile_s", "engine_s", "outside_engine_in_loop_s")
        bottom = [0.0] * len(labels)
        for part in parts:
            values = [synth_runs[k]["breakdown"][part] for k in labels]
            ax2.bar(list(xs), values, 0.6, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax2.set_xticks(list(xs), labels, fontsize=8)
        ax2.set_ylabel("seconds")
        ax2.set_title("where the time goes", fontsize=9)
        ax2.legend(fontsize=7)
        fig.tight_layout()
        return [_save(fig, run.out / f"{run.stem}-synth.png", plt)]
    return []


def stages_figure(run: Run, stages: list[dict[str, Any]], plt: Any) -> list[Path]:
    """<stem>-stages.png: each stage's seconds against its limit, and the budget."""
    if stages:
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(stages) + 1.2))
        colours = {"ok": "tab:green", "partial": "tab:olive", "timeout": "tab:orange", "failed": "tab:red",
                   "skipped": "tab:gray", "pending": "tab:gray"}
        start = 0.0
        for i, stage in enumerate(stages):
            ax.barh(i, stage["limit_s"], left=start, color="none", edgecolor="black", linewidth=0.6)
            ax.barh(i, stage["seconds"], left=start, color=colours.get(stage["status"], "tab:gray"))
            ax.text(start + max(stage["limit_s"], stage["seconds"]) + 1, i, f"{stage['status']}", va="center", fontsize=7)
            start += stage["seconds"]
        ax.axvline(run.budget, color="red", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(len(stages)), [s["name"] for s in stages], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds (box: the stage's limit; red line: the budget)")
        fig.tight_layout()
        return [_save(fig, run.out / f"{run.stem}-stages.png", plt)]
    return []


# The bench figure is fertk's own (fertk.bench.report.plot_rows, as `fertk bench --out` draws it),
# drawn in the fertk interpreter: this driver imports only the standard library.
PLOT_BENCH = ("import json, sys\n"
              "from fertk.bench.report import plot_rows\n"
              "from fertk.bench.results import BenchRow\n"
              "rows, path, title = json.load(sys.stdin)\n"
              "plot_rows([BenchRow.from_dict(r) for r in rows], path, title)\n")


def bench_figure(run: Run, rows: list[dict[str, Any]], path: Path) -> Path:
    """<stem>-bench.png: throughput per batch of every measured bench row, one panel per model."""
    title = f"fertk GPU run {run.stem}: bench throughput"
    subprocess.run([run.python, "-c", PLOT_BENCH], input=json.dumps([rows, str(path), title], default=str),
                   text=True, capture_output=True, timeout=120, check=True, cwd=REPO)
    return path


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- main -------------------------------------------------------------------------------------------

def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stage_limit(stage: Stage, remaining: list[Stage], left_s: float, *, forced_timeout: bool = False) -> float:
    """Seconds a stage may run: its weight's share of the time left over the stages still to run
    (so what earlier stages left unused flows on), at least its floor when that much is left."""
    left_s = max(0.0, left_s)
    share = left_s * stage.weight / sum(s.weight for s in remaining)
    limit = min(left_s, max(share, stage.floor_s))
    return min(limit, 1.0) if forced_timeout else limit


def skip_reason(stage: Stage, limit: float, *, fertk_ok: bool, cuda: bool, dry: bool,
                forced_timeout: bool = False) -> str | None:
    """Why a stage does not run (None: it runs)."""
    if stage.needs_fertk and not fertk_ok:
        return "fertk does not import here (see the env stage)"
    if stage.needs_cuda and not cuda and not dry:
        return "no CUDA device (see the env stage)"
    if limit < stage.min_s * (0.2 if dry else 1.0) and not forced_timeout:
        return f"budget spent ({max(0.0, limit):.0f} s left for it)"
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="fertk GPU run: every stage under one time budget.")
    parser.add_argument("--dry-run", action="store_true", help="the same stages on CPU at tiny sizes")
    parser.add_argument("--budget-s", type=float, default=None, help="whole run, seconds (default 420; dry-run 240)")
    parser.add_argument("--stages", default=None, help="comma list of stages to run (default all; env always runs)")
    parser.add_argument("--out", default=None, help="output folder (default $OUT, else benchmarks/results)")
    parser.add_argument("--workdir", default=None, help="where scratch files go (default the system temp dir)")
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 240.0 if args.dry_run else 420.0
    if args.budget_s < 20:
        parser.error("--budget-s must be at least 20")
    args.out = args.out or os.environ.get("OUT") or str(REPO / "benchmarks" / "results")
    known = [s.name for s in STAGES]
    chosen = _csv(args.stages) if args.stages else set(known)
    unknown = chosen - set(known)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(known)}")
    args.stage_list = [s for s in STAGES if s.name in chosen or s.name == "env"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run = Run(args)
    # The outer guard (run_gpu.sh's `timeout`) sends SIGTERM: finish the report on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    run.say(f"fertk GPU run{' (dry run, CPU, tiny sizes)' if run.dry else ''}: budget {run.budget:.0f} s, "
            f"{run.reserve:.0f} s held for the report; out {run.out}; work {run.work}")
    stages = list(args.stage_list)
    for stage in stages:
        run.results[stage.name] = StageResult(stage.name, stage.what)
    try:
        for index, stage in enumerate(stages):
            result = run.results[stage.name]
            limit = stage_limit(stage, stages[index:], run.left(), forced_timeout=stage.name in run.forced_timeout)
            result.limit_s = round(limit, 1)
            why_not = skip_reason(stage, limit, fertk_ok=run.fertk_ok, cuda=run.cuda, dry=run.dry,
                                  forced_timeout=stage.name in run.forced_timeout)
            if why_not:
                result.status, result.reason = "skipped", why_not
            else:
                run.say(f"== stage {stage.name} (limit {limit:.0f} s): {stage.what}")
                tic = time.monotonic()
                try:
                    RUNNERS[stage.name](run, result, time.monotonic() + limit)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - a driver bug in one stage must not lose the others
                    result.status, result.reason = "failed", f"driver error: {type(exc).__name__}: {exc}"[:300]
                result.seconds = round(time.monotonic() - tic, 2)
            run.say(f"   {stage.name}: {result.status} — {result.reason}")
            write_report(run, final=False)
    except KeyboardInterrupt:
        run.say("interrupted: writing what the finished stages have")
        for result in run.results.values():
            if result.status == "pending":
                result.status, result.reason = "skipped", "interrupted (outer time guard)"
    summary = targets(run)
    for key in ("fer_cnn_fp16_images_per_s", "pipeline_gan_fp16_vs_eager_fp32", "gan_identities_per_s_best",
                "flop_limit_identities_per_s"):
        run.say(f"target {key}: {summary.get(key)}")
    path = write_report(run, final=True)
    run.say(f"done in {run.elapsed():.0f} s of {run.budget:.0f}: {path}")
    run.log.close()
    shutil.rmtree(run.work, ignore_errors=True)
    # Timeouts and skips are outcomes of the budget, recorded in the report; a failed stage is not.
    return 1 if any(r.status == "failed" for r in run.results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
