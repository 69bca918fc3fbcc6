"""Shared setup of the CLI tests that read datasets and write artifacts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Cheap settings for `fertk eval`: the fixture faces are drawn centred, so no face detector is needed.
FAST = ["--detect", "none", "--no-progress"]


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A cache directory of the test's own (artifacts and preprocessed sets never leak between tests)."""
    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "cache"))
    yield
