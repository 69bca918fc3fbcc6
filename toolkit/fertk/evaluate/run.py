"""Scoring a classifier on datasets: one test set (`evaluate`), several (`evaluate_sets`), and
`fertk eval`'s whole job from paths (`evaluate_paths`: open, read, score, write reports).

Labels are matched BY NAME between the model's classes and each dataset's classes: a dataset
may hold fewer classes (missing ones get support 0) or extra ones (those samples are excluded
and counted, since the model cannot predict them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fertk.core.errors import CheckpointError, DatasetError, InvalidInputError
from fertk.core.progress import Progress, emit
from fertk.data.convert import faces_to_gray, map_labels
from fertk.data.options import DatasetOptions, arrays_name, dataset_info, dataset_name
from fertk.data.records import FaceArrays
from fertk.engines import open_engine
from fertk.evaluate.classifier import (DEFAULT_BATCH, Classifier, EngineOpener, classifier_classes, classifier_input_size,
                                       open_classifier, open_judge, predict_logits)
from fertk.evaluate.metrics import EvalReport, confusion_matrix
from fertk.evaluate.reports import unique_stems, write_reports


def evaluate(model_or_engine: Any, arrays: FaceArrays, classes: Sequence[str] | None = None, *,
             name: str | None = None, batch_size: int = DEFAULT_BATCH,
             input_size: int | None = None) -> EvalReport:
    """Score a classifier on a dataset; `classes` are the model's outputs in order (read off a
    FerCNN or an engine card when omitted). Dataset labels are matched to them by name."""
    classes = tuple(classes) if classes is not None else classifier_classes(model_or_engine)
    if not classes:
        raise InvalidInputError("the classifier does not declare its classes; pass classes=[...]")
    name = name or arrays_name(arrays)
    if len(arrays) == 0:
        raise DatasetError(f"{name}: the test set is empty")
    mapped, excluded = map_labels(arrays, classes)
    keep = mapped >= 0
    if not keep.any():
        raise DatasetError(
            f"{name}: none of its classes {list(arrays.classes)} is one the model predicts {list(classes)}"
        )
    size = input_size or classifier_input_size(model_or_engine)
    faces = faces_to_gray(arrays.images[keep] if not keep.all() else arrays.images, size)
    logits = predict_logits(model_or_engine, faces, batch_size=batch_size)
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise CheckpointError(
            f"the classifier returns logits of shape {list(logits.shape)}, expected [N, {len(classes)}] "
            f"for classes {list(classes)}"
        )
    predictions = logits.argmax(axis=1)
    confusion = confusion_matrix(mapped[keep], predictions, len(classes))
    info = {"samples": int(len(arrays)), "scored": int(keep.sum()), **dataset_info(arrays)}
    if isinstance(model_or_engine, Classifier):
        info["model"] = model_or_engine.describe()
    return EvalReport(name, classes, confusion, excluded, info)


def evaluate_sets(model_or_engine: Any, test_sets: Mapping[str, FaceArrays],
                  classes: Sequence[str] | None = None, **kwargs: Any) -> list[EvalReport]:
    """`evaluate` on several named test sets (e.g. the held-out split plus cross-database sets)."""
    return [evaluate(model_or_engine, arrays, classes, name=name, **kwargs) for name, arrays in test_sets.items()]


@dataclass
class EvalRun:
    """The reports of one model on several test sets and the files written for them."""

    model: dict[str, Any]
    reports: list[EvalReport]
    files: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: model, one summary per test set, every metric, the files."""
        return {"model": self.model, "results": [r.to_dict() for r in self.reports],
                "files": json.loads(json.dumps(self.files, default=str))}


def evaluate_paths(model_path: str | Path, datasets: Sequence[str | Path], *,
                   options: DatasetOptions | None = None, out_dir: str | Path | None = None,
                   backend: str = "torch", device: str = "cpu", variant: str | None = None,
                   classes: Sequence[str] | None = None, progress: Progress | None = None,
                   batch_size: int = DEFAULT_BATCH, judge: str | Path | None = None,
                   opener: EngineOpener = open_engine) -> EvalRun:
    """`fertk eval`: open the model (or `judge`, then model_path is unused), read each dataset with
    the model's classes, score, write reports; `progress` gets a "scored" event per test set; `opener`
    turns the model into an engine (pass `fertk.export.open_engine` to export a module for ort/trt)."""
    if not datasets:
        raise InvalidInputError("no test dataset given", hint="fertk eval MODEL DATASET [DATASET ...]")
    if judge is not None:
        classifier = open_judge(judge, backend=backend, device=device, opener=opener)
    else:
        classifier = open_classifier(model_path, backend=backend, device=device, variant=variant, classes=classes,
                                     opener=opener)
    try:
        read = (options or DatasetOptions()).with_classes(classifier.classes)
        names = unique_stems([dataset_name(p) for p in datasets])
        reports = []
        for name, path in zip(names, datasets):
            arrays = read.load(path, size=classifier.input_size, progress=progress)
            reports.append(evaluate(classifier, arrays, name=name, batch_size=batch_size))
            emit(progress, "scored", f"{name}: accuracy {reports[-1].accuracy:.1%} (n={reports[-1].n})",
                 done=len(reports), total=len(datasets), unit="test sets", accuracy=reports[-1].accuracy)
    finally:
        classifier.close()
    run = EvalRun(classifier.describe(), reports)
    if out_dir is not None:
        run.files = write_reports(reports, out_dir)
    return run
