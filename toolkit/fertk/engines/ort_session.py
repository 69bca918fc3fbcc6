"""Loading an onnxruntime InferenceSession for the ORT engine: options, providers, the fallback check.

onnxruntime-gpu lists CUDAExecutionProvider / TensorrtExecutionProvider as available even on a
machine without a GPU, and a session asked for them silently runs on CPU. `load_session`
therefore compares what it asked for with `session.get_providers()` after the session is built
and raises BackendUnavailableError on a fallback unless `allow_fallback=True`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fertk.core.errors import ArtifactError, BackendUnavailableError, InvalidInputError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass
class OrtSessionOptions:
    """How to build the session (everything the ORT engine takes besides the graph, device, precision)."""

    provider: str | None = None               # "cpu" | "cuda" | "tensorrt"; default from the device
    intra_op_threads: int = 0                 # 0: onnxruntime's default (one per physical core)
    inter_op_threads: int = 0
    graph_optimization_level: str = "all"
    allow_fallback: bool = False              # accept a CPU fallback when CUDA/TensorRT EP was asked for
    trt_cache_dir: str | Path | None = None   # TensorRT EP engine + timing cache directory
    trt_int8_calibration_table: str | None = None
    trt_max_workspace_bytes: int | None = None
    provider_options: Mapping[str, Any] = field(default_factory=dict)  # extra options for the main provider

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> "OrtSessionOptions":
        """The options from engine keyword arguments; an unknown name is an InvalidInputError."""
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise InvalidInputError(f"unknown ort options {unknown}",
                                    hint="ort takes " + ", ".join(cls.__dataclass_fields__))
        return cls(**{k: v for k, v in options.items() if not (k == "provider_options" and v is None)})


@dataclass
class OrtSession:
    """A built session and what it really runs on."""

    session: Any
    provider: str            # the provider asked for ("cpu" | "cuda" | "tensorrt")
    providers: list[str]     # what the session got
    device_id: int

    @property
    def on_gpu(self) -> bool:
        """True when the session runs on a CUDA or TensorRT provider."""
        return any(p in self.providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))


def load_session(model_path: Path, *, device: str, precision: str, options: OrtSessionOptions) -> OrtSession:
    """An InferenceSession on `model_path` with the asked provider, or a one-line error saying why not."""
    import onnxruntime as ort

    if not model_path.is_file():
        raise ArtifactError(f"ONNX model {model_path} does not exist")
    provider = options.provider or ("cuda" if device.startswith("cuda") else "cpu")
    _check_choice(provider, device, options.graph_optimization_level)
    device_id = int(device.split(":", 1)[1]) if ":" in device else 0
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise BackendUnavailableError(
            f"onnxruntime {ort.__version__} has no {wanted} (available: {', '.join(ort.get_available_providers())})",
            hint="install onnxruntime-gpu (and TensorRT for the TensorRT EP) on a CUDA machine")
    providers = provider_list(provider, device_id, precision, options)
    try:
        session = ort.InferenceSession(str(model_path), session_options(options), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ArtifactError(f"onnxruntime cannot load {model_path}: {str(exc).splitlines()[0]}") from exc
    got = list(session.get_providers())
    if wanted not in got:
        message = (f"asked onnxruntime for {wanted}, the session got {', '.join(got)} "
                   "(onnxruntime-gpu falls back to CPU silently when CUDA/TensorRT cannot start)")
        if not options.allow_fallback:
            raise BackendUnavailableError(message, hint="check CUDA/cuDNN/TensorRT libraries, or pass allow_fallback=True")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return OrtSession(session, provider, got, device_id)


def _check_choice(provider: str, device: str, level: str) -> None:
    if provider not in PROVIDERS:
        raise InvalidInputError(f"unknown onnxruntime provider {provider!r}", hint="choose " + ", ".join(PROVIDERS))
    if (provider == "cpu") != (device == "cpu"):
        raise InvalidInputError(f"provider {provider!r} does not match device {device!r}")
    if level not in OPT_LEVELS:
        raise InvalidInputError(f"unknown graph optimisation level {level!r}", hint="choose " + ", ".join(OPT_LEVELS))


def session_options(options: OrtSessionOptions) -> Any:
    """onnxruntime SessionOptions: threads, graph optimisation level, errors-only logging."""
    import onnxruntime as ort

    result = ort.SessionOptions()
    result.intra_op_num_threads = int(options.intra_op_threads)
    result.inter_op_num_threads = int(options.inter_op_threads)
    result.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.graph_optimization_level]
    result.log_severity_level = 3  # errors only: ORT's warnings about fallbacks are checked by load_session
    return result


def provider_list(provider: str, device_id: int, precision: str, options: OrtSessionOptions) -> list[Any]:
    """The providers (with their options) to ask for, most wanted first."""
    extra = dict(options.provider_options or {})
    if provider == "cpu":
        return [("CPUExecutionProvider", extra)] if extra else ["CPUExecutionProvider"]
    cuda_options: dict[str, Any] = {"device_id": device_id}
    cuda_stream = _torch_stream_handle(device_id)
    if cuda_stream is not None:
        # Run on torch's current stream so torch producers/consumers need no extra sync.
        cuda_options.update(has_user_compute_stream="1", user_compute_stream=str(cuda_stream))
    if provider == "cuda":
        return [("CUDAExecutionProvider", {**cuda_options, **extra}), "CPUExecutionProvider"]
    trt: dict[str, Any] = {"device_id": device_id}
    if precision == "fp16":
        trt["trt_fp16_enable"] = True
    if precision == "int8":
        trt["trt_int8_enable"] = True
        if options.trt_int8_calibration_table:
            trt["trt_int8_calibration_table_name"] = options.trt_int8_calibration_table
    if options.trt_cache_dir is not None:
        Path(options.trt_cache_dir).mkdir(parents=True, exist_ok=True)
        trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(options.trt_cache_dir),
                   trt_timing_cache_enable=True, trt_timing_cache_path=str(options.trt_cache_dir))
    if options.trt_max_workspace_bytes:
        trt["trt_max_workspace_size"] = int(options.trt_max_workspace_bytes)
    if cuda_stream is not None:
        trt.update(has_user_compute_stream="1", user_compute_stream=str(cuda_stream))
    return [("TensorrtExecutionProvider", {**trt, **extra}), ("CUDAExecutionProvider", cuda_options),
            "CPUExecutionProvider"]


def _torch_stream_handle(device_id: int) -> int | None:
    """torch's current CUDA stream on `device_id`, or None when torch has no CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.current_stream(device_id).cuda_stream)
