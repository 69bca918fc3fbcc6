"""The CLI's progress renderer: event lines read as text, led by their kind only where it says something."""

from __future__ import annotations

import pytest

from fertk.cli.progress import progress_display
from fertk.core.progress import ProgressEvent


def test_message_and_row_lines_are_the_text_alone_other_kinds_keep_their_label(capsys: pytest.CaptureFixture) -> None:
    with progress_display("work") as on_event:
        on_event(ProgressEvent(kind="message", message="loading the judge"))
        on_event(ProgressEvent(kind="row", message="[fer-cnn] ort-cpu fp32 batch 32: 1.0 ms"))
        on_event(ProgressEvent(kind="skip", message="shard 3 already done"))
        on_event(ProgressEvent(kind="advance", message="never printed"))
    lines = [line.strip() for line in capsys.readouterr().err.splitlines()]
    assert "loading the judge" in lines
    assert "[fer-cnn] ort-cpu fp32 batch 32: 1.0 ms" in lines
    assert "skip shard 3 already done" in lines
    assert not any(line.startswith(("message ", "row ")) for line in lines)
    assert not any("never printed" in line for line in lines)


def test_a_disabled_display_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    with progress_display("work", enabled=False) as on_event:
        on_event(ProgressEvent(kind="message", message="hidden"))
    assert capsys.readouterr().err == ""
