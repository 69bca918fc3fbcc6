"""Face crop → grayscale → resize, as the paper prepares faces (64×64 gray), with a disk cache.

How the face is found (`PreprocessConfig.detect`):

- ``"haar"``: OpenCV's Haar frontal-face cascade (opencv 4.x ships the cascade files; 5.x does
  not) on the histogram-equalised gray image; the largest face wins.
- ``"box"``: the face box a dataset provides in ``record.meta["face_box"]`` = (x, y, w, h)
  (AffectNet's csv).
- ``"none"``: the whole image (its centred square), for faces already cropped (FER2013, synth).
- ``"auto"`` (default): per record, "box" when it has a face box, "none" when the reader marked
  it ``meta["aligned"]`` (FER2013), else "haar".

The crop is a square centred on the face box, whose side is the box's longer side grown by
`margin` of it on every side (side × (1 + 2·margin)); parts outside the image repeat the edge
pixels. Then grayscale (or RGB when ``gray=False``) and an INTER_AREA resize to `size`.
Everything is deterministic.

A face the detector misses is reported (count + keys) and left out, unless
``fallback_center=True`` takes the centred square instead. An unreadable image is skipped and
counted, or raises `DatasetError` with ``strict=True``.

The cache holds one ``.npz`` per dataset and config under `cache_dir`: rows keyed by a
fingerprint of (file path, mtime, size, frame, config hash), written to a temporary name and
moved into place with ``os.replace`` so readers never see half a file. A second run reads the
rows back instead of decoding and detecting again; a changed file or config misses the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.emotions import ALL_EMOTIONS, class_index
from fertk.core.errors import DatasetError, InvalidInputError, reject_unknown_keys
from fertk.core.io import atomic_target, sha256_bytes
from fertk.core.progress import Progress, emit
from fertk.data.images import quiet_opencv, read_image
from fertk.data.records import FaceArrays, FaceRecord, sample_key

DETECT_MODES = ("auto", "haar", "box", "none")
# Bump when the crop/resize code changes what it produces: old cache files then miss.
PREPROCESS_VERSION = 1

_OK, _NO_FACE, _UNREADABLE = 0, 1, 2


class NoFaceFoundError(DatasetError):
    """The detector found no face in an image (and no fallback was asked for)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How faces are cropped and resized; JSON-able, and hashed into the cache key."""

    size: int = 64                 # output side in pixels
    gray: bool = True              # grayscale output ([H, W]); False keeps RGB ([H, W, 3])
    detect: str = "auto"           # "auto" | "haar" | "box" | "none" (see module docstring)
    margin: float = 0.2            # crop grows by margin × face side on every side
    min_face: float = 0.2          # smallest face the detector reports, × the image's shorter side
    fallback_center: bool = False  # no face found → centred square instead of leaving it out
    cascade: str = "haarcascade_frontalface_default.xml"  # file in cv2.data.haarcascades, or a path
    scale_factor: float = 1.1      # Haar image-pyramid step
    min_neighbors: int = 5         # Haar overlapping detections needed to accept a face

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 8:
            raise InvalidInputError(f"preprocess size must be an integer >= 8, got {self.size!r}")
        if self.detect not in DETECT_MODES:
            raise InvalidInputError(f"unknown detect mode {self.detect!r}",
                                    hint="--detect (Python: detect=) takes one of " + ", ".join(DETECT_MODES))
        if not 0 <= self.margin <= 2:
            raise InvalidInputError(f"margin must be within [0, 2], got {self.margin}")
        if not 0 < self.min_face <= 1:
            raise InvalidInputError(f"min_face is a fraction of the image side in (0, 1], got {self.min_face}")
        if self.scale_factor <= 1.0 or self.min_neighbors < 0:
            raise InvalidInputError("scale_factor must be > 1 and min_neighbors >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessConfig":
        """Inverse of `to_dict`; unknown keys are an error."""
        reject_unknown_keys(data, (f.name for f in fields(cls)), "preprocess option")
        return cls(**data)

    def fingerprint(self) -> str:
        """Hash of the options and the code version: equal hashes make equal faces."""
        payload = json.dumps({"v": PREPROCESS_VERSION, **self.to_dict()}, sort_keys=True)
        return sha256_bytes(payload.encode())[:16]


@dataclass
class PreprocessReport:
    """What preprocessing kept, found in the cache, computed, and left out (with keys)."""

    total: int = 0
    kept: int = 0
    cache_hits: int = 0
    computed: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    no_face: int = 0
    no_face_keys: list[str] = field(default_factory=list)
    fallback_center: int = 0
    unreadable: int = 0
    unreadable_keys: list[str] = field(default_factory=list)
    unreadable_reasons: list[str] = field(default_factory=list)
    cache_file: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    def summary(self) -> str:
        """One line for a progress log."""
        parts = [f"kept {self.kept}/{self.total} faces", f"{self.cache_hits} from cache",
                 f"{self.computed} computed"]
        if self.no_face:
            parts.append(f"{self.no_face} without a detected face")
        if self.fallback_center:
            parts.append(f"{self.fallback_center} centre-cropped (no face found)")
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable")
        return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Geometry


def square_crop_box(box: Sequence[float], margin: float) -> tuple[int, int, int]:
    """(x0, y0, side) of the square crop around face box (x, y, w, h) grown by `margin`."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1.0 + 2.0 * margin)
    side_px = max(1, int(round(side)))
    cx, cy = x + w / 2.0, y + h / 2.0
    return int(np.floor(cx - side_px / 2.0 + 0.5)), int(np.floor(cy - side_px / 2.0 + 0.5)), side_px


