"""The one place progress is drawn: library jobs emit `fertk.core.progress` events, this renders them.

`progress_display(title)` yields the callback to hand a job. Events with a total move a bar on
stderr (description = the event's message, the unit's count, rate and ETA); other events print
one line each, led by the kind ("start", "done", "skip", "failed", ...; "message" and "row"
lines are the text alone). Off (enabled=False, or
stderr not a terminal and `lines=False`) it yields a callback that drops everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fertk.cli.options import err
from fertk.core.progress import Progress, ProgressEvent

# Kinds that only move the bar; every other kind is also worth a line of its own.
QUIET_KINDS = frozenset({"advance"})
# Kinds whose lines are plain text: their kind would read as noise ("message Loading ...").
UNLABELLED_KINDS = frozenset({"message", "row"})


@contextmanager
def progress_display(title: str, *, enabled: bool = True, lines: bool = True,
                     describe: Callable[[ProgressEvent], str] | None = None) -> Iterator[Progress]:
    """A progress callback drawing `title`'s bar (and event lines) on stderr while the block runs."""
    if not enabled:
        yield lambda event: None
        return
    from rich.markup import escape
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bars, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bars = Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)
    task = bars.add_task(title, total=None, unit="")

    def on_event(event: ProgressEvent) -> None:
        if event.total:
            text = describe(event) if describe is not None else (event.message or title)
            bars.update(task, completed=event.done, total=event.total, unit=event.unit, description=escape(text))
        if lines and event.kind not in QUIET_KINDS and event.message:
            label = "" if event.kind in UNLABELLED_KINDS else f"[dim]{escape(event.kind)}[/] "
            bars.console.print(label + escape(event.message), highlight=False)

    with bars:
        yield on_event
