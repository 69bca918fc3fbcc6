"""Builders of tiny dataset trees on disk, one per layout fertk reads, for tests.

Every builder writes real image files into a folder you give it (use pytest's `tmp_path`) and
returns that folder, ready for `fertk.data.layouts.read_records` / `load_arrays`. The faces are
drawn by `draw_face`: a blurred cartoon face (head, hair, brows, eyes, nose, mouth) on a noisy
background that OpenCV's Haar frontal-face cascade detects, with the mouth and brows shaped by
the emotion so that a classifier has something to learn. Everything is seeded and deterministic.

Import from other tests with ``from tests.data.fixtures import make_folder_dataset`` (pytest
runs in importlib mode with the repository root on sys.path) or, if that fails, by path.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fertk.core.emotions import EKMAN

# Folder / file spellings each dataset uses for the canonical emotions.
RAFD_WORDS = {"anger": "angry", "contempt": "contemptuous", "disgust": "disgusted", "fear": "fearful",
              "happiness": "happy", "neutral": "neutral", "sadness": "sad", "surprise": "surprised"}
OULU_WORDS = {"anger": "Anger", "disgust": "Disgust", "fear": "Fear", "happiness": "Happiness",
              "sadness": "Sadness", "surprise": "Surprise"}
KERAS_WORDS = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy",
               "sadness": "sad", "surprise": "surprise", "neutral": "neutral", "contempt": "contempt"}
CKPLUS_CODE = {"neutral": 0, "anger": 1, "contempt": 2, "disgust": 3, "fear": 4, "happiness": 5,
               "sadness": 6, "surprise": 7}
MMI_CODE = {"anger": 1, "disgust": 2, "fear": 3, "happiness": 4, "sadness": 5, "surprise": 6}
AFFECTNET_CODE = {"neutral": 0, "happiness": 1, "sadness": 2, "surprise": 3, "fear": 4, "disgust": 5,
                  "anger": 6, "contempt": 7}
FER2013_CODE = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5, "neutral": 6}


# ---------------------------------------------------------------------------------------------
# Drawing


def draw_face(
    emotion: str = "neutral",
    *,
    seed: int = 0,
    canvas: tuple[int, int] = (160, 160),
    face: int = 100,
    center: tuple[int, int] | None = None,
    intensity: float = 1.0,
) -> np.ndarray:
    """A BGR uint8 image [H, W, 3] of a cartoon face the Haar cascade finds.

    `canvas` = (height, width); `face` = head height in pixels (about 60-80 % of it is what the
    detector reports as the face box); `center` = (x, y) of the head (default: canvas centre);
    `intensity` in [0, 1] scales the expression (0 = neutral). The seed varies skin tone,
    background and small shape details.
    """
    rng = np.random.default_rng(seed)
    height, width = canvas
    cx, cy = center if center is not None else (width // 2, height // 2)
    s = float(face) / 1.04  # head ellipse half-height is 0.52 s
    background = rng.integers(60, 110)
    img = np.full((height, width), float(background), np.float32)
    img += rng.normal(0, 3, img.shape).astype(np.float32)
    skin = float(rng.integers(175, 215))

    def ell(c, axes, value, angle=0, start=0, end=360, thick=-1):
        cv2.ellipse(img, (int(round(c[0])), int(round(c[1]))), (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))),
                    angle, start, end, float(value), thick, lineType=cv2.LINE_AA)

    a = float(np.clip(intensity, 0, 1))
    ell((cx, cy), (0.40 * s * rng.uniform(0.95, 1.05), 0.52 * s), skin)
    ell((cx, cy - 0.42 * s), (0.42 * s, 0.18 * s), rng.integers(25, 60), start=180, end=360)
    brow_lift = {"surprise": 0.04, "fear": 0.035, "sadness": 0.02}.get(emotion, 0.0) * a
    brow_drop = {"anger": 0.035, "disgust": 0.02}.get(emotion, 0.0) * a
    brow_tilt = {"anger": -14, "sadness": 12, "fear": 6}.get(emotion, 0) * a
    eye_open = {"surprise": 1.25, "fear": 1.2, "disgust": 0.7, "anger": 0.8, "happiness": 0.8}.get(emotion, 1.0)
    eye_open = 1.0 + (eye_open - 1.0) * a
    for side in (-1, 1):
        ex, ey = cx + side * 0.17 * s, cy - 0.08 * s
        ell((ex, cy - (0.17 + brow_lift - brow_drop) * s), (0.10 * s, 0.025 * s), 55, angle=side * brow_tilt)
        ell((ex, ey), (0.10 * s, 0.055 * s), skin - 85)
        ell((ex, ey), (0.06 * s, 0.03 * s * eye_open), 30)
    ell((cx, cy + 0.10 * s), (0.06 * s, 0.03 * s), skin - 55)
    if emotion == "disgust" and a > 0:  # nose wrinkle
        ell((cx, cy + 0.04 * s), (0.05 * s, 0.01 * s), skin - 70)
    my = cy + 0.26 * s
    if emotion == "happiness" and a > 0:
        ell((cx, my - 0.04 * s), (0.15 * s, 0.09 * s * a + 0.01 * s), 60, start=10, end=170, thick=max(2, int(0.03 * s)))
    elif emotion == "sadness" and a > 0:
        ell((cx, my + 0.06 * s), (0.13 * s, 0.07 * s * a + 0.01 * s), 60, start=200, end=340, thick=max(2, int(0.03 * s)))
    elif emotion == "surprise" and a > 0:
        ell((cx, my + 0.01 * s), (0.07 * s, 0.045 * s + 0.025 * s * a), 40)
    elif emotion == "fear" and a > 0:
        ell((cx, my), (0.14 * s, 0.03 * s + 0.02 * s * a), 50)
    elif emotion == "anger" and a > 0:
        ell((cx, my), (0.11 * s, 0.018 * s), 50)
    elif emotion == "disgust" and a > 0:
        ell((cx, my - 0.01 * s), (0.12 * s, 0.03 * s), 55, angle=8 * a)
    elif emotion == "contempt" and a > 0:
        ell((cx + 0.03 * s, my), (0.12 * s, 0.035 * s), 65, angle=-10 * a)
    else:
        ell((cx, my), (0.13 * s, 0.035 * s), 70)
    img = cv2.GaussianBlur(img, (0, 0), max(0.6, 0.02 * s))
    gray = np.clip(img, 0, 255).astype(np.uint8)
    # A faint colour cast so colour paths are exercised; the gray structure is what matters.
    tint = rng.uniform(0.85, 1.0, size=3)
    bgr = np.clip(gray[:, :, None] * tint[None, None, :], 0, 255).astype(np.uint8)
    return bgr


def blank_image(canvas: tuple[int, int] = (160, 160), value: int = 128) -> np.ndarray:
    """A flat BGR image with no face in it (for "no face found" tests)."""
    return np.full((*canvas, 3), value, np.uint8)


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an image (BGR or gray uint8) with OpenCV, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cv2.imwrite could not write {path}")
    return path


def write_face(
    path: str | Path,
    emotion: str = "neutral",
    *,
    seed: int = 0,
    canvas: tuple[int, int] = (160, 160),
    face: int = 100,
    center: tuple[int, int] | None = None,
    intensity: float = 1.0,
    gray: bool = False,
) -> Path:
    """Draw a face (see `draw_face`) and write it, guaranteeing the Haar cascade finds it.

    The check runs on the image as stored (after JPEG compression for .jpg/.jpeg) with fertk's
    default `PreprocessConfig`; a miss (rare, about 1 in 300) redraws with a derived seed. Canvases
    under 64 px are written unchecked (too small for the detector; use detect="none" there).
    """
    from fertk.data.preprocess import PreprocessConfig, detect_faces

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower() or ".png"
    config = PreprocessConfig()
    for attempt in range(20):
        img = draw_face(emotion, seed=seed + 7919 * attempt, canvas=canvas, face=face, center=center,
                        intensity=intensity)
        if gray:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        ok, encoded = cv2.imencode(suffix, img)
        if not ok:
            raise OSError(f"cv2.imencode cannot write {suffix} images")
        if min(canvas) < 64:
            break
        stored = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
        if detect_faces(stored, config):
            break
    else:  # pragma: no cover - would mean draw_face itself broke
        raise RuntimeError(f"no detectable face drawn for {path}")
    path.write_bytes(encoded.tobytes())
    return path


def write_corrupt_image(path: str | Path) -> Path:
    """A file with an image name whose bytes are not an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return path


