"""`run_bench`: every selected model × backend × precision × batch, timed against the measured peak.

Order of work for one model: build it (PyTorch fp32, the reference), count its FLOPs, then for
each backend and precision open one engine (exporting / quantising once per model when a graph
backend needs it, timed and listed under `builds`), and for each batch: pre-generate a few input
batches, time calls in rotation (first call and warm-up excluded), read the row's peak memory,
and measure parity on a small seeded batch against the PyTorch fp32 outputs. Rows that cannot
run say why; a row that fails records its one-line error and the run goes on.

Threads: torch.set_num_threads(T) for the whole run and intra_op_num_threads=T for every
onnxruntime session, T = --threads or torch's default; T is recorded in every CPU row.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fertk.bench.backends import BACKENDS, EAGER, HAND_LOOP, BenchBackend, availability
from fertk.bench.config import GENERATOR_INT8, PARITY_BATCH, PARITY_SEED, ROTATION_BYTES, BenchConfig
from fertk.bench.flops import FlopCount, count_flops
from fertk.bench.models import MODELS, BenchModel, BenchSubject, BuildContext, calibration_data, get_model
from fertk.bench.peak import measure_copy_bandwidth, measure_gemm_peak
from fertk.bench.results import BenchResults, BenchRow, fill_speedups, recommend
from fertk.bench.timing import MemoryWatch, time_calls
from fertk.core.devices import torch_threads
from fertk.core.errors import FertkError, UnsupportedPrecisionError
from fertk.core.progress import Progress, emit, say
from fertk.engines import machine_info
from fertk.engines.compare import compare_outputs
from fertk.export import ExportOptions, add_variant, export_source, open_engine
from fertk.synth import SynthOptions, run_synth


# -- the run ----------------------------------------------------------------------------------------

def run_bench(config: BenchConfig, *, progress: Progress | None = None, workdir: str | Path | None = None,
              checkpoint: Callable[[BenchResults], None] | None = None) -> BenchResults:
    """Run the bench described by `config`; exports and engines go to `workdir` (a temp dir by default).

    `checkpoint` is called with the results so far after each model, so a crash (an OOM kill on a
    big model) loses that model's rows only.
    """
    import torch

    started = time.perf_counter()
    threads = config.threads or torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fertk-bench-"))
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(torch_threads(threads))
        # Cold, private caches: compile and export times are what a first run costs.
        stack.enter_context(_environ(TORCHINDUCTOR_CACHE_DIR=str(workdir / "inductor"),
                                     FERTK_CACHE_DIR=str(workdir / "cache")))
        machine = machine_info()
        machine["bench_threads"] = threads
        results = BenchResults(config=config.to_dict(), machine=machine,
                               created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        available = availability()
        state = _RunState(config, results, available, threads, workdir, progress)
        state.measure_peaks()
        for done, key in enumerate(config.models):
            emit(progress, "model", key, done=done, total=len(config.models), unit="models")
            state.run_model(get_model(key))
            gc.collect()
            if checkpoint is not None:
                finish_results(results, started)
                checkpoint(results)
        finish_results(results, started)
        emit(progress, "done", f"{len(results.rows)} rows in {results.seconds:.0f} s",
             done=len(config.models), total=len(config.models), unit="models")
        return results


def finish_results(results: BenchResults, started: float | None = None) -> BenchResults:
    """Fill the speed-up columns (vs eager, vs the hand loop), the recommendation per model and
    device, and the run's seconds; idempotent."""
    fill_speedups(results.rows, eager_backends=EAGER, hand_loop_backends=HAND_LOOP,
                  hand_loop_models={k: "pipeline:" + k.split(":", 1)[1] for k in MODELS
                                    if k.startswith(("pipeline:", "synth:"))})
    results.recommendations = [r.to_dict() for r in recommend(results.rows, eager_backends=EAGER,
                                                                  baseline_backends=HAND_LOOP.values())]
    if started is not None:
        results.seconds = round(time.perf_counter() - started, 2)
    return results


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for a block (only those not already set by the user)."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class _RunState:
    """Everything one run shares: config, peaks, availability, per-model caches."""

    def __init__(self, config: BenchConfig, results: BenchResults, available: dict[str, tuple[bool, str]],
                 threads: int, workdir: Path, progress: Progress | None) -> None:
        self.config = config
        self.results = results
        self.available = available
        self.threads = threads
        self.workdir = workdir
        self.progress = progress
        self.peaks: dict[tuple[str, str], float] = {}
        self.ctx = BuildContext(workdir=workdir, scale=config.scale, weights=dict(config.weights))

    # -- the limit ---------------------------------------------------------------------------------
    def measure_peaks(self) -> None:
        """GEMM peak per (device, precision) the selected runnable backends need; bandwidth on GPU."""
        wanted: set[tuple[str, str]] = set()
        for name in self.config.backends:
            backend = BACKENDS[name]
            if not self.available.get(backend.requires, (False, ""))[0]:
                continue
            wanted.add((backend.device, "fp32"))
            for precision in self.config.precisions:
                if precision in backend.precisions:
                    wanted.add((backend.device, precision))
        for device, precision in sorted(wanted):
            if device == "cpu" and precision == "fp16":
                continue
            say(self.progress, f"measuring the {precision} GEMM peak on {device}")
            try:
                peak = measure_gemm_peak("cuda" if device == "cuda" else "cpu", precision, threads=self.threads,
                                         budget_s=self.config.peak_budget_s)
            except Exception as exc:  # noqa: BLE001 - a missing kernel for one precision is a fact to record
                self.results.peaks.append({"device": device, "precision": precision, "error": _one_line(exc)})
                continue
            self.peaks[(device, precision)] = peak.gflops
            self.results.peaks.append(peak.to_dict())
        if any(device == "cuda" for device, _ in wanted):
            say(self.progress, "measuring GPU copy bandwidth")
            self.results.bandwidth = [b.to_dict() for b in measure_copy_bandwidth("cuda")]

    def peak_for(self, device: str, precision: str) -> float | None:
        """The measured peak rows of this device/precision are compared with (int8 rows: the int8 peak)."""
        return self.peaks.get((device, precision)) or self.peaks.get((device, "fp32"))

    # -- one model ---------------------------------------------------------------------------------
    def run_model(self, model: BenchModel) -> None:
        """All rows of one model."""
        say(self.progress, f"[{model.key}] building ({self.config.scale} scale)")
        backends = [BACKENDS[n] for n in self.config.backends if self._applies(model, BACKENDS[n])]
        try:
            subject, build_s = _timed(lambda: model.build(self.ctx))
        except Exception as exc:  # noqa: BLE001 - one model failing does not end the run
            for backend in backends:
                self.add(BenchRow(model.key, backend.name, backend.device, ",".join(self.precisions_for(backend)),
                                  None, status="error", reason=f"building the model failed: {_one_line(exc)}"))
            return
        self.results.builds.append({"model": model.key, "step": "build PyTorch model", "seconds": round(build_s, 3)})
        flops = self._flops(model, subject)
        runner = _ModelRunner(self, model, subject, flops)
        try:
            # The eager fp32 baseline first: it is also the parity reference's twin.
            for backend in sorted(backends, key=lambda b: not b.eager_fp32):
                runner.run_backend(backend)
        finally:
            runner.close()

    def _applies(self, model: BenchModel, backend: BenchBackend) -> bool:
        if backend.engine == "hand-loop":
            return model.key.startswith("pipeline:")
        if model.synth_generator is not None:
            # synth takes backend, device and precision only: no compile / channels_last / graphs options.
            return not backend.options or set(backend.options) == {"provider"} and backend.options["provider"] != "tensorrt"
        return True

    def precisions_for(self, backend: BenchBackend) -> list[str]:
        """The configured precisions this backend offers."""
        return [p for p in self.config.precisions if p in backend.precisions]

    def _flops(self, model: BenchModel, subject: BenchSubject) -> FlopCount | None:
        try:
            with torch_threads(self.threads):
                count = count_flops(subject.module, subject.make_inputs(2, 0))
        except Exception as exc:  # noqa: BLE001 - FLOPs are informative; a row can stand without them
            self.results.flops[model.key] = {"error": _one_line(exc)}
            return None
        self.results.flops[model.key] = count.to_dict()
        return count

    def add(self, row: BenchRow) -> None:
        """Append a row and report it as a `row` progress event."""
        self.results.rows.append(row)
        if row.ok:
            latency = f", p50 {row.p50_ms:.2f} ms" if row.p50_ms is not None else ""
            text = f"{row.items_per_s or 0:.1f} {row.unit}/s{latency}"
        else:
            text = f"{row.status}: {row.reason}"
        emit(self.progress, "row", f"[{row.model}] {row.backend} {row.precision} batch {row.batch}: {text}",
             status=row.status)


