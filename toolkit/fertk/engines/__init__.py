"""Engines: one interface (open, declared I/O specs, run, close) over torch, ONNX Runtime and TensorRT."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here, and why not."""

    name: str
    available: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return asdict(self)


def backend_report() -> list[BackendStatus]:
    """One line per backend: can it run on this machine, and why (not)."""
    import torch

    rows = [BackendStatus("torch-cpu", True, f"torch {torch.__version__}")]
    cuda = torch.cuda.is_available()
    rows.append(BackendStatus("torch-cuda", cuda, "CUDA device found" if cuda else "no CUDA device visible to torch"))
    if importlib.util.find_spec("onnxruntime") is None:
        rows.append(BackendStatus("ort-cpu", False, "onnxruntime is not installed"))
    else:
        import onnxruntime as ort

        rows.append(BackendStatus("ort-cpu", True, f"onnxruntime {ort.__version__}"))
    trt = importlib.util.find_spec("tensorrt") is not None
    rows.append(BackendStatus("trt", trt and cuda, "tensorrt importable and CUDA present" if trt and cuda
                              else ("tensorrt is not installed (pip install 'fertk[gpu]' on a CUDA machine)"
                                    if not trt else "no CUDA device visible to torch")))
    return rows
