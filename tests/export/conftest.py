"""Engine-test fixtures: an isolated artifact cache and a tiny conv net with declared specs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fertk.engines.base import TensorSpec


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every export in these tests goes to a throw-away cache, never the user's."""
    patch = pytest.MonkeyPatch()
    patch.setenv("FERTK_CACHE_DIR", str(tmp_path_factory.mktemp("fertk-cache")))
    yield
    patch.undo()


class TinyConv(nn.Module):
    """[N, 1, 12, 12] in [0, 1] → logits [N, 4]; declares its own specs like the pipeline does."""

    input_specs = (TensorSpec("image", "float32", ("batch", 1, 12, 12)),)
    output_specs = (TensorSpec("logits", "float32", ("batch", 4)),)
    input_ranges = {"image": (0.0, 1.0)}
    task = "classifier"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = nn.functional.max_pool2d(y, 2)
        return self.head(y.flatten(1))


@pytest.fixture
def tiny_net() -> TinyConv:
    """A fresh tiny classifier (eval mode)."""
    return TinyConv().eval()
