"""The backends `fertk bench` runs, as (engine backend, device, options, precisions), and whether
each can run here (from `fertk.engines.backend_report`, one line of reason when not).

A bench backend that is one of `fertk info`'s backend rows has that row's name (ort-tensorrt,
not ort-trt: the old spelling is still accepted); the others add a variant suffix (-cl, -compile,
-graphs) or are the hand loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fertk.core.errors import InvalidInputError
from fertk.engines import backend_report, canonical_backend_name


@dataclass(frozen=True)
class BenchBackend:
    """One bench backend: which engine, on which device, with which options and precisions."""

    name: str
    engine: str                                  # "torch" | "ort" | "trt" | "hand-loop"
    device: str                                  # "cpu" | "cuda"
    requires: str                                # backend_report row that must be available
    precisions: tuple[str, ...]
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    # Precisions this backend could be asked for but does not offer, with the reason shown.
    not_offered: dict[str, str] = field(default_factory=dict)

    @property
    def eager_fp32(self) -> bool:
        """The torch-eager baseline of its device."""
        return self.engine == "torch" and not self.options


_CPU_FP16 = "no fp16 arithmetic units on x86 CPUs: torch runs fp16 through slow fallbacks, not benchmarked"
_ORT_CPU_FP16 = "onnxruntime CPU has few fp16 kernels (casts around most ops); not benchmarked"
_ORT_BF16 = "fertk exports fp32/fp16/int8 graphs; bf16 runs on the torch backends"
_TORCH_INT8 = "torch backends run fp32/fp16/bf16; int8 runs on onnxruntime (QDQ) or TensorRT"

BACKENDS: dict[str, BenchBackend] = {b.name: b for b in (
    BenchBackend("torch-cpu", "torch", "cpu", "torch-cpu", ("fp32", "bf16"), "PyTorch eager, NCHW",
                 not_offered={"fp16": _CPU_FP16, "int8": _TORCH_INT8}),
    BenchBackend("torch-cpu-cl", "torch", "cpu", "torch-cpu", ("fp32", "bf16"), "PyTorch eager, channels_last",
                 {"channels_last": True}, not_offered={"fp16": _CPU_FP16, "int8": _TORCH_INT8}),
    BenchBackend("torch-cpu-compile", "torch", "cpu", "torch-cpu", ("fp32", "bf16"), "torch.compile (inductor)",
                 {"compile": True}, not_offered={"fp16": _CPU_FP16, "int8": _TORCH_INT8}),
    BenchBackend("ort-cpu", "ort", "cpu", "ort-cpu", ("fp32", "int8"), "onnxruntime CPU EP (int8: QDQ static)",
                 {"provider": "cpu"}, not_offered={"fp16": _ORT_CPU_FP16, "bf16": _ORT_BF16}),
    BenchBackend("hand-loop-cpu", "hand-loop", "cpu", "torch-cpu", ("fp32",),
                 "plain PyTorch loop: generate, translate x6, crop/gray/resize (OpenCV), save PNGs"),
    BenchBackend("torch-cuda", "torch", "cuda", "torch-cuda", ("fp32", "fp16", "bf16"), "PyTorch eager on CUDA",
                 not_offered={"int8": _TORCH_INT8}),
    BenchBackend("torch-cuda-cl", "torch", "cuda", "torch-cuda", ("fp32", "fp16", "bf16"),
                 "PyTorch eager on CUDA, channels_last", {"channels_last": True}, not_offered={"int8": _TORCH_INT8}),
    BenchBackend("torch-cuda-compile", "torch", "cuda", "torch-cuda", ("fp32", "fp16", "bf16"),
                 "torch.compile on CUDA", {"compile": True}, not_offered={"int8": _TORCH_INT8}),
    BenchBackend("torch-cuda-graphs", "torch", "cuda", "torch-cuda", ("fp32", "fp16", "bf16"),
                 "PyTorch eager replayed as CUDA graphs", {"cuda_graphs": True}, not_offered={"int8": _TORCH_INT8}),
    BenchBackend("ort-cuda", "ort", "cuda", "ort-cuda", ("fp32", "fp16"), "onnxruntime CUDA EP",
                 {"provider": "cuda"}, not_offered={"bf16": _ORT_BF16,
                                                    "int8": "the CUDA EP runs QDQ graphs slowly; int8 on GPU is TensorRT's"}),
    BenchBackend("ort-tensorrt", "ort", "cuda", "ort-tensorrt", ("fp32", "fp16"), "onnxruntime TensorRT EP",
                 {"provider": "tensorrt"},
                 not_offered={"bf16": _ORT_BF16, "int8": "the TensorRT EP needs a calibration table for int8, "
                                                         "which fertk does not write; int8 on GPU: the trt backend"}),
    BenchBackend("trt", "trt", "cuda", "trt", ("fp32", "fp16", "int8"), "native TensorRT engine",
                 not_offered={"bf16": _ORT_BF16}),
    BenchBackend("hand-loop-cuda", "hand-loop", "cuda", "torch-cuda", ("fp32",),
                 "plain PyTorch loop on CUDA: generate, translate x6, crop/gray/resize (OpenCV), save PNGs"),
)}

# The baseline backend per device.
EAGER = {"cpu": "torch-cpu", "cuda": "torch-cuda"}
HAND_LOOP = {"cpu": "hand-loop-cpu", "cuda": "hand-loop-cuda"}


def get_backend(name: str) -> BenchBackend:
    """A bench backend by name (older spellings such as `ort-trt` accepted), or InvalidInputError
    listing the known ones."""
    canonical = canonical_backend_name(name)
    if canonical not in BACKENDS:
        raise InvalidInputError(f"unknown bench backend {name!r}", hint="choose from " + ", ".join(BACKENDS))
    return BACKENDS[canonical]


def availability() -> dict[str, tuple[bool, str]]:
    """backend_report row name -> (available, reason)."""
    return {row.name: (row.available, row.reason) for row in backend_report()}
