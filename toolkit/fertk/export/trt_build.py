"""Building TensorRT engines from an artifact's ONNX graph: FP32/FP16/INT8, batch profiles, caches.

Written against the TensorRT 10 Python API (`tensorrt` is imported lazily). What an engine file is
valid for and how it is checked (`BatchProfile`, `EngineKey`, `inspect_engine`) is the engine
layer's (`fertk.engines.trt_files`); this module builds and writes them:

* `profile_shapes` turns a batch profile into per-input (min, opt, max) shapes.
* `write_engine` stores engine bytes with their metadata (key, sha256, specs).
* `ensure_engine` reuses a valid engine and rebuilds in the stale/corrupt/missing cases; it never
  runs such an engine.
* `CalibrationBatcher` + `CalibrationCache` — fixed-size INT8 calibration batches from a dataset,
  and the calibration cache file (keyed by graph and data) that later builds reuse.
* The timing cache is one file per (GPU, compute capability, TensorRT version) under the fertk
  cache root, loaded into every build and written back after it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.errors import ArtifactError, InvalidInputError
from fertk.core.io import atomic_write_bytes, sha256_bytes, sha256_file
from fertk.core.paths import cache_dir
from fertk.core.progress import Progress, say
from fertk.core.specs import TensorSpec
from fertk.engines.trt_files import (
    METADATA_FORMAT, BatchProfile, EngineKey, device_identity, engine_paths, inspect_engine, metadata_path,
    name_slug, require_tensorrt,
)
from fertk.export.artifacts import Artifact
from fertk.export.quantize import calibration_feeds

DEFAULT_WORKSPACE = 4 << 30


def profile_shapes(specs: Sequence[TensorSpec], profile: BatchProfile
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape of every input for a batch profile; only the batch axis may be dynamic."""
    shapes = {}
    for spec in specs:
        other = [d for d in spec.shape if isinstance(d, str) and d != "batch"]
        if other:
            raise InvalidInputError(
                f"input {spec.name!r} {spec.describe()} has dynamic axes {other}: a batch profile cannot fix them",
                hint="export the model with fixed sizes for every axis but the batch")
        shapes[spec.name] = (spec.concrete_shape(profile.min), spec.concrete_shape(profile.opt),
                             spec.concrete_shape(profile.max))
    return shapes


def write_engine(engine_path: str | Path, plan: bytes, key: EngineKey, *, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], extra: Mapping[str, Any] | None = None) -> Path:
    """Write engine bytes and their metadata (key, sha256, specs) atomically; return the engine path."""
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": METADATA_FORMAT,
        "key": key.to_dict(),
        "engine_sha256": sha256_bytes(plan),
        "size_bytes": len(plan),
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **dict(extra or {}),
    }
    atomic_write_bytes(engine_path, plan)
    atomic_write_bytes(metadata_path(engine_path), (json.dumps(meta, indent=2) + "\n").encode())
    return engine_path


# -- calibration ------------------------------------------------------------------------------------------
class CalibrationBatcher:
    """Fixed-size calibration batches (TensorRT calibrates at one batch size) from feeds or arrays.

    Rows of all feeds are concatenated per input and cut into `batch_size` batches; the incomplete
    tail is dropped (`dropped` says how many rows), at most `max_batches` batches are produced.
    """

    def __init__(self, data: Sequence[Mapping[str, np.ndarray]] | Mapping[str, np.ndarray],
                 input_specs: Sequence[TensorSpec], batch_size: int, max_batches: int | None = None) -> None:
        if batch_size < 1:
            raise InvalidInputError(f"calibration batch size must be >= 1, got {batch_size}")
        feeds = [data] if isinstance(data, Mapping) else list(data)
        if not feeds:
            raise InvalidInputError("no calibration data")
        self.specs = tuple(input_specs)
        self.batch_size = batch_size
        columns: dict[str, np.ndarray] = {}
        for spec in self.specs:
            parts = []
            for feed in feeds:
                if spec.name not in feed:
                    raise InvalidInputError(f"calibration data lacks input {spec.name!r}")
                parts.append(np.asarray(feed[spec.name]))
            column = np.concatenate(parts).astype(spec.dtype, copy=False)
            spec.check(column)
            columns[spec.name] = column
        rows = {len(c) for c in columns.values()}
        if len(rows) != 1:
            raise InvalidInputError(f"calibration inputs have different row counts {sorted(rows)}")
        total = rows.pop()
        count = total // batch_size
        if max_batches is not None:
            count = min(count, max_batches)
        if count == 0:
            raise InvalidInputError(f"{total} calibration samples are fewer than one batch of {batch_size}")
        self.columns = columns
        self.num_batches = count
        self.dropped = total - count * batch_size

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.num_batches):
            lo = i * self.batch_size
            yield {name: np.ascontiguousarray(col[lo:lo + self.batch_size]) for name, col in self.columns.items()}

    def fingerprint(self) -> str:
        """sha256 of the batches that will be fed (keys the calibration cache)."""
        digest = hashlib.sha256(f"{self.batch_size}:{self.num_batches}".encode())
        for name in sorted(self.columns):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.columns[name][: self.num_batches * self.batch_size]).tobytes())
        return digest.hexdigest()


