"""Lab-recorded datasets, each read by its own naming scheme: RaFD (file names), CK+ and
Oulu-CASIA (frame sequences per subject), MMI (sessions with XML metadata and videos or frames)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

from fertk.core.emotions import CKPLUS_CODES, EKMAN, MMI_CODES
from fertk.core.errors import DatasetError
from fertk.data.layouts.common import (
    Collector, ReadReport, as_tuple, check_peak_frames, code_label, images_in, label_from_word, pick_frames,
    require_dir, subdirs,
)
from fertk.data.images import video_frame_count
from fertk.data.records import VIDEO_SUFFIXES, FaceRecord

# ---------------------------------------------------------------------------------------------
# rafd: Rafd090_01_Caucasian_female_angry_frontal.jpg

RAFD_NAME = re.compile(
    r"^rafd(?P<angle>\d{3})_(?P<subject>\d+)_(?P<ethnicity>[a-z]+)_(?P<gender>[a-z]+)"
    r"_(?P<emotion>[a-z]+)_(?P<gaze>[a-z]+)$",
    re.IGNORECASE,
)


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
    root = require_dir(root, "rafd")
    col = Collector("rafd", root, classes, keep)
    want_angles, want_gazes = as_tuple(angles), as_tuple(gazes)
    for path in images_in(root, recursive=True):
        match = RAFD_NAME.match(path.stem)
        if match is None:
            col.report.drop("file name not in the RaFD pattern")
            continue
        fields = match.groupdict()
        label = label_from_word(fields["emotion"], path)
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


def find_named_dir(root: Path, names: Sequence[str], depth: int = 2) -> Path | None:
    """`root` itself or the first folder at most `depth` levels below it with one of `names`."""
    lowered = {n.lower() for n in names}
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if folder.name.lower() in lowered:
                return folder
        level = [sub for folder in level for sub in subdirs(folder)]
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
    root = require_dir(root, "ckplus")
    peak_frames = check_peak_frames(peak_frames)
    if neutral_first:
        keep = tuple(as_tuple(keep) or ()) + ("neutral",)
    col = Collector("ckplus", root, classes, keep)
    images_dir = find_named_dir(root, ["cohn-kanade-images"])
    labels_dir = find_named_dir(root, ["Emotion", "Emotion_labels"])
    if images_dir is None or labels_dir is None:
        missing = "cohn-kanade-images" if images_dir is None else "Emotion"
        raise DatasetError(f"{root}: no {missing}/ folder found",
                           hint="CK+ expects cohn-kanade-images/S005/001/*.png and Emotion/S005/001/*_emotion.txt")
    if labels_dir.name.lower() == "emotion_labels" and (labels_dir / "Emotion").is_dir():
        labels_dir = labels_dir / "Emotion"
    for subject_dir in subdirs(images_dir):
        for seq_dir in subdirs(subject_dir):
            frames = images_in(seq_dir)
            if not frames:
                continue
            label_files = sorted((labels_dir / subject_dir.name / seq_dir.name).glob("*_emotion.txt"))
            if not label_files:
                col.report.drop("sequences without an emotion file")
                continue
            text = label_files[0].read_text(errors="replace").strip()
            label = code_label(CKPLUS_CODES, text, str(label_files[0]), "CK+")
            base = {"sequence": f"{subject_dir.name}/{seq_dir.name}", "frame_count": len(frames)}
            if neutral_first and len(frames) > peak_frames:
                col.add("neutral", subject_dir.name, source, path=frames[0],
                        meta={**base, "frame": 0, "role": "onset"})
            for index in pick_frames(len(frames), peak_frames, "last"):
                col.add(label, subject_dir.name, source, path=frames[index],
                        meta={**base, "frame": index, "role": "peak"})
    return col.finish("labelled CK+ sequences")


# ---------------------------------------------------------------------------------------------
# oulu: OriginalImg/<VL|NI>/<Strong|Weak|Dark>/P001/<Emotion>/000.jpeg

OULU_SENSORS = ("VL", "NI")
OULU_LIGHTINGS = ("Strong", "Weak", "Dark")
_OULU_SUBJECT = re.compile(r"^P\d+$", re.IGNORECASE)


def oulu_subject_dirs(root: Path, max_depth: int = 4) -> list[Path]:
    """Subject folders (P001, ...) at most `max_depth` levels below `root`, sorted."""
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for folder in level:
            if _OULU_SUBJECT.match(folder.name):
                found.append(folder)
            else:
                nxt.extend(subdirs(folder))
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
    root = require_dir(root, "oulu")
    peak_frames = check_peak_frames(peak_frames)
    col = Collector("oulu", root, classes, keep)
    want_sensors = {s.upper() for s in as_tuple(sensors) or ()} if sensors is not None else None
    want_lights = {s.lower() for s in as_tuple(lightings) or ()} if lightings is not None else None
    subject_dirs = oulu_subject_dirs(root)
    if not subject_dirs:
        raise DatasetError(f"{root}: no subject folders (P001, P002, ...) found",
                           hint="Oulu-CASIA expects OriginalImg/VL/Strong/P001/Anger/000.jpeg")
    for subject_dir in subject_dirs:
        # The sensor and lighting are the nearest ancestors with those names, if any.
        ancestors = [p.name for p in subject_dir.relative_to(root).parents] + [root.name]
        ancestors += [p.name for p in root.parents][:3]
        sensor = next((a.upper() for a in ancestors if a.upper() in OULU_SENSORS), None)
        lighting = next((a.capitalize() for a in ancestors if a.capitalize() in OULU_LIGHTINGS), None)
        for seq_dir in subdirs(subject_dir):
            label = label_from_word(seq_dir.name, seq_dir)
            frames = images_in(seq_dir)
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
            for index in pick_frames(len(frames), peak_frames, "last"):
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


def _mmi_session(session_dir: Path) -> tuple[str | None, str | None]:
    """(subject id, camera view) from a session.xml, each None when it does not say."""
    subject, view = None, None
    for element in _parse_xml(session_dir / "session.xml").iter():
        tag, attrs = _local(element.tag), {k.lower(): v for k, v in element.attrib.items()}
        if tag == "subject" and subject is None and attrs.get("id"):
            subject = attrs["id"]
        if tag == "track" and view is None and "view" in attrs:
            view = attrs["view"]
    return subject, view


def _mmi_code(session_dir: Path, others: list[Path]) -> int | None:
    """The session's MMI emotion code (None without an Emotion metatag); DatasetError if not a number."""
    raw, label_file = _mmi_emotion([*others, session_dir / "session.xml"])
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        raise DatasetError(f"{label_file}: Emotion value {raw!r} is not a number",
                           hint=f"expected one of the MMI codes {sorted(MMI_CODES)}") from None


