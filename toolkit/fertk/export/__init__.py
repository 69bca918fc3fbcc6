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
the translator size, all part of the cache key. Heavy imports
(torch, onnx, onnxruntime) happen inside the functions so `import fertk.export` stays light.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fertk.core.specs import argmax_outputs
from fertk.core.errors import ArtifactError, InvalidInputError, OutputExistsError, ParityError

if TYPE_CHECKING:
    from fertk.core.specs import TensorSpec
    from fertk.export.artifacts import Artifact

PRECISIONS = ("fp32", "fp16", "int8")
Progress = Callable[[str], None]


@dataclass
class ExportOptions:
    """How to export (JSON-able). Only opset/exporter/optimize change the graph, so only they key the cache."""

    opset: int = 17
    exporter: str = "torchscript"            # "torchscript" | "dynamo" (see fertk.export.onnx)
    optimize: bool = True                    # onnxscript optimizer pass
    precision: str = "fp32"                  # fp16 / int8 also build that graph variant
    parity_batch: int = 3                    # differs from the traced batch (2) on purpose
    parity_seeds: tuple[int, ...] = (0, 1)
    atol: float | None = None                # override the fp32 tolerance of float outputs
    rtol: float | None = None
    int8_min_agreement: float = 0.9          # classifiers: INT8 vs fp32 argmax agreement required
    calibration_batch: int = 16
    calibration_samples: int = 512
    force: bool = False                      # replace an existing output directory

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"unknown export precision {self.precision!r}", hint="choose " + ", ".join(PRECISIONS))
        if not 13 <= self.opset <= 23:
            raise InvalidInputError(f"opset {self.opset} is outside the supported range 13..23")
        if self.exporter not in ("torchscript", "dynamo"):
            raise InvalidInputError(f"unknown exporter {self.exporter!r}", hint="choose torchscript or dynamo")
        if self.parity_batch < 1 or not self.parity_seeds:
            raise InvalidInputError("parity needs a batch >= 1 and at least one seed")
        self.parity_seeds = tuple(int(s) for s in self.parity_seeds)

    def graph_key(self) -> dict[str, Any]:
        """The options that shape model.onnx."""
        return {"opset": self.opset, "exporter": self.exporter, "optimize": self.optimize}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["parity_seeds"] = list(self.parity_seeds)
        return data


@dataclass
class ModelSource:
    """A module to export and what is known about it."""

    module: Any
    name: str
    input_specs: tuple[TensorSpec, ...]
    output_specs: tuple[TensorSpec, ...]
    task: str = "unknown"
    config: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    weights_sha256: str | None = None
    source: str | None = None
    model_card: dict[str, Any] = field(default_factory=dict)
    # Choices that shape the graph beyond config and weights (sampling, fp16 layers, sizes).
    graph_options: dict[str, Any] = field(default_factory=dict)


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def slug(text: str) -> str:
    """A file-name-safe form of a model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "model"


def specs_of(module: Any, model_card: Mapping[str, Any] | None = None
             ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]] | None:
    """I/O specs from the module's `input_specs`/`output_specs` attributes, else its card; or None."""
    from fertk.core.specs import TensorSpec

    inputs = getattr(module, "input_specs", None)
    outputs = getattr(module, "output_specs", None)
    if inputs and outputs:
        return tuple(inputs), tuple(outputs)
    if model_card and model_card.get("inputs") and model_card.get("outputs"):
        return (tuple(TensorSpec.from_dict(d) for d in model_card["inputs"]),
                tuple(TensorSpec.from_dict(d) for d in model_card["outputs"]))
    return None