class _ModelRunner:
    """Rows of one model: engines per backend/precision, inputs per batch, the parity reference."""

    def __init__(self, state: _RunState, model: BenchModel, subject: BenchSubject, flops: FlopCount | None) -> None:
        self.state = state
        self.config = state.config
        self.model = model
        self.subject = subject
        self.flops = flops
        self.artifact: Any = None
        self.calibration: Any = None
        self._reference: Any = None
        self._reference_out: dict[int, dict[str, Any]] = {}
        self._estimates: dict[tuple[str, str], tuple[int, float]] = {}
        self._failed_graphs: dict[str, str] = {}   # graph precision -> why building it failed

    def close(self) -> None:
        """Release the reference engine."""
        if self._reference is not None:
            self._reference.close()

    # -- per backend -------------------------------------------------------------------------------
    def run_backend(self, backend: BenchBackend) -> None:
        """Rows of one backend: skipped with the reason, or one engine per precision over the batches."""
        state = self.state
        precisions = state.precisions_for(backend)
        if not precisions:
            return
        ok, reason = state.available.get(backend.requires, (False, f"unknown backend row {backend.requires}"))
        if not ok:
            state.add(BenchRow(self.model.key, backend.name, backend.device, ",".join(precisions), None,
                               status="skipped", reason=reason))
            return
        for precision in precisions:
            if (self.model.synth_generator is None and precision == "int8" and not self.config.int8_generators
                    and self.subject.task != "classifier"):
                state.add(self._row(backend, precision, None, status="skipped", reason=GENERATOR_INT8))
                continue
            if self.model.synth_generator is not None:
                self._run_synth(backend, precision)
                continue
            try:
                runner, open_s, open_memory, describe = self._open(backend, precision)
            except UnsupportedPrecisionError as exc:  # the model does not offer it: one row, like a missing backend
                state.add(self._row(backend, precision, None, status="skipped", reason=_one_line(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - recorded as the row's one-line error
                reason = str(exc) if isinstance(exc, _StepError) else f"opening the engine failed: {_one_line(exc)}"
                for batch in self.config.batches:
                    state.add(self._row(backend, precision, batch, status="error", reason=reason))
                continue
            try:
                for batch in sorted(self.config.batches):  # small first: they predict the cost of larger ones
                    row = self._run_batch(backend, precision, batch, runner)
                    row.open_s = round(open_s, 4)
                    row.engine = describe
                    row.extra["open_rss_delta_mib"] = open_memory
                    state.add(row)
            finally:
                runner.close()

    def _row(self, backend: BenchBackend, precision: str, batch: int | None, **fields_: Any) -> BenchRow:
        return BenchRow(self.model.key, backend.name, backend.device, precision, batch, unit=self.subject.unit,
                        items_per_sample=self.subject.items_per_sample,
                        threads=self.state.threads if backend.device == "cpu" else None, **fields_)

    def _open(self, backend: BenchBackend, precision: str) -> tuple["_Callable", float, float, dict[str, Any]]:
        """An engine (or the hand loop) ready to run, the seconds opening took and its RSS rise."""
        with MemoryWatch() as watch:
            start = time.perf_counter()
            runner = self._open_inner(backend, precision)
            open_s = time.perf_counter() - start
        assert watch.result is not None
        return runner, open_s, round(watch.result.host_rss_delta_mib, 1), runner.describe()

    def _open_inner(self, backend: BenchBackend, precision: str) -> "_Callable":
        subject = self.subject
        device = backend.device
        if backend.engine == "hand-loop":
            assert subject.hand_loop is not None
            subject.hand_loop.prepare(device)
            return _Callable(subject.hand_loop, {"backend": "hand-loop", "device": device,
                                                 "precision": "fp32"}, numpy_inputs=True)
        if backend.engine == "torch":
            engine = open_engine(subject.module, backend="torch", device=device, precision=precision,
                                 input_specs=subject.input_specs, output_specs=subject.output_specs,
                                 **backend.options)
            return _Callable(engine.run, engine.describe(), closer=engine.close, numpy_inputs=device == "cpu")
        graph = precision if backend.engine == "ort" and backend.options.get("provider") != "tensorrt" else "fp32"
        artifact = self._ensure_artifact(graph)
        if backend.engine == "ort":
            options = dict(backend.options)
            if device == "cpu":
                options["intra_op_threads"] = self.state.threads
            else:
                options["trt_cache_dir"] = str(self.state.workdir / "trt-cache")
            engine = open_engine(artifact.path, backend="ort", device=device, precision=precision, **options)
        else:
            top = max(self.config.batches)
            options = {"batch_profile": f"1:{top}:{top}"}
            if precision == "int8":
                options["calibration"] = self._calibration()
            engine = open_engine(artifact.path, backend="trt", device=device, precision=precision, **options)
        return _Callable(engine.run, engine.describe(), closer=engine.close, numpy_inputs=device == "cpu")

    def _calibration(self) -> Any:
        if self.calibration is None:
            self.calibration = calibration_data(self.subject, self.config.calibration_samples)
        return self.calibration

    def _ensure_artifact(self, precision: str) -> Any:
        """The model's ONNX artifact (exported once per model) with the `precision` graph variant."""
        failed = self._failed_graphs.get(precision) or self._failed_graphs.get("fp32")
        if failed:
            raise _StepError(failed)
        try:
            return self._ensure_artifact_inner(precision)
        except Exception as exc:  # noqa: BLE001 - remembered so later backends do not retry
            graph, step = ("fp32", "ONNX export") if self.artifact is None else (precision, f"building the {precision} graph")
            self._failed_graphs[graph] = f"{step} failed: {_one_line(exc)}"
            raise _StepError(self._failed_graphs[graph]) from exc

    def _ensure_artifact_inner(self, precision: str) -> Any:
        if self.artifact is None:
            out = self.state.workdir / "artifacts" / self.model.key.replace(":", "-")
            say(self.state.progress, f"[{self.model.key}] exporting to ONNX (timed)")
            self.artifact, seconds = _timed(lambda: export_source(self.subject.export_source(), out=out,
                                                                  options=ExportOptions()))
            self.state.results.builds.append({"model": self.model.key, "step": "ONNX export + parity check",
                                              "seconds": round(seconds, 3)})
        if precision != "fp32" and precision not in self.artifact.card.variants:
            calibration = self._calibration() if precision == "int8" else None
            say(self.state.progress, f"[{self.model.key}] building the {precision} graph (timed)")
            # Bench measures INT8 accuracy; it does not gate on it (export does, by default).
            options = ExportOptions(precision=precision, int8_min_agreement=0.0,
                                    calibration_batch=min(16, self.config.calibration_samples),
                                    calibration_samples=self.config.calibration_samples)
            _, seconds = _timed(lambda: add_variant(self.artifact, precision, source=self.subject.export_source(),
                                                    calibration=calibration, options=options))
            self.state.results.builds.append({"model": self.model.key, "step": f"{precision} graph"
                                              + (" (QDQ static quantisation)" if precision == "int8" else ""),
                                              "seconds": round(seconds, 3),
                                              "checks": self.artifact.card.variants.get(precision, {}).get(
                                                  "accuracy" if precision == "int8" else "parity")})
        return self.artifact

    # -- per batch ---------------------------------------------------------------------------------
    def _run_batch(self, backend: BenchBackend, precision: str, batch: int, runner: "_Callable") -> BenchRow:
        estimate = self._estimate(backend, precision, batch)
        if estimate is not None and estimate > self.config.max_call_s:
            return self._row(backend, precision, batch, status="skipped",
                             reason=f"one call is estimated at ~{estimate:.0f} s (> max_call_s "
                                    f"{self.config.max_call_s:g} s); raise --max-call-s to run it")
        try:
            return self._measure(backend, precision, batch, runner)
        except MemoryError:
            gc.collect()
            return self._row(backend, precision, batch, status="error", reason="out of memory")
        except Exception as exc:  # noqa: BLE001 - recorded as the row's one-line error
            return self._row(backend, precision, batch, status="error", reason=_one_line(exc))

    def _estimate(self, backend: BenchBackend, precision: str, batch: int) -> float | None:
        """Seconds one call at `batch` should take, scaled from a smaller batch this backend ran at
        this precision; None (run it) for the first batch, so every backend gets at least one row."""
        seen = self._estimates.get((backend.name, precision))
        if seen is None:
            return None
        seen_batch, seen_s = seen
        return seen_s * batch / seen_batch

    def _inputs(self, batch: int, on_cuda: bool) -> list[dict[str, Any]]:
        sample = self.subject.make_inputs(batch, 0)
        nbytes = sum(v.nbytes for v in sample.values())
        count = max(2, min(8, ROTATION_BYTES // max(1, nbytes)))
        batches = [sample] + [self.subject.make_inputs(batch, seed) for seed in range(1, count)]
        if on_cuda:
            import torch

            batches = [{k: torch.as_tensor(v).to("cuda") for k, v in b.items()} for b in batches]
        return batches

    def _measure(self, backend: BenchBackend, precision: str, batch: int, runner: "_Callable") -> BenchRow:
        on_cuda = backend.device == "cuda"
        batches = self._inputs(batch, on_cuda and not runner.numpy_inputs)
        with MemoryWatch(cuda=on_cuda) as watch:
            stats = time_calls(runner, batches, batch=batch, policy=self.config.policy(), cuda=on_cuda)
            watch.snapshot_gpu()
        del batches
        assert watch.result is not None
        self._estimates[(backend.name, precision)] = (batch, stats.p50_ms / 1e3)
        memory = watch.result
        row = self._row(backend, precision, batch)
        per_call_items = batch * self.subject.items_per_sample
        row.items_per_s = per_call_items / (stats.p50_ms / 1e3) if stats.p50_ms > 0 else None
        row.p50_ms, row.p95_ms, row.p99_ms = stats.p50_ms, stats.p95_ms, stats.p99_ms
        row.first_call_s = stats.first_call_s
        row.timing = stats.to_dict()
        row.timing["items_per_call"] = per_call_items
        row.memory = memory.to_dict()
        row.host_rss_peak_mib = round(memory.host_rss_peak_mib, 1)
        row.host_rss_delta_mib = round(memory.host_rss_delta_mib, 1)
        row.gpu_torch_peak_mib = memory.gpu_torch_peak_mib
        row.gpu_used_delta_mib = memory.gpu_used_delta_mib
        if self.flops is not None:
            row.gflop_per_sample = self.flops.dense_per_item / 1e9
            row.gflops = row.gflop_per_sample * batch / (stats.p50_ms / 1e3)
            row.peak_gflops = self.state.peak_for(backend.device, precision)
            if row.peak_gflops:
                row.pct_of_peak = 100.0 * row.gflops / row.peak_gflops
        if backend.engine == "hand-loop":
            row.reason = "parity: n/a (writes PNG files; OpenCV resize)"
        elif self.config.parity:
            self._parity(row, runner, batch, on_cuda and not runner.numpy_inputs)
        if precision == "int8" and self.artifact is not None and backend.engine == "ort":
            row.extra["int8_accuracy"] = self.artifact.card.variants.get("int8", {}).get("accuracy")
        return row

    # -- parity ------------------------------------------------------------------------------------
    def _parity(self, row: BenchRow, runner: "_Callable", batch: int, on_cuda: bool) -> None:
        size = min(batch, PARITY_BATCH)
        inputs = self.subject.make_inputs(size, PARITY_SEED)
        reference = self._reference_outputs(size, inputs)
        feed = inputs
        if on_cuda:
            import torch

            feed = {k: torch.as_tensor(v).to("cuda") for k, v in inputs.items()}
        got = runner(feed)
        errors = compare_outputs(reference, got, self.subject.output_specs, precision=row.precision,
                                 argmax_outputs=self.subject.argmax_outputs)
        row.parity = {"batch": size, "seed": PARITY_SEED, "reference": "torch-cpu fp32 (eager)",
                      "outputs": [e.to_dict() for e in errors]}
        row.parity_max_abs = max(e.max_abs for e in errors) if errors else None
        agreements = [e.argmax_agreement for e in errors if e.argmax_agreement is not None]
        row.parity_argmax_agreement = min(agreements) if agreements else None
        row.parity_passed = all(e.passed for e in errors)

    def _reference_outputs(self, size: int, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        if size not in self._reference_out:
            if self._reference is None:
                self._reference = open_engine(self.subject.module, backend="torch", device="cpu", precision="fp32",
                                              input_specs=self.subject.input_specs,
                                              output_specs=self.subject.output_specs)
            self._reference_out[size] = self._reference.run(inputs)
        return self._reference_out[size]

    # -- synth -------------------------------------------------------------------------------------
    def _run_synth(self, backend: BenchBackend, precision: str) -> None:
        """End-to-end `fertk synth` rows: one run per batch with enough identities to fill the budget."""
        state = self.state
        if precision == "int8":
            state.add(self._row(backend, precision, None, status="skipped",
                                reason="synth opens its engine without calibration data; int8 needs it"))
            return
        for batch in sorted(self.config.batches):
            try:
                row = self._synth_row(backend, precision, batch)
            except UnsupportedPrecisionError as exc:  # not offered by the model: one row for all batches
                state.add(self._row(backend, precision, None, status="skipped", reason=_one_line(exc)))
                return
            except Exception as exc:  # noqa: BLE001 - recorded as the row's one-line error
                row = self._row(backend, precision, batch, status="error", reason=_one_line(exc))
            state.add(row)

    def _synth_row(self, backend: BenchBackend, precision: str, batch: int) -> BenchRow:
        generator = self.model.synth_generator
        assert generator is not None
        # The pipeline rows measured earlier in this run: synth:gan's generator is "stylegan2", its graph "pipeline:gan".
        pipeline_key = "pipeline:" + self.model.key.split(":", 1)[1]
        estimate = self._pipeline_call_s(pipeline_key, backend, precision, batch)
        if estimate is not None and estimate > self.config.max_call_s:
            return self._row(backend, precision, batch, status="skipped",
                             reason=f"one engine call is estimated at ~{estimate:.0f} s (> max_call_s "
                                    f"{self.config.max_call_s:g} s)")
        calls = 3 if estimate is None else max(2, min(50, math.ceil(self.config.budget_s / max(estimate, 1e-3))))
        identities = batch * calls
        config = self.subject.config
        out = self.state.workdir / "synth" / f"{generator}-{backend.name}-{precision}-{batch}"
        options = SynthOptions(
            n=identities, out=str(out), seed=0, generator=generator,
            generator_weights=config.get("generator_weights"), translator_weights=config.get("translator_weights"),
            backend=backend.engine, device=backend.device, precision=precision, batch=batch,
            shard_size=identities, force=True,
        )
        with MemoryWatch(cuda=backend.device == "cuda") as watch:
            result = run_synth(options)
        assert watch.result is not None
        row = self._row(backend, precision, batch)
        row.items_per_s = float(result.faces_per_s) or None
        row.open_s = round(result.seconds - (result.faces_written / result.faces_per_s if result.faces_per_s else 0.0), 3)
        row.host_rss_peak_mib = round(watch.result.host_rss_peak_mib, 1)
        row.host_rss_delta_mib = round(watch.result.host_rss_delta_mib, 1)
        row.gpu_torch_peak_mib = watch.result.gpu_torch_peak_mib
        row.gpu_used_delta_mib = watch.result.gpu_used_delta_mib
        row.memory = watch.result.to_dict()
        row.engine = dict(result.engine)
        row.extra["synth"] = {"identities": identities, "faces": result.faces_written, "seconds": result.seconds,
                              "engine_faces_per_s": result.engine_faces_per_s, "format": result.format}
        row.reason = "end to end: generate + PNG encode + shard write (pipelined); open_s = everything else"
        if backend.engine == "ort" and self.config.threads is not None:
            row.reason += "; onnxruntime threads: synth's default"
        if self.flops is not None and row.items_per_s:
            row.gflop_per_sample = self.flops.dense_per_item / 1e9
            samples_per_s = row.items_per_s / self.subject.items_per_sample
            row.gflops = row.gflop_per_sample * samples_per_s
            row.peak_gflops = self.state.peak_for(backend.device, precision)
            if row.peak_gflops:
                row.pct_of_peak = 100.0 * row.gflops / row.peak_gflops
        return row

    def _pipeline_call_s(self, pipeline_key: str, backend: BenchBackend, precision: str, batch: int) -> float | None:
        """Median call time of the pipeline rows measured earlier in this run (scaled to `batch`)."""
        candidates = [r for r in self.state.results.rows if r.ok and r.model == pipeline_key
                      and r.device == backend.device and r.p50_ms]
        exact = [r for r in candidates if r.backend == backend.name and r.precision == precision]
        pool = exact or [r for r in candidates if r.backend == EAGER.get(backend.device)] or candidates
        if not pool:
            return None
        best = min(pool, key=lambda r: abs(math.log(r.batch / batch)))
        return best.p50_ms / 1e3 * batch / best.batch


class _StepError(Exception):
    """A preparation step (export, quantisation) failed; the message is the row's reason as is."""


class _Callable:
    """A uniform wrapper around an engine's run (or the hand loop) with its description and closer."""

    def __init__(self, fn: Callable[[Any], Any], description: dict[str, Any], *, closer: Callable[[], None] | None = None,
                 numpy_inputs: bool = True) -> None:
        self.fn = fn
        self.description = description
        self.closer = closer
        self.numpy_inputs = numpy_inputs

    def __call__(self, inputs: Any) -> Any:
        return self.fn(inputs)

    def describe(self) -> dict[str, Any]:
        """The engine's own description (providers really in use, options)."""
        return dict(self.description)

    def close(self) -> None:
        """Close the engine."""
        if self.closer is not None:
            self.closer()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = "" if isinstance(exc, FertkError) else f"{type(exc).__name__}: "
    return (name + text)[:300]
