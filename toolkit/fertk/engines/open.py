"""Which backends can run here, what `auto` picks, and opening an engine on a built graph.

`backend="auto"` takes the first backend that can run the source here, in this order:

    trt (cuda) > ort-tensorrt (cuda) > ort-cuda > torch-cuda > ort-cpu > torch-cpu

TensorRT first on GPUs (fused kernels, fp16/int8); on CPU onnxruntime before torch because on the
dev machines the Table-1 CNN measured ~290-345 img/s under ORT against ~95-133 (eager) and
~155-268 (torch.compile) under torch. A backend that cannot run says why (`backend_report`).

This layer opens built graphs only: an nn.Module on torch, an .onnx file on ort, a TensorRT
.engine file (with its metadata) on trt. A module on ort/trt (export first) and an artifact
directory (fp16 graphs and TensorRT engines made on demand) open through `fertk.export.open_engine`.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fertk.core.errors import BackendUnavailableError, InvalidInputError
from fertk.core.specs import TensorSpec
from fertk.core.versions import collect_info, package_version
from fertk.engines.base import Engine, module_specs
from fertk.engines.ort_engine import OrtEngine
from fertk.engines.torch_engine import TorchEngine
from fertk.engines.trt_engine import TrtEngine

BACKENDS = ("torch", "ort", "trt")
# Backend rows (`fertk info`, `fertk bench` rows and --backends) have one spelling each, the names
# of `backend_report`; older spellings are accepted and mapped onto them.
BACKEND_ALIASES = {"ort-trt": "ort-tensorrt"}
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
# Which backends can open which source kinds once export has run (module → artifact → graph).
RUNS = {
    "module": {"torch", "ort", "trt"},
    "artifact": {"ort", "trt"},
    "onnx": {"ort"},
    "engine": {"trt"},
}
# What this layer opens itself: built graphs only.
BUILT_RUNS = {"module": {"torch"}, "onnx": {"ort"}, "engine": {"trt"}}


def canonical_backend_name(name: str) -> str:
    """The one spelling of a backend row name (`ort-trt` -> `ort-tensorrt`); others unchanged."""
    return BACKEND_ALIASES.get(name.strip().lower(), name.strip())


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
    return collect_info(backends=[b.to_dict() for b in backend_report()])


def backend_report() -> list[BackendStatus]:
    """One line per backend: can it run on this machine, and why (not)."""
    import torch

    cuda = torch.cuda.is_available()
    no_cuda = "no CUDA device visible to torch"
    rows = [BackendStatus("torch-cpu", True, f"torch {torch.__version__}")]
    rows.append(BackendStatus("torch-cuda", cuda, f"CUDA device {torch.cuda.get_device_name(0)}" if cuda else no_cuda))
    rows.extend(_ort_rows(cuda, no_cuda))
    if importlib.util.find_spec("tensorrt") is None:
        rows.append(BackendStatus("trt", False, "tensorrt is not installed (the fertk gpu extra installs it on a CUDA machine)"))
    elif not cuda:
        rows.append(BackendStatus("trt", False, f"tensorrt {package_version('tensorrt')} installed but {no_cuda}"))
    else:
        rows.append(BackendStatus("trt", True, f"tensorrt {package_version('tensorrt')} and CUDA present"))
    return rows


def _ort_rows(cuda: bool, no_cuda: str) -> list[BackendStatus]:
    if importlib.util.find_spec("onnxruntime") is None:
        return [BackendStatus(name, False, "onnxruntime is not installed") for name in ("ort-cpu", "ort-cuda", "ort-tensorrt")]
    import onnxruntime as ort

    listed = ort.get_available_providers()
    rows = [BackendStatus("ort-cpu", True, f"onnxruntime {ort.__version__}")]
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
    return rows


def report_lines() -> str:
    """The backend report as one line (for hints)."""
    return "; ".join(f"{r.name}: {'yes' if r.available else 'no'} ({r.reason})" for r in backend_report())


def source_kind(source: Any) -> str:
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


def choose_backend(source_kind: str, device: str | None = None, precision: str = "fp32", *,
                   runs: dict[str, set[str]] | None = None) -> tuple[str, str, dict[str, Any]]:
    """(backend, device, options) that `auto` picks for a source kind here, with the reason on failure.

    `runs` says which backends can open which kind (default `RUNS`: after export).
    """
    available = {row.name: row for row in backend_report()}
    can_open = (runs or RUNS).get(source_kind, set())
    for row, backend, dev, options in AUTO_ORDER:
        if backend not in can_open or not available[row].available:
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
        hint=report_lines())


def check_request(backend: str, precision: str, kind: str, runs: dict[str, set[str]]) -> None:
    """InvalidInputError for an unknown backend or precision, or a backend that cannot open `kind`."""
    if backend not in (*BACKENDS, "auto"):
        raise InvalidInputError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}, auto",
                                hint=report_lines())
    if precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}", hint="choose " + ", ".join(PRECISIONS))
    if backend == "auto" or backend in runs.get(kind, set()):
        return
    if backend in RUNS.get(kind, set()):
        raise InvalidInputError(f"backend {backend!r} opens {'an' if kind[0] in 'aeio' else 'a'} {kind} only after "
                                "an export", hint="open it with fertk.export.open_engine")
    why = {"torch": "the torch backend needs the nn.Module (artifacts run on ort or trt)",
           "ort": "the ort backend needs a module, an artifact directory or an .onnx file",
           "trt": "the trt backend needs a module, an artifact directory or a .engine file"}[backend]
    raise InvalidInputError(f"backend {backend!r} cannot open {'an' if kind[0] in 'aeio' else 'a'} {kind}: {why}")


def require_backend(backend: str, device: str | None) -> None:
    """BackendUnavailableError (with the whole report) when a backend's dependency is missing."""
    available = {row.name: row for row in backend_report()}
    if backend == "trt":
        row = available["trt"]
    elif backend == "ort":
        row = available["ort-cpu"]
    else:
        row = available["torch-cuda" if device and device.startswith("cuda") else "torch-cpu"]
    if not row.available:
        raise BackendUnavailableError(f"backend {backend!r} cannot run here: {row.reason}", hint=report_lines())