def module_source(module: Any, *, name: str | None = None, input_specs: Sequence[TensorSpec] | None = None,
                  output_specs: Sequence[TensorSpec] | None = None, task: str | None = None,
                  ranges: Mapping[str, Sequence[float]] | None = None,
                  model_card: Mapping[str, Any] | None = None) -> ModelSource:
    """Describe an in-memory module for export (specs given, from attributes, or from a card)."""
    card = dict(model_card or {})
    if input_specs is None or output_specs is None:
        found = specs_of(module, card)
        if found is None:
            raise InvalidInputError(
                f"no input/output specs for {type(module).__name__}",
                hint="pass input_specs= and output_specs=, or give the module input_specs/output_specs attributes")
        input_specs = input_specs or found[0]
        output_specs = output_specs or found[1]
    card_ranges = {d["name"]: tuple(d["range"]) for d in card.get("inputs", []) if d.get("range")}
    module_ranges = dict(getattr(module, "input_ranges", None) or {})
    config = card.get("config")
    if config is None:
        cfg = getattr(module, "config", None)
        config = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    return ModelSource(
        module=module, name=name or card.get("name") or slug(type(module).__name__),
        input_specs=tuple(input_specs), output_specs=tuple(output_specs),
        task=task or card.get("task") or getattr(module, "task", None) or "unknown",
        config=dict(config), ranges={**card_ranges, **module_ranges, **dict(ranges or {})},
        weights_sha256=card.get("weights_sha256"), source=card.get("source"), model_card=card,
    )


def resolve_model(model: str, *, weights: str | Path | None = None,
                  config: Mapping[str, Any] | None = None,
                  sampling: Mapping[str, Any] | None = None) -> ModelSource:
    """A registry name (or "pipeline") → the built module and what is known about it.

    `sampling` (stylegan2 only): truncation, truncation_cutoff, noise_mode ('const' | 'none') and
    ws_output of the exported graph (fertk.models.stylegan2.SamplingOptions; default ψ 1, const
    noise, img only).
    """
    from fertk.models.registry import get_entry, list_models

    config = dict(config or {})
    if sampling is not None and model != "stylegan2":
        raise InvalidInputError(
            f"truncation / noise / ws options apply to stylegan2 exports, not {model}",
            hint='the pipeline takes its truncation in --config, e.g. --config \'{"truncation": 0.5, ...}\'')
    if model == "pipeline" and "pipeline" not in list_models():
        return _pipeline_source(weights, config)
    entry = get_entry(model)
    if model == "stylegan2":
        from fertk.models.stylegan2 import SamplingOptions

        options = SamplingOptions(**dict(sampling or {}))  # checked before any weights are read
    module, card = entry.builder(weights=Path(weights) if weights is not None else None, **config)
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


def _stylegan2_source(generator: Any, card: dict[str, Any], options: Any) -> ModelSource:
    """The StyleGAN2 generator wrapped at fixed sampling options, its fp16 layers in float32."""
    from fertk.models.stylegan2 import StyleGAN2Sampler, fp16_layers_choice

    generator.set_fp16_layers(fp16_layers_choice(generator.config.synthesis_kwargs.num_fp16_res, target="export"))
    sampler = StyleGAN2Sampler(generator, options)
    source = module_source(sampler, name="stylegan2", task="generator", model_card=sampler.card(card))
    source.graph_options = {"sampling": options.to_dict(), "fp16_layers": generator.fp16_layers.describe()}
    return source


def _pipeline_source(weights: str | Path | None, config: dict[str, Any]) -> ModelSource:
    from fertk.export.pipeline import PipelineConfig, build_pipeline

    if weights is not None:
        raise InvalidInputError(
            "the pipeline takes its weights from --config, not --weights",
            hint='e.g. --config \'{"generator": "stylegan2", "generator_weights": "G.pkl", '
                 '"translator_weights": "200000-G.ckpt"}\'')
    pipeline = build_pipeline(PipelineConfig.from_dict(config))
    pipeline.set_fp16_layers(target="export")
    card = pipeline.card()
    ranges = {"intensity": (0.0, 1.0)}
    if getattr(pipeline, "latent_kind", None) == "uniform":
        ranges["latent"] = (0.0, 1.0)
    hashes = [c.get("weights_sha256") for c in (card.get("generator"), card.get("translator")) if c]
    return ModelSource(
        module=pipeline, name="pipeline", input_specs=tuple(pipeline.input_specs),
        output_specs=tuple(pipeline.output_specs), task="pipeline", config=card["config"], ranges=ranges,
        weights_sha256=",".join(h for h in hashes if h) or None, source="fertk.export.pipeline",
        model_card=card, graph_options={k: card[k] for k in ("fp16_layers", "translator_size",
                                                              "translator_size_source") if card.get(k) is not None},
    )


