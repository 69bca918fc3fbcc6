"""Helpers shared by the synth tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

# Bookkeeping that legitimately differs between runs (timings, rank ids, the engine's thread count).
VOLATILE = (".fertk/records/", "dataset_card.json")


def dataset_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of a dataset that must be byte-identical between equivalent runs."""
    out = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(VOLATILE):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def cli_script(tmp_path: Path) -> Path:
    """A script that runs the fertk CLI (for subprocess and torchrun tests)."""
    script = tmp_path / "fertk_cli.py"
    script.write_text("from fertk.cli import main\nmain()\n")
    return script


@pytest.fixture
def hashes():
    """The dataset_hashes function (fixtures are how importlib-mode tests share helpers)."""
    return dataset_hashes
