"""Shared test setup: markers that skip with a reason, small thread counts, golden paths."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from fertk.core.specs import TensorSpec

REPO = Path(__file__).resolve().parents[1]
# Golden vectors made by the official StarGAN / StyleGAN2-ADA code (weights, inputs, outputs; no
# upstream source): a copy travels with the tests; FERTK_GOLDEN points elsewhere.
GOLDEN = Path(os.environ.get("FERTK_GOLDEN", Path(__file__).resolve().parent / "golden"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device; none visible to torch"))
        if "trt" in item.keywords and not (has_trt and has_cuda):
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA device"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep preprocess/artifact caches of the test session out of the user's cache directory."""
    cache = tmp_path_factory.mktemp("fertk-cache")
    os.environ["FERTK_CACHE_DIR"] = str(cache)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The golden-vector folder, or skip when this checkout has none beside it."""
    if not GOLDEN.is_dir():
        pytest.skip(f"golden vectors not found at {GOLDEN} (set FERTK_GOLDEN)")
    return GOLDEN


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
