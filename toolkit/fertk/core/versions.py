"""Machine and library facts (versions, CPU, GPUs), shared by `fertk info`, dataset cards and benchmark results."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

__version__ = "0.1.0"  # the package version (pyproject.toml says the same; a test checks)


_PACKAGES = (
    "torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "cuda-python",
    "opencv-python-headless", "safetensors", "typer", "webdataset",
)


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux) or platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_list() -> list[dict[str, Any]]:
    """CUDA devices visible to torch, with name, memory and compute capability."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({
                "index": i,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "compute_capability": f"{props.major}.{props.minor}",
            })
    return gpus


def collect_info(backends: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Machine facts as a JSON-able dict; `backends` (engine availability rows, from
    `fertk.engines.backend_report`) is added as given, since core cannot ask the engines."""
    import psutil
    import torch

    return {
        "fertk": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": {
            "model": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_list(),
        "cuda_driver": torch.version.cuda if torch.cuda.is_available() else None,
        "packages": {name: package_version(name) for name in _PACKAGES},
        "backends": list(backends or []),
    }
