"""The label vocabulary: six Ekman classes in a fixed order, optional neutral/contempt, and each
dataset's native label codes mapped onto it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fertk.core.errors import InvalidInputError

EKMAN: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
NEUTRAL = "neutral"
CONTEMPT = "contempt"
ALL_EMOTIONS: tuple[str, ...] = EKMAN + (NEUTRAL, CONTEMPT)

# Spellings found in public datasets and folder trees (Keras/ImageFolder dumps, Kaggle copies).
SYNONYMS: dict[str, str] = {
    "anger": "anger", "angry": "anger", "angery": "anger", "an": "anger", "ang": "anger",
    "mad": "anger",
    "disgust": "disgust", "disgusted": "disgust", "disgusting": "disgust", "di": "disgust",
    "dis": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear", "fe": "fear",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness", "ha": "happiness",
    "hap": "happiness", "smile": "happiness",
    "sadness": "sadness", "sad": "sadness", "sa": "sadness",
    "surprise": "surprise", "surprised": "surprise", "suprise": "surprise", "su": "surprise",
    "sur": "surprise",
    "neutral": "neutral", "ne": "neutral", "neu": "neutral", "calm": "neutral",
    "contempt": "contempt", "contemptuous": "contempt", "co": "contempt",
}

# Native label codes / names of each dataset, as documented by their authors.
CKPLUS_CODES: dict[int, str] = {
    0: NEUTRAL, 1: "anger", 2: CONTEMPT, 3: "disgust", 4: "fear", 5: "happiness",
    6: "sadness", 7: "surprise",
}
FER2013_CODES: dict[int, str] = {
    0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness", 5: "surprise", 6: NEUTRAL,
}
# AffectNet expression column; 8 = None, 9 = Uncertain, 10 = No-Face are not emotions.
AFFECTNET_CODES: dict[int, str] = {
    0: NEUTRAL, 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear", 5: "disgust",
    6: "anger", 7: CONTEMPT,
}
# MMI's six basic-emotion codes in its session metadata.
MMI_CODES: dict[int, str] = {
    1: "anger", 2: "disgust", 3: "fear", 4: "happiness", 5: "sadness", 6: "surprise",
}
# The StarGAN authors' checkpoints: alphabetical ImageFolder order of their AffectNet-HQ dump.
STARGAN_AUTHORS_ORDER: tuple[str, ...] = (
    "anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
)


def normalize_emotion(name: str) -> str:
    """Map a dataset spelling ("Angry", "angery", "HAPPY") to the canonical name, or raise."""
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in SYNONYMS:
        raise InvalidInputError(
            f"unknown emotion label {name!r}",
            hint="expected one of " + ", ".join(ALL_EMOTIONS) + " (or a common spelling of one)",
        )
    return SYNONYMS[key]


def is_emotion(name: str) -> bool:
    """True when `name` is a known spelling of an emotion."""
    try:
        normalize_emotion(name)
    except InvalidInputError:
        return False
    return True


def label_set(*, neutral: bool = False, contempt: bool = False) -> tuple[str, ...]:
    """The class list in fixed order: the six Ekman classes, then neutral, then contempt."""
    labels = list(EKMAN)
    if neutral:
        labels.append(NEUTRAL)
    if contempt:
        labels.append(CONTEMPT)
    return tuple(labels)


def parse_emotions(spec: str | Iterable[str] | None, *, default: Sequence[str] = EKMAN) -> tuple[str, ...]:
    """Parse a comma list ("anger,happy") or iterable into canonical names, order preserved."""
    if spec is None:
        return tuple(default)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        if not str(item).strip():
            continue
        canonical = normalize_emotion(str(item))
        if canonical not in out:
            out.append(canonical)
    if not out:
        raise InvalidInputError("no emotions given", hint="e.g. --emotions anger,happiness")
    return tuple(out)


def class_index(classes: Sequence[str]) -> dict[str, int]:
    """Name → index for a class list."""
    return {name: i for i, name in enumerate(classes)}
