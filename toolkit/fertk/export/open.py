"""Opening an engine on anything: module → artifact → engine (what `fertk.engines.open_engine` cannot).

    from fertk.export import open_engine
    with open_engine(model_or_artifact, backend="auto", device=None, precision="fp32") as engine:
        outputs = engine.run({"image": batch})

Sources: an nn.Module (specs given, or its `input_specs`/`output_specs` attributes), an artifact
directory (has card.json), an .onnx file (no card: a warning, specs read from the graph), or a
TensorRT .engine file with its metadata. Backends "ort" and "trt" given an nn.Module export it
first into the artifact cache (keyed by a hash of weights + config + specs), then open that; an
artifact gets its fp16 graph or TensorRT engine built on demand. Built graphs (a module on torch,
an .onnx, a .engine) go straight to `fertk.engines.open_engine`; `auto` follows its order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fertk.core.errors import InvalidInputError
from fertk.core.specs import TensorSpec
from fertk.engines import open as engines_open
from fertk.engines.base import Engine, module_specs
from fertk.engines.trt_engine import TrtEngine
from fertk.export.api import export_module
from fertk.export.artifacts import Artifact, load_artifact
from fertk.export.options import ExportOptions
from fertk.export.trt_build import BuildOptions, ensure_engine
from fertk.export.variants import add_variant

BUILD_KEYS = ("batch_profile", "workspace_bytes", "calibration_batch", "calibration_batches",
              "builder_optimization_level")


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
    kind = engines_open.source_kind(source)
    engines_open.check_request(backend, precision, kind, engines_open.RUNS)
    if backend == "auto":
        backend, device, chosen = engines_open.choose_backend(kind, device, precision)
        backend_options = {**chosen, **backend_options}
    if kind not in ("module", "artifact") or backend == "torch":
        return engines_open.open_engine(source, backend, device, precision, input_specs, output_specs,
                                        **backend_options)
    engines_open.require_backend(backend, device)
    if backend == "ort":
        return _open_ort(source, kind, device or "cpu", precision, input_specs, output_specs, backend_options)
    return _open_trt(source, kind, device or "cuda", precision, input_specs, output_specs, backend_options)


def _export_for_engine(module: Any, input_specs: Any, output_specs: Any, precision: str,
                       options: dict[str, Any]) -> Artifact:
    """Export a module into the artifact cache (reused when its key matches) for ort/trt."""
    inputs, outputs = module_specs(module, input_specs, output_specs)
    export_options = options.pop("export_options", None) or ExportOptions(
        precision=precision if precision in ("fp16", "int8") else "fp32")
    return export_module(module, input_specs=inputs, output_specs=outputs, options=export_options,
                         calibration=options.pop("calibration", None))


def _open_ort(source: Any, kind: str, device: str, precision: str, input_specs: Any, output_specs: Any,
              options: dict[str, Any]) -> Engine:
    engines_open.refuse_bf16("ort", precision)            # before an export, not after it
    provider = options.get("provider") or ("cuda" if device.startswith("cuda") else "cpu")
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
        add_variant(artifact, "fp16")
    return engines_open.open_onnx(artifact.onnx_path(graph_precision), device, precision,
                                  artifact.card.input_specs(), artifact.card.output_specs(), options)


def _load(source: Any) -> Artifact:
    return source if isinstance(source, Artifact) else load_artifact(source)


def _open_trt(source: Any, kind: str, device: str, precision: str, input_specs: Any, output_specs: Any,
              options: dict[str, Any]) -> Engine:
    engines_open.refuse_bf16("trt", precision)
    build = {k: options.pop(k) for k in BUILD_KEYS if k in options}
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
