"""What every layout reader shares: the read report, the class filter, and tree-walk helpers."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.emotions import EKMAN, normalize_emotion, parse_emotions
from fertk.core.errors import DatasetError, InvalidInputError
from fertk.data.records import FaceRecord

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
# Folders a tree walk never enters (OS and archive-tool debris).
SKIP_DIRS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN"})


@dataclass
class ReadReport:
    """What a reader kept and dropped (and why), in counts; JSON-able via `to_dict()`."""

    layout: str
    root: str
    classes: tuple[str, ...]
    kept: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    subjects: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, count: int = 1) -> None:
        """Count `count` items dropped for `reason`."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def note(self, text: str) -> None:
        """Record a remark once (e.g. "AffectNet has no subject ids")."""
        if text not in self.notes:
            self.notes.append(text)

    def finish(self, records: Sequence[FaceRecord]) -> None:
        """Fill the kept/class/subject counts from the final record list."""
        self.kept = len(records)
        counts = Counter(r.label for r in records)
        self.class_counts = {c: counts.get(c, 0) for c in self.classes}
        self.subjects = len({(r.source, r.subject) for r in records})

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        out = asdict(self)
        out["classes"] = list(self.classes)
        return out

    def summary(self) -> str:
        """One line: kept, subjects, and each drop reason with its count."""
        drops = "; ".join(f"{reason}: {n}" for reason, n in sorted(self.dropped.items()))
        return (f"{self.layout} {self.root}: kept {self.kept} faces of {self.subjects} subjects"
                + (f"; dropped {drops}" if drops else ""))


def resolve_classes(classes: Iterable[str] | str | None = EKMAN, keep: Iterable[str] | str = ()) -> tuple[str, ...]:
    """The kept class list: `classes` in the given order, then any `keep` extras (canonical names)."""
    base = EKMAN if classes is None else classes
    items = base.split(",") if isinstance(base, str) else list(base)
    extra = keep.split(",") if isinstance(keep, str) else list(keep)
    names = [str(name) for name in items + extra if str(name).strip()]
    if not names:
        raise InvalidInputError("no classes to keep",
                                hint="e.g. --classes anger,happiness (Python: classes=EKMAN or keep=('neutral',))")
    return parse_emotions(names)


class Collector:
    """Applies the class filter and counts drops while a reader walks its dataset."""

    def __init__(self, layout: str, root: Path, classes: Iterable[str] | str | None, keep: Iterable[str] | str):
        self.classes = resolve_classes(classes, keep)
        self.report = ReadReport(layout=layout, root=str(root), classes=self.classes)
        self.records: list[FaceRecord] = []

    def add(self, label: str, subject: str, source: str, *, path: Path | None = None,
            pixels: np.ndarray | None = None, meta: dict[str, Any] | None = None) -> None:
        """Keep one face if its label is a kept class, else count it dropped."""
        if label not in self.classes:
            self.report.drop(f"class not kept: {label}")
            return
        self.records.append(FaceRecord(label=label, subject=subject, source=source, path=path,
                                       pixels=pixels, meta=meta or {}))

    def finish(self, what: str) -> tuple[list[FaceRecord], ReadReport]:
        """(records, report), or a DatasetError saying what was dropped when nothing is left."""
        if not self.records:
            dropped = "; ".join(f"{k}: {v}" for k, v in sorted(self.report.dropped.items()))
            raise DatasetError(
                f"{self.report.root}: no {what} left to read for classes {', '.join(self.classes)}"
                + (f" (dropped {dropped})" if dropped else ""),
                hint=f"check the {self.report.layout} layout (--layout, Python: layout=) and the classes "
                     "(--classes, Python: classes=)",
            )
        self.report.finish(self.records)
        return self.records, self.report


# ---------------------------------------------------------------------------------------------
# Small helpers


def require_dir(root: str | Path, layout: str) -> Path:
    """`root` as a Path, or a DatasetError when it is missing or not a folder."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset root not found: {root}", hint=f"pass the folder holding the {layout} dataset")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; the {layout} layout expects a folder")
    return root


def visible(path: Path) -> bool:
    """Not hidden and not OS / archive debris."""
    return not path.name.startswith(".") and path.name not in SKIP_DIRS


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and visible(p))


def is_image(path: Path) -> bool:
    """A visible file with an image suffix."""
    return path.suffix.lower() in IMAGE_SUFFIXES and visible(path) and path.is_file()


def images_in(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (and below it, skipping hidden folders), in natural order."""
    if recursive:
        found = [p for p in folder.rglob("*") if is_image(p)
                 and not any(part.startswith(".") or part in SKIP_DIRS for part in p.relative_to(folder).parts)]
    else:
        found = [p for p in folder.iterdir() if is_image(p)]
    return sorted(found, key=natural_key)


def natural_key(path: Path) -> list[Any]:
    """Sort key that orders numbers by value."""
    # Frame files are numbered, sometimes without zero padding ("2.png" before "10.png").
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", str(path))]


def label_from_word(word: str, where: Path) -> str:
    """Canonical emotion for a dataset's own word, or a DatasetError naming the file."""
    try:
        return normalize_emotion(word)
    except InvalidInputError as exc:
        raise DatasetError(f"{where}: {exc}", hint=exc.hint) from None


def code_label(codes: dict[int, str], raw: str, where: str, dataset: str) -> str:
    """Canonical emotion for a dataset's numeric code, or a DatasetError naming the place."""
    try:
        value = float(raw)
    except ValueError:
        raise DatasetError(f"{where}: emotion code {raw.strip()!r} is not a number",
                           hint=f"expected one of the {dataset} codes {sorted(codes)}") from None
    if value != int(value) or int(value) not in codes:
        raise DatasetError(f"{where}: unknown {dataset} emotion code {raw.strip()!r}",
                           hint=f"expected one of {', '.join(f'{k}={v}' for k, v in sorted(codes.items()))}")
    return codes[int(value)]


def pick_frames(count: int, how_many: int, where: str) -> list[int]:
    """Indices of the last `how_many` frames (`where` = "last") or the middle ones ("middle")."""
    how_many = max(1, min(how_many, count))
    if where == "last":
        return list(range(count - how_many, count))
    start = max(0, min(count - how_many, (count - how_many + 1) // 2))
    return list(range(start, start + how_many))


def check_peak_frames(peak_frames: int) -> int:
    """`peak_frames`, or InvalidInputError when it is not a positive integer."""
    if not isinstance(peak_frames, int) or peak_frames < 1:
        raise InvalidInputError(f"peak_frames must be a positive integer, got {peak_frames!r}")
    return peak_frames


def as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """A comma-separated string or an iterable as a tuple of strings (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)
