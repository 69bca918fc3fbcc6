"""Configuration of the procedural face model and its identity vectors: rendering options, framings,
seeded identities, and the static feature window a style's faces fit in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from fertk.core.errors import InvalidInputError
from fertk.models.procedural.styles import IDENTITY_PARAMS, STYLES

IDENTITY_DIM = len(IDENTITY_PARAMS)
IDENTITY_INDEX = {name: i for i, name in enumerate(IDENTITY_PARAMS)}

# Framing: (zoom, face-unit v at the image centre, pose-jitter factor for shift and scale).
# "face" is the box a face detector draws: OpenCV's Haar frontal-face cascade (what `fer` runs
# before its classifier; FER2013's crops are of this kind) boxes portrait renders at v in
# [-0.54, +0.66..0.68], u in +-0.60..0.61 (median over identities, expressions and both styles, at
# 160 and 256 px; tests/models/test_procedural.py checks it), so "face" shows v in [-0.54, 0.68],
# brows to chin, with half the translation/scale jitter (a detector re-centres the face; roll stays).
FRAMINGS: dict[str, tuple[float, float, float]] = {
    "portrait": (1.0, 0.0, 1.0),
    "face": (1.65, 0.07, 0.5),
}


@dataclass
class ProceduralConfig:
    """Rendering options: output size, colour or gray, capture style."""

    resolution: int = 64     # output side in pixels (square), any size from 16 to 1024
    color: bool = True       # True: [N, 3, H, W] RGB; False: [N, 1, H, W] luminance (3x less work)
    style: str = "studio"    # capture conditions: one of STYLES ("studio", "natural")
    framing: str = "portrait"  # "portrait": head and shoulders; "face": a face detector's box (brows to chin)

    def __post_init__(self) -> None:
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int):
            raise InvalidInputError(f"procedural resolution must be an int, got {self.resolution!r}")
        if not 16 <= self.resolution <= 1024:
            raise InvalidInputError(f"procedural resolution {self.resolution} out of range",
                                    hint="use a size between 16 and 1024 pixels")
        if self.style not in STYLES:
            raise InvalidInputError(f"unknown procedural style {self.style!r}",
                                    hint="choose one of " + ", ".join(STYLES))
        if self.framing not in FRAMINGS:
            raise InvalidInputError(f"unknown procedural framing {self.framing!r}",
                                    hint="choose one of " + ", ".join(FRAMINGS))
        self.color = bool(self.color)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def random_identities(n: int, seed: int = 0) -> torch.Tensor:
    """n identity vectors [n, identity_dim] drawn uniformly from [0, 1) with a seeded generator."""
    if n < 0:
        raise InvalidInputError(f"cannot draw {n} identities")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(n, IDENTITY_DIM, generator=generator)


def identities_from_seeds(seeds: Sequence[int] | np.ndarray) -> torch.Tensor:
    """One identity vector per integer seed [len(seeds), identity_dim]; same seed, same face.

    A counter-based hash (splitmix64 of seed and column), so it is vectorised, independent of
    batch composition and identical on every platform.
    """
    seeds64 = np.asarray(seeds, dtype=np.int64).astype(np.uint64).reshape(-1, 1)
    column = np.arange(IDENTITY_DIM, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        z = seeds64 * np.uint64(0x9E3779B97F4A7C15) + (column + np.uint64(1)) * np.uint64(0xD1B54A32D192ED03)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    # Top 24 bits -> exactly representable float32 in [0, 1).
    values = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    return torch.from_numpy(values)


def to_gray01(images: torch.Tensor) -> torch.Tensor:
    """Model output [N, C, H, W] in [-1, 1] -> gray [N, 1, H, W] in [0, 1] (mean of channels)."""
    return ((images.mean(dim=1, keepdim=True) + 1.0) * 0.5).clamp(0.0, 1.0)


def feature_window(ranges: dict[str, tuple[float, float]], res: int, zoom: float = 1.0,
                    centre_v: float = 0.0) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1): the frame box that bounds every feature for parameters within `ranges`.

    Bounds in face units (the frame's unit) from the extreme parameter values and the largest AU
    displacements in `_render`, plus a margin for edge ramps and crease widths. Tested against a
    full-frame render at the corners of the parameter box.
    """
    hi = {name: r[1] for name, r in ranges.items()}
    lo = {name: r[0] for name, r in ranges.items()}
    yaw = max(abs(lo["yaw"]), abs(hi["yaw"]))
    top = lo["eye_height"] - hi["brow_height"] - 0.26                  # forehead-line mask top
    mouth = hi["eye_height"] + hi["nose_length"] + hi["mouth_height"]
    bottom = mouth + 0.20 + 1.25 * hi["lip_thickness"] + 0.07          # jaw drop, lower lip, shadow
    half_width = max(
        hi["eye_spacing"] + 1.6 * hi["eye_size"] + 0.12 * yaw,          # eye sockets, brows
        hi["eye_spacing"] + 1.25 * hi["eye_size"] + 0.05 + 0.12 * yaw,  # crow's feet
        hi["eye_spacing"] + 0.14 + 0.12 * yaw,                         # cheeks
        1.6 * hi["mouth_width"] + hi["lip_thickness"] + 0.12 * yaw,    # widest mouth
        0.11 + 0.20 * yaw,                                             # nose-side shadow
    )
    margin = 1.0 + hi["blur"]                                          # pixels: edge ramps
    half = res / 2.0                                                    # frame y = (v - centre_v) * zoom
    r0 = max(0, math.floor(((top - centre_v) * zoom + 1.0) * half - margin))
    r1 = min(res, math.ceil(((bottom - centre_v) * zoom + 1.0) * half + margin))
    c0 = max(0, math.floor((1.0 - half_width * zoom) * half - margin))
    return r0, r1, c0, res - c0
