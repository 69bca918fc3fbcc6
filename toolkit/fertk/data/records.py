"""The one record type every dataset reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Containers a record's `path` may name instead of an image (a frame of it: meta["frame"]).
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv")


@dataclass(frozen=True)
class FaceRecord:
    """One labelled face: where its pixels are, its canonical emotion, who it is, where from.

    Exactly one of `path` (an image file) or `pixels` (an HxW or HxWx3 uint8 array, for datasets
    stored inline such as FER2013's csv) is set.
    """

    label: str
    subject: str
    source: str
    path: Path | None = None
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.pixels is None):
            raise ValueError("FaceRecord needs exactly one of path or pixels")

    @property
    def key(self) -> str:
        """A stable identifier: the file path, or source/subject/index for inline pixels."""
        if self.path is not None:
            return str(self.path)
        return f"{self.source}:{self.subject}:{self.meta.get('index', '')}"


def sample_key(record: FaceRecord) -> str:
    """A record's identity in FaceArrays.keys and split manifests (video frames get '#frame=N')."""
    key = record.key
    if record.path is not None and Path(record.path).suffix.lower() in VIDEO_SUFFIXES:
        key += f"#frame={int(record.meta.get('frame', 0))}"
    return key


@dataclass
class FaceArrays:
    """A dataset in memory: preprocessed uint8 faces with integer labels over `classes`.

    images: [N, H, W] (gray) or [N, H, W, 3] uint8; labels: [N] int64 indices into classes;
    subjects / sources / keys: per-sample strings (subject ids drive disjoint splits).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    subjects: np.ndarray
    sources: np.ndarray
    keys: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if not (len(self.labels) == len(self.subjects) == len(self.sources) == n):
            raise ValueError("FaceArrays fields must have the same length")
        if self.images.dtype != np.uint8:
            raise ValueError(f"FaceArrays images must be uint8, got {self.images.dtype}")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "FaceArrays":
        """Rows selected by an integer or boolean index."""
        index = np.asarray(index)
        keys = [self.keys[i] for i in np.flatnonzero(index)] if index.dtype == bool else [
            self.keys[i] for i in index] if self.keys else []
        return FaceArrays(self.images[index], self.labels[index], self.classes,
                          self.subjects[index], self.sources[index], keys, dict(self.meta))

    def class_counts(self) -> dict[str, int]:
        """Samples per class name."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}