def _stable_seed(*parts: object) -> int:
    # hash() of str is salted per process; derive seeds from the text itself instead.
    text = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha1(text).digest()[:4], "little")


# ---------------------------------------------------------------------------------------------
# Layout builders


def make_folder_dataset(
    root: str | Path,
    classes: Sequence[str] = EKMAN,
    per_class: int = 2,
    subjects: int = 2,
    size: int = 96,
    *,
    splits: Sequence[str] | None = None,
    words: dict[str, str] | None = None,
    ext: str = "png",
    face_fraction: float = 0.62,
) -> Path:
    """ImageFolder tree `<root>/[<split>/]<emotion>/s<NN>_<i>.<ext>`; returns root.

    `per_class` images of each class (per split), spread round-robin over `subjects` subjects;
    the subject id is the file stem's prefix, so read it with ``subject_pattern=r"^(s\\d+)_"``.
    Folder names are Keras-style ("angry", "happy", ...) unless `words` maps canonical names to
    other spellings. Images are `size`×`size` BGR faces.
    """
    root = Path(root)
    spell = {**KERAS_WORDS, **(words or {})}
    for split in splits or [None]:
        base = root / split if split else root
        for emotion in classes:
            for i in range(per_class):
                subject = i % subjects
                write_face(base / spell.get(emotion, emotion) / f"s{subject:02d}_{i:03d}.{ext}", emotion,
                           seed=_stable_seed("folder", split, emotion, i), canvas=(size, size),
                           face=int(size * face_fraction))
    return root