def _mmi_subject(col: Collector, session_dir: Path, named_files: list[Path]) -> str:
    """The subject of a session whose session.xml names none: from S001-... file names, else the session id."""
    named = next((m for m in (_MMI_NAME.match(p.stem) for p in named_files) if m), None)
    if named is not None:
        return str(int(named["subject"]))
    col.report.note("some sessions name no subject: their session id stands in")
    return f"session-{session_dir.name}"


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
    root = require_dir(root, "mmi")
    peak_frames = check_peak_frames(peak_frames)
    col = Collector("mmi", root, classes, keep)
    want_views = as_tuple(views)
    sessions_dir = root / "Sessions" if (root / "Sessions").is_dir() else root
    session_dirs = [d for d in subdirs(sessions_dir) if (d / "session.xml").is_file()]
    if not session_dirs:
        raise DatasetError(f"{sessions_dir}: no session folders with a session.xml",
                           hint="MMI expects Sessions/<id>/session.xml beside the session's files")
    for session_dir in session_dirs:
        subject, view = _mmi_session(session_dir)
        if want_views is not None and view is not None and view not in want_views:
            col.report.drop(f"camera view not selected: {view}")
            continue
        others = sorted(p for p in session_dir.glob("*.xml")
                        if p.name != "session.xml" and not p.name.endswith("-oao_aucs.xml"))
        code = _mmi_code(session_dir, others)
        if code is None:
            col.report.drop("sessions without an emotion label")
            continue
        if code not in MMI_CODES:
            # MMI's metadata also tags sessions outside the six basic emotions.
            col.report.drop(f"emotion code outside MMI_CODES: {code}")
            continue
        videos = sorted(p for p in session_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        frames = images_in(session_dir / "frames") if (session_dir / "frames").is_dir() else images_in(session_dir)
        if subject is None:
            subject = _mmi_subject(col, session_dir, [*videos, *others])
        meta = {"session": session_dir.name, "view": view, "emotion_code": code}
        if frames:
            for index in pick_frames(len(frames), peak_frames, "middle"):
                col.add(MMI_CODES[code], subject, source, path=frames[index],
                        meta={**meta, "frame": index, "frame_count": len(frames)})
        elif videos:
            count = video_frame_count(videos[0])
            for index in pick_frames(count, peak_frames, "middle"):
                col.add(MMI_CODES[code], subject, source, path=videos[0],
                        meta={**meta, "frame": index, "frame_count": count, "video": True})
        else:
            col.report.drop("sessions without frames or a video")
    return col.finish("emotion-labelled MMI sessions")
