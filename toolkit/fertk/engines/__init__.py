"""Engines: one interface (open, declared I/O specs, run, close) over torch, ONNX Runtime and TensorRT.

    from fertk.engines import open_engine
    with open_engine(model_or_artifact, backend="auto", device=None, precision="fp32") as engine:
        outputs = engine.run({"image": batch})      # numpy in → numpy out, torch in → torch out

Sources: an nn.Module (specs given, or its `input_specs`/`output_specs` attributes), an artifact
directory (has card.json), an .onnx file (no card: a warning, specs read from the graph), or a
TensorRT .engine file with its metadata. Backends "ort" and "trt" given an nn.Module export it
first into the artifact cache (keyed by a hash of weights + config + specs), then open that.

`backend="auto"` takes the first backend that can run the source here, in this order:

    trt (cuda) > ort-tensorrt (cuda) > ort-cuda > torch-cuda > ort-cpu > torch-cpu

TensorRT first on GPUs (fused kernels, fp16/int8); on CPU onnxruntime before torch because on the
dev machines the Table-1 CNN measured ~290-345 img/s under ORT against ~95-133 (eager) and
~155-268 (torch.compile) under torch. A backend that cannot run says why (`backend_report`).

The fused generation graph (`fertk synth --backend auto`) decides one step earlier, in
`fertk.engines.choice.choose_generation`: on CUDA without TensorRT it opens the torch backend
compiled + CUDA graphs in fp16/bf16 at a batch sized from free memory; otherwise this order.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fertk.core.specs import TensorSpec
from fertk.engines.base import Engine, EngineStats
from fertk.core.errors import BackendUnavailableError, InvalidInputError

BACKENDS = ("torch", "ort", "trt")
# Backend rows (`fertk info`, `fertk bench` rows and --backends) have one spelling each, the names
# of `backend_report`; older spellings are accepted and mapped onto them.
BACKEND_ALIASES = {"ort-trt": "ort-tensorrt"}


def canonical_backend_name(name: str) -> str:
    """The one spelling of a backend row name (`ort-trt` -> `ort-tensorrt`); others unchanged."""
    return BACKEND_ALIASES.get(name.strip().lower(), name.strip())

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# (report row, backend, device, extra options) in auto's order of preference.
AUTO_ORDER: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("trt", "trt", "cuda", {}),
    ("ort-tensorrt", "ort", "cuda", {"provider": "tensorrt"}),
    ("ort-cuda", "ort", "cuda", {"provider": "cuda"}),
    ("torch-cuda", "torch", "cuda", {}),
    ("ort-cpu", "ort", "cpu", {}),
    ("torch-cpu", "torch", "cpu", {}),
)


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here, and why not."""

    name: str
    available: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return asdict(self)


def machine_info() -> dict[str, Any]:
    """Machine facts (`fertk.core.versions.collect_info`) plus which engine backends can run here."""
    from fertk.core.versions import collect_info

    return collect_info(backends=[b.to_dict() for b in backend_report()])


def backend_report() -> list[BackendStatus]:
    """One line per backend: can it run on this machine, and why (not)."""
    import torch

    from fertk.core.versions import package_version

    cuda = torch.cuda.is_available()
    no_cuda = "no CUDA device visible to torch"
    rows = [BackendStatus("torch-cpu", True, f"torch {torch.__version__}")]
    rows.append(BackendStatus("torch-cuda", cuda, f"CUDA device {torch.cuda.get_device_name(0)}" if cuda else no_cuda))
    if importlib.util.find_spec("onnxruntime") is None:
        for name in ("ort-cpu", "ort-cuda", "ort-tensorrt"):
            rows.append(BackendStatus(name, False, "onnxruntime is not installed"))
    else:
        import onnxruntime as ort

        listed = ort.get_available_providers()
        rows.append(BackendStatus("ort-cpu", True, f"onnxruntime {ort.__version__}"))
        for name, provider in (("ort-cuda", "CUDAExecutionProvider"), ("ort-tensorrt", "TensorrtExecutionProvider")):
            if provider not in listed:
                rows.append(BackendStatus(name, False, f"onnxruntime {ort.__version__} has no {provider} "
                                                       "(install onnxruntime-gpu)"))
            elif not cuda:
                rows.append(BackendStatus(name, False, f"{provider} is listed but {no_cuda} "
                                                       "(a session would silently fall back to CPU)"))
            elif provider == "TensorrtExecutionProvider" and importlib.util.find_spec("tensorrt") is None:
                rows.append(BackendStatus(name, False, "TensorrtExecutionProvider is listed but the TensorRT "
                                                       "libraries (tensorrt) are not installed"))
            else:
                rows.append(BackendStatus(name, True, f"{provider} listed and CUDA present "
                                                      "(the session reports what it really got)"))
    if importlib.util.find_spec("tensorrt") is None:
        rows.append(BackendStatus("trt", False, "tensorrt is not installed (the fertk gpu extra installs it on a CUDA machine)"))
    elif not cuda:
        rows.append(BackendStatus("trt", False, f"tensorrt {package_version('tensorrt')} installed but {no_cuda}"))
    else:
        rows.append(BackendStatus("trt", True, f"tensorrt {package_version('tensorrt')} and CUDA present"))
    return rows


