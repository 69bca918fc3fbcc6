"""TensorRT engines from an artifact's ONNX graph: FP32/FP16/INT8, batch profiles, keyed caches.

Written against the TensorRT 10 Python API (`tensorrt` is imported lazily; nothing here needs it
until an engine is built or run). What each piece is:

* `BatchProfile` — the optimisation profile's min/opt/max batch ("1:64:256"); `profile_shapes`
  turns it into per-input (min, opt, max) shapes.
* `EngineKey` — what an engine is valid for: GPU name, compute capability, TensorRT version,
  precision, profile and the sha256 of the ONNX graph it was built from. It names the engine
  file (`<artifact>/engines/<key>.engine`) and is stored beside it (`<key>.json`) with the
  engine's own sha256.
* `check_engine` — refuses an engine whose bytes no longer match their recorded hash (corrupt),
  that was built for another GPU / compute capability / TensorRT version (foreign), or from
  another graph (stale); `ensure_engine` rebuilds in the stale/corrupt/missing cases and never
  runs such an engine.
* `CalibrationBatcher` + `CalibrationCache` — fixed-size INT8 calibration batches from a dataset,
  and the calibration cache file (keyed by graph and data) that later builds reuse.
* The timing cache is one file per (GPU, compute capability, TensorRT version) under the fertk
  cache root, loaded into every build and written back after it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.specs import TensorSpec
from fertk.core.errors import ArtifactError, BackendUnavailableError, InvalidInputError
from fertk.core.io import atomic_write_bytes, sha256_bytes, sha256_file
from fertk.core.paths import cache_dir

TRT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE = 4 << 30
METADATA_FORMAT = "fertk-trt-engine/1"


# -- profiles ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchProfile:
    """min <= opt <= max batch sizes of one TensorRT optimisation profile."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise InvalidInputError(f"batch profile {self.min}:{self.opt}:{self.max} must satisfy 1 <= min <= opt <= max")

    @classmethod
    def parse(cls, text: str) -> "BatchProfile":
        """'1:64:256' (or a single '32' for a static batch) → BatchProfile."""
        parts = str(text).strip().split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise InvalidInputError(f"batch profile {text!r} is not MIN:OPT:MAX integers") from None
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise InvalidInputError(f"batch profile {text!r} needs three numbers MIN:OPT:MAX")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def contains(self, batch: int) -> bool:
        """True when `batch` is inside the profile."""
        return self.min <= batch <= self.max


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


# -- engine keys and metadata ----------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