def make_rafd_dataset(
    root: str | Path,
    subjects: Sequence[int] = (1, 2, 3),
    emotions: Sequence[str] = tuple(RAFD_WORDS),
    *,
    angles: Sequence[str] = ("090",),
    gazes: Sequence[str] = ("frontal",),
    size: tuple[int, int] = (192, 128),
) -> Path:
    """RaFD files `Rafd<angle>_<NN>_<ethnicity>_<gender>_<emotion>_<gaze>.jpg`; returns root.

    One image per (subject, emotion, angle, gaze); default: 3 subjects × 8 emotions, frontal.
    `size` = (height, width): RaFD portraits are taller than wide (1024×681).
    """
    root = Path(root)
    for subject in subjects:
        gender = "female" if subject % 2 else "male"
        ethnicity = "Caucasian" if subject % 3 else "Moroccan"
        for emotion in emotions:
            for angle in angles:
                for gaze in gazes:
                    name = f"Rafd{angle}_{subject:02d}_{ethnicity}_{gender}_{RAFD_WORDS[emotion]}_{gaze}.jpg"
                    write_face(root / name, emotion, seed=_stable_seed("rafd", subject, emotion, angle, gaze),
                               canvas=size, face=int(min(size) * 0.7))
    return root


def make_ckplus_dataset(
    root: str | Path,
    sequences: Sequence[tuple[str, str, str | None]] = (
        ("S005", "001", "disgust"), ("S010", "002", "happiness"), ("S010", "004", "contempt"),
        ("S011", "001", "surprise"), ("S011", "002", None)),
    *,
    frames: int = 4,
    size: tuple[int, int] = (120, 150),
) -> Path:
    """CK+ tree: cohn-kanade-images/S005/001/S005_001_0000000N.png + Emotion/.../*_emotion.txt.

    `sequences` = (subject, sequence, emotion or None); None writes no emotion file (unlabelled
    sequence). Frames ramp from neutral to the full expression; the emotion file names the last
    frame and holds the CK+ code as "   3.0000000e+00", like the real files.
    """
    root = Path(root)
    for subject, seq, emotion in sequences:
        shown = emotion or "happiness"
        for k in range(frames):
            write_face(root / "cohn-kanade-images" / subject / seq / f"{subject}_{seq}_{k + 1:08d}.png", shown,
                       seed=_stable_seed("ck", subject), canvas=size, face=int(min(size) * 0.7),
                       intensity=k / max(1, frames - 1), gray=True)
        if emotion is not None:
            label_dir = root / "Emotion" / subject / seq
            label_dir.mkdir(parents=True, exist_ok=True)
            (label_dir / f"{subject}_{seq}_{frames:08d}_emotion.txt").write_text(
                f"   {float(CKPLUS_CODE[emotion]):.7e}\n")
    return root


