"""One progress protocol for every long job: the library emits events, only the CLI renders them.

A job takes ``progress: Progress | None`` and calls `emit`; it never draws bars or prints. `kind`
is the job's own small vocabulary (start | advance | done | skip | failed | message | ...);
`done`/`total` count `unit`s (faces, cells, epochs, models) when the job knows them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    """One update from a long job."""

    kind: str
    message: str = ""
    done: int = 0
    total: int = 0
    unit: str = ""
    data: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[ProgressEvent], None]


def emit(progress: Progress | None, kind: str, message: str = "", *, done: int = 0, total: int = 0,
         unit: str = "", **data: Any) -> None:
    """Send one event to `progress` (nothing when it is None)."""
    if progress is not None:
        progress(ProgressEvent(kind, message, done, total, unit, data))


def say(progress: Progress | None, message: str) -> None:
    """A free-text 'message' event (a step of a job that has no count)."""
    emit(progress, "message", message)