@dataclass(frozen=True)
class EngineKey:
    """What an engine is valid for; its `name` is the engine's file stem."""

    gpu_name: str
    compute_capability: str   # "9.0"
    trt_version: str          # "10.3.0"
    precision: str            # fp32 | fp16 | int8
    profile: BatchProfile
    onnx_sha256: str

    def __post_init__(self) -> None:
        if self.precision not in TRT_PRECISIONS:
            raise InvalidInputError(f"TensorRT precision {self.precision!r} is not one of {', '.join(TRT_PRECISIONS)}")

    @property
    def name(self) -> str:
        """File stem: precision, profile, GPU, compute capability, TRT version, graph hash prefix."""
        p = self.profile
        return (f"{self.precision}-b{p.min}-{p.opt}-{p.max}-{_slug(self.gpu_name)}"
                f"-sm{self.compute_capability.replace('.', '')}-trt{self.trt_version}-{self.onnx_sha256[:12]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["profile"] = str(self.profile)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EngineKey":
        """Inverse of to_dict."""
        return cls(str(data["gpu_name"]), str(data["compute_capability"]), str(data["trt_version"]),
                   str(data["precision"]), BatchProfile.parse(str(data["profile"])), str(data["onnx_sha256"]))


def engine_paths(engines_dir: str | Path, key: EngineKey) -> tuple[Path, Path]:
    """(engine file, metadata file) of `key` inside an artifact's engines directory."""
    engines_dir = Path(engines_dir)
    return engines_dir / f"{key.name}.engine", engines_dir / f"{key.name}.json"


def metadata_path(engine_path: str | Path) -> Path:
    """The metadata file beside an engine file."""
    return Path(engine_path).with_suffix(".json")


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


@dataclass
class EngineCheck:
    """Outcome of checking an engine file against what this machine and artifact need."""

    status: str          # ok | missing | corrupt | foreign | stale
    reason: str
    metadata: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when the engine may run."""
        return self.status == "ok"


def inspect_engine(engine_path: str | Path, *, gpu_name: str | None = None, compute_capability: str | None = None,
                   trt_version: str | None = None, onnx_sha256: str | None = None) -> EngineCheck:
    """Check an engine file: present, bytes matching their recorded sha256, built for this GPU /
    compute capability / TensorRT version and (when given) from this ONNX graph."""
    engine_path = Path(engine_path)
    meta_file = metadata_path(engine_path)
    if not engine_path.is_file():
        return EngineCheck("missing", f"no engine file {engine_path}")
    if not meta_file.is_file():
        return EngineCheck("corrupt", f"{engine_path.name} has no metadata file {meta_file.name}: origin unknown")
    try:
        meta = json.loads(meta_file.read_text())
        key = EngineKey.from_dict(meta["key"])
        recorded = str(meta["engine_sha256"])
    except (OSError, ValueError, KeyError, TypeError, InvalidInputError) as exc:
        return EngineCheck("corrupt", f"{meta_file.name} is unreadable: {exc}")
    if meta.get("format") != METADATA_FORMAT:
        return EngineCheck("corrupt", f"{meta_file.name} has format {meta.get('format')!r}, expected {METADATA_FORMAT}")
    actual = sha256_file(engine_path)
    if actual != recorded:
        return EngineCheck("corrupt", f"{engine_path.name} bytes do not match their recorded sha256 "
                                      "(truncated or modified)", meta)
    mismatches = []
    if gpu_name is not None and key.gpu_name != gpu_name:
        mismatches.append(f"GPU {key.gpu_name!r} (this machine: {gpu_name!r})")
    if compute_capability is not None and key.compute_capability != compute_capability:
        mismatches.append(f"compute capability {key.compute_capability} (this machine: {compute_capability})")
    if trt_version is not None and key.trt_version != trt_version:
        mismatches.append(f"TensorRT {key.trt_version} (installed: {trt_version})")
    if mismatches:
        return EngineCheck("foreign", f"{engine_path.name} was built for " + ", ".join(mismatches), meta)
    if onnx_sha256 is not None and key.onnx_sha256 != onnx_sha256:
        return EngineCheck("stale", f"{engine_path.name} was built from graph {key.onnx_sha256[:12]}, "
                                    f"the artifact's graph is {onnx_sha256[:12]}", meta)
    return EngineCheck("ok", "engine matches this machine and graph", meta)


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


# -- this machine -----------------------------------------------------------------------------------------
def require_tensorrt() -> Any:
    """The tensorrt module, or BackendUnavailableError saying why not."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailableError("tensorrt is not installed",
                                      hint="install the fertk gpu extra (tensorrt, onnxruntime-gpu, cuda-python) on a machine with an NVIDIA GPU")
    import tensorrt

    return tensorrt


def device_identity(device: str = "cuda") -> tuple[str, str]:
    """(GPU name, compute capability "M.m") of a CUDA device, via torch."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT needs a CUDA device; torch sees none")
    index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def timing_cache_path(gpu_name: str, compute_capability: str, trt_version: str, root: str | Path | None = None) -> Path:
    """One timing cache per GPU model, compute capability and TensorRT version."""

    base = Path(root) if root is not None else cache_dir("tensorrt")
    return base / f"timing-{_slug(gpu_name)}-sm{compute_capability.replace('.', '')}-trt{trt_version}.cache"


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


def ensure_engine(artifact: Any, options: BuildOptions | None = None, *, device: str = "cuda",
                  calibration: Any = None, rebuild: bool = False, progress: Any = None) -> Path:
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
    if progress is not None and check.status != "missing":
        progress(f"rebuilding TensorRT engine: {check.reason}")
    batcher = None
    if options.precision == "int8":
        if calibration is None:
            raise InvalidInputError("a TensorRT INT8 engine needs calibration data",
                                    hint="pass --calib DATASET (or use --precision fp16)")
        from fertk.export.quantize import calibration_feeds

        feeds = calibration_feeds(calibration, artifact.card.input_specs(), batch_size=options.calibration_batch,
                                  ranges=artifact.card.ranges())
        batcher = CalibrationBatcher(feeds, artifact.card.input_specs(), options.calibration_batch,
                                     options.calibration_batches)
    build_engine(onnx_path, engine_file, key, artifact.card.input_specs(), artifact.card.output_specs(),
                 options=options, batcher=batcher, device=device, progress=progress)
    return engine_file


def _make_logger(trt: Any, progress: Any) -> Any:
    """A TensorRT ILogger that keeps errors (for messages) and forwards warnings to `progress`."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING and progress is not None:
                progress(f"tensorrt: {msg}")

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
                 device: str = "cuda", timing_cache: str | Path | None = None, progress: Any = None) -> Path:
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
    if progress is not None:
        progress(f"building TensorRT {key.precision} engine, batch profile {key.profile}")
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
