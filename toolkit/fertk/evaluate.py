"""Metrics for a FER classifier: accuracy, confusion matrices, per-class precision/recall/F1,
macro-F1; JSON + CSV + PNG reports; several test sets (in-database and cross-database) at once.

A classifier is a torch module (`FerCNN` or any module mapping [N, 1, S, S] in [0, 1] to logits)
or an engine-like object with `run({"image": float32[N, 1, S, S]}) -> {"logits": ...}`, so an
exported ONNX / TensorRT engine is evaluated by the same code as the PyTorch reference.
Labels are matched BY NAME between the model's classes and each dataset's classes: a dataset
may hold fewer classes (missing ones get support 0) or extra ones (those samples are excluded
and counted, since the model cannot predict them).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.data.records import FaceArrays
from fertk.core.emotions import EKMAN, is_emotion, normalize_emotion
from fertk.core.errors import CheckpointError, DatasetError, InvalidInputError
from fertk.core.devices import resolve_device
from fertk.core.io import atomic_write_bytes, atomic_write_text

DEFAULT_BATCH = 256


# -- files that appear whole or not at all ---------------------------------------------------------
def save_figure(figure: Any, path: str | Path, *, dpi: int = 120) -> Path:
    """Render a matplotlib Figure to PNG atomically (no pyplot, so no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


# -- inputs -----------------------------------------------------------------------------------------
def faces_to_gray(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 faces [N, H, W] or [N, H, W, 3] (RGB) -> uint8 [N, 1, size, size] gray, resized if needed."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise InvalidInputError(f"faces must be uint8, got {images.dtype}")
    if images.ndim == 4 and images.shape[-1] == 3:
        # ITU-R BT.601 luma, the weights OpenCV's RGB2GRAY uses.
        gray = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        images = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    elif images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise InvalidInputError(f"faces must be [N, H, W] or [N, H, W, 3], got shape {list(images.shape)}")
    if images.shape[1:] != (size, size) and len(images):
        import cv2

        shrink = images.shape[1] >= size and images.shape[2] >= size
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        images = np.stack([cv2.resize(img, (size, size), interpolation=interp) for img in images])
    return np.ascontiguousarray(images.reshape(len(images), 1, size, size))


def map_labels(arrays: FaceArrays, classes: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Dataset labels as indices into `classes` (matched by name); -1 marks classes outside it.

    Returns (indices, excluded) where excluded counts samples per dataset class not in `classes`.
    """
    target = {canonical_class(c): i for i, c in enumerate(classes)}
    lookup = np.array([target.get(canonical_class(c), -1) for c in arrays.classes] + [-1], dtype=np.int64)
    labels = np.asarray(arrays.labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(arrays.classes)):
        raise DatasetError(
            f"{_dataset_name(arrays)}: label index out of range for its {len(arrays.classes)} classes"
        )
    mapped = lookup[labels] if len(labels) else labels.copy()
    excluded: dict[str, int] = {}
    for name, count in zip(arrays.classes, np.bincount(labels, minlength=len(arrays.classes))):
        if target.get(canonical_class(name), -1) < 0 and count:
            excluded[name] = int(count)
    return mapped, excluded


def canonical_class(name: str) -> str:
    """The canonical emotion name for a known spelling; other class names unchanged."""
    return normalize_emotion(name) if is_emotion(name) else name


def _dataset_name(arrays: FaceArrays) -> str:
    for key in ("root", "path", "name"):
        if arrays.meta.get(key):
            return str(arrays.meta[key])
    sources = sorted(set(map(str, arrays.sources)))
    return ",".join(sources[:3]) or "dataset"


# -- running a classifier ---------------------------------------------------------------------------
def classifier_classes(model_or_engine: Any) -> tuple[str, ...] | None:
    """The class list a classifier declares (FerCNN config or an engine's card), if any."""
    if isinstance(model_or_engine, Classifier):
        return model_or_engine.classes
    config = getattr(model_or_engine, "config", None)
    if config is not None and getattr(config, "classes", None):
        return tuple(config.classes)
    card = getattr(model_or_engine, "card", None)
    outputs = getattr(card, "outputs", None) or (card.get("outputs") if isinstance(card, dict) else None)
    for spec in outputs or []:
        if isinstance(spec, Mapping) and spec.get("classes"):
            return tuple(spec["classes"])
    return None


def classifier_input_size(model_or_engine: Any) -> int:
    """The square input side a classifier expects (64 unless it declares otherwise)."""
    if isinstance(model_or_engine, Classifier):
        return model_or_engine.input_size
    config = getattr(model_or_engine, "config", None)
    if config is not None and getattr(config, "input_size", None):
        return int(config.input_size)
    for spec in getattr(model_or_engine, "input_specs", ()) or ():
        if isinstance(spec.shape[-1], int):
            return int(spec.shape[-1])
    return 64


def predict_logits(model_or_engine: Any, faces: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Logits [N, K] for uint8 gray faces [N, 1, S, S], through a torch module or an engine."""
    import torch

    if isinstance(model_or_engine, Classifier):
        model_or_engine = model_or_engine.runner
    chunks: list[np.ndarray] = []
    if isinstance(model_or_engine, torch.nn.Module):
        model = model_or_engine
        was_training = model.training
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        try:
            with torch.inference_mode():
                for start in range(0, len(faces), batch_size):
                    x = torch.from_numpy(faces[start:start + batch_size]).to(device).float().div_(255.0)
                    chunks.append(model(x).float().cpu().numpy())
        finally:
            model.train(was_training)
    elif callable(getattr(model_or_engine, "run", None)):
        # An engine names its own input/output; "image" -> "logits" is the FER CNN's contract.
        in_specs = getattr(model_or_engine, "input_specs", None) or ()
        out_specs = getattr(model_or_engine, "output_specs", None) or ()
        in_name = in_specs[0].name if in_specs else "image"
        in_dtype = np.dtype(in_specs[0].dtype) if in_specs else np.dtype(np.float32)
        out_names = [spec.name for spec in out_specs]
        out_name = "logits" if "logits" in out_names or not out_names else out_names[0]
        for start in range(0, len(faces), batch_size):
            x = (faces[start:start + batch_size].astype(np.float32) / np.float32(255.0)).astype(in_dtype)
            out = model_or_engine.run({in_name: x})
            logits = out[out_name] if isinstance(out, Mapping) else out
            if hasattr(logits, "detach"):
                logits = logits.detach().float().cpu().numpy()
            chunks.append(np.asarray(logits, dtype=np.float32))
    else:
        raise InvalidInputError(
            f"cannot evaluate a {type(model_or_engine).__name__}",
            hint="pass a torch module or an engine with run({'image': ...}) -> {'logits': ...}",
        )
    if not chunks:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(chunks)


# -- opening a classifier and reading test sets -----------------------------------------------------
@dataclass
class Classifier:
    """A FER classifier ready to score faces: a torch module or an engine, its classes and input side."""

    runner: Any                 # torch.nn.Module or an engine with run({...}) -> {...}
    classes: tuple[str, ...]
    input_size: int
    source: str                 # the file or directory it came from
    backend: str                # "torch" for the PyTorch reference, else the engine's backend
    card: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Where it came from and how it runs (for report `info`)."""
        return {"source": self.source, "backend": self.backend, "classes": list(self.classes),
                "input_size": self.input_size, "variant": self.card.get("config", {}).get("variant")}

    def close(self) -> None:
        """Release an engine (no-op for a torch module)."""
        close = getattr(self.runner, "close", None)
        if callable(close) and not hasattr(self.runner, "state_dict"):
            close()


def open_classifier(path: str | Path, *, backend: str = "torch", device: str = "cpu",
                    variant: str | None = None, classes: Sequence[str] | None = None) -> Classifier:
    """Open a FER CNN from a run directory / .safetensors (PyTorch, or exported on the fly for
    backend ort/trt) or an exported artifact directory / .onnx (through `fertk.engines`).

    `variant` and `classes` are expectations: a checkpoint that differs is a CheckpointError
    naming the file and what was expected.
    """
    from fertk.models.fer_cnn import card_path_for, load_fer_model
    from fertk.models.weights import STATE_DICT_SUFFIXES

    path = Path(path).expanduser()
    want_classes = tuple(canonical_class(c) for c in classes) if classes else None
    if not path.exists():
        raise CheckpointError(f"model not found: {path}",
                              hint="pass a training run directory, a model.safetensors or an exported artifact")
    weights = path / "model.safetensors" if path.is_dir() else path
    if weights.suffix in STATE_DICT_SUFFIXES and weights.is_file():
        model, card = load_fer_model(weights, variant=variant, classes=want_classes)
        if device != "cpu" and backend == "torch":
            model.to(resolve_device(device))
        card_dict = card.to_dict()
        if not card_path_for(weights).is_file():
            card_dict.setdefault("extra", {})["note"] = "no JSON card beside the weights; config read from the file"
        runner: Any = model
        used = "torch"
        if backend != "torch":
            from fertk.export import open_engine
            from fertk.core.specs import TensorSpec

            runner = open_engine(model, backend=backend,
                                 device=None if device == "cpu" and backend in ("trt", "auto") else device,
                                 input_specs=[TensorSpec.from_dict(spec) for spec in card.inputs],
                                 output_specs=[TensorSpec.from_dict(spec) for spec in card.outputs])
            used = getattr(runner, "backend", backend)
        return Classifier(runner, tuple(model.config.classes), int(model.config.input_size), str(weights), used, card_dict)
    if path.is_dir() and (path / "card.json").is_file() or path.suffix == ".onnx":
        return _open_exported(path, backend=backend, device=device, variant=variant, classes=want_classes)
    raise CheckpointError(f"{path} is not a FER model: expected a run directory with model.safetensors, "
                          "a .safetensors (or .pt / .ckpt state dict) file, an exported artifact directory "
                          "or an .onnx file")


def _open_exported(path: Path, *, backend: str, device: str, variant: str | None,
                   classes: tuple[str, ...] | None) -> Classifier:
    """An exported FER CNN through the engine layer; its card gives the classes and input side."""
    from fertk.export import open_engine

    card_file = path / "card.json" if path.is_dir() else path.with_suffix(".json")
    card: dict[str, Any] = {}
    if card_file.is_file():
        try:
            card = json.loads(card_file.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{card_file} is not readable JSON ({exc})",
                                  hint="re-export the model with fertk export") from None
        if not isinstance(card, dict) or not isinstance(card.get("config", {}), dict):
            raise CheckpointError(f"{card_file} is not a fertk artifact card (not a JSON object with a config)",
                                  hint="re-export the model with fertk export")
    config = dict(card.get("config", {}))
    declared = tuple(config.get("classes") or ()) or next(
        (tuple(o["classes"]) for o in card.get("outputs", []) if isinstance(o, Mapping) and o.get("classes")), ())
    if not declared:
        raise CheckpointError(f"{path} does not declare its classes (no card with config.classes)",
                              hint="evaluate the .safetensors it was exported from, or re-export it with fertk export")
    if variant is not None and config.get("variant", variant) != variant:
        raise CheckpointError(f"{path} is a {config.get('variant')!r} FER CNN, expected {variant!r}")
    if classes is not None and tuple(declared) != classes:
        raise CheckpointError(f"{path} predicts classes {list(declared)}, expected {list(classes)}")
    engine = open_engine(path, backend="auto" if backend == "torch" else backend,
                         device=None if device == "cpu" and backend in ("torch", "auto") else device)
    size = int(config.get("input_size") or classifier_input_size(engine))
    return Classifier(engine, tuple(declared), size, str(path), getattr(engine, "backend", backend), card)


def open_judge(spec: str | Path, *, backend: str = "torch", device: str = "cpu",
               card: str | Path | None = None) -> Classifier:
    """A judge (`fertk.models.judges`: alias, Keras .h5, .onnx + card, fertk run) as a Classifier:
    it takes faces in [0, 1] and returns logits like the FER CNN, its card's classes by name."""
    from fertk.models.judges import judge_io, load_judge

    judge = load_judge(spec, card=card)
    describe = {**judge.model_card().to_dict(), "judge": judge.describe()}
    if judge.module is not None:
        runner: Any = judge.module
        used = "torch"
        if backend != "torch" or device != "cpu":
            from fertk.export import open_engine
            from fertk.core.specs import TensorSpec

            inputs, outputs = judge_io(judge.card)
            runner = open_engine(judge.module, backend=backend, device=device,
                                 input_specs=[TensorSpec.from_dict(d) for d in inputs],
                                 output_specs=[TensorSpec.from_dict(d) for d in outputs])
            used = getattr(runner, "backend", backend)
    else:
        from fertk.export import open_engine
        from fertk.core.specs import TensorSpec

        inputs, outputs = judge_io(judge.card)
        runner = open_engine(judge.onnx_path, backend="trt" if backend == "trt" else "ort",
                             device=None if device == "cpu" else device,
                             input_specs=[TensorSpec.from_dict(d) for d in inputs],
                             output_specs=[TensorSpec.from_dict(d) for d in outputs])
        used = getattr(runner, "backend", "ort")
    return Classifier(runner, judge.classes, judge.input_size, str(judge.path), used, describe)


@dataclass
class DatasetOptions:
    """How datasets are read for training or evaluation (layout, classes, face detection)."""

    layout: str = "auto"                  # auto | folder | rafd | ckplus | oulu | mmi | affectnet | fer2013
    classes: tuple[str, ...] = EKMAN      # classes to keep (others are dropped by the reader, counted)
    detect: str = "auto"                  # face finding: auto | haar | box | none (pre-cropped faces)
    margin: float = 0.2                   # crop margin around the detected face
    fallback_center: bool = False         # no face found -> centred square instead of skipping
    subject_pattern: str | None = None    # folder layout: regex on the file stem giving the subject id
    strict: bool = False                  # an unreadable image is an error instead of skipped + counted
    cache_dir: str | None = None          # preprocessing cache; None = the user cache directory

    def __post_init__(self) -> None:
        self.classes = tuple(canonical_class(c) for c in self.classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = dict(self.__dict__)
        data["classes"] = list(self.classes)
        return data

    def load(self, path: str | Path, *, size: int = 64, progress: bool = False) -> FaceArrays:
        """Read and preprocess one dataset (any layout, or a `fertk synth` output) to FaceArrays."""
        from fertk.data.datasets import is_synth_dataset, load_arrays
        from fertk.data.preprocess import PreprocessConfig

        path = Path(path).expanduser()
        options: dict[str, Any] = {}
        if self.subject_pattern and not is_synth_dataset(path):
            options["subject_pattern"] = self.subject_pattern
        arrays = load_arrays(
            path, layout=self.layout, classes=self.classes,
            preprocess=PreprocessConfig(size=size, detect=self.detect, margin=self.margin,
                                        fallback_center=self.fallback_center),
            cache_dir=self.cache_dir, strict=self.strict, progress=progress, **options)
        arrays.meta.setdefault("path", str(path))
        if len(arrays) == 0:
            raise DatasetError(f"{path}: the dataset is empty (no face of classes {list(self.classes)})")
        return arrays


def dataset_info(arrays: FaceArrays) -> dict[str, Any]:
    """Where a dataset came from and what reading it dropped: path, layout, counts, skipped files."""
    info: dict[str, Any] = {}
    for key in ("path", "root", "layout"):
        if arrays.meta.get(key):
            info[key] = arrays.meta[key]
    pre = arrays.meta.get("preprocess_report") or {}
    read = arrays.meta.get("read_report") or {}
    if pre:
        info["unreadable"] = int(pre.get("unreadable", 0))
        info["no_face"] = int(pre.get("no_face", 0))
        if pre.get("unreadable_keys"):
            info["unreadable_files"] = list(pre["unreadable_keys"])[:20]
    if read.get("dropped"):
        info["dropped"] = dict(read["dropped"])
    return info


def dataset_name(path: str | Path) -> str:
    """A short name for a dataset path (its folder or file stem)."""
    path = Path(path).expanduser()
    return (path.stem if path.is_file() else path.name) or str(path)


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
                   classes: Sequence[str] | None = None, progress: bool = False,
                   batch_size: int = DEFAULT_BATCH, judge: str | Path | None = None) -> EvalRun:
    """`fertk eval`: open the model (or `judge`, then model_path is unused), read each dataset with
    the model's classes, score, write reports."""
    if not datasets:
        raise InvalidInputError("no test dataset given", hint="fertk eval MODEL DATASET [DATASET ...]")
    if judge is not None:
        classifier = open_judge(judge, backend=backend, device=device)
    else:
        classifier = open_classifier(model_path, backend=backend, device=device, variant=variant, classes=classes)
    try:
        options = options or DatasetOptions()
        read = DatasetOptions(**{**options.__dict__, "classes": classifier.classes})
        names = _unique_stems([dataset_name(p) for p in datasets])
        reports = [evaluate(classifier, read.load(path, size=classifier.input_size, progress=progress),
                            name=name, batch_size=batch_size)
                   for name, path in zip(names, datasets)]
    finally:
        classifier.close()
    run = EvalRun(classifier.describe(), reports)
    if out_dir is not None:
        run.files = write_reports(reports, out_dir)
    return run


# -- metrics ----------------------------------------------------------------------------------------
@dataclass
class ClassMetrics:
    """One row of the per-class table; precision is None when nothing was predicted as the class,
    recall and F1 are None when the test set holds no sample of it."""

    name: str
    support: int
    predicted: int
    precision: float | None
    recall: float | None
    f1: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dict(self.__dict__)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [K, K]: rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape:
        raise InvalidInputError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    for name, y in (("true", y_true), ("predicted", y_pred)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise InvalidInputError(f"{name} label outside 0..{num_classes - 1}")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def class_metrics(confusion: np.ndarray, classes: Sequence[str]) -> list[ClassMetrics]:
    """Per-class precision / recall / F1 / support from a confusion matrix of counts."""
    confusion = np.asarray(confusion, np.int64)
    rows: list[ClassMetrics] = []
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        support = int(confusion[i].sum())
        predicted = int(confusion[:, i].sum())
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        if recall is None:
            f1 = None
        elif tp == 0:
            f1 = 0.0  # present but never found: an F1 of 0, whether or not it was ever predicted
        else:
            f1 = 2 * precision * recall / (precision + recall)
        rows.append(ClassMetrics(name, support, predicted, precision, recall, f1))
    return rows


@dataclass
class EvalReport:
    """Metrics of one classifier on one test set, all derived from the confusion matrix of counts.

    `excluded` counts test samples whose class the model does not have (not scored);
    macro-F1 and mean recall average over the classes present in the test set (support > 0).
    """

    name: str
    classes: tuple[str, ...]
    confusion: np.ndarray
    excluded: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        self.confusion = np.asarray(self.confusion, np.int64)
        k = len(self.classes)
        if self.confusion.shape != (k, k):
            raise InvalidInputError(f"confusion matrix shape {self.confusion.shape} does not fit {k} classes")

    @property
    def n(self) -> int:
        """Scored samples."""
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        """Fraction of scored samples predicted correctly."""
        return float(np.trace(self.confusion) / self.n) if self.n else float("nan")

    @property
    def confusion_normalized(self) -> np.ndarray:
        """Row-normalised confusion (each true class sums to 1; rows of absent classes stay 0)."""
        support = self.confusion.sum(axis=1, keepdims=True)
        return np.divide(self.confusion, support, out=np.zeros(self.confusion.shape), where=support > 0)

    @property
    def per_class(self) -> list[ClassMetrics]:
        """Precision / recall / F1 / support per model class."""
        return class_metrics(self.confusion, self.classes)

    @property
    def present_classes(self) -> tuple[str, ...]:
        """Model classes with at least one test sample."""
        return tuple(m.name for m in self.per_class if m.support)

    @property
    def absent_classes(self) -> tuple[str, ...]:
        """Model classes with no sample in the test set: accuracy and macro-F1 say nothing about them."""
        return tuple(name for name, support in zip(self.classes, self.confusion.sum(axis=1)) if not support)

    @property
    def macro_f1(self) -> float:
        """Unweighted mean F1 over classes present in the test set."""
        scores = [m.f1 for m in self.per_class if m.f1 is not None]
        return float(np.mean(scores)) if scores else float("nan")

    @property
    def mean_recall(self) -> float:
        """Unweighted mean recall over present classes (balanced accuracy)."""
        scores = [m.recall for m in self.per_class if m.recall is not None]
        return float(np.mean(scores)) if scores else float("nan")

    def summary(self) -> dict[str, Any]:
        """The headline numbers: name, n, accuracy, macro-F1, mean recall, excluded, absent classes."""
        return {"name": self.name, "n": self.n, "accuracy": self.accuracy, "macro_f1": self.macro_f1,
                "mean_recall": self.mean_recall, "excluded": dict(self.excluded),
                "absent_classes": list(self.absent_classes)}

    def absent_warning(self) -> str | None:
        """One line for a test set lacking some of the model's classes (None when all are present)."""
        if not self.absent_classes:
            return None
        present = self.present_classes
        return (f"{self.name}: no sample of {len(self.absent_classes)} of the model's {len(self.classes)} classes "
                f"({', '.join(self.absent_classes)}); accuracy and macro-F1 cover only "
                f"{', '.join(present) if present else 'no class'}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with every metric."""
        return {
            **self.summary(),
            "classes": list(self.classes),
            "present_classes": list(self.present_classes),
            "confusion": self.confusion.tolist(),
            "confusion_normalized": self.confusion_normalized.round(6).tolist(),
            "per_class": [m.to_dict() for m in self.per_class],
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalReport":
        """Inverse of to_dict (derived numbers are recomputed from the confusion counts)."""
        return cls(str(data["name"]), tuple(data["classes"]), np.asarray(data["confusion"], np.int64),
                   dict(data.get("excluded", {})), dict(data.get("info", {})))


def evaluate(model_or_engine: Any, arrays: FaceArrays, classes: Sequence[str] | None = None, *,
             name: str | None = None, batch_size: int = DEFAULT_BATCH,
             input_size: int | None = None) -> EvalReport:
    """Score a classifier on a dataset; `classes` are the model's outputs in order (read off a
    FerCNN or an engine card when omitted). Dataset labels are matched to them by name."""
    classes = tuple(classes) if classes is not None else classifier_classes(model_or_engine)
    if not classes:
        raise InvalidInputError("the classifier does not declare its classes; pass classes=[...]")
    name = name or _dataset_name(arrays)
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


# -- reports ----------------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _csv_text(rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def safe_name(name: str) -> str:
    """A file-name-safe version of a test-set name."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.strip())
    return cleaned.strip("._") or "test"


def write_report(report: EvalReport, out_dir: str | Path, name: str | None = None) -> dict[str, Path]:
    """Write `<name>.json`, confusion CSVs (counts, row-normalised), per-class CSV and two PNGs."""
    out_dir = Path(out_dir)
    stem = safe_name(name or report.name)
    header = ["true\\predicted", *report.classes]
    paths = {
        "json": atomic_write_text(out_dir / f"{stem}.json", json.dumps(report.to_dict(), indent=2) + "\n"),
        "confusion_csv": atomic_write_text(out_dir / f"{stem}_confusion.csv", _csv_text(
            [header] + [[c, *map(int, row)] for c, row in zip(report.classes, report.confusion)])),
        "confusion_normalized_csv": atomic_write_text(out_dir / f"{stem}_confusion_normalized.csv", _csv_text(
            [header] + [[c, *(f"{v:.6f}" for v in row)] for c, row in zip(report.classes, report.confusion_normalized)])),
        "per_class_csv": atomic_write_text(out_dir / f"{stem}_per_class.csv", _csv_text(
            [["class", "support", "predicted", "precision", "recall", "f1"]]
            + [[m.name, m.support, m.predicted, _fmt(m.precision), _fmt(m.recall), _fmt(m.f1)] for m in report.per_class])),
        "confusion_png": save_figure(confusion_figure(report), out_dir / f"{stem}_confusion.png"),
        "per_class_png": save_figure(per_class_figure(report), out_dir / f"{stem}_per_class.png"),
    }
    return paths


def write_reports(reports: Sequence[EvalReport], out_dir: str | Path) -> dict[str, Any]:
    """Write every report plus `summary.json` / `summary.csv` (one row per test set); return paths."""
    out_dir = Path(out_dir)
    stems = _unique_stems([r.name for r in reports])
    files = {stem: write_report(report, out_dir, stem) for stem, report in zip(stems, reports)}
    rows = [r.summary() for r in reports]
    summary_csv = atomic_write_text(out_dir / "summary.csv", _csv_text(
        [["name", "n", "accuracy", "macro_f1", "mean_recall", "excluded", "absent_classes"]]
        + [[r["name"], r["n"], _fmt(r["accuracy"]), _fmt(r["macro_f1"]), _fmt(r["mean_recall"]),
            ";".join(f"{k}={v}" for k, v in r["excluded"].items()), ";".join(r["absent_classes"])] for r in rows]))
    summary_json = atomic_write_text(out_dir / "summary.json", json.dumps(
        {"reports": rows, "files": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in files.items()}},
        indent=2, default=_nan_safe) + "\n")
    return {"summary_json": summary_json, "summary_csv": summary_csv, "reports": files}


def _unique_stems(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for name in names:
        stem = safe_name(name)
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def _nan_safe(obj: Any) -> Any:
    return str(obj)


def confusion_figure(report: EvalReport) -> Any:
    """Heat map of the row-normalised confusion matrix, each cell labelled with count and share."""
    from matplotlib.figure import Figure

    k = len(report.classes)
    side = max(4.0, 0.9 * k + 2.0)
    fig = Figure(figsize=(side, side * 0.85))
    ax = fig.add_subplot()
    norm = report.confusion_normalized
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(k):
        for j in range(k):
            count = int(report.confusion[i, j])
            colour = "white" if norm[i, j] > 0.55 else "black"
            ax.text(j, i, f"{count}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(k), report.classes, rotation=45, ha="right")
    ax.set_yticks(range(k), report.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report.name}: accuracy {report.accuracy:.1%}, macro-F1 {report.macro_f1:.3f} (n={report.n})")
    return fig


def per_class_figure(report: EvalReport) -> Any:
    """Grouped bars of precision, recall and F1 per class (absent classes left empty)."""
    from matplotlib.figure import Figure

    k = len(report.classes)
    fig = Figure(figsize=(max(5.0, 1.1 * k + 2.0), 3.6))
    ax = fig.add_subplot()
    x = np.arange(k)
    width = 0.27
    rows = report.per_class
    for offset, metric in zip((-width, 0.0, width), ("precision", "recall", "f1")):
        values = [getattr(m, metric) if getattr(m, metric) is not None else np.nan for m in rows]
        ax.bar(x + offset, values, width, label=metric)
    ax.set_xticks(x, [f"{m.name}\n(n={m.support})" for m in rows], fontsize=8)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("score")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), fontsize=8, ncols=3, frameon=False)
    ax.set_title(f"{report.name}: per-class scores", pad=24)
    return fig
