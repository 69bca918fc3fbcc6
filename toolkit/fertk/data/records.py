"""The one record type every dataset reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FaceRecord:
    """One labelled face: where its pixels are, its canonical emotion, who it is, where from.

    Exactly one of `path` (an image file) or `pixels` (an HxW or HxWx3 uint8 array, for datasets
    stored inline such as FER2013's csv) is set.
    """

    label: str
    subject: str
    source: str
    path: Path | None = None
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.pixels is None):
            raise ValueError("FaceRecord needs exactly one of path or pixels")

    @property
    def key(self) -> str:
        """A stable identifier: the file path, or source/subject/index for inline pixels."""
        if self.path is not None:
            return str(self.path)
        return f"{self.source}:{self.subject}:{self.meta.get('index', '')}"