def open_engine(
    source: Any,
    backend: str = "auto",
    device: str | None = None,
    precision: str = "fp32",
    input_specs: Sequence[TensorSpec] | None = None,
    output_specs: Sequence[TensorSpec] | None = None,
    **backend_options: Any,
) -> Engine:
    """Open an engine on a built graph: an nn.Module on torch, an .onnx file on ort, a .engine on trt.

    `device` None means: auto's choice, cpu for torch/ort, cuda for trt. `backend_options` go to
    the backend (torch: compile, compile_mode, channels_last, cuda_graphs, autocast; ort: the
    fields of `OrtSessionOptions`; trt: onnx_sha256).
    """
    kind = source_kind(source)
    check_request(backend, precision, kind, BUILT_RUNS)
    if backend == "auto":
        backend, device, chosen = choose_backend(kind, device, precision, runs=BUILT_RUNS)
        backend_options = {**chosen, **backend_options}
    require_backend(backend, device)
    if backend == "torch":
        inputs, outputs = module_specs(source, input_specs, output_specs)
        return TorchEngine(source, inputs, outputs, device=device or "cpu", precision=precision, **backend_options)
    if backend == "ort":
        return open_onnx(source, device or "cpu", precision, input_specs, output_specs, backend_options)
    refuse_bf16("trt", precision)
    return TrtEngine(source, input_specs, output_specs, device=device or "cuda",
                     onnx_sha256=backend_options.get("onnx_sha256"))


def refuse_bf16(backend: str, precision: str) -> None:
    """InvalidInputError when bf16 is asked of ort or trt (bf16 runs on the torch backend only)."""
    if precision == "bf16":
        what = "runs fp32, fp16 or int8 graphs" if backend == "ort" else "builds fp32, fp16 or int8 engines"
        raise InvalidInputError(f"the {backend} backend {what}, not bf16", hint="use backend='torch' for bf16")


def open_onnx(path: str | Path, device: str, precision: str, input_specs: Sequence[TensorSpec] | None,
              output_specs: Sequence[TensorSpec] | None, options: dict[str, Any]) -> OrtEngine:
    """An ORT engine on an .onnx file; without declared specs (no card) they are read from the graph, with a warning."""
    refuse_bf16("ort", precision)
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"ONNX file {path} does not exist")
    if input_specs is None:
        warnings.warn(f"{path.name} has no fertk card: I/O specs are read from the graph", UserWarning, stacklevel=3)
    return OrtEngine(path, input_specs, output_specs, device=device, precision=precision, **options)