def crop_square(image: np.ndarray, box: Sequence[float], margin: float) -> np.ndarray:
    """The square crop around `box`, edge pixels repeated where it leaves the image."""
    import cv2

    x0, y0, side = square_crop_box(box, margin)
    height, width = image.shape[:2]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + side - height), max(0, x0 + side - width)
    if x0 + side <= 0 or y0 + side <= 0 or x0 >= width or y0 >= height:
        raise DatasetError(f"face box {tuple(box)} lies outside the {width}×{height} image")
    if top or left or bottom or right:
        image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + left, y0 + top
    return image[y0:y0 + side, x0:x0 + side]


def center_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """The largest centred square of an image, as a box (x, y, side, side)."""
    height, width = image.shape[:2]
    side = min(height, width)
    return ((width - side) // 2, (height - side) // 2, side, side)


# ---------------------------------------------------------------------------------------------
# Reading and detection

_local = threading.local()


def _cascade(config: PreprocessConfig):
    """One CascadeClassifier per thread and cascade file (OpenCV objects are not shared safely)."""
    import cv2

    cache = getattr(_local, "cascades", None)
    if cache is None:
        cache = _local.cascades = {}
    if config.cascade not in cache:
        path = Path(config.cascade)
        if not path.is_file():
            path = Path(getattr(cv2, "data").haarcascades) / config.cascade
        classifier = cv2.CascadeClassifier(str(path))
        if classifier.empty():
            raise DatasetError(f"cannot load the Haar cascade {path}",
                               hint="opencv-python(-headless) 4.x ships the cascades; 5.x does not")
        cache[config.cascade] = classifier
    return cache[config.cascade]


def detect_faces(gray: np.ndarray, config: PreprocessConfig) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, w, h) the Haar cascade finds in a gray uint8 image, largest first."""
    import cv2

    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise InvalidInputError(f"detect_faces needs a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    smallest = max(8, int(config.min_face * min(gray.shape)))
    found = _cascade(config).detectMultiScale(
        cv2.equalizeHist(gray), scaleFactor=config.scale_factor, minNeighbors=config.min_neighbors,
        minSize=(smallest, smallest))
    boxes = [tuple(int(v) for v in b) for b in (found if len(found) else [])]
    # Largest first; ties broken by position so the choice never depends on detector order.
    return sorted(boxes, key=lambda b: (-b[2] * b[3], b[1], b[0]))


def _to_gray(image: np.ndarray) -> np.ndarray:
    import cv2

    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _mode_for(record: FaceRecord, config: PreprocessConfig) -> str:
    if config.detect != "auto":
        return config.detect
    if record.meta.get("face_box") is not None:
        return "box"
    if record.meta.get("aligned"):
        return "none"
    return "haar"


def _face_box(image: np.ndarray, record: FaceRecord, config: PreprocessConfig, mode: str) -> tuple[Sequence[float], float, bool]:
    """(box, margin, used_fallback) for one image, or NoFaceFoundError."""
    if mode == "none":
        return center_box(image), 0.0, False
    if mode == "box":
        box = record.meta.get("face_box")
        if box is None or len(box) != 4:
            raise DatasetError(f"{record.key}: detect='box' needs meta['face_box'] = (x, y, w, h)",
                               hint="AffectNet's reader sets it; use --detect haar (Python: detect='haar') "
                                    "for other datasets")
        return box, config.margin, False
    boxes = detect_faces(_to_gray(image), config)
    if boxes:
        return boxes[0], config.margin, False
    if config.fallback_center:
        return center_box(image), 0.0, True
    raise NoFaceFoundError(f"{record.key}: no face found by the Haar cascade")


def _finish(crop: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    import cv2

    if config.gray:
        crop = _to_gray(crop)
    elif crop.ndim == 2:
        crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB)
    out = cv2.resize(crop, (config.size, config.size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out, dtype=np.uint8)


def load_face(record: FaceRecord, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """One record's face: cropped, gray (or RGB) and resized; NoFaceFoundError/DatasetError if not."""
    face, _fallback = _load_face(record, config)
    return face


