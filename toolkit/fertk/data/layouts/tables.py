"""Datasets stored as csv tables: FER2013 (48x48 pixels inline) and AffectNet (image paths + face boxes)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.emotions import AFFECTNET_CODES, EKMAN, FER2013_CODES
from fertk.core.errors import DatasetError
from fertk.data.layouts.common import Collector, ReadReport, as_tuple, code_label, require_dir
from fertk.data.records import FaceRecord

# ---------------------------------------------------------------------------------------------
# affectnet: training.csv / validation.csv + Manually_Annotated_Images/

AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                     "facial_landmarks", "expression", "valence", "arousal")
AFFECTNET_NON_EMOTIONS = {8: "None", 9: "Uncertain", 10: "No-Face"}
_AFFECTNET_IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images",
                         "Manually_Annotated")


def read_affectnet(
    root: str | Path,
    *,
    classes: Iterable[str] | str | None = EKMAN,
    keep: Iterable[str] | str = (),
    splits: str | Iterable[str] | None = ("training", "validation"),
    images_dir: str | Path | None = None,
    landmarks: bool = False,
    source: str = "affectnet",
) -> tuple[list[FaceRecord], ReadReport]:
    """Read AffectNet's csv files; the face box is kept in meta["face_box"] for box cropping."""
    root = Path(root).expanduser()
    if root.is_file():
        csv_files, base = [root], root.parent
    else:
        base = require_dir(root, "affectnet")
        wanted = as_tuple(splits) or ("training", "validation")
        csv_files = [base / f"{name}.csv" for name in wanted if (base / f"{name}.csv").is_file()]
        if not csv_files:
            raise DatasetError(f"{base}: none of {', '.join(n + '.csv' for n in wanted)} found",
                               hint="AffectNet expects training.csv / validation.csv beside Manually_Annotated_Images/")
    if images_dir is None:
        image_root = next((base / d for d in _AFFECTNET_IMAGE_DIRS if (base / d).is_dir()), base)
    else:
        image_root = Path(images_dir).expanduser()
    col = Collector("affectnet", base, classes, keep)
    col.report.note("AffectNet has no subject ids: each image is its own subject")
    for csv_path in csv_files:
        _read_affectnet_csv(col, csv_path, image_root, source, landmarks)
    return col.finish("AffectNet rows")


def _read_affectnet_csv(col: Collector, csv_path: Path, image_root: Path, source: str, landmarks: bool) -> None:
    """Add the rows of one AffectNet csv file to `col`."""
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("subDirectory_filePath", "expression") if c not in header]
        if missing:
            raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing)}",
                               hint="expected AffectNet columns " + ",".join(AFFECTNET_COLUMNS))
        col_of = {name: i for i, name in enumerate(header)}
        for line, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            where = f"{csv_path}:{line}"
            raw = row[col_of["expression"]].strip()
            if not raw.lstrip("-").isdigit():
                raise DatasetError(f"{where}: expression {raw!r} is not an integer code",
                                   hint="AffectNet codes are 0-7 (emotions) and 8-10 (None, Uncertain, No-Face)")
            code = int(raw)
            if code in AFFECTNET_NON_EMOTIONS:
                col.report.drop(f"not an emotion: {AFFECTNET_NON_EMOTIONS[code]}")
                continue
            label = code_label(AFFECTNET_CODES, raw, where, "AffectNet")
            rel = row[col_of["subDirectory_filePath"]].strip()
            meta: dict[str, Any] = {"split": csv_path.stem, "line": line, "expression": code}
            meta.update(_affectnet_meta(row, col_of, where, landmarks))
            col.add(label, rel, source, path=image_root / rel, meta=meta)


