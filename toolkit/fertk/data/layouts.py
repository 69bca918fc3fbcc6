"""Dataset readers: each public FER dataset's documented layout → a list of `FaceRecord`s.

Every reader returns `(records, report)`: records carry canonical labels (`fertk.core.emotions`), a
subject id, the dataset name as `source`, an image path (or inline pixels for FER2013) and
layout-specific `meta`; the `ReadReport` counts what was dropped and why. Classes outside
`classes` (default: the six Ekman emotions) are dropped unless asked for with `keep=("neutral",)`
or `classes=label_set(neutral=True)`. A missing root, an empty dataset or a label the dataset's
documentation does not define raises a one-line `DatasetError` naming the file.

Layouts (what each reader expects):

- ``folder``: ``<root>/<emotion>/*.png|jpg|jpeg|bmp`` (Keras / torchvision ImageFolder; folder
  names may be any common spelling: "angry", "Happy", "angery"), or one level of split folders
  ``<root>/<split>/<emotion>/...`` (train/test, train/val/test). Subject: the `subject_pattern`
  regex on the file stem, else the image's path below the root (each image its own subject).
- ``rafd``: Radboud Faces file names ``Rafd090_01_Caucasian_female_angry_frontal.jpg`` (camera
  angle, model number, ethnicity, gender, emotion, gaze), anywhere below the root. Frontal only
  (angle 090, gaze frontal) by default.
- ``ckplus``: ``cohn-kanade-images/S005/001/S005_001_00000011.png`` with
  ``Emotion/S005/001/S005_001_00000011_emotion.txt`` (one float code, `CKPLUS_CODES`). Only
  sequences with an emotion file are labelled; their last `peak_frames` frames are kept, and
  with `neutral_first=True` their first frame too, as neutral.
- ``oulu``: Oulu-CASIA NIR&VIS ``OriginalImg/<VL|NI>/<Strong|Weak|Dark>/P001/<Anger|...>/000.jpeg``
  (the root may be any folder on that path). The last `peak_frames` frames of each sequence;
  sensor VL and lighting Strong by default.
- ``mmi``: MMI ``Sessions/<id>/`` folders, each with ``session.xml`` (subject id, camera view),
  a ``<name>.xml`` whose ``<Metatag Name="Emotion" Value="1..6"/>`` gives `MMI_CODES`, and
  either the ``<name>.avi`` video or pre-extracted frame images (in the session folder or a
  ``frames/`` folder inside it, in name order). MMI sequences go neutral → apex → neutral, so
  the `peak_frames` frames around the middle of the sequence are kept. Sessions without an
  emotion (AU-only recordings) are dropped and counted. Frontal view ("0") only by default.
- ``affectnet``: ``training.csv`` / ``validation.csv`` (columns subDirectory_filePath, face_x,
  face_y, face_width, face_height, facial_landmarks, expression, valence, arousal) beside
  ``Manually_Annotated_Images/``. Codes 8-10 (None, Uncertain, No-Face) are not emotions and are
  dropped. The face box goes to ``meta["face_box"]`` for `detect="box"` cropping. AffectNet has no
  subject ids: the subject is the image file, so subject-disjoint splits are image-disjoint.
- ``fer2013``: ``fer2013.csv`` (columns emotion, pixels, Usage; Kaggle's later
  ``icml_face_data.csv`` has the same columns): 48×48 gray faces inline → ``FaceRecord.pixels``;
  Usage in ``meta["split"]``; subject = row index (FER2013 has no subject ids either).
"""

from __future__ import annotations

import csv
import inspect
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.data.records import FaceRecord
from fertk.core.emotions import (
    AFFECTNET_CODES,
    ALL_EMOTIONS,
    CKPLUS_CODES,
    EKMAN,
    FER2013_CODES,
    MMI_CODES,
    SYNONYMS,
    is_emotion,
    parse_emotions,
)
from fertk.core.errors import DatasetError, InvalidInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv")
LAYOUTS = ("folder", "rafd", "ckplus", "oulu", "mmi", "affectnet", "fer2013")

# Folders a tree walk never enters (OS and archive-tool debris).
_SKIP_DIRS = {"__MACOSX", "@eaDir", "$RECYCLE.BIN"}


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