def export_model(model: str | Path, *, weights: str | Path | None = None,
                 config: Mapping[str, Any] | None = None, out: str | Path | None = None,
                 options: ExportOptions | None = None, calibration: Any = None,
                 progress: Progress | None = None, sampling: Mapping[str, Any] | None = None) -> Artifact:
    """Export a registry model, the generation pipeline, or a foreign .onnx file to an artifact.

    `sampling` applies to stylegan2 (see resolve_model).
    """
    text = str(model)
    if text.endswith(".onnx") or Path(text).is_file():
        if weights is not None or config or sampling is not None:
            raise InvalidInputError("--weights/--config/sampling options do not apply to an .onnx file")
        return export_onnx_file(text, out=out, options=options, calibration=calibration, progress=progress)
    source = resolve_model(text, weights=weights, config=config, sampling=sampling)
    _say(progress, f"built {source.name} ({type(source.module).__name__}, weights: {source.source or 'n/a'})")
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
    from fertk.export.artifacts import fingerprint

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
    import torch

    if not isinstance(module, torch.nn.Module):
        return []
    from fertk.models.stylegan2 import StyleGAN2Generator, fp16_layers_choice

    changed = []
    for sub in module.modules():
        if isinstance(sub, StyleGAN2Generator) and sub.fp16_layers.enabled:
            changed.append((sub, sub.fp16_layers))
            sub.set_fp16_layers(fp16_layers_choice(sub.config.synthesis_kwargs.num_fp16_res, target="export"))
    return changed


def export_source(source: ModelSource, *, out: str | Path | None = None, options: ExportOptions | None = None,
                  calibration: Any = None, progress: Progress | None = None) -> Artifact:
    """Export a resolved module: ONNX, parity vs PyTorch, variants, card — atomically."""
    from fertk.export.artifacts import artifacts_root, build_atomically, is_artifact_dir, load_artifact

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
        if is_artifact_dir(final) and not options.force:
            existing = load_artifact(final)
            if existing.card.key != key:
                raise OutputExistsError(f"{final} holds an artifact of other weights/config/options "
                                        f"(key {existing.card.key[:12]}, this export {key[:12]})",
                                        hint="pass --force to replace it, or choose another --out")
            _say(progress, f"up to date: {final}")
            if options.precision != "fp32" and options.precision not in existing.card.variants:
                add_variant(existing, options.precision, source=source, calibration=calibration,
                            options=options, progress=progress)
            return existing
        if final.exists() and final.is_dir() and any(final.iterdir()) and not options.force:
            raise OutputExistsError(f"{final} exists and is not a fertk artifact",
                                    hint="pass --force to replace it, or choose another --out")

        def build(staging: Path) -> None:
            _build_artifact(staging, source, key, options, calibration, progress)

        build_atomically(final, build, replace=options.force)
        _say(progress, f"wrote {final}")
        return load_artifact(final)
    finally:
        module.train(was_training)
        for generator, previous in restore:
            generator.set_fp16_layers(previous)


def _cached_dir(root: Path, name: str, key: str) -> Path:
    """The cache directory for `key`: an existing one under any name (same weights exported via
    the registry or via open_engine share it), else `<name>-<key12>`."""
    from fertk.export.artifacts import is_artifact_dir

    if root.is_dir():
        for candidate in sorted(root.glob(f"*-{key[:12]}")):
            if is_artifact_dir(candidate) and not candidate.name.startswith("."):
                return candidate
    return root / f"{name}-{key[:12]}"


def _tolerances(specs: Sequence[TensorSpec], options: ExportOptions) -> dict[str, Any]:
    import numpy as np

    from fertk.engines.compare import FLOAT_TOLERANCES, Tolerance

    if options.atol is None and options.rtol is None:
        return {}
    base = FLOAT_TOLERANCES["fp32"]
    tol = Tolerance(base.atol if options.atol is None else options.atol,
                    base.rtol if options.rtol is None else options.rtol)
    return {s.name: tol for s in specs if np.dtype(s.dtype).kind == "f"}


