"""Metrics of a FER classifier on a test set, all derived from the confusion matrix of counts:
accuracy, per-class precision / recall / F1, macro-F1, mean recall."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fertk.core.errors import InvalidInputError


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
