"""Small experiment configs whose data `fertk synth` makes in a second or two (16-px procedural faces)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

_GEN = 'format = "npy"\noutput_size = 16\ncrop = [0.3, 0.22, 0.56, 0.56]'


def small_config_text(*, k: str = "[1, 2]", repeats: int = 1, epochs: int = 2, shuffled: bool = False,
                      experiments: str = '["real", "synthetic", "mix"]', extra_train: str = "") -> str:
    """Real 8 identities (split 4/2/2), a 4-identity cross-db set, a synthetic pool sized automatically."""
    control = f"""
[[synthetic]]
name = "shuffled"
path = "data/pool"
shuffle_labels = true
[synthetic.generate]
seed = 3
style = "natural"
{_GEN}
""" if shuffled else ""
    return f"""
[experiment]
name = "small"
out = "run"
seed = 5
repeats = {repeats}
k = {k}
classes = ["happiness", "sadness", "surprise"]
experiments = {experiments}

[split]
sizes = [4, 2, 2]

[[real]]
name = "studio"
path = "data/real"
[real.generate]
n = 8
seed = 1
style = "studio"
{_GEN}

[[cross_db]]
name = "natural"
path = "data/cross"
[cross_db.generate]
n = 4
seed = 2
style = "natural"
{_GEN}

[[synthetic]]
name = "natural"
path = "data/pool"
[synthetic.generate]
seed = 3
style = "natural"
{_GEN}
{control}
[train]
variant = "paper"
input_size = 16
epochs = {epochs}
batch_size = 8
lr = 1e-3
patience = 0
device = "cpu"
{extra_train}
"""


@pytest.fixture
def small_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a small experiment config into tmp_path (options as in small_config_text); returns its path."""

    def write(**options: object) -> Path:
        path = tmp_path / "experiment.toml"
        path.write_text(small_config_text(**options))  # type: ignore[arg-type]
        return path

    return write
