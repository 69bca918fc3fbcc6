"""Procedural face model: FACS action units on a parametric face, drawn with tensor ops, no weights.

The embedded default generator of fertk and the test world where the right answer is known. An
identity vector (uniform [0, 1), mapped in-graph to face shape, skin, eyes, brows, nose, mouth,
hair, lighting, pose and capture conditions) and an action-unit vector (intensities in [0, 1])
give an image in [-1, 1]; the renderer is described in `renderer`.

Modules: `styles` (identity parameters, per-style ranges, palettes), `aus` (action units, EMFACS
prototypes, crease weights), `config` (options, framings, identity vectors, feature window),
`draw` (shape coverage, crease masks), `renderer` (the `ProceduralFaces` module). This package
registers the model as "procedural".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fertk.core.errors import InvalidInputError
from fertk.models.procedural.aus import ACTION_UNITS, AU_DIM, EMOTION_PROTOTYPES, action_units, expression_aus
from fertk.models.procedural.config import (
    FRAMINGS,
    IDENTITY_DIM,
    ProceduralConfig,
    identities_from_seeds,
    random_identities,
    to_gray01,
)
from fertk.models.procedural.renderer import ProceduralFaces
from fertk.models.procedural.styles import IDENTITY_PARAMS, STYLE_RANGES, STYLES
from fertk.models.registry import ModelCard, register_model

__all__ = [
    "ACTION_UNITS",
    "AU_DIM",
    "EMOTION_PROTOTYPES",
    "FRAMINGS",
    "IDENTITY_DIM",
    "IDENTITY_PARAMS",
    "STYLES",
    "STYLE_RANGES",
    "ProceduralConfig",
    "ProceduralFaces",
    "action_units",
    "build_procedural",
    "expression_aus",
    "identities_from_seeds",
    "procedural_card",
    "random_identities",
    "to_gray01",
]


def procedural_card(model: ProceduralFaces) -> ModelCard:
    """The card describing a procedural face model (config, I/O columns, emotion prototypes)."""
    cfg = model.config
    return ModelCard(
        name="procedural",
        architecture="ProceduralFaces",
        config=cfg.to_dict(),
        weights_sha256=None,
        source="procedural",
        inputs=[
            {"name": "identity", "dtype": "float32", "shape": ["batch", IDENTITY_DIM], "range": [0.0, 1.0],
             "columns": list(IDENTITY_PARAMS)},
            {"name": "au", "dtype": "float32", "shape": ["batch", AU_DIM], "range": [0.0, 1.0],
             "columns": list(ACTION_UNITS)},
        ],
        outputs=[{"name": "image", "dtype": "float32",
                  "shape": ["batch", model.channels, cfg.resolution, cfg.resolution], "range": [-1.0, 1.0],
                  "channels": "rgb" if cfg.color else "luminance"}],
        extra={"emotion_prototypes": {name: list(aus) for name, aus in EMOTION_PROTOTYPES.items()}},
    )


@register_model("procedural", description="Procedural FACS face model: identity + action units -> face (no weights)",
                task="generator", default_config=ProceduralConfig().to_dict())
def build_procedural(weights: Path | None = None, **config: Any) -> tuple[ProceduralFaces, ModelCard]:
    """Registry builder: the procedural model from config overrides; it has no weights."""
    if weights is not None:
        raise InvalidInputError(f"the procedural face model has no weights, got {weights}",
                                hint="build it with weights=None (no --weights)")
    known = set(ProceduralConfig.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise InvalidInputError(f"unknown procedural config option(s): {', '.join(unknown)}",
                                hint="known options: " + ", ".join(sorted(known)))
    model = ProceduralFaces(ProceduralConfig(**config)).eval()
    return model, procedural_card(model)