def _availability() -> dict[str, BackendStatus]:
    return {row.name: row for row in backend_report()}


def _report_lines() -> str:
    return "; ".join(f"{r.name}: {'yes' if r.available else 'no'} ({r.reason})" for r in backend_report())


def _source_kind(source: Any) -> str:
    """module | artifact | onnx | engine."""
    if hasattr(source, "forward") and hasattr(source, "state_dict"):
        return "module"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return "artifact"
        if path.suffix == ".onnx":
            return "onnx"
        if path.suffix in (".engine", ".plan", ".trt"):
            return "engine"
        if not path.exists():
            raise InvalidInputError(f"engine source {path} does not exist")
        raise InvalidInputError(f"cannot open {path}: expected an artifact directory, an .onnx or a .engine file")
    if hasattr(source, "card") and hasattr(source, "onnx_path"):  # an Artifact object
        return "artifact"
    raise InvalidInputError(f"cannot open an engine on a {type(source).__name__}",
                            hint="pass an nn.Module, an artifact directory, an .onnx or a .engine file")


_RUNS = {  # which backends can open which source kinds
    "module": {"torch", "ort", "trt"},
    "artifact": {"ort", "trt"},
    "onnx": {"ort"},
    "engine": {"trt"},
}


def choose_backend(source_kind: str, device: str | None = None, precision: str = "fp32") -> tuple[str, str, dict[str, Any]]:
    """(backend, device, options) that `auto` picks for a source kind here, with the reason on failure."""
    available = _availability()
    for row, backend, dev, options in AUTO_ORDER:
        if backend not in _RUNS[source_kind] or not available[row].available:
            continue
        if device is not None and not device.startswith(dev):
            continue
        if precision == "bf16" and backend != "torch":
            continue
        if precision == "int8" and backend == "torch":
            continue
        return backend, (device or dev), dict(options)
    raise BackendUnavailableError(
        f"no backend can run a {source_kind} at precision {precision} on device {device or 'any'} here",
        hint=_report_lines())


def open_engine(
    source: Any,
    backend: str = "auto",
    device: str | None = None,
    precision: str = "fp32",
    input_specs: Sequence[TensorSpec] | None = None,
    output_specs: Sequence[TensorSpec] | None = None,
    **backend_options: Any,
) -> Engine:
    """Open an engine on `source` with `backend` ("torch" | "ort" | "trt" | "auto").

    `device` None means: auto's choice, cpu for torch/ort, cuda for trt. `backend_options` go to
    the backend (torch: compile, compile_mode, channels_last, cuda_graphs; ort: provider,
    intra_op_threads, inter_op_threads, graph_optimization_level, allow_fallback, trt_cache_dir,
    provider_options; trt: batch_profile, calibration, workspace_bytes, rebuild; module sources
    for ort/trt also take export_options and calibration).
    """
    if backend not in (*BACKENDS, "auto"):
        raise InvalidInputError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}, auto",
                                hint=_report_lines())
    if precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}", hint="choose " + ", ".join(PRECISIONS))
    kind = _source_kind(source)
    if backend == "auto":
        backend, device, chosen = choose_backend(kind, device, precision)
        backend_options = {**chosen, **backend_options}
    elif backend not in _RUNS[kind]:
        why = {"torch": "the torch backend needs the nn.Module (artifacts run on ort or trt)",
               "ort": "the ort backend needs a module, an artifact directory or an .onnx file",
               "trt": "the trt backend needs a module, an artifact directory or a .engine file"}[backend]
        raise InvalidInputError(f"backend {backend!r} cannot open {'an' if kind[0] in 'aeio' else 'a'} {kind}: {why}")
    _require(backend, device)
    if backend == "torch":
        return _open_torch(source, device or "cpu", precision, input_specs, output_specs, backend_options)
    if backend == "ort":
        return _open_ort(source, kind, device or "cpu", precision, input_specs, output_specs, backend_options)
    return _open_trt(source, kind, device or "cuda", precision, input_specs, output_specs, backend_options)


def _require(backend: str, device: str | None) -> None:
    """BackendUnavailableError (with the whole report) when a backend's dependency is missing."""
    available = _availability()
    if backend == "trt":
        row = available["trt"]
    elif backend == "ort":
        row = available["ort-cpu"]
    else:
        row = available["torch-cuda" if device and device.startswith("cuda") else "torch-cpu"]
    if not row.available:
        raise BackendUnavailableError(f"backend {backend!r} cannot run here: {row.reason}", hint=_report_lines())


def _module_specs(module: Any, input_specs: Sequence[TensorSpec] | None,
                  output_specs: Sequence[TensorSpec] | None) -> tuple[Sequence[TensorSpec], Sequence[TensorSpec]]:
    inputs = input_specs if input_specs is not None else getattr(module, "input_specs", None)
    outputs = output_specs if output_specs is not None else getattr(module, "output_specs", None)
    if not inputs or not outputs:
        raise InvalidInputError(f"no input/output specs for {type(module).__name__}",
                                hint="pass input_specs= and output_specs=, or define them on the module")
    return inputs, outputs


