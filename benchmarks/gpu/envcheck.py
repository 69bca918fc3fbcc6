"""Environment check of the GPU run: prints one JSON object on stdout.

Run as `python3 benchmarks/gpu/envcheck.py` with PYTHONPATH=toolkit (fertk is not pip-installed on
the GPU machine). Never raises: every probe records what it found or why it failed, so the
driver can say in one line per missing piece what to bring along.

FERTK_GPU_FORCE_MISSING=name,name reports those packages missing (tests of the missing branch).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
from typing import Any

# (import name, distribution, pure Python: a wheel can be carried)
FERTK_DEPS = (
    ("torch", "torch", False),
    ("numpy", "numpy", False),
    ("onnx", "onnx", False),
    ("onnxruntime", "onnxruntime", False),
    ("cv2", "opencv-python-headless", False),
    ("typer", "typer", True),
    ("rich", "rich", True),
    ("safetensors", "safetensors", False),
    ("matplotlib", "matplotlib", False),
    ("pandas", "pandas", False),
    ("platformdirs", "platformdirs", True),
    ("psutil", "psutil", False),
    ("onnxscript", "onnxscript", True),
    ("pytest", "pytest", True),
)
# Present on a CUDA machine with the fertk gpu extra; their absence only marks paths unverified.
OPTIONAL = (
    ("tensorrt", "tensorrt"),
    ("triton", "triton"),
    ("webdataset", "webdataset"),
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def check_imports(forced_missing: set[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every fertk dependency: importable (and its version) or why not; the missing list."""
    packages: dict[str, Any] = {}
    missing: list[dict[str, Any]] = []
    for module, dist, pure in FERTK_DEPS:
        if dist in forced_missing or module in forced_missing:
            packages[dist] = {"ok": False, "error": "forced missing (FERTK_GPU_FORCE_MISSING)"}
            missing.append({"package": dist, "pure_python": pure, "error": "forced missing"})
            continue
        try:
            importlib.import_module(module)
            packages[dist] = {"ok": True, "version": _version(dist)}
        except Exception as exc:  # noqa: BLE001 - a broken install is as missing as an absent one
            packages[dist] = {"ok": False, "error": _one_line(exc)}
            missing.append({"package": dist, "pure_python": pure, "error": _one_line(exc)})
    for module, dist in OPTIONAL:
        found = importlib.util.find_spec(module) is not None and dist not in forced_missing
        packages[dist] = {"ok": found, "version": _version(dist) if found else None, "optional": True}
    return packages, missing


def check_torch() -> dict[str, Any]:
    """torch, CUDA, the GPU and its free memory."""
    info: dict[str, Any] = {}
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": _one_line(exc)}
    info.update(ok=True, version=torch.__version__, cuda_build=torch.version.cuda,
                cuda_available=bool(torch.cuda.is_available()), threads=torch.get_num_threads())
    try:
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception as exc:  # noqa: BLE001
        info["cudnn"] = _one_line(exc)
    if info["cuda_available"]:
        try:
            props = torch.cuda.get_device_properties(0)
            free, total = torch.cuda.mem_get_info(0)
            info["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                           "capability": f"{props.major}.{props.minor}",
                           "sm_count": props.multi_processor_count,
                           "total_gib": round(total / 2**30, 2), "free_gib": round(free / 2**30, 2),
                           "bf16": bool(torch.cuda.is_bf16_supported())}
        except Exception as exc:  # noqa: BLE001 - a driver mismatch shows here
            info["gpu"] = {"error": _one_line(exc)}
            info["cuda_available"] = False
    return info


def check_onnxruntime() -> dict[str, Any]:
    """onnxruntime's providers (the CPU build lists no CUDA / TensorRT EP)."""
    try:
        import onnxruntime as ort

        return {"ok": True, "version": ort.__version__, "providers": list(ort.get_available_providers())}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": _one_line(exc)}


def check_fertk() -> dict[str, Any]:
    """fertk from the checkout: importable, its CLI importable, and its backend report."""
    try:
        import fertk
        from fertk.cli import main  # noqa: F401 - the CLI must import too
        from fertk.engines import backend_report

        return {"ok": True, "version": fertk.__version__, "file": fertk.__file__,
                "backends": [b.to_dict() for b in backend_report()]}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": _one_line(exc)}


def check_tools() -> dict[str, Any]:
    """Tools torch.compile / Triton and the run rely on."""
    compilers = {name: shutil.which(name) for name in ("cc", "gcc", "c++", "g++", "clang")}
    disk = shutil.disk_usage(os.environ.get("FERTK_GPU_WORKDIR") or os.getcwd())
    return {"c_compiler": next((p for p in compilers.values() if p), None), "compilers": compilers,
            "nvidia_smi": shutil.which("nvidia-smi"), "timeout": shutil.which("timeout"),
            "disk_free_gib": round(disk.free / 2**30, 1), "cpu_count": os.cpu_count()}


def missing_lines(report: dict[str, Any], *, need_cuda: bool) -> list[str]:
    """One line per missing piece, saying what to bring along."""
    lines = []
    for item in report["missing"]:
        name = item["package"]
        if item["pure_python"]:
            lines.append(f"MISSING {name} ({item['error']}): carry its wheel, e.g. "
                         f"`pip download {name} --no-deps -d benchmarks/gpu/wheels` before the run")
        else:
            lines.append(f"MISSING {name} ({item['error']}): has compiled parts, so it must be installed on "
                         "that machine (a wheel for its Python and platform in benchmarks/gpu/wheels may do)")
    if not report["fertk"]["ok"]:
        lines.append(f"MISSING fertk does not import from toolkit/ ({report['fertk']['error']}): "
                     "check PYTHONPATH and the lines above")
    torch_info = report["torch"]
    if need_cuda and torch_info.get("ok") and not torch_info.get("cuda_available"):
        why = (torch_info.get("gpu") or {}).get("error") or f"torch {torch_info.get('version')} sees no CUDA device"
        lines.append(f"MISSING CUDA ({why}): the GPU stages are skipped")
    if need_cuda and not report["tools"]["c_compiler"]:
        lines.append("MISSING C compiler (cc/gcc): Triton builds its launcher with one, so torch.compile on "
                     "CUDA fails without it")
    if not report["packages"]["tensorrt"]["ok"]:
        lines.append("NOTE tensorrt is not installed: TensorRT rows skip with their reason (unverified paths)")
    ort_info = report["onnxruntime"]
    if ort_info.get("ok") and "CUDAExecutionProvider" not in ort_info.get("providers", []):
        lines.append("NOTE onnxruntime is the CPU build (no CUDA EP): ort-cuda / ort-trt rows skip")
    return lines


def main() -> None:
    forced = {p.strip() for p in os.environ.get("FERTK_GPU_FORCE_MISSING", "").split(",") if p.strip()}
    packages, missing = check_imports(forced)
    report: dict[str, Any] = {
        "python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "packages": packages, "missing": missing,
        "torch": check_torch(), "onnxruntime": check_onnxruntime(), "fertk": check_fertk(), "tools": check_tools(),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    need_cuda = os.environ.get("FERTK_GPU_NEED_CUDA", "1") == "1"
    report["lines"] = missing_lines(report, need_cuda=need_cuda)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
