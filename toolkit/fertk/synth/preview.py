"""`--preview grid.png`: identities (rows) × emotions (columns), like the paper's Figure 3."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fertk.data.shards import write_bytes_atomic
from fertk.core.errors import DatasetError, InvalidInputError

PREVIEW_IDENTITIES = 6
HEADER = 22     # pixels of column titles
SCALE = 2       # nearest-neighbour magnification of each 64x64 face
GAP = 2


def preview_grid(faces: np.ndarray, emotions: tuple[str, ...]) -> np.ndarray:
    """[rows, E, S, S] uint8 faces → one uint8 gray image with an emotion title over each column."""
    import cv2

    rows, count, side, _ = faces.shape
    cell = side * SCALE
    height = HEADER + rows * (cell + GAP)
    width = count * (cell + GAP) - GAP
    grid = np.full((height, width), 255, dtype=np.uint8)
    for c, emotion in enumerate(emotions):
        x0 = c * (cell + GAP)
        (tw, _th), _ = cv2.getTextSize(emotion, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        cv2.putText(grid, emotion, (x0 + max(0, (cell - tw) // 2), HEADER - 7), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, 0, 1, cv2.LINE_AA)
        for r in range(rows):
            y0 = HEADER + r * (cell + GAP)
            grid[y0:y0 + cell, x0:x0 + cell] = np.kron(faces[r, c], np.ones((SCALE, SCALE), dtype=np.uint8))
    return grid


def check_preview_path(path: str | Path) -> Path:
    """Refuse a --preview path that cannot be written, before any generation starts.

    The file must be a .png, must not be a directory, and its folder (or, when the folder does not
    exist yet, the nearest existing parent, where the folder will be made) must be a directory this
    process can create files in: checked by creating and removing a probe file, not by permission
    bits, which say nothing about read-only mounts or what root may do."""
    import tempfile

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidInputError(f"--preview must name a .png file, got {path}")
    if path.is_dir():
        raise InvalidInputError(f"--preview {path} is a directory", hint="name a file, e.g. DIR/preview.png")
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DatasetError(f"cannot write --preview {path}: {folder} is not a directory",
                           hint="choose a --preview path in a writable folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fertk-preview-probe-", dir=folder)
    except OSError as exc:
        raise DatasetError(f"cannot write --preview {path}: {exc.strerror or exc} ({folder})",
                           hint="choose a --preview path in a writable folder") from None
    os.close(fd)
    os.unlink(probe)
    return path


def write_preview(path: str | Path, generator: Any, plan: Any, identities: int = PREVIEW_IDENTITIES) -> Path:
    """Generate the first identities of the plan (as the dataset has them) and save the grid as PNG."""
    import cv2

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidInputError(f"--preview must name a .png file, got {path}")
    ids = np.arange(min(identities, plan.n), dtype=np.int64)
    faces, _rows = generator.generate(ids)
    ok, buf = cv2.imencode(".png", preview_grid(faces, plan.emotions))
    if not ok:
        raise InvalidInputError("could not encode the preview grid")
    write_bytes_atomic(path, buf.tobytes(), fsync=False)
    return path