def _build_artifact(staging: Path, source: ModelSource, key: str, options: ExportOptions, calibration: Any,
                    progress: Progress | None) -> None:
    from fertk.engines.compare import compare_engines
    from fertk.engines.ort_engine import OrtEngine
    from fertk.engines.torch_engine import TorchEngine
    from fertk.export.artifacts import (
        CARD_FILE, VARIANT_FILES, ArtifactCard, library_versions, spec_dicts, utc_now, write_json_atomic,
    )
    from fertk.export.onnx import export_onnx

    _say(progress, f"exporting {source.name} to ONNX (opset {options.opset}, {options.exporter})")
    info = export_onnx(source.module, source.input_specs, source.output_specs, staging / VARIANT_FILES["fp32"],
                       opset=options.opset, exporter=options.exporter, optimize=options.optimize,
                       ranges=source.ranges)
    _say(progress, f"parity: onnxruntime CPU vs PyTorch, batch {options.parity_batch}, "
                   f"seeds {list(options.parity_seeds)}")
    with TorchEngine(source.module, source.input_specs, source.output_specs) as reference, \
            OrtEngine(staging / VARIANT_FILES["fp32"], source.input_specs, source.output_specs) as candidate:
        (report,) = compare_engines(reference, [candidate], batch=options.parity_batch, seeds=options.parity_seeds,
                                    ranges=source.ranges, tolerances=_tolerances(source.output_specs, options),
                                    argmax_outputs=argmax_outputs(source.task, source.output_specs))
    _say(progress, report.summary())
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
        card.variants[options.precision] = _build_variant(
            staging, card, options.precision, source, calibration, options, progress)
    write_json_atomic(staging / CARD_FILE, card.to_dict())


def _jsonable(data: Any) -> Any:
    import json

    return json.loads(json.dumps(data, default=str))


def _build_variant(directory: Path, card: Any, precision: str, source: ModelSource | None, calibration: Any,
                   options: ExportOptions, progress: Progress | None) -> dict[str, Any]:
    """Write model.<precision>.onnx into `directory` and return its card entry (checks included)."""
    from fertk.engines.compare import compare_engines
    from fertk.engines.ort_engine import OrtEngine
    from fertk.export.artifacts import VARIANT_FILES
    from fertk.export.quantize import calibration_feeds, convert_fp16, int8_accuracy, quantize_int8, split_feeds

    fp32 = directory / VARIANT_FILES["fp32"]
    target = directory / VARIANT_FILES[precision]
    staging = target.with_name(f".{target.name}.partial")
    inputs, outputs = card.input_specs(), card.output_specs()
    try:
        if precision == "fp16":
            _say(progress, "converting the graph to fp16 (I/O kept fp32)")
            entry = convert_fp16(fp32, staging)
            entry["file"] = target.name
            reference = _reference_engine(source, fp32, inputs, outputs)
            with reference, OrtEngine(staging, inputs, outputs, precision="fp16") as candidate:
                (report,) = compare_engines(reference, [candidate], batch=options.parity_batch,
                                            seeds=options.parity_seeds, ranges=card.ranges(),
                                            precisions=["fp16"], argmax_outputs=card.argmax_outputs())
            _say(progress, report.summary())
            entry["parity"] = report.to_dict()
            report.raise_if_failed(f"fp16 graph of {card.name}")
        elif precision == "int8":
            if calibration is None:
                raise InvalidInputError("INT8 quantisation needs calibration data",
                                        hint="pass --calib DATASET (a dataset folder, .npy or .npz)")
            feeds = calibration_feeds(calibration, inputs, batch_size=options.calibration_batch,
                                      max_samples=options.calibration_samples, ranges=card.ranges())
            calibrate, evaluate, held_out = split_feeds(feeds)
            _say(progress, f"quantising to INT8 QDQ on {sum(len(next(iter(f.values()))) for f in calibrate)} "
                           f"calibration samples")
            entry = quantize_int8(fp32, staging, calibrate)
            entry["file"] = target.name
            labels = _labels_for(calibration, card, len(feeds) - len(evaluate), options.calibration_batch)
            accuracy = int8_accuracy(fp32, staging, evaluate, argmax_outputs=card.argmax_outputs(),
                                     labels=labels, held_out=held_out)
            entry["accuracy"] = accuracy
            _say(progress, "INT8 vs fp32: " + ", ".join(
                f"{k} {v:.3f}" for k, v in accuracy.items() if isinstance(v, float)))
            agreement = accuracy.get("argmax_agreement")
            if agreement is not None and agreement < options.int8_min_agreement:
                raise ParityError(
                    f"INT8 graph of {card.name} agrees with fp32 on {agreement:.1%} of argmaxes, "
                    f"below the required {options.int8_min_agreement:.0%}",
                    hint="calibrate on more representative data, or use fp16/fp32")
        else:
            raise InvalidInputError(f"no variant for precision {precision!r}")
        staging.replace(target)
        return entry
    finally:
        staging.unlink(missing_ok=True)