class _Collector:
    """Applies the class filter and counts drops while a reader walks its dataset."""

    def __init__(self, layout: str, root: Path, classes: Iterable[str] | str | None, keep: Iterable[str] | str):
        self.classes = resolve_classes(classes, keep)
        self.report = ReadReport(layout=layout, root=str(root), classes=self.classes)
        self.records: list[FaceRecord] = []

    def add(self, label: str, subject: str, source: str, *, path: Path | None = None,
            pixels: np.ndarray | None = None, meta: dict[str, Any] | None = None) -> None:
        if label not in self.classes:
            self.report.drop(f"class not kept: {label}")
            return
        self.records.append(FaceRecord(label=label, subject=subject, source=source, path=path,
                                       pixels=pixels, meta=meta or {}))

    def finish(self, what: str) -> tuple[list[FaceRecord], ReadReport]:
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


def _require_dir(root: str | Path, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset root not found: {root}", hint=f"pass the folder holding the {layout} dataset")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; the {layout} layout expects a folder")
    return root


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in _SKIP_DIRS


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and _visible(path) and path.is_file()


def _images_in(folder: Path, *, recursive: bool = False) -> list[Path]:
    if recursive:
        found = [p for p in folder.rglob("*") if _is_image(p)
                 and not any(part.startswith(".") or part in _SKIP_DIRS for part in p.relative_to(folder).parts)]
    else:
        found = [p for p in folder.iterdir() if _is_image(p)]
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    # Frame files are numbered, sometimes without zero padding ("2.png" before "10.png").
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", str(path))]


def _label_from_word(word: str, where: Path) -> str:
    """Canonical emotion for a dataset's own word, or a DatasetError naming the file."""
    key = word.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in SYNONYMS:
        raise DatasetError(
            f"{where}: unknown emotion label {word!r}",
            hint="expected one of " + ", ".join(ALL_EMOTIONS) + " (or a common spelling of one)",
        )
    return SYNONYMS[key]


def _code_label(codes: dict[int, str], raw: str, where: str, dataset: str) -> str:
    try:
        value = float(raw)
    except ValueError:
        raise DatasetError(f"{where}: emotion code {raw.strip()!r} is not a number",
                           hint=f"expected one of the {dataset} codes {sorted(codes)}") from None
    if value != int(value) or int(value) not in codes:
        raise DatasetError(f"{where}: unknown {dataset} emotion code {raw.strip()!r}",
                           hint=f"expected one of {', '.join(f'{k}={v}' for k, v in sorted(codes.items()))}")
    return codes[int(value)]