def _affectnet_meta(row: list[str], col_of: dict[str, int], where: str, landmarks: bool) -> dict[str, Any]:
    """A row's face box, valence / arousal and (when asked for) landmarks."""
    meta: dict[str, Any] = {}
    box = _affectnet_box(row, col_of, where)
    if box is not None:
        meta["face_box"] = box
    for name in ("valence", "arousal"):
        if name in col_of and row[col_of[name]].strip():
            meta[name] = float(row[col_of[name]])
    if landmarks and "facial_landmarks" in col_of and row[col_of["facial_landmarks"]].strip():
        values = [float(v) for v in row[col_of["facial_landmarks"]].split(";") if v.strip()]
        meta["landmarks"] = np.asarray(values, np.float32).reshape(-1, 2)
    return meta


def _affectnet_box(row: list[str], col_of: dict[str, int], where: str) -> tuple[int, int, int, int] | None:
    names = ("face_x", "face_y", "face_width", "face_height")
    if not all(n in col_of for n in names):
        return None
    try:
        x, y, w, h = (int(float(row[col_of[n]])) for n in names)
    except ValueError:
        raise DatasetError(f"{where}: face box {[row[col_of[n]] for n in names]} is not numeric") from None
    if w <= 0 or h <= 0:
        raise DatasetError(f"{where}: face box has width {w} and height {h}; expected positive sizes")
    return (x, y, w, h)


# ---------------------------------------------------------------------------------------------
# fer2013: fer2013.csv with emotion,pixels,Usage

FER2013_FILES = ("fer2013.csv", "icml_face_data.csv", "train.csv")


def read_fer2013(
    root: str | Path,
    *,
    classes: Iterable[str] | str | None = EKMAN,
    keep: Iterable[str] | str = (),
    usages: str | Iterable[str] | None = None,
    source: str = "fer2013",
) -> tuple[list[FaceRecord], ReadReport]:
    """Read fer2013.csv: 48×48 gray faces inline (FaceRecord.pixels), Usage as meta["split"]."""
    path = Path(root).expanduser()
    if path.is_dir():
        found = next((path / n for n in FER2013_FILES if (path / n).is_file()), None)
        if found is None:
            raise DatasetError(f"{path}: no fer2013.csv found", hint="pass the csv file or the folder holding it")
        path = found
    elif not path.is_file():
        raise DatasetError(f"dataset root not found: {path}", hint="pass fer2013.csv or the folder holding it")
    col = Collector("fer2013", path, classes, keep)
    col.report.note("FER2013 has no subject ids: each row is its own subject")
    want_usages = as_tuple(usages)
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = [h.strip().lower() for h in next(reader, [])]
        if "emotion" not in header or "pixels" not in header:
            raise DatasetError(f"{path}: expected columns emotion,pixels,Usage, found {','.join(header) or 'none'}",
                               hint="FER2013's test.csv has no labels; use fer2013.csv or train.csv")
        i_emotion, i_pixels = header.index("emotion"), header.index("pixels")
        i_usage = header.index("usage") if "usage" in header else None
        for index, row in enumerate(reader):
            if not row or not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{index + 2}"
            label = code_label(FER2013_CODES, row[i_emotion], where, "FER2013")
            usage = row[i_usage].strip() if i_usage is not None else None
            if want_usages is not None and usage not in want_usages:
                col.report.drop(f"usage not selected: {usage}")
                continue
            if label not in col.classes:
                col.report.drop(f"class not kept: {label}")
                continue
            pixels = _fer_pixels(row[i_pixels], where)
            meta: dict[str, Any] = {"index": index, "file": str(path), "aligned": True}
            if usage is not None:
                meta["split"] = usage
            col.add(label, str(index), source, pixels=pixels, meta=meta)
    return col.finish("FER2013 rows")


def _fer_pixels(text: str, where: str) -> np.ndarray:
    try:
        values = np.array(text.split(), dtype=np.int32)
    except ValueError:
        raise DatasetError(f"{where}: pixels are not space-separated integers") from None
    side = int(round(len(values) ** 0.5))
    if side * side != len(values) or side == 0 or values.min() < 0 or values.max() > 255:
        raise DatasetError(f"{where}: {len(values)} pixel values; expected a square gray image (48×48 = 2304) of 0-255")
    return values.astype(np.uint8).reshape(side, side)