def _reference_engine(source: ModelSource | None, fp32: Path, inputs: Any, outputs: Any) -> Any:
    """PyTorch when the module is at hand, else the fp32 graph on ORT CPU."""
    from fertk.engines.ort_engine import OrtEngine
    from fertk.engines.torch_engine import TorchEngine

    if source is not None:
        return TorchEngine(source.module, source.input_specs, source.output_specs)
    return OrtEngine(fp32, inputs, outputs)


def _labels_for(calibration: Any, card: Any, eval_start_batch: int, batch: int) -> Any:
    """Held-out labels of a FaceArrays calibration set whose classes match the model's outputs."""
    if not (hasattr(calibration, "labels") and hasattr(calibration, "classes")):
        return None
    classes = next((o.get("classes") for o in card.model_card.get("outputs", []) if o.get("classes")), None)
    if classes is None or list(classes) != list(calibration.classes):
        return None
    return calibration.labels[eval_start_batch * batch:]


def add_variant(artifact: Artifact, precision: str, *, source: ModelSource | None = None, calibration: Any = None,
                options: ExportOptions | None = None, progress: Progress | None = None) -> Artifact:
    """Add an fp16 or int8 graph to an existing artifact (parity / accuracy recorded in its card)."""
    options = options or ExportOptions(precision=precision)
    entry = _build_variant(artifact.path, artifact.card, precision, source, calibration, options, progress)
    variants = dict(artifact.card.variants)
    variants[precision] = entry
    artifact.update_card(variants=variants)
    return artifact


def export_onnx_file(path: str | Path, *, out: str | Path | None = None, options: ExportOptions | None = None,
                     calibration: Any = None, progress: Progress | None = None) -> Artifact:
    """Wrap an ONNX file from elsewhere in an artifact: specs read from the graph (with a warning,
    since there is no card), checked to run on ORT CPU; no PyTorch parity is possible."""
    import onnx

    from fertk.engines.compare import make_inputs
    from fertk.engines.ort_engine import OrtEngine
    from fertk.export.artifacts import (
        CARD_FILE, VARIANT_FILES, ArtifactCard, artifacts_root, build_atomically, is_artifact_dir,
        library_versions, load_artifact, spec_dicts, utc_now, write_json_atomic,
    )
    from fertk.core.io import sha256_file
    from fertk.export.onnx import opset_of, read_onnx_specs

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
        card = ArtifactCard(
            name=path.stem, architecture="onnx", task="unknown", config={}, key=key,
            inputs=spec_dicts(inputs), outputs=spec_dicts(outputs),
            onnx={"file": target.name, "opset": opset_of(proto), "exporter": "external", "optimizer": None,
                  "nodes": len(proto.graph.node), "size_bytes": target.stat().st_size, "external_data": False,
                  "sha256": sha256_file(target)},
            versions=library_versions(), created=utc_now(), source=str(path.resolve()), parity=None,
            options=options.to_dict(), model_card={"note": "foreign ONNX file: specs read from the graph"},
        )
        if options.precision != "fp32":
            card.variants[options.precision] = _build_variant(staging, card, options.precision, None,
                                                              calibration, options, progress)
        write_json_atomic(staging / CARD_FILE, card.to_dict())

    build_atomically(final, build, replace=options.force)
    return load_artifact(final)


def remove_artifact(path: str | Path) -> None:
    """Delete an artifact directory (only one that has a card.json)."""
    from fertk.export.artifacts import is_artifact_dir

    if not is_artifact_dir(path):
        raise ArtifactError(f"{path} is not a fertk artifact; not removing it")
    shutil.rmtree(path)


__all__ = ["ExportOptions", "ModelSource", "PRECISIONS", "add_variant", "export_model", "export_module",
           "export_onnx_file", "export_source", "module_source", "remove_artifact", "resolve_model", "specs_of"]