def _pick_frames(count: int, how_many: int, where: str) -> list[int]:
    """Indices of the last `how_many` frames (`where` = "last") or the middle ones ("middle")."""
    how_many = max(1, min(how_many, count))
    if where == "last":
        return list(range(count - how_many, count))
    start = max(0, min(count - how_many, (count - how_many + 1) // 2))
    return list(range(start, start + how_many))


def _check_peak_frames(peak_frames: int) -> int:
    if not isinstance(peak_frames, int) or peak_frames < 1:
        raise InvalidInputError(f"peak_frames must be a positive integer, got {peak_frames!r}")
    return peak_frames


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


# ---------------------------------------------------------------------------------------------
# folder: <root>/<emotion>/* or <root>/<split>/<emotion>/*


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
    root = _require_dir(root, "folder")
    col = _Collector("folder", root, classes, keep)
    pattern = re.compile(subject_pattern) if subject_pattern else None
    wanted_splits = _as_tuple(splits)
    for split, emotion_dir in _folder_class_dirs(root):
        if wanted_splits is not None and split not in wanted_splits:
            col.report.drop(f"split not selected: {split}", len(_images_in(emotion_dir, recursive=True)))
            continue
        label = _label_from_word(emotion_dir.name, emotion_dir)
        for path in _images_in(emotion_dir, recursive=True):
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


def _folder_class_dirs(root: Path) -> list[tuple[str | None, Path]]:
    """(split or None, emotion folder) pairs of an ImageFolder tree, or a DatasetError."""
    top = _subdirs(root)
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
        inner = _subdirs(split_dir)
        bad = [d for d in inner if not is_emotion(d.name)]
        if not inner or bad:
            where = bad[0] if bad else split_dir
            raise DatasetError(f"{where}: expected emotion folders (anger, happy, ...) here",
                               hint="the folder layout is <root>/<emotion>/*.png or <root>/<split>/<emotion>/*.png")
        pairs.extend((split_dir.name, d) for d in inner)
    return pairs


# ---------------------------------------------------------------------------------------------
# rafd: Rafd090_01_Caucasian_female_angry_frontal.jpg

RAFD_NAME = re.compile(
    r"^rafd(?P<angle>\d{3})_(?P<subject>\d+)_(?P<ethnicity>[a-z]+)_(?P<gender>[a-z]+)"
    r"_(?P<emotion>[a-z]+)_(?P<gaze>[a-z]+)$",
    re.IGNORECASE,
)
RAFD_ANGLES = ("000", "045", "090", "135", "180")
RAFD_GAZES = ("frontal", "left", "right")


def read_rafd(
    root: str | Path,
    *,
    classes: Iterable[str] | str | None = EKMAN,
    keep: Iterable[str] | str = (),
    angles: str | Iterable[str] | None = ("090",),
    gazes: str | Iterable[str] | None = ("frontal",),
    source: str = "rafd",
) -> tuple[list[FaceRecord], ReadReport]:
    """Read RaFD images by file name; frontal camera (090) and frontal gaze only by default."""
    root = _require_dir(root, "rafd")
    col = _Collector("rafd", root, classes, keep)
    want_angles, want_gazes = _as_tuple(angles), _as_tuple(gazes)
    for path in _images_in(root, recursive=True):
        match = RAFD_NAME.match(path.stem)
        if match is None:
            col.report.drop("file name not in the RaFD pattern")
            continue
        fields = match.groupdict()
        label = _label_from_word(fields["emotion"], path)
        angle, gaze = fields["angle"], fields["gaze"].lower()
        if want_angles is not None and angle not in want_angles:
            col.report.drop(f"camera angle not selected: {angle}")
            continue
        if want_gazes is not None and gaze not in want_gazes:
            col.report.drop(f"gaze not selected: {gaze}")
            continue
        meta = {"angle": angle, "gaze": gaze, "ethnicity": fields["ethnicity"],
                "gender": fields["gender"].lower(),
                "pose": "frontal" if angle == "090" and gaze == "frontal" else f"{angle}/{gaze}"}
        col.add(label, f"{int(fields['subject']):02d}", source, path=path, meta=meta)
    return col.finish("RaFD images (Rafd090_01_Caucasian_female_angry_frontal.jpg)")


# ---------------------------------------------------------------------------------------------
# ckplus: cohn-kanade-images/S005/001/*.png + Emotion/S005/001/*_emotion.txt


def _find_named_dir(root: Path, names: Sequence[str], depth: int = 2) -> Path | None:
    """`root` itself or the first folder at most `depth` levels below it with one of `names`."""
    lowered = {n.lower() for n in names}
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if folder.name.lower() in lowered:
                return folder
        level = [sub for folder in level for sub in _subdirs(folder)]
    return None


def read_ckplus(
    root: str | Path,
    *,
    classes: Iterable[str] | str | None = EKMAN,
    keep: Iterable[str] | str = (),
    peak_frames: int = 1,
    neutral_first: bool = False,
    source: str = "ckplus",
) -> tuple[list[FaceRecord], ReadReport]:
    """Read CK+: the last `peak_frames` frames of each emotion-labelled sequence (+ first as neutral)."""
    root = _require_dir(root, "ckplus")
    peak_frames = _check_peak_frames(peak_frames)
    if neutral_first:
        keep = tuple(_as_tuple(keep) or ()) + ("neutral",)
    col = _Collector("ckplus", root, classes, keep)
    images_dir = _find_named_dir(root, ["cohn-kanade-images"])
    labels_dir = _find_named_dir(root, ["Emotion", "Emotion_labels"])
    if images_dir is None or labels_dir is None:
        missing = "cohn-kanade-images" if images_dir is None else "Emotion"
        raise DatasetError(f"{root}: no {missing}/ folder found",
                           hint="CK+ expects cohn-kanade-images/S005/001/*.png and Emotion/S005/001/*_emotion.txt")
    if labels_dir.name.lower() == "emotion_labels" and (labels_dir / "Emotion").is_dir():
        labels_dir = labels_dir / "Emotion"
    for subject_dir in _subdirs(images_dir):
        for seq_dir in _subdirs(subject_dir):
            frames = _images_in(seq_dir)
            if not frames:
                continue
            label_files = sorted((labels_dir / subject_dir.name / seq_dir.name).glob("*_emotion.txt"))
            if not label_files:
                col.report.drop("sequences without an emotion file")
                continue
            text = label_files[0].read_text(errors="replace").strip()
            label = _code_label(CKPLUS_CODES, text, str(label_files[0]), "CK+")
            base = {"sequence": f"{subject_dir.name}/{seq_dir.name}", "frame_count": len(frames)}
            if neutral_first and len(frames) > peak_frames:
                col.add("neutral", subject_dir.name, source, path=frames[0],
                        meta={**base, "frame": 0, "role": "onset"})
            for index in _pick_frames(len(frames), peak_frames, "last"):
                col.add(label, subject_dir.name, source, path=frames[index],
                        meta={**base, "frame": index, "role": "peak"})
    return col.finish("labelled CK+ sequences")


# ---------------------------------------------------------------------------------------------
# oulu: OriginalImg/<VL|NI>/<Strong|Weak|Dark>/P001/<Emotion>/000.jpeg

OULU_SENSORS = ("VL", "NI")
OULU_LIGHTINGS = ("Strong", "Weak", "Dark")
_OULU_SUBJECT = re.compile(r"^P\d+$", re.IGNORECASE)


def _oulu_subject_dirs(root: Path, max_depth: int = 4) -> list[Path]:
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for folder in level:
            if _OULU_SUBJECT.match(folder.name):
                found.append(folder)
            else:
                nxt.extend(_subdirs(folder))
        level = nxt
    return sorted(found)


def read_oulu(
    root: str | Path,
    *,
    classes: Iterable[str] | str | None = EKMAN,
    keep: Iterable[str] | str = (),
    peak_frames: int = 1,
    sensors: str | Iterable[str] | None = ("VL",),
    lightings: str | Iterable[str] | None = ("Strong",),
    source: str = "oulu",
) -> tuple[list[FaceRecord], ReadReport]:
    """Read Oulu-CASIA NIR&VIS: last `peak_frames` frames per sequence; VL + Strong light by default."""
    root = _require_dir(root, "oulu")
    peak_frames = _check_peak_frames(peak_frames)
    col = _Collector("oulu", root, classes, keep)
    want_sensors = {s.upper() for s in _as_tuple(sensors) or ()} if sensors is not None else None
    want_lights = {s.lower() for s in _as_tuple(lightings) or ()} if lightings is not None else None
    subject_dirs = _oulu_subject_dirs(root)
    if not subject_dirs:
        raise DatasetError(f"{root}: no subject folders (P001, P002, ...) found",
                           hint="Oulu-CASIA expects OriginalImg/VL/Strong/P001/Anger/000.jpeg")
    for subject_dir in subject_dirs:
        # The sensor and lighting are the nearest ancestors with those names, if any.
        ancestors = [p.name for p in subject_dir.relative_to(root).parents] + [root.name]
        ancestors += [p.name for p in root.parents][:3]
        sensor = next((a.upper() for a in ancestors if a.upper() in OULU_SENSORS), None)
        lighting = next((a.capitalize() for a in ancestors if a.capitalize() in OULU_LIGHTINGS), None)
        for seq_dir in _subdirs(subject_dir):
            label = _label_from_word(seq_dir.name, seq_dir)
            frames = _images_in(seq_dir)
            if not frames:
                continue
            if want_sensors is not None and sensor is not None and sensor not in want_sensors:
                col.report.drop(f"sensor not selected: {sensor}", min(peak_frames, len(frames)))
                continue
            if want_lights is not None and lighting is not None and lighting.lower() not in want_lights:
                col.report.drop(f"lighting not selected: {lighting}", min(peak_frames, len(frames)))
                continue
            base = {"sequence": f"{subject_dir.name}/{seq_dir.name}", "sensor": sensor,
                    "lighting": lighting, "frame_count": len(frames)}
            if sensor is None or lighting is None:
                col.report.note("some sequences sit outside <VL|NI>/<Strong|Weak|Dark> folders: kept unfiltered")
            # A subject seen through two sensors or lightings is still one person.
            for index in _pick_frames(len(frames), peak_frames, "last"):
                col.add(label, subject_dir.name.upper(), source, path=frames[index],
                        meta={**base, "frame": index})
    return col.finish("Oulu-CASIA sequences")


# ---------------------------------------------------------------------------------------------
# mmi: Sessions/<id>/session.xml + <name>.xml (Metatag Emotion) + <name>.avi or frame images

_MMI_NAME = re.compile(r"^S(?P<subject>\d+)-\d+", re.IGNORECASE)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DatasetError(f"{path}: cannot parse XML ({exc})") from None


def _mmi_emotion(xml_files: Iterable[Path]) -> tuple[str | None, Path | None]:
    """The raw Emotion metatag value and the file it came from, if any file has one."""
    for path in xml_files:
        for element in _parse_xml(path).iter():
            attrs = {k.lower(): v for k, v in element.attrib.items()}
            if _local(element.tag) == "metatag" and attrs.get("name", "").lower() == "emotion":
                return attrs.get("value", ""), path
    return None, None


def read_mmi(
    root: str | Path,
    *,
    classes: Iterable[str] | str | None = EKMAN,
    keep: Iterable[str] | str = (),
    peak_frames: int = 1,
    views: str | Iterable[str] | None = ("0",),
    source: str = "mmi",
) -> tuple[list[FaceRecord], ReadReport]:
    """Read MMI sessions: the `peak_frames` middle (apex) frames of each emotion-labelled session."""
    root = _require_dir(root, "mmi")
    peak_frames = _check_peak_frames(peak_frames)
    col = _Collector("mmi", root, classes, keep)
    want_views = _as_tuple(views)
    sessions_dir = root / "Sessions" if (root / "Sessions").is_dir() else root
    session_dirs = [d for d in _subdirs(sessions_dir) if (d / "session.xml").is_file()]
    if not session_dirs:
        raise DatasetError(f"{sessions_dir}: no session folders with a session.xml",
                           hint="MMI expects Sessions/<id>/session.xml beside the session's files")
    for session_dir in session_dirs:
        session = _parse_xml(session_dir / "session.xml")
        subject, view = None, None
        for element in session.iter():
            tag, attrs = _local(element.tag), {k.lower(): v for k, v in element.attrib.items()}
            if tag == "subject" and subject is None and attrs.get("id"):
                subject = attrs["id"]
            if tag == "track" and view is None and "view" in attrs:
                view = attrs["view"]
        if want_views is not None and view is not None and view not in want_views:
            col.report.drop(f"camera view not selected: {view}")
            continue
        others = sorted(p for p in session_dir.glob("*.xml")
                        if p.name != "session.xml" and not p.name.endswith("-oao_aucs.xml"))
        raw, label_file = _mmi_emotion([*others, session_dir / "session.xml"])
        if raw is None:
            col.report.drop("sessions without an emotion label")
            continue
        try:
            code = int(float(raw))
        except ValueError:
            raise DatasetError(f"{label_file}: Emotion value {raw!r} is not a number",
                               hint=f"expected one of the MMI codes {sorted(MMI_CODES)}") from None
        if code not in MMI_CODES:
            # MMI's metadata also tags sessions outside the six basic emotions.
            col.report.drop(f"emotion code outside MMI_CODES: {code}")
            continue
        label = MMI_CODES[code]
        videos = sorted(p for p in session_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        frames = _images_in(session_dir / "frames") if (session_dir / "frames").is_dir() else _images_in(session_dir)
        if subject is None:
            named = next((m for m in (_MMI_NAME.match(p.stem) for p in [*videos, *others]) if m), None)
            if named is not None:
                subject = str(int(named["subject"]))
            else:
                subject = f"session-{session_dir.name}"
                col.report.note("some sessions name no subject: their session id stands in")
        meta = {"session": session_dir.name, "view": view, "emotion_code": code}
        if frames:
            for index in _pick_frames(len(frames), peak_frames, "middle"):
                col.add(label, subject, source, path=frames[index],
                        meta={**meta, "frame": index, "frame_count": len(frames)})
        elif videos:
            count = _video_frame_count(videos[0])
            for index in _pick_frames(count, peak_frames, "middle"):
                col.add(label, subject, source, path=videos[0],
                        meta={**meta, "frame": index, "frame_count": count, "video": True})
        else:
            col.report.drop("sessions without frames or a video")
    return col.finish("emotion-labelled MMI sessions")


def _video_frame_count(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DatasetError(f"{path}: cannot open video", hint="extract its frames to <session>/frames/*.png")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:  # some containers do not store the count: read through
            count = 0
            while capture.grab():
                count += 1
    finally:
        capture.release()
    if count <= 0:
        raise DatasetError(f"{path}: video has no frames")
    return count


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
        base = _require_dir(root, "affectnet")
        wanted = _as_tuple(splits) or ("training", "validation")
        csv_files = [base / f"{name}.csv" for name in wanted if (base / f"{name}.csv").is_file()]
        if not csv_files:
            raise DatasetError(f"{base}: none of {', '.join(n + '.csv' for n in wanted)} found",
                               hint="AffectNet expects training.csv / validation.csv beside Manually_Annotated_Images/")
    if images_dir is None:
        image_root = next((base / d for d in _AFFECTNET_IMAGE_DIRS if (base / d).is_dir()), base)
    else:
        image_root = Path(images_dir).expanduser()
    col = _Collector("affectnet", base, classes, keep)
    col.report.note("AffectNet has no subject ids: each image is its own subject")
    for csv_path in csv_files:
        with open(csv_path, newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in ("subDirectory_filePath", "expression") if c not in header]
            if missing:
                raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing)}",
                                   hint="expected AffectNet columns " + ",".join(AFFECTNET_COLUMNS))
            col_of = {name: i for i, name in enumerate(header)}
            split = csv_path.stem
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
                label = _code_label(AFFECTNET_CODES, raw, where, "AffectNet")
                rel = row[col_of["subDirectory_filePath"]].strip()
                meta: dict[str, Any] = {"split": split, "line": line, "expression": code}
                box = _affectnet_box(row, col_of, where)
                if box is not None:
                    meta["face_box"] = box
                for name in ("valence", "arousal"):
                    if name in col_of and row[col_of[name]].strip():
                        meta[name] = float(row[col_of[name]])
                if landmarks and "facial_landmarks" in col_of and row[col_of["facial_landmarks"]].strip():
                    values = [float(v) for v in row[col_of["facial_landmarks"]].split(";") if v.strip()]
                    meta["landmarks"] = np.asarray(values, np.float32).reshape(-1, 2)
                col.add(label, rel, source, path=image_root / rel, meta=meta)
    return col.finish("AffectNet rows")


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
    col = _Collector("fer2013", path, classes, keep)
    col.report.note("FER2013 has no subject ids: each row is its own subject")
    want_usages = _as_tuple(usages)
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
            label = _code_label(FER2013_CODES, row[i_emotion], where, "FER2013")
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


# ---------------------------------------------------------------------------------------------
# Detection and dispatch

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
    if (root / "dataset_card.json").is_file():
        return "synth"
    for name in FER2013_FILES:
        if (root / name).is_file() and _csv_layout(root / name, quiet=True) == "fer2013":
            return "fer2013"
    for name in ("training.csv", "validation.csv"):
        if (root / name).is_file() and _csv_layout(root / name, quiet=True) == "affectnet":
            return "affectnet"
    if _find_named_dir(root, ["cohn-kanade-images"]) is not None:
        return "ckplus"
    sessions = root / "Sessions" if (root / "Sessions").is_dir() else root
    if any((d / "session.xml").is_file() for d in _subdirs(sessions)[:50]):
        return "mmi"
    if _has_rafd_names(root):
        return "rafd"
    if _oulu_subject_dirs(root, max_depth=4)[:1]:
        return "oulu"
    try:
        if _folder_class_dirs(root):
            return "folder"
    except DatasetError as exc:
        folder_problem = str(exc)
    raise DatasetError(
        f"{root}: cannot tell the dataset layout. Looked for: {LAYOUT_SIGNS}. "
        f"Found: {_describe_contents(root)}; as a folder tree: {folder_problem}",
        hint=LAYOUT_HINT,
    )


# What `detect_layout` looks for, in its order, for the error that says none was found.
LAYOUT_SIGNS = ("dataset_card.json (fertk synth), fer2013.csv / train.csv (fer2013), training.csv / "
                "validation.csv (affectnet), a cohn-kanade-images/ folder (ckplus), */session.xml (mmi), "
                "Rafd090_01_..._angry_frontal file names (rafd), P001-style subject folders (oulu), "
                "<emotion>/ or <split>/<emotion>/ folders (folder)")
LAYOUT_HINT = ("name the layout: --layout " + "|".join(LAYOUTS) + " on the command line (Python: layout=...); "
               "the README's dataset layouts list shows each one's shape")


def _describe_contents(root: Path, limit: int = 5) -> str:
    """A short inventory of a folder: its first sub-folders and how many files of which kind."""
    folders = _subdirs(root)
    files = [p for p in root.iterdir() if p.is_file() and _visible(p)]
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


__all__ = [
    "IMAGE_SUFFIXES", "LAYOUTS", "READERS", "ReadReport", "detect_layout", "read_affectnet",
    "read_ckplus", "read_fer2013", "read_folder", "read_mmi", "read_oulu", "read_rafd",
    "read_records", "resolve_classes",
]
