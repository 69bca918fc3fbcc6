"""The model card of a StyleGAN2 generator: config, provenance, inputs and outputs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fertk.models.registry import ModelCard, count_parameters
from fertk.models.stylegan2.network import StyleGAN2Generator
from fertk.models.weights import provenance


def stylegan2_card(model: StyleGAN2Generator, *, weights: Path | None = None,
                   extra: Mapping[str, Any] | None = None) -> ModelCard:
    """The card describing a StyleGAN2 generator: config, provenance, inputs and outputs."""
    cfg = model.config
    inputs: list[dict[str, Any]] = [{"name": "z", "dtype": "float32", "shape": ["batch", cfg.z_dim],
                                     "distribution": "standard normal"}]
    if cfg.c_dim > 0:
        inputs.append({"name": "c", "dtype": "float32", "shape": ["batch", cfg.c_dim],
                       "description": "conditioning label (one-hot for class-conditional models)"})
    res = cfg.img_resolution
    return ModelCard(
        name="stylegan2",
        architecture="StyleGAN2Generator",
        config=cfg.to_kwargs(),
        **provenance(weights),
        inputs=inputs,
        outputs=[{"name": "img", "dtype": "float32", "shape": ["batch", cfg.img_channels, res, res],
                  "nominal_range": [-1.0, 1.0], "description": "linear output, not clamped"}],
        extra={"parameters": count_parameters(model), "num_ws": model.num_ws, "w_dim": cfg.w_dim,
               "layout": "NVlabs stylegan2-ada-pytorch Generator state dict",
               "default_noise_mode": "const", "num_fp16_res": cfg.synthesis_kwargs.num_fp16_res,
               "fp16_layers": model.fp16_layers.describe(), **dict(extra or {})},
    )
