"""`read_records`: any layout by name, or guessed by `detect_layout` (a `fertk synth` output
included: one rule, `fertk.data.shards.is_synth_dataset`)."""

from __future__ import annotations

import csv
import inspect
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fertk.core.errors import DatasetError, InvalidInputError
from fertk.data.layouts.common import ReadReport, subdirs, visible
from fertk.data.layouts.folder import folder_class_dirs, read_folder
from fertk.data.layouts.lab import RAFD_NAME, find_named_dir, oulu_subject_dirs, read_ckplus, read_mmi, read_oulu, \
    read_rafd
from fertk.data.layouts.tables import FER2013_FILES, read_affectnet, read_fer2013
from fertk.data.records import FaceRecord
from fertk.data.shards import CARD_FILE, is_synth_dataset

LAYOUTS = ("folder", "rafd", "ckplus", "oulu", "mmi", "affectnet", "fer2013")

READERS: dict[str, Callable[..., tuple[list[FaceRecord], ReadReport]]] = {
    "folder": read_folder,
    "rafd": read_rafd,
    "ckplus": read_ckplus,
    "oulu": read_oulu,
    "mmi": read_mmi,
    "affectnet": read_affectnet,
    "fer2013": read_fer2013,
}


def detect_layout(root: str | Path) -> str:
    """Guess the layout of `root` ("folder", "rafd", ..., or "synth" for a `fertk synth` output)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset root not found: {root}")
    if root.is_file():
        return _csv_layout(root)
    # A card without .fertk/options.json is a damaged synth output: the synth reader says what
    # is missing, rather than another layout reading its images.
    if is_synth_dataset(root) or (root / CARD_FILE).is_file():
        return "synth"
    for name in FER2013_FILES:
        if (root / name).is_file() and _csv_layout(root / name, quiet=True) == "fer2013":
            return "fer2013"
    for name in ("training.csv", "validation.csv"):
        if (root / name).is_file() and _csv_layout(root / name, quiet=True) == "affectnet":
            return "affectnet"
    if find_named_dir(root, ["cohn-kanade-images"]) is not None:
        return "ckplus"
    sessions = root / "Sessions" if (root / "Sessions").is_dir() else root
    if any((d / "session.xml").is_file() for d in subdirs(sessions)[:50]):
        return "mmi"
    if _has_rafd_names(root):
        return "rafd"
    if oulu_subject_dirs(root, max_depth=4)[:1]:
        return "oulu"
    try:
        if folder_class_dirs(root):
            return "folder"
    except DatasetError as exc:
        folder_problem = str(exc)
    raise DatasetError(
        f"{root}: cannot tell the dataset layout. Looked for: {LAYOUT_SIGNS}. "
        f"Found: {_describe_contents(root)}; as a folder tree: {folder_problem}",
        hint=LAYOUT_HINT,
    )


# What `detect_layout` looks for, in its order, for the error that says none was found.
LAYOUT_SIGNS = (".fertk/options.json or dataset_card.json (fertk synth), fer2013.csv / train.csv (fer2013), "
                "training.csv / validation.csv (affectnet), a cohn-kanade-images/ folder (ckplus), */session.xml (mmi), "
                "Rafd090_01_..._angry_frontal file names (rafd), P001-style subject folders (oulu), "
                "<emotion>/ or <split>/<emotion>/ folders (folder)")
LAYOUT_HINT = ("name the layout: --layout " + "|".join(LAYOUTS) + " on the command line (Python: layout=...); "
               "the README's dataset layouts list shows each one's shape")


def _describe_contents(root: Path, limit: int = 5) -> str:
    """A short inventory of a folder: its first sub-folders and how many files of which kind."""
    folders = subdirs(root)
    files = [p for p in root.iterdir() if p.is_file() and visible(p)]
    kinds = Counter(p.suffix.lower() or "(no suffix)" for p in files)
    parts = []
    if folders:
        names = ", ".join(d.name + "/" for d in folders[:limit]) + (", ..." if len(folders) > limit else "")
        parts.append(f"{len(folders)} sub-folder(s) ({names})")
    if files:
        parts.append(f"{len(files)} file(s) (" + ", ".join(f"{n} {k}" for k, n in kinds.most_common(limit)) + ")")
    return " and ".join(parts) or "an empty folder"


def _csv_layout(path: Path, quiet: bool = False) -> str:
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            header = {h.strip().lower() for h in next(csv.reader(handle), [])}
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if {"emotion", "pixels"} <= header:
        return "fer2013"
    if {"subdirectory_filepath", "expression"} <= header:
        return "affectnet"
    if quiet:
        return ""
    raise DatasetError(f"{path}: csv with columns {', '.join(sorted(header)) or '(none)'} is not a known layout; "
                       "looked for FER2013 (emotion,pixels,Usage) or AffectNet (subDirectory_filePath,...,expression) "
                       "columns",
                       hint="pass a FER2013 or AffectNet csv, or the folder of an image dataset with --layout "
                            + "|".join(LAYOUTS) + " (Python: layout=...)")


def _has_rafd_names(root: Path, limit: int = 200) -> bool:
    seen = 0
    for _dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if RAFD_NAME.match(Path(name).stem):
                return True
            seen += 1
            if seen >= limit:
                return False
    return False


def read_records(root: str | Path, layout: str = "auto", **options: Any) -> tuple[list[FaceRecord], ReadReport]:
    """Read a dataset of any supported layout ("auto" guesses it); returns (records, report)."""
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "synth":
        raise DatasetError(f"{root} is a `fertk synth` output, not a records layout",
                           hint="leave --layout at auto (Python: layout='auto'); it is read by "
                                "fertk.data.datasets.load_arrays(path)")
    if layout not in READERS:
        raise InvalidInputError(f"unknown layout {layout!r}",
                                hint="--layout (Python: layout=) takes one of auto, " + ", ".join(LAYOUTS))
    reader = READERS[layout]
    accepted = set(inspect.signature(reader).parameters) - {"root"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InvalidInputError(f"the {layout} reader has no option(s) {', '.join(unknown)}",
                                hint="its options: " + ", ".join(sorted(accepted)))
    return reader(root, **options)