def _load_face(record: FaceRecord, config: PreprocessConfig) -> tuple[np.ndarray, bool]:
    image = read_image(record)
    box, margin, fallback = _face_box(image, record, config, _mode_for(record, config))
    return _finish(crop_square(image, box, margin), config), fallback


# ---------------------------------------------------------------------------------------------
# Keys, fingerprints and the cache


def _fingerprint(record: FaceRecord, config_hash: str) -> str:
    if record.pixels is not None:
        # Inline pixels: their own bytes are the identity (cheap at 48×48).
        ident = "pixels:" + hashlib.sha1(np.ascontiguousarray(record.pixels).tobytes()).hexdigest()
        ident += f"|{record.pixels.shape}"
    else:
        path = Path(record.path).absolute()  # type: ignore[arg-type]
        try:
            stat = path.stat()
            ident = f"{path}|{stat.st_mtime_ns}|{stat.st_size}"
        except OSError:
            ident = f"{path}|missing"
        ident += f"|{record.meta.get('frame', '')}"
    if record.meta.get("face_box") is not None:
        ident += f"|box={tuple(record.meta['face_box'])}"
    return hashlib.sha1(f"{ident}|{config_hash}".encode()).hexdigest()


def _cache_path(cache_dir: Path, records: Sequence[FaceRecord], config: PreprocessConfig) -> Path:
    """One file per (sources, dataset folder, config): e.g. rafd-1a2b3c4d5e6f7a8b.npz."""
    sources = sorted({r.source for r in records})
    files = {str(Path(r.path).absolute().parent) for r in records if r.path is not None}
    files |= {str(r.meta.get("file")) for r in records if r.pixels is not None and r.meta.get("file")}
    anchor = os.path.commonpath(sorted(files)) if files else "inline"
    ident = hashlib.sha1(json.dumps([sources, anchor, config.fingerprint()]).encode()).hexdigest()[:16]
    label = "+".join(s.replace(os.sep, "_") for s in sources)[:60] or "faces"
    return cache_dir / f"{label}-{ident}.npz"


def _read_cache(path: Path, config: PreprocessConfig, report: PreprocessReport) -> dict[str, tuple[int, np.ndarray, str]]:
    """fingerprint → (status, image, key) from a cache file; an unreadable file counts as empty."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["config"]) != config.fingerprint():
                return {}
            fps, status, images, keys = data["fingerprints"], data["status"], data["images"], data["keys"]
            return {str(fp): (int(s), images[i], str(keys[i])) for i, (fp, s) in enumerate(zip(fps, status))}
    except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        report.notes.append(f"ignored unreadable cache file {path} ({type(exc).__name__})")
        return {}


def _write_cache(path: Path, entries: dict[str, tuple[int, np.ndarray, str]], config: PreprocessConfig) -> None:
    """Write all entries to a temporary file beside `path`, then move it into place atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = sorted(entries)
    shape = (config.size, config.size) if config.gray else (config.size, config.size, 3)
    images = np.zeros((len(fps), *shape), np.uint8)
    for i, fp in enumerate(fps):
        if entries[fp][0] == _OK:
            images[i] = entries[fp][1]
    with atomic_target(path, fsync=True) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, fingerprints=np.array(fps, dtype="U40"),
                 status=np.array([entries[fp][0] for fp in fps], np.uint8), images=images,
                 keys=np.array([entries[fp][2] for fp in fps], dtype=str),
                 config=np.array(config.fingerprint()))


