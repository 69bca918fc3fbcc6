"""How a dataset is read for training or evaluation (`DatasetOptions`), and what reading it reported.

Class names are compared in their canonical spelling (`canonical_class`): "Happy", "happy" and
"happiness" are one class; names that are no emotion stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fertk.core.emotions import EKMAN, is_emotion, normalize_emotion
from fertk.core.errors import DatasetError
from fertk.core.progress import Progress
from fertk.data.datasets import is_synth_dataset, load_arrays
from fertk.data.preprocess import PreprocessConfig
from fertk.data.records import FaceArrays


def canonical_class(name: str) -> str:
    """The canonical emotion name for a known spelling; other class names unchanged."""
    return normalize_emotion(name) if is_emotion(name) else name


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

    def with_classes(self, classes: tuple[str, ...]) -> "DatasetOptions":
        """The same options keeping `classes` (e.g. a model's classes)."""
        return DatasetOptions(**{**self.__dict__, "classes": classes})

    def load(self, path: str | Path, *, size: int = 64, progress: Progress | None = None) -> FaceArrays:
        """Read and preprocess one dataset (any layout, or a `fertk synth` output) to FaceArrays."""
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


def arrays_name(arrays: FaceArrays) -> str:
    """A name for a loaded dataset in messages: its root, path or name, else its sources."""
    for key in ("root", "path", "name"):
        if arrays.meta.get(key):
            return str(arrays.meta[key])
    sources = sorted(set(map(str, arrays.sources)))
    return ",".join(sources[:3]) or "dataset"


def unique_names(names: list[str] | tuple[str, ...], taken: set[str]) -> list[str]:
    """`names` with `_2`, `_3`, ... appended where one is already taken (`taken` grows)."""
    out = []
    for name in names:
        candidate, k = name, 2
        while candidate in taken:
            candidate, k = f"{name}_{k}", k + 1
        taken.add(candidate)
        out.append(candidate)
    return out