def make_oulu_dataset(
    root: str | Path,
    subjects: Sequence[str] = ("P001", "P002"),
    emotions: Sequence[str] = EKMAN,
    *,
    sensors: Sequence[str] = ("VL", "NI"),
    lightings: Sequence[str] = ("Strong",),
    frames: int = 3,
    size: tuple[int, int] = (120, 160),
) -> Path:
    """Oulu-CASIA tree `<root>/OriginalImg/<sensor>/<lighting>/<P001>/<Anger>/000.jpeg`; returns root."""
    root = Path(root)
    for sensor in sensors:
        for lighting in lightings:
            for subject in subjects:
                for emotion in emotions:
                    for k in range(frames):
                        path = root / "OriginalImg" / sensor / lighting / subject / OULU_WORDS[emotion] / f"{k:03d}.jpeg"
                        write_face(path, emotion, seed=_stable_seed("oulu", subject), canvas=size,
                                   face=int(min(size) * 0.7), intensity=k / max(1, frames - 1), gray=sensor == "NI")
    return root


def make_mmi_dataset(
    root: str | Path,
    sessions: Sequence[tuple[str, int, str | None]] = (
        ("1", 1, "anger"), ("2", 1, "happiness"), ("3", 2, "surprise"), ("4", 2, None), ("5", 3, "sadness")),
    *,
    frames: int = 5,
    video: bool = False,
    view: str = "0",
    size: tuple[int, int] = (120, 150),
) -> Path:
    """MMI tree `<root>/Sessions/<id>/` with session.xml, S<subj>-<id>.xml and frames or a video.

    `sessions` = (session id, subject number, emotion or None). session.xml names the subject
    and the camera view; the S###-###.xml holds ``<Metatag Name="Emotion" Value=code/>`` (none
    when emotion is None). Frames go neutral → apex (middle) → neutral, as MMI recordings do;
    `video=True` writes them as an MJPG .avi instead of frame images.
    """
    root = Path(root)
    for session_id, subject, emotion in sessions:
        folder = root / "Sessions" / session_id
        folder.mkdir(parents=True, exist_ok=True)
        name = f"S{subject:03d}-{int(session_id):03d}"
        (folder / "session.xml").write_text(
            '<?xml version="1.0" encoding="utf-8"?>\n'
            f'<session sessionId="{session_id}">\n'
            f'  <subject id="{subject}" />\n'
            f'  <track id="0" type="Video" view="{view}" filename="{name}.avi" />\n'
            f'  <annotation id="0" type="FACS" filename="{name}-oao_aucs.xml" />\n'
            '</session>\n')
        tags = f'  <Metatag Name="Emotion" Value="{MMI_CODE[emotion]}" />\n' if emotion else ""
        (folder / f"{name}.xml").write_text(
            '<?xml version="1.0" encoding="utf-8"?>\n<Session>\n'
            '  <Metatag Name="Glasses" Value="0" />\n' + tags + "</Session>\n")
        (folder / f"{name}-oao_aucs.xml").write_text('<?xml version="1.0"?>\n<ActionUnits />\n')
        shown = emotion or "happiness"
        apex = [1.0 - abs(k - (frames - 1) / 2) / max(1e-9, (frames - 1) / 2) for k in range(frames)]
        if not video:
            for k in range(frames):
                write_face(folder / "frames" / f"{name}-{k:04d}.png", shown, seed=_stable_seed("mmi", subject),
                           canvas=size, face=int(min(size) * 0.7), intensity=apex[k])
        else:
            images = [draw_face(shown, seed=_stable_seed("mmi", subject), canvas=size, face=int(min(size) * 0.7),
                                intensity=a) for a in apex]
            writer = cv2.VideoWriter(str(folder / f"{name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25,
                                     (size[1], size[0]))
            if not writer.isOpened():
                raise OSError("OpenCV cannot write MJPG .avi here")
            for img in images:
                writer.write(img)
            writer.release()
    return root


def make_affectnet_dataset(
    root: str | Path,
    rows: Sequence[int] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 6),
    *,
    split: str = "training",
    size: tuple[int, int] = (200, 240),
) -> Path:
    """AffectNet `<root>/<split>.csv` + `Manually_Annotated_Images/<n>/<hash>.jpg`; returns root.

    One row per expression code in `rows` (8-10 are not emotions). Each image has its face at a
    known place, written to the csv's face box (face_x, face_y, face_width, face_height), with
    68 made-up landmarks, valence and arousal.
    """
    root = Path(root)
    codes_to_emotion = {v: k for k, v in AFFECTNET_CODE.items()}
    csv_path = root / f"{split}.csv"
    root.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                         "facial_landmarks", "expression", "valence", "arousal"])
        for i, code in enumerate(rows):
            emotion = codes_to_emotion.get(code, "neutral")
            face = 120
            cx, cy = 90 + (i % 3) * 20, 100 + (i % 2) * 10
            rel = f"{i % 4 + 1}/{_stable_seed('an', split, i):08x}.jpg"
            write_face(root / "Manually_Annotated_Images" / rel, emotion, seed=_stable_seed("affectnet", split, i),
                       canvas=size, face=face, center=(cx, cy))
            half = int(face * 0.42)
            landmarks = ";".join(f"{cx + (k % 9) - 4:.2f};{cy + (k % 7) - 3:.2f}" for k in range(68))
            writer.writerow([rel, cx - half, cy - half, 2 * half, 2 * half, landmarks, code,
                             f"{(i % 5) / 5 - 0.4:.6f}", f"{(i % 3) / 3:.6f}"])
    return root


def make_fer2013_csv(
    root: str | Path,
    per_class: int = 2,
    classes: Sequence[str] = tuple(FER2013_CODE),
    *,
    usages: Sequence[str] = ("Training", "PublicTest", "PrivateTest"),
    name: str = "fer2013.csv",
) -> Path:
    """`<root>/fer2013.csv` with columns emotion,pixels,Usage (48×48 gray faces); returns the csv path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        row = 0
        for emotion in classes:
            for i in range(per_class):
                img = draw_face(emotion, seed=_stable_seed("fer", emotion, i), canvas=(48, 48), face=46)
                gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
                writer.writerow([FER2013_CODE[emotion], " ".join(map(str, gray.ravel().tolist())),
                                 usages[row % len(usages)]])
                row += 1
    return path


__all__ = [
    "blank_image", "draw_face", "make_affectnet_dataset", "make_ckplus_dataset", "make_fer2013_csv",
    "make_folder_dataset", "make_mmi_dataset", "make_oulu_dataset", "make_rafd_dataset",
    "write_corrupt_image", "write_face", "write_image",
]
