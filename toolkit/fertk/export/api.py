"""Export: PyTorch models → ONNX artifacts with a card and a parity report; fp16/int8 variants.

    from fertk.export import export_model, export_module, ExportOptions
    artifact = export_model("fer-cnn")                      # registry name → cached artifact
    artifact = export_model("stargan", weights="200000-G.ckpt", out="artifacts/stargan")
    artifact = export_model("stylegan2", weights="G.pkl", sampling={"truncation": 0.5, "noise_mode": "none"})
    artifact = export_module(my_module, name="tiny", input_specs=..., output_specs=...)

Every export runs the new graph through ONNX Runtime CPU on fresh seeded inputs (at a batch size
other than the one traced) against the PyTorch module, records the per-output errors in the card,
and raises ParityError — leaving no artifact behind — when they exceed tolerance. StyleGAN2
layers a snapshot marks half precision (num_fp16_res) are exported in float32 (the graph is fp32;
see fertk.models.stylegan2.fp16_layers_choice) and the decision is recorded in the card's
`graph_options`, with the StyleGAN2 sampling options (truncation, cutoff, noise, ws output) and
the translator size, all part of the cache key. Heavy imports (onnx, onnxruntime) happen inside
the functions that need them.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fertk.core.errors import ArtifactError, InvalidInputError, OutputExistsError
from fertk.core.io import sha256_file
from fertk.core.progress import Progress, say
from fertk.core.specs import TensorSpec, argmax_outputs
from fertk.engines.base import module_specs
from fertk.engines.compare import FLOAT_TOLERANCES, Tolerance, compare_engines, make_inputs
from fertk.engines.ort_engine import OrtEngine
from fertk.engines.torch_engine import TorchEngine
from fertk.export.artifacts import (
    CARD_FILE, VARIANT_FILES, Artifact, ArtifactCard, artifacts_root, build_atomically, fingerprint, is_artifact_dir,
    library_versions, load_artifact, spec_dicts, utc_now, write_json_atomic,
)
from fertk.export.onnx import export_onnx, opset_of, read_onnx_specs
from fertk.export.options import ExportOptions, ModelSource, slug
from fertk.export.variants import add_variant, build_variant
from fertk.models.pipeline import GenerationPipeline
from fertk.models.registry import get_entry
from fertk.models.stylegan2 import SamplingOptions, StyleGAN2Generator, StyleGAN2Sampler, fp16_layers_choice


# -- what to export ---------------------------------------------------------------------------------
def module_source(module: Any, *, name: str | None = None, input_specs: Sequence[TensorSpec] | None = None,
                  output_specs: Sequence[TensorSpec] | None = None, task: str | None = None,
                  ranges: Mapping[str, Sequence[float]] | None = None,
                  model_card: Mapping[str, Any] | None = None) -> ModelSource:
    """Describe an in-memory module for export (specs given, from attributes, or from a card)."""
    card = dict(model_card or {})
    inputs, outputs = module_specs(module, input_specs, output_specs, card)
    card_ranges = {d["name"]: tuple(d["range"]) for d in card.get("inputs", []) if d.get("range")}
    module_ranges = dict(getattr(module, "input_ranges", None) or {})
    config = card.get("config")
    if config is None:
        cfg = getattr(module, "config", None)
        config = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    return ModelSource(
        module=module, name=name or card.get("name") or slug(type(module).__name__),
        input_specs=inputs, output_specs=outputs,
        task=task or card.get("task") or getattr(module, "task", None) or "unknown",
        config=dict(config), ranges={**card_ranges, **module_ranges, **dict(ranges or {})},
        weights_sha256=card.get("weights_sha256"), source=card.get("source"), model_card=card,
    )


def resolve_model(model: str, *, weights: str | Path | None = None,
                  config: Mapping[str, Any] | None = None,
                  sampling: Mapping[str, Any] | None = None) -> ModelSource:
    """A registry name → the built module and what is known about it.

    `sampling` (stylegan2 only): truncation, truncation_cutoff, noise_mode ('const' | 'none') and
    ws_output of the exported graph (fertk.models.stylegan2.SamplingOptions; default ψ 1, const
    noise, img only).
    """
    config = dict(config or {})
    if sampling is not None and model != "stylegan2":
        raise InvalidInputError(
            f"truncation / noise / ws options apply to stylegan2 exports, not {model}",
            hint='the pipeline takes its truncation in --config, e.g. --config \'{"truncation": 0.5, ...}\'')
    entry = get_entry(model)
    if model == "stylegan2":
        options = SamplingOptions(**dict(sampling or {}))  # checked before any weights are read
    module, card = entry.builder(weights=Path(weights) if weights is not None else None, **config)
    if isinstance(module, GenerationPipeline):
        return _pipeline_source(module)
    card_dict = card.to_dict() if hasattr(card, "to_dict") else dict(card)
    card_dict.setdefault("task", entry.task)
    if model == "stylegan2":
        return _stylegan2_source(module, card_dict, options)
    graph_options = {}
    if model == "stargan":
        graph_options["translator_size"] = card_dict.get("config", {}).get("image_size")
        graph_options["translator_size_source"] = card_dict.get("extra", {}).get("image_size_source")
    source = module_source(module, name=model, task=entry.task, model_card=card_dict)
    source.graph_options = {k: v for k, v in graph_options.items() if v is not None}
    return source


def _stylegan2_source(generator: Any, card: dict[str, Any], options: SamplingOptions) -> ModelSource:
    """The StyleGAN2 generator wrapped at fixed sampling options, its fp16 layers in float32."""
    generator.set_fp16_layers(fp16_layers_choice(generator.config.synthesis_kwargs.num_fp16_res, target="export"))
    sampler = StyleGAN2Sampler(generator, options)
    source = module_source(sampler, name="stylegan2", task="generator", model_card=sampler.card(card))
    source.graph_options = {"sampling": options.to_dict(), "fp16_layers": generator.fp16_layers.describe()}
    return source


def _pipeline_source(pipeline: GenerationPipeline) -> ModelSource:
    """The generation pipeline with its StyleGAN2 half-precision layers (if any) in float32."""
    if pipeline.config.translator_precision:
        raise InvalidInputError(
            f"translator_precision {pipeline.config.translator_precision!r} runs StarGAN under torch autocast, "
            "which an ONNX graph cannot carry (onnxruntime has no bf16 convolutions on CPU)",
            hint="export the pipeline without translator_precision; `fertk synth --translator-precision bf16` "
                 "runs StyleGAN2 exported and StarGAN on torch")
    pipeline.set_fp16_layers(target="export")
    card = pipeline.card()
    return ModelSource(
        module=pipeline, name="pipeline", input_specs=tuple(pipeline.input_specs),
        output_specs=tuple(pipeline.output_specs), task="pipeline", config=card["config"],
        ranges=pipeline.value_ranges(), weights_sha256=pipeline.model_card().weights_sha256,
        source="fertk.models.pipeline", model_card=card,
        graph_options={k: card[k] for k in ("fp16_layers", "translator_size", "translator_size_source")
                       if card.get(k) is not None},
    )


# -- exporting --------------------------------------------------------------------------------------
def export_model(model: str | Path, *, weights: str | Path | None = None,
                 config: Mapping[str, Any] | None = None, out: str | Path | None = None,
                 options: ExportOptions | None = None, calibration: Any = None,
                 progress: Progress | None = None, sampling: Mapping[str, Any] | None = None) -> Artifact:
    """Export a registry model (the generation pipeline included) or a foreign .onnx file to an artifact.

    `sampling` applies to stylegan2 (see resolve_model).
    """
    text = str(model)
    if text.endswith(".onnx") or Path(text).is_file():
        if weights is not None or config or sampling is not None:
            raise InvalidInputError("--weights/--config/sampling options do not apply to an .onnx file")
        return export_onnx_file(text, out=out, options=options, calibration=calibration, progress=progress)
    source = resolve_model(text, weights=weights, config=config, sampling=sampling)
    say(progress, f"built {source.name} ({type(source.module).__name__}, weights: {source.source or 'n/a'})")
    return export_source(source, out=out, options=options, calibration=calibration, progress=progress)


def export_module(module: Any, *, name: str | None = None, input_specs: Sequence[TensorSpec] | None = None,
                  output_specs: Sequence[TensorSpec] | None = None, task: str | None = None,
                  ranges: Mapping[str, Sequence[float]] | None = None,
                  model_card: Mapping[str, Any] | None = None, out: str | Path | None = None,
                  options: ExportOptions | None = None, calibration: Any = None,
                  progress: Progress | None = None) -> Artifact:
    """Export an in-memory nn.Module (specs given, or from its attributes/card) to an artifact."""
    source = module_source(module, name=name, input_specs=input_specs, output_specs=output_specs, task=task,
                           ranges=ranges, model_card=model_card)
    return export_source(source, out=out, options=options, calibration=calibration, progress=progress)


def artifact_key(source: ModelSource, options: ExportOptions) -> str:
    """Cache key: the module's weights, config and specs, and the graph-shaping options."""
    extra = {
        "config": source.config,
        "inputs": [s.to_dict() for s in source.input_specs],
        "outputs": [s.to_dict() for s in source.output_specs],
        **options.graph_key(),
    }
    if source.graph_options:  # absent when empty, so keys of other models stay as they were
        extra["graph_options"] = source.graph_options
    return fingerprint(source.module, extra)