def _open_torch(module: Any, device: str, precision: str, input_specs: Any, output_specs: Any,
                options: dict[str, Any]) -> Engine:
    from fertk.engines.torch_engine import TorchEngine

    inputs, outputs = _module_specs(module, input_specs, output_specs)
    return TorchEngine(module, inputs, outputs, device=device, precision=precision, **options)


def _export_for_engine(module: Any, input_specs: Any, output_specs: Any, precision: str,
                       options: dict[str, Any]) -> Any:
    """Export a module into the artifact cache (reused when its key matches) for ort/trt."""
    # The one upward edge (engines → export), taken lazily: opening a module on a graph backend
    # means exporting it, and the contract promises exactly that.
    from fertk.export import ExportOptions, export_module

    inputs, outputs = _module_specs(module, input_specs, output_specs)
    export_options = options.pop("export_options", None) or ExportOptions(
        precision=precision if precision in ("fp16", "int8") else "fp32")
    return export_module(module, input_specs=inputs, output_specs=outputs, options=export_options,
                         calibration=options.pop("calibration", None))


def _open_ort(source: Any, kind: str, device: str, precision: str, input_specs: Any, output_specs: Any,
              options: dict[str, Any]) -> Engine:
    from fertk.engines.ort_engine import OrtEngine

    if precision == "bf16":
        raise InvalidInputError("the ort backend runs fp32, fp16 or int8 graphs, not bf16",
                                hint="use backend='torch' for bf16")
    provider = options.get("provider") or ("cuda" if device.startswith("cuda") else "cpu")
    if kind == "onnx":
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"ONNX file {path} does not exist")
        if input_specs is None:
            warnings.warn(f"{path.name} has no fertk card: I/O specs are read from the graph", UserWarning, stacklevel=3)
        return OrtEngine(path, input_specs, output_specs, device=device, precision=precision, **options)
    if kind == "module":
        artifact = _export_for_engine(source, input_specs, output_specs, precision, options)
    else:
        artifact = _load(source)
    # The TensorRT EP takes the fp32 graph and builds fp16/int8 itself; other providers run the
    # converted graph (fp16 made on demand; int8 needs calibration data at export).
    graph_precision = "fp32" if provider == "tensorrt" else precision
    if provider == "tensorrt":
        # The TensorRT EP's engine and timing caches live with the artifact unless told otherwise.
        options.setdefault("trt_cache_dir", artifact.engines_dir / "ort-tensorrt")
    if graph_precision == "fp16" and "fp16" not in artifact.card.variants:
        from fertk.export import add_variant

        add_variant(artifact, "fp16")
    return OrtEngine(artifact.onnx_path(graph_precision), artifact.card.input_specs(), artifact.card.output_specs(),
                     device=device, precision=precision, **options)


def _load(source: Any) -> Any:
    from fertk.export.artifacts import load_artifact

    return source if hasattr(source, "card") else load_artifact(source)


def _open_trt(source: Any, kind: str, device: str, precision: str, input_specs: Any, output_specs: Any,
              options: dict[str, Any]) -> Engine:
    from fertk.engines.trt_engine import TrtEngine

    if precision == "bf16":
        raise InvalidInputError("the trt backend builds fp32, fp16 or int8 engines", hint="use backend='torch' for bf16")
    if kind == "engine":
        return TrtEngine(source, input_specs, output_specs, device=device)
    from fertk.export.tensorrt import BuildOptions, ensure_engine

    build_keys = ("batch_profile", "workspace_bytes", "calibration_batch", "calibration_batches",
                  "builder_optimization_level")
    build = {k: options.pop(k) for k in build_keys if k in options}
    calibration = options.pop("calibration", None)
    rebuild = bool(options.pop("rebuild", False))
    if kind == "module":
        artifact = _export_for_engine(source, input_specs, output_specs, "fp32", dict(options))
        options.pop("export_options", None)
    else:
        artifact = _load(source)
    if options:
        raise InvalidInputError(f"unknown trt options {sorted(options)}",
                                hint="trt takes batch_profile, workspace_bytes, calibration, rebuild")
    build_options = BuildOptions(precision=precision, profile=str(build.pop("batch_profile", "1:64:256")), **build)
    engine_file = ensure_engine(artifact, build_options, device=device, calibration=calibration, rebuild=rebuild)
    return TrtEngine(engine_file, artifact.card.input_specs(), artifact.card.output_specs(), device=device,
                     onnx_sha256=artifact.card.onnx.get("sha256"))


__all__ = ["AUTO_ORDER", "BACKENDS", "BACKEND_ALIASES", "BackendStatus", "Engine", "EngineStats", "TensorSpec", "backend_report", "machine_info",
           "canonical_backend_name", "choose_backend", "open_engine"]