class CalibrationCache:
    """The INT8 calibration cache file of one (graph, calibration data) pair."""

    def __init__(self, directory: str | Path, onnx_sha256: str, data_fingerprint: str) -> None:
        self.path = Path(directory) / f"calib-{onnx_sha256[:12]}-{data_fingerprint[:12]}.cache"

    def read(self) -> bytes | None:
        """Cached scales, or None (TensorRT then calibrates)."""
        return self.path.read_bytes() if self.path.is_file() and self.path.stat().st_size else None

    def write(self, data: bytes) -> None:
        """Store the scales TensorRT computed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, bytes(data))


def timing_cache_path(gpu_name: str, compute_capability: str, trt_version: str, root: str | Path | None = None) -> Path:
    """One timing cache per GPU model, compute capability and TensorRT version."""

    base = Path(root) if root is not None else cache_dir("tensorrt")
    return base / f"timing-{name_slug(gpu_name)}-sm{compute_capability.replace('.', '')}-trt{trt_version}.cache"


# -- building ---------------------------------------------------------------------------------------------
@dataclass
class BuildOptions:
    """TensorRT builder settings (JSON-able)."""

    precision: str = "fp16"
    profile: str = "1:64:256"
    workspace_bytes: int = DEFAULT_WORKSPACE
    calibration_batch: int = 32
    calibration_batches: int = 16
    builder_optimization_level: int | None = None  # TensorRT's 0..5; None keeps its default (3)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def ensure_engine(artifact: Artifact, options: BuildOptions | None = None, *, device: str = "cuda",
                  calibration: Any = None, rebuild: bool = False, progress: Progress | None = None) -> Path:
    """The engine of `artifact` for this GPU/TensorRT/precision/profile: reused when valid, else built.

    A corrupt, stale or foreign engine under the same key is never run: it is rebuilt (and the
    reason reported through `progress`).
    """
    options = options or BuildOptions()
    trt = require_tensorrt()
    gpu_name, capability = device_identity(device)
    onnx_path = artifact.onnx_path("fp32")
    onnx_sha = artifact.card.onnx.get("sha256") or sha256_file(onnx_path)
    key = EngineKey(gpu_name, capability, trt.__version__, options.precision, BatchProfile.parse(options.profile),
                    onnx_sha)
    engine_file, _ = engine_paths(artifact.engines_dir, key)
    check = inspect_engine(engine_file, gpu_name=gpu_name, compute_capability=capability,
                           trt_version=trt.__version__, onnx_sha256=onnx_sha)
    if check.ok and not rebuild:
        return engine_file
    if check.status != "missing":
        say(progress, f"rebuilding TensorRT engine: {check.reason}")
    batcher = None
    if options.precision == "int8":
        if calibration is None:
            raise InvalidInputError("a TensorRT INT8 engine needs calibration data",
                                    hint="pass --calib DATASET (or use --precision fp16)")
        feeds = calibration_feeds(calibration, artifact.card.input_specs(), batch_size=options.calibration_batch,
                                  ranges=artifact.card.ranges())
        batcher = CalibrationBatcher(feeds, artifact.card.input_specs(), options.calibration_batch,
                                     options.calibration_batches)
    build_engine(onnx_path, engine_file, key, artifact.card.input_specs(), artifact.card.output_specs(),
                 options=options, batcher=batcher, device=device, progress=progress)
    return engine_file


def _make_logger(trt: Any, progress: Progress | None) -> Any:
    """A TensorRT ILogger that keeps errors (for messages) and forwards warnings to `progress`."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING:
                say(progress, f"tensorrt: {msg}")

    return Logger()