def _fp32_half_layers(module: Any) -> list[tuple[Any, Any]]:
    """Put every StyleGAN2 generator in `module` on fp32 half-precision layers (an exported
    graph is fp32); returns (generator, previous decision) pairs to restore."""
    if not isinstance(module, torch.nn.Module):
        return []
    changed = []
    for sub in module.modules():
        if isinstance(sub, StyleGAN2Generator) and sub.fp16_layers.enabled:
            changed.append((sub, sub.fp16_layers))
            sub.set_fp16_layers(fp16_layers_choice(sub.config.synthesis_kwargs.num_fp16_res, target="export"))
    return changed


def export_source(source: ModelSource, *, out: str | Path | None = None, options: ExportOptions | None = None,
                  calibration: Any = None, progress: Progress | None = None) -> Artifact:
    """Export a resolved module: ONNX, parity vs PyTorch, variants, card — atomically."""
    options = options or ExportOptions()
    module = source.module
    was_training = bool(getattr(module, "training", False))
    module.eval()
    restore = _fp32_half_layers(module)
    if restore:
        source.graph_options = {**source.graph_options,
                                "fp16_layers": restore[0][0].fp16_layers.describe()}
    try:
        key = artifact_key(source, options)
        final = Path(out) if out is not None else _cached_dir(artifacts_root(), slug(source.name), key)
        existing = _existing(final, key, options)
        if existing is not None:
            say(progress, f"up to date: {final}")
            if options.precision != "fp32" and options.precision not in existing.card.variants:
                add_variant(existing, options.precision, source=source, calibration=calibration,
                            options=options, progress=progress)
            return existing

        def build(staging: Path) -> None:
            _build_artifact(staging, source, key, options, calibration, progress)

        build_atomically(final, build, replace=options.force)
        say(progress, f"wrote {final}")
        return load_artifact(final)
    finally:
        module.train(was_training)
        for generator, previous in restore:
            generator.set_fp16_layers(previous)


