"""The ImageFolder layout: ``<root>/<emotion>/*`` or ``<root>/<split>/<emotion>/*``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fertk.core.emotions import ALL_EMOTIONS, EKMAN, is_emotion
from fertk.core.errors import DatasetError
from fertk.data.layouts.common import Collector, ReadReport, as_tuple, images_in, label_from_word, require_dir, subdirs
from fertk.data.records import FaceRecord


def read_folder(
    root: str | Path,
    *,
    classes: Iterable[str] | str | None = EKMAN,
    keep: Iterable[str] | str = (),
    subject_pattern: str | None = None,
    splits: str | Iterable[str] | None = None,
    source: str = "folder",
) -> tuple[list[FaceRecord], ReadReport]:
    """Read an ImageFolder tree (`<root>/<emotion>/*` or `<root>/<split>/<emotion>/*`)."""
    root = require_dir(root, "folder")
    col = Collector("folder", root, classes, keep)
    pattern = re.compile(subject_pattern) if subject_pattern else None
    wanted_splits = as_tuple(splits)
    for split, emotion_dir in folder_class_dirs(root):
        if wanted_splits is not None and split not in wanted_splits:
            col.report.drop(f"split not selected: {split}", len(images_in(emotion_dir, recursive=True)))
            continue
        label = label_from_word(emotion_dir.name, emotion_dir)
        for path in images_in(emotion_dir, recursive=True):
            if pattern is not None:
                match = pattern.search(path.stem)
                if match is None:
                    raise DatasetError(f"{path}: file name does not match --subject-pattern {subject_pattern!r}",
                                       hint="the pattern (--subject-pattern, Python: subject_pattern=) is searched "
                                            "in the file stem; use a group for the id")
                subject = match.groupdict().get("subject") or (match.group(1) if match.groups() else match.group(0))
            else:
                subject = path.relative_to(root).with_suffix("").as_posix()
            meta: dict[str, Any] = {"folder": emotion_dir.name}
            if split is not None:
                meta["split"] = split
            col.add(label, subject, source, path=path, meta=meta)
    if pattern is None:
        col.report.note("no subject_pattern: each image is its own subject")
    return col.finish("images")


def folder_class_dirs(root: Path) -> list[tuple[str | None, Path]]:
    """(split or None, emotion folder) pairs of an ImageFolder tree, or a DatasetError."""
    top = subdirs(root)
    if not top:
        raise DatasetError(f"{root}: no sub-folders; the folder layout expects <root>/<emotion>/*.png",
                           hint="or <root>/<split>/<emotion>/*.png (e.g. train/test)")
    emotion_named = [d for d in top if is_emotion(d.name)]
    if len(emotion_named) == len(top):
        return [(None, d) for d in top]
    if emotion_named:
        odd = next(d for d in top if not is_emotion(d.name))
        raise DatasetError(f"{odd}: folder name {odd.name!r} is not an emotion",
                           hint="the folder layout expects <root>/<emotion>/*.png; known names: "
                                + ", ".join(ALL_EMOTIONS) + " and common spellings")
    pairs: list[tuple[str | None, Path]] = []
    for split_dir in top:
        inner = subdirs(split_dir)
        bad = [d for d in inner if not is_emotion(d.name)]
        if not inner or bad:
            where = bad[0] if bad else split_dir
            raise DatasetError(f"{where}: expected emotion folders (anger, happy, ...) here",
                               hint="the folder layout is <root>/<emotion>/*.png or <root>/<split>/<emotion>/*.png")
        pairs.extend((split_dir.name, d) for d in inner)
    return pairs
