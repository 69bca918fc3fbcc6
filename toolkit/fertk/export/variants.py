"""Reduced-precision variants of an artifact's graph: fp16 (parity-checked) and INT8 (accuracy-checked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fertk.core.errors import InvalidInputError, ParityError
from fertk.core.progress import Progress, say
from fertk.engines.compare import compare_engines
from fertk.engines.ort_engine import OrtEngine
from fertk.engines.torch_engine import TorchEngine
from fertk.export.artifacts import VARIANT_FILES, Artifact, ArtifactCard
from fertk.export.options import ExportOptions, ModelSource
from fertk.export.quantize import calibration_feeds, convert_fp16, int8_accuracy, quantize_int8, split_feeds


def build_variant(directory: Path, card: ArtifactCard, precision: str, source: ModelSource | None,
                  calibration: Any, options: ExportOptions, progress: Progress | None) -> dict[str, Any]:
    """Write model.<precision>.onnx into `directory` and return its card entry (checks included)."""
    fp32 = directory / VARIANT_FILES["fp32"]
    target = directory / VARIANT_FILES[precision]
    staging = target.with_name(f".{target.name}.partial")
    try:
        if precision == "fp16":
            entry = _fp16_variant(fp32, staging, card, source, options, progress)
        elif precision == "int8":
            entry = _int8_variant(fp32, staging, card, calibration, options, progress)
        else:
            raise InvalidInputError(f"no variant for precision {precision!r}")
        entry["file"] = target.name
        staging.replace(target)
        return entry
    finally:
        staging.unlink(missing_ok=True)


def _fp16_variant(fp32: Path, staging: Path, card: ArtifactCard, source: ModelSource | None,
                  options: ExportOptions, progress: Progress | None) -> dict[str, Any]:
    """The fp16 graph (I/O kept fp32), checked against PyTorch (or the fp32 graph) at fp16 tolerances."""
    inputs, outputs = card.input_specs(), card.output_specs()
    say(progress, "converting the graph to fp16 (I/O kept fp32)")
    entry = convert_fp16(fp32, staging)
    reference = _reference_engine(source, fp32, inputs, outputs)
    with reference, OrtEngine(staging, inputs, outputs, precision="fp16") as candidate:
        (report,) = compare_engines(reference, [candidate], batch=options.parity_batch,
                                    seeds=options.parity_seeds, ranges=card.ranges(),
                                    precisions=["fp16"], argmax_outputs=card.argmax_outputs())
    say(progress, report.summary())
    entry["parity"] = report.to_dict()
    report.raise_if_failed(f"fp16 graph of {card.name}")
    return entry


def _int8_variant(fp32: Path, staging: Path, card: ArtifactCard, calibration: Any, options: ExportOptions,
                  progress: Progress | None) -> dict[str, Any]:
    """The INT8 QDQ graph, calibrated on `calibration`, its argmax agreement with fp32 gated."""
    if calibration is None:
        raise InvalidInputError("INT8 quantisation needs calibration data",
                                hint="pass --calib DATASET (a dataset folder, .npy or .npz)")
    feeds = calibration_feeds(calibration, card.input_specs(), batch_size=options.calibration_batch,
                              max_samples=options.calibration_samples, ranges=card.ranges())
    calibrate, evaluate, held_out = split_feeds(feeds)
    say(progress, f"quantising to INT8 QDQ on {sum(len(next(iter(f.values()))) for f in calibrate)} "
                  f"calibration samples")
    entry = quantize_int8(fp32, staging, calibrate)
    labels = _labels_for(calibration, card, len(feeds) - len(evaluate), options.calibration_batch)
    accuracy = int8_accuracy(fp32, staging, evaluate, argmax_outputs=card.argmax_outputs(),
                             labels=labels, held_out=held_out)
    entry["accuracy"] = accuracy
    say(progress, "INT8 vs fp32: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items() if isinstance(v, float)))
    agreement = accuracy.get("argmax_agreement")
    if agreement is not None and agreement < options.int8_min_agreement:
        raise ParityError(
            f"INT8 graph of {card.name} agrees with fp32 on {agreement:.1%} of argmaxes, "
            f"below the required {options.int8_min_agreement:.0%}",
            hint="calibrate on more representative data, or use fp16/fp32")
    return entry


def _reference_engine(source: ModelSource | None, fp32: Path, inputs: Any, outputs: Any) -> TorchEngine | OrtEngine:
    """PyTorch when the module is at hand, else the fp32 graph on ORT CPU."""
    if source is not None:
        return TorchEngine(source.module, source.input_specs, source.output_specs)
    return OrtEngine(fp32, inputs, outputs)


def _labels_for(calibration: Any, card: ArtifactCard, eval_start_batch: int, batch: int) -> Any:
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
    entry = build_variant(artifact.path, artifact.card, precision, source, calibration, options, progress)
    variants = dict(artifact.card.variants)
    variants[precision] = entry
    artifact.update_card(variants=variants)
    return artifact