def _existing(final: Path, key: str, options: ExportOptions) -> Artifact | None:
    """The artifact already at `final` when it has this key (None: build it); OutputExistsError when
    `final` holds something else and --force is not given."""
    if is_artifact_dir(final) and not options.force:
        existing = load_artifact(final)
        if existing.card.key != key:
            raise OutputExistsError(f"{final} holds an artifact of other weights/config/options "
                                    f"(key {existing.card.key[:12]}, this export {key[:12]})",
                                    hint="pass --force to replace it, or choose another --out")
        return existing
    if final.exists() and final.is_dir() and any(final.iterdir()) and not options.force:
        raise OutputExistsError(f"{final} exists and is not a fertk artifact",
                                hint="pass --force to replace it, or choose another --out")
    return None


def _cached_dir(root: Path, name: str, key: str) -> Path:
    """The cache directory for `key`: an existing one under any name (same weights exported via
    the registry or via open_engine share it), else `<name>-<key12>`."""
    if root.is_dir():
        for candidate in sorted(root.glob(f"*-{key[:12]}")):
            if is_artifact_dir(candidate) and not candidate.name.startswith("."):
                return candidate
    return root / f"{name}-{key[:12]}"


def _tolerances(specs: Sequence[TensorSpec], options: ExportOptions) -> dict[str, Any]:
    if options.atol is None and options.rtol is None:
        return {}
    base = FLOAT_TOLERANCES["fp32"]
    tol = Tolerance(base.atol if options.atol is None else options.atol,
                    base.rtol if options.rtol is None else options.rtol)
    return {s.name: tol for s in specs if np.dtype(s.dtype).kind == "f"}