def _entropy_calibrator(trt: Any, batcher: CalibrationBatcher, cache: CalibrationCache, device: str) -> Any:
    """An IInt8EntropyCalibrator2 feeding `batcher` through torch CUDA buffers.

    TensorRT swallows Python exceptions raised in these callbacks (it logs them and treats the
    batch as the end of data), so failures are recorded in `errors` and raised after the build.
    """
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batcher)
            self.buffers: dict[str, Any] = {}
            self.errors: list[str] = []
            self.fed = 0

        def get_batch_size(self) -> int:
            # Explicit-batch networks (the only kind in TensorRT 10): the batch is part of each
            # tensor's shape, fixed by the calibration profile; the legacy batch size must be 1.
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                batch = next(self.batches, None)
                if batch is None:
                    return None
                pointers = []
                for name in names:
                    host = torch.from_numpy(batch[name])
                    buffer = self.buffers.get(name)
                    if buffer is None or buffer.shape != host.shape:
                        buffer = torch.empty(host.shape, dtype=host.dtype, device=device)
                        self.buffers[name] = buffer
                    buffer.copy_(host)
                    pointers.append(int(buffer.data_ptr()))
                torch.cuda.synchronize(device)
                self.fed += 1
                return pointers
            except Exception as exc:  # noqa: BLE001 - TensorRT would swallow it; keep it for later
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return None

        def read_calibration_cache(self) -> bytes | None:
            return cache.read()

        def write_calibration_cache(self, data: Any) -> None:
            try:
                cache.write(bytes(data))
            except Exception as exc:  # noqa: BLE001 - see get_batch
                self.errors.append(f"writing calibration cache: {type(exc).__name__}: {exc}")

    return EntropyCalibrator()


def build_engine(onnx_path: str | Path, engine_path: str | Path, key: EngineKey, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], *, options: BuildOptions, batcher: CalibrationBatcher | None = None,
                 device: str = "cuda", timing_cache: str | Path | None = None,
                 progress: Progress | None = None) -> Path:
    """Build a serialized engine from an ONNX file with the TensorRT 10 builder and write it with its key."""
    trt = require_tensorrt()
    logger = _make_logger(trt, progress)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(f"TensorRT cannot parse {onnx_path}: " + "; ".join(errors or logger.errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_bytes))
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = int(options.builder_optimization_level)
    if key.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers without scales fall back to fp16
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(inputs, key.profile).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    calibrator = None
    if key.precision == "int8":
        if batcher is None:
            raise InvalidInputError("INT8 build needs a CalibrationBatcher")
        config.set_flag(trt.BuilderFlag.INT8)
        calib_profile = builder.create_optimization_profile()
        for name, (_, opt, _) in profile_shapes(inputs, BatchProfile(batcher.batch_size, batcher.batch_size,
                                                                      batcher.batch_size)).items():
            calib_profile.set_shape(name, opt, opt, opt)
        config.set_calibration_profile(calib_profile)
        cache = CalibrationCache(Path(engine_path).parent, key.onnx_sha256, batcher.fingerprint())
        calibrator = _entropy_calibrator(trt, batcher, cache, device)
        config.int8_calibrator = calibrator
    timing_file = Path(timing_cache) if timing_cache is not None else timing_cache_path(
        key.gpu_name, key.compute_capability, key.trt_version)
    timing = config.create_timing_cache(timing_file.read_bytes() if timing_file.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    say(progress, f"building TensorRT {key.precision} engine, batch profile {key.profile}")
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if calibrator is not None and calibrator.errors:
        raise ArtifactError("INT8 calibration failed: " + "; ".join(calibrator.errors))
    if plan is None:
        raise ArtifactError("TensorRT engine build failed: " + ("; ".join(logger.errors) or "no error logged"))
    timing_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(timing_file, bytes(memoryview(config.get_timing_cache().serialize())))
    extra = {"build_seconds": round(seconds, 2), "build_options": options.to_dict(),
             "timing_cache": str(timing_file)}
    if calibrator is not None:
        extra["calibration"] = {"batches": calibrator.fed, "batch_size": batcher.batch_size,
                                "dropped_rows": batcher.dropped}
    return write_engine(engine_path, bytes(memoryview(plan)), key, inputs=inputs, outputs=outputs, extra=extra)