# ---------------------------------------------------------------------------------------------
# The batch entry point


def _work(record: FaceRecord, config: PreprocessConfig) -> tuple[int, np.ndarray | None, str]:
    """(status, face or None, reason) for one record; never raises for data problems."""
    import cv2

    try:
        face, fallback = _load_face(record, config)
        return _OK, face, "fallback" if fallback else ""
    except NoFaceFoundError as exc:
        return _NO_FACE, None, str(exc)
    except DatasetError as exc:
        return _UNREADABLE, None, str(exc)
    except cv2.error as exc:  # an image OpenCV decodes but cannot convert (odd channel layouts)
        return _UNREADABLE, None, f"{record.key}: OpenCV cannot process it ({str(exc).strip().splitlines()[-1]})"


def _resolve_classes(records: Sequence[FaceRecord], classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is not None:
        return tuple(classes)
    present = {r.label for r in records}
    ordered = [c for c in ALL_EMOTIONS if c in present]
    return tuple(ordered + sorted(present - set(ordered)))


def preprocess_records(
    records: Sequence[FaceRecord],
    config: PreprocessConfig = PreprocessConfig(),
    cache_dir: str | Path | None = None,
    strict: bool = False,
    progress: Progress | None = None,
    *,
    classes: Sequence[str] | None = None,
    workers: int | None = None,
) -> tuple[FaceArrays, PreprocessReport]:
    """Crop/gray/resize every record (cached under `cache_dir` when given) into FaceArrays.

    `classes` fixes the label order (default: the labels present, in fertk.core.emotions order).
    Faces without a detection and unreadable images are left out and listed in the report;
    with `strict=True` an unreadable image raises DatasetError instead. `progress` gets
    "advance" events counting the images computed (cache misses), unit "images".
    """
    start = time.perf_counter()
    records = list(records)
    if not records:
        raise DatasetError("no records to preprocess", hint="the reader found nothing to keep; see its report")
    class_list = _check_classes(records, classes)
    report = PreprocessReport(total=len(records))
    config_hash = config.fingerprint()
    fps = [_fingerprint(r, config_hash) for r in records]
    keys = [sample_key(r) for r in records]
    cached: dict[str, tuple[int, np.ndarray, str]] = {}
    cache_file = None
    if cache_dir is not None:
        cache_file = _cache_path(Path(cache_dir).expanduser(), records, config)
        report.cache_file = str(cache_file)
        cached = _read_cache(cache_file, config, report)

    todo = [i for i, fp in enumerate(fps) if fp not in cached]
    results = _run_parallel(records, todo, config, workers, progress) if todo else {}
    report.cache_hits, report.computed = len(records) - len(todo), len(todo)
    faces, keep_rows, fresh = _collect(records, results, cached, fps, keys, config, report, strict)
    if cache_file is not None and fresh:
        _update_cache(cache_file, cached, fresh, keys, fps, config)

    shape = (config.size, config.size) if config.gray else (config.size, config.size, 3)
    images = np.stack(faces).astype(np.uint8) if faces else np.zeros((0, *shape), np.uint8)
    kept = [records[i] for i in keep_rows]
    index_of = class_index(class_list)
    arrays = FaceArrays(
        images=images,
        labels=np.array([index_of[r.label] for r in kept], dtype=np.int64),
        classes=class_list,
        subjects=np.array([r.subject for r in kept], dtype=str),
        sources=np.array([r.source for r in kept], dtype=str),
        keys=[keys[i] for i in keep_rows],
        meta={"preprocess": config.to_dict()},
    )
    report.kept = len(kept)
    report.seconds = round(time.perf_counter() - start, 3)
    arrays.meta["preprocess_report"] = report.to_dict()
    return arrays, report


def _check_classes(records: Sequence[FaceRecord], classes: Sequence[str] | None) -> tuple[str, ...]:
    """The label order, or InvalidInputError when a record's label is outside it."""
    class_list = _resolve_classes(records, classes)
    stray = sorted({r.label for r in records} - set(class_index(class_list)))
    if stray:
        raise InvalidInputError(f"records have labels outside classes {list(class_list)}: {', '.join(stray)}")
    return class_list


def _collect(records: Sequence[FaceRecord], results: dict[int, tuple[int, np.ndarray | None, str]],
             cached: dict[str, tuple[int, np.ndarray, str]], fps: list[str], keys: list[str],
             config: PreprocessConfig, report: PreprocessReport,
             strict: bool) -> tuple[list[np.ndarray], list[int], dict[str, tuple[int, np.ndarray, str]]]:
    """Faces kept (in record order), their rows, and the fresh cache entries; counts the rest."""
    faces: list[np.ndarray] = []
    keep_rows: list[int] = []
    fresh: dict[str, tuple[int, np.ndarray, str]] = {}
    for i, record in enumerate(records):
        mode = _mode_for(record, config)
        report.modes[mode] = report.modes.get(mode, 0) + 1
        if i in results:
            status, face, reason = results[i]
            if status == _UNREADABLE:
                if strict:
                    raise DatasetError(reason, hint="leave out --strict (Python: strict=False) to skip and count "
                                                    "unreadable images")
                report.unreadable += 1
                report.unreadable_keys.append(keys[i])
                report.unreadable_reasons.append(reason)
                continue
            if status == _OK and reason == "fallback":
                report.fallback_center += 1
            empty = np.zeros((0,), np.uint8)
            fresh[fps[i]] = (status, face if face is not None else empty, keys[i])
        else:
            status, face, _key = cached[fps[i]]
        if status == _NO_FACE:
            report.no_face += 1
            report.no_face_keys.append(keys[i])
            continue
        faces.append(face)  # type: ignore[arg-type]
        keep_rows.append(i)
    return faces, keep_rows, fresh


def _update_cache(cache_file: Path, cached: dict[str, tuple[int, np.ndarray, str]],
                  fresh: dict[str, tuple[int, np.ndarray, str]], keys: list[str], fps: list[str],
                  config: PreprocessConfig) -> None:
    """Write this run's rows into the cache file."""
    # Keep other rows of this dataset (a later run may read a different subset), but drop
    # rows this run superseded (same key, new fingerprint) so the file does not grow stale.
    run_keys, run_fps = set(keys), set(fps)
    merged = {fp: entry for fp, entry in cached.items() if entry[2] not in run_keys or fp in run_fps}
    merged.update(fresh)
    _write_cache(cache_file, merged, config)


def _run_parallel(records: Sequence[FaceRecord], todo: list[int], config: PreprocessConfig,
                  workers: int | None, progress: Progress | None) -> dict[int, tuple[int, np.ndarray | None, str]]:
    """Process records[todo] on a thread pool (OpenCV releases the GIL while it decodes/detects)."""
    # Import OpenCV before the pool starts: its module init is not thread-safe, and threads
    # importing it at once can see a half-made module (no `cv2.data`).
    import cv2  # noqa: F401

    quiet_opencv()
    workers = workers or min(8, os.cpu_count() or 1)
    results: dict[int, tuple[int, np.ndarray | None, str]] = {}
    total = len(todo)

    def advance(count: int) -> None:
        emit(progress, "advance", "preprocessing faces", done=count, total=total, unit="images")

    if workers <= 1 or total < 4:
        for count, i in enumerate(todo, start=1):
            results[i] = _work(records[i], config)
            advance(count)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fertk-pre") as pool:
            for count, (i, result) in enumerate(zip(todo, pool.map(lambda j: _work(records[j], config), todo)),
                                                start=1):
                results[i] = result
                advance(count)
    emit(progress, "done", f"preprocessed {total} images", done=total, total=total, unit="images")
    return results


__all__ = [
    "DETECT_MODES", "NoFaceFoundError", "PreprocessConfig", "PreprocessReport", "center_box",
    "crop_square", "detect_faces", "load_face", "preprocess_records", "square_crop_box",
]