def _build_artifact(staging: Path, source: ModelSource, key: str, options: ExportOptions, calibration: Any,
                    progress: Progress | None) -> None:
    say(progress, f"exporting {source.name} to ONNX (opset {options.opset}, {options.exporter})")
    info = export_onnx(source.module, source.input_specs, source.output_specs, staging / VARIANT_FILES["fp32"],
                       opset=options.opset, exporter=options.exporter, optimize=options.optimize,
                       ranges=source.ranges)
    say(progress, f"parity: onnxruntime CPU vs PyTorch, batch {options.parity_batch}, "
                  f"seeds {list(options.parity_seeds)}")
    with TorchEngine(source.module, source.input_specs, source.output_specs) as reference, \
            OrtEngine(staging / VARIANT_FILES["fp32"], source.input_specs, source.output_specs) as candidate:
        (report,) = compare_engines(reference, [candidate], batch=options.parity_batch, seeds=options.parity_seeds,
                                    ranges=source.ranges, tolerances=_tolerances(source.output_specs, options),
                                    argmax_outputs=argmax_outputs(source.task, source.output_specs))
    say(progress, report.summary())
    report.raise_if_failed(f"export of {source.name}")
    onnx_info = info.to_dict()
    onnx_info["file"] = Path(onnx_info.pop("path")).name
    card = ArtifactCard(
        name=source.name, architecture=type(source.module).__name__, task=source.task, config=source.config,
        key=key, inputs=spec_dicts(source.input_specs, source.ranges), outputs=spec_dicts(source.output_specs),
        onnx=onnx_info, versions=library_versions(), created=utc_now(), weights_sha256=source.weights_sha256,
        source=source.source, parity=report.to_dict(), options=options.to_dict(),
        model_card=_jsonable(source.model_card), graph_options=_jsonable(source.graph_options),
    )
    if options.precision != "fp32":
        card.variants[options.precision] = build_variant(
            staging, card, options.precision, source, calibration, options, progress)
    write_json_atomic(staging / CARD_FILE, card.to_dict())


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


# -- foreign ONNX files -----------------------------------------------------------------------------
def export_onnx_file(path: str | Path, *, out: str | Path | None = None, options: ExportOptions | None = None,
                     calibration: Any = None, progress: Progress | None = None) -> Artifact:
    """Wrap an ONNX file from elsewhere in an artifact: specs read from the graph (with a warning,
    since there is no card), checked to run on ORT CPU; no PyTorch parity is possible."""
    options = options or ExportOptions()
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"ONNX file {path} does not exist")
    inputs, outputs = read_onnx_specs(path)
    warnings.warn(f"{path.name} has no fertk card: I/O specs read from the graph "
                  f"({', '.join(s.name + ' ' + s.describe() for s in inputs)}); no PyTorch parity check",
                  UserWarning, stacklevel=2)
    key = sha256_file(path)
    final = Path(out) if out is not None else artifacts_root() / f"{slug(path.stem)}-{key[:12]}"
    if is_artifact_dir(final) and not options.force:
        existing = load_artifact(final)
        if existing.card.key == key:
            if options.precision != "fp32" and options.precision not in existing.card.variants:
                add_variant(existing, options.precision, calibration=calibration, options=options, progress=progress)
            return existing
        raise OutputExistsError(f"{final} holds another artifact", hint="pass --force or choose another --out")

    def build(staging: Path) -> None:
        card = _wrap_foreign(path, staging, key, inputs, outputs, options)
        if options.precision != "fp32":
            card.variants[options.precision] = build_variant(staging, card, options.precision, None,
                                                             calibration, options, progress)
        write_json_atomic(staging / CARD_FILE, card.to_dict())

    build_atomically(final, build, replace=options.force)
    return load_artifact(final)


def _wrap_foreign(path: Path, staging: Path, key: str, inputs: tuple[TensorSpec, ...],
                  outputs: tuple[TensorSpec, ...], options: ExportOptions) -> ArtifactCard:
    """Copy a foreign graph into `staging` (checked, run once on ORT CPU) and describe it in a card."""
    import onnx

    proto = onnx.load(str(path))  # external data, if any, is pulled in and re-saved inline
    target = staging / VARIANT_FILES["fp32"]
    onnx.save_model(proto, str(target))
    try:
        onnx.checker.check_model(str(target), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    with OrtEngine(target, inputs, outputs) as engine:
        engine.run(make_inputs(inputs, 2, 0, dims={d: 2 for s in inputs for d in s.shape
                                                   if isinstance(d, str) and d != "batch"}))
    return ArtifactCard(
        name=path.stem, architecture="onnx", task="unknown", config={}, key=key,
        inputs=spec_dicts(inputs), outputs=spec_dicts(outputs),
        onnx={"file": target.name, "opset": opset_of(proto), "exporter": "external", "optimizer": None,
              "nodes": len(proto.graph.node), "size_bytes": target.stat().st_size, "external_data": False,
              "sha256": sha256_file(target)},
        versions=library_versions(), created=utc_now(), source=str(path.resolve()), parity=None,
        options=options.to_dict(), model_card={"note": "foreign ONNX file: specs read from the graph"},
    )


def remove_artifact(path: str | Path) -> None:
    """Delete an artifact directory (only one that has a card.json)."""
    if not is_artifact_dir(path):
        raise ArtifactError(f"{path} is not a fertk artifact; not removing it")
    shutil.rmtree(path)
