"""Datasets onto a model's terms: gray faces at its input side, labels matched by name onto its
classes, several datasets combined into one, and the counts a card records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from fertk.core.errors import DatasetError, InvalidInputError
from fertk.data.options import arrays_name, canonical_class, dataset_info, dataset_name, unique_names
from fertk.data.records import FaceArrays

def faces_to_gray(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 faces [N, H, W] or [N, H, W, 3] (RGB) -> uint8 [N, 1, size, size] gray, resized if needed."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise InvalidInputError(f"faces must be uint8, got {images.dtype}")
    if images.ndim == 4 and images.shape[-1] == 3:
        # ITU-R BT.601 luma, the weights OpenCV's RGB2GRAY uses.
        gray = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        images = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    elif images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise InvalidInputError(f"faces must be [N, H, W] or [N, H, W, 3], got shape {list(images.shape)}")
    if images.shape[1:] != (size, size) and len(images):
        import cv2

        shrink = images.shape[1] >= size and images.shape[2] >= size
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        images = np.stack([cv2.resize(img, (size, size), interpolation=interp) for img in images])
    return np.ascontiguousarray(images.reshape(len(images), 1, size, size))


def map_labels(arrays: FaceArrays, classes: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Dataset labels as indices into `classes` (matched by name); -1 marks classes outside it.

    Returns (indices, excluded) where excluded counts samples per dataset class not in `classes`.
    """
    target = {canonical_class(c): i for i, c in enumerate(classes)}
    lookup = np.array([target.get(canonical_class(c), -1) for c in arrays.classes] + [-1], dtype=np.int64)
    labels = np.asarray(arrays.labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(arrays.classes)):
        raise DatasetError(
            f"{arrays_name(arrays)}: label index out of range for its {len(arrays.classes)} classes"
        )
    mapped = lookup[labels] if len(labels) else labels.copy()
    excluded: dict[str, int] = {}
    for name, count in zip(arrays.classes, np.bincount(labels, minlength=len(arrays.classes))):
        if target.get(canonical_class(name), -1) < 0 and count:
            excluded[name] = int(count)
    return mapped, excluded


def summarize_arrays(arrays: FaceArrays) -> dict[str, Any]:
    """Counts for a card: samples, per class, per source, distinct subjects."""
    sources = Counter(map(str, arrays.sources))
    return {
        "n": int(len(arrays)),
        "classes": arrays.class_counts(),
        "sources": dict(sorted(sources.items())),
        "subjects": int(len({(str(a), str(b)) for a, b in zip(arrays.sources, arrays.subjects)})),
    }


def concat_arrays(parts: Sequence[FaceArrays], classes: Sequence[str], size: int) -> FaceArrays:
    """One FaceArrays from several (e.g. real + synthetic), labels matched by name onto `classes`,
    faces gray at `size`."""
    if not parts:
        raise DatasetError("no dataset to combine")
    if len(parts) == 1 and tuple(parts[0].classes) == tuple(classes) and parts[0].images.shape[1:] == (size, size):
        return parts[0]
    paths = [str(dataset_info(p).get("path", f"dataset {i}")) for i, p in enumerate(parts)]
    twice = [p for p, n in Counter(paths).items() if n > 1]
    if twice:
        raise DatasetError(f"{twice[0]} is given twice", hint="give each dataset once")
    keys_of = [list(p.keys or [f"{i}" for i in range(len(p))]) for p in parts]
    sources_of = [np.asarray(p.sources, dtype=str) for p in parts]
    if len(parts) > 1 and sum(map(len, keys_of)) != len({k for keys in keys_of for k in keys}):
        # Two datasets name samples alike (e.g. two `fertk synth` runs with other seeds): qualify
        # keys and sources by dataset so samples and subjects stay distinct.
        names = unique_names([dataset_name(p) for p in paths], taken=set())
        keys_of = [[f"{name}::{k}" for k in keys] for name, keys in zip(names, keys_of)]
        sources_of = [np.char.add(src, f"@{name}") if len(src) else src for name, src in zip(names, sources_of)]
    images, labels = [], []
    for part in parts:
        mapped, excluded = map_labels(part, classes)
        if excluded:
            raise DatasetError(f"{dataset_info(part).get('path', 'a dataset')}: labels {sorted(excluded)} "
                               f"are not among the classes {list(classes)}")
        images.append(faces_to_gray(part.images, size)[:, 0])
        labels.append(mapped)
    return FaceArrays(np.concatenate(images), np.concatenate(labels), tuple(classes),
                      np.concatenate([np.asarray(p.subjects, dtype=str) for p in parts]),
                      np.concatenate(sources_of), [k for keys in keys_of for k in keys], {"path": ", ".join(paths)})
