"""Engines for synth: the fused generation graph and the optional FER quality-filter scorer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fertk.engines.base import Engine, TensorSpec
from fertk.errors import CheckpointError


def resolve_device(device: str, local_rank: int, world_size: int) -> str:
    """'auto' → cuda when visible else cpu; under torchrun, 'cuda' → this rank's own GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world_size > 1:
        device = f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    return device


def auto_cpu_backend(generator: str) -> str:
    """The backend `--backend auto` runs a generation graph on when the device is the CPU.

    Measured per graph, not per machine (benchmarks/official, benchmarks/synth): the GAN graph
    (StyleGAN2 → StarGAN, conv-bound) runs faster on onnxruntime than on eager torch; the
    procedural graph (a long elementwise chain) runs ~2x faster on eager torch than on onnxruntime.
    """
    return "ort" if generator == "stylegan2" else "torch"


def open_generation_engine(module: torch.nn.Module, *, backend: str, device: str, precision: str,
                           **opts: Any) -> Engine:
    """An engine over the fused generation graph (specs from the module)."""
    if backend == "auto" and str(device or "cpu").startswith("cpu") and precision == "fp32":
        backend = auto_cpu_backend(str(module.config.generator))
    return _open(module, backend=backend, device=device, precision=precision,
                 input_specs=module.input_specs, output_specs=module.output_specs, **opts)


def _open(module: torch.nn.Module, **kwargs: Any) -> Engine:
    from fertk.engines import open_engine

    return open_engine(module, **kwargs)


class FaceScorer:
    """Scores faces with a FER CNN: probability of each face's intended emotion."""

    def __init__(self, weights: str | Path, *, backend: str, device: str, precision: str) -> None:
        from fertk.models.fer_cnn import load_fer_model

        path = Path(weights)
        if not path.exists():
            raise CheckpointError(f"filter model not found: {path}", hint="check --filter")
        model, card = load_fer_model(path)
        self.card = card
        self.classes: tuple[str, ...] = tuple(model.config.classes)
        size = model.config.input_size
        self.input_size = size
        self.engine = _open(
            model, backend=backend, device=device, precision=precision,
            input_specs=(TensorSpec("image", "float32", ("batch", 1, size, size)),),
            output_specs=(TensorSpec("logits", "float32", ("batch", len(self.classes))),),
        )

    def columns(self, emotions: tuple[str, ...]) -> list[tuple[int, int]]:
        """(emotion column, model class index) for every emotion the model knows."""
        return [(col, self.classes.index(e)) for col, e in enumerate(emotions) if e in self.classes]

    def score(self, faces: np.ndarray, emotions: tuple[str, ...]) -> np.ndarray:
        """[B, E] float32 softmax probability of the intended emotion (NaN where the model lacks it)."""
        batch, count, height, width = faces.shape
        if (height, width) != (self.input_size, self.input_size):
            raise CheckpointError(f"the filter model takes {self.input_size}px faces, synth makes {height}px")
        images = (faces.reshape(batch * count, 1, height, width).astype(np.float32) * np.float32(1 / 255))
        logits = np.asarray(self.engine.run({"image": images})["logits"], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        probs = probs.reshape(batch, count, -1)
        out = np.full((batch, count), np.nan, dtype=np.float32)
        for col, cls in self.columns(emotions):
            out[:, col] = probs[:, col, cls]
        return out

    def describe(self) -> dict[str, Any]:
        """Card and engine of the scorer."""
        return {"model": self.card.to_dict(), "engine": self.engine.describe()}

    def close(self) -> None:
        """Release the engine."""
        self.engine.close()
