"""TensorRT engine files: what an engine is valid for, and the checks before one is deserialized.

* `BatchProfile` — the optimisation profile's min/opt/max batch ("1:64:256").
* `EngineKey` — what an engine is valid for: GPU name, compute capability, TensorRT version,
  precision, profile and the sha256 of the ONNX graph it was built from. It names the engine
  file (`<artifact>/engines/<key>.engine`) and is stored beside it (`<key>.json`) with the
  engine's own sha256.
* `inspect_engine` — refuses an engine whose bytes no longer match their recorded hash (corrupt),
  that was built for another GPU / compute capability / TensorRT version (foreign), or from
  another graph (stale). Building engines is export's job (`fertk.export.trt_build`).

`tensorrt` is imported lazily: nothing here needs it until an engine is run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fertk.core.errors import BackendUnavailableError, InvalidInputError
from fertk.core.io import sha256_file

TRT_PRECISIONS = ("fp32", "fp16", "int8")
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


# -- engine keys and metadata ----------------------------------------------------------------------------
def name_slug(text: str) -> str:
    """A lower-case file-name part: runs of other characters become one dash."""
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
        return (f"{self.precision}-b{p.min}-{p.opt}-{p.max}-{name_slug(self.gpu_name)}"
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


# -- this machine ---------------------------------------------------------------------------------------
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
