"""Every registered model builds from its default config, has a card, and runs on inputs made from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fertk.core.errors import InvalidInputError
from fertk.models.registry import ModelCard, get_entry, list_models, load_model

MODELS = list_models()


def _input_from_spec(spec: dict, batch: int, rng: np.random.Generator) -> torch.Tensor:
    shape = [batch if not isinstance(d, int) else d for d in spec["shape"]]
    low, high = spec.get("range", [0.0, 1.0])
    data = rng.uniform(low, high, size=shape).astype(spec.get("dtype", "float32"))
    return torch.from_numpy(data)


def test_registry_lists_the_builtin_families() -> None:
    assert "fer-cnn" in MODELS
    with pytest.raises(InvalidInputError, match="unknown model 'no-such-model'") as info:
        get_entry("no-such-model")
    assert "fer-cnn" in (info.value.hint or "")


@pytest.mark.parametrize("name", MODELS)
def test_each_model_builds_and_runs_from_its_card(name: str) -> None:
    model, card = load_model(name)
    assert isinstance(card, ModelCard) and card.name
    assert card.inputs and card.outputs, f"{name}: card must declare inputs and outputs"
    rng = np.random.default_rng(0)
    inputs = [_input_from_spec(spec, 2, rng) for spec in card.inputs]
    with torch.no_grad():
        result = model.eval()(*inputs)
    outputs = result if isinstance(result, (tuple, list)) else [result]
    assert len(outputs) >= 1
    for spec, value in zip(card.outputs, outputs):
        assert value.shape[0] == 2, f"{name}: output {spec['name']} lost the batch axis"
        fixed = [d for d in spec["shape"][1:]]
        assert [d for d in value.shape[1:]] == [d if isinstance(d, int) else v
                                                 for d, v in zip(fixed, value.shape[1:])]
        assert torch.isfinite(value.float()).all()
    round_trip = ModelCard.from_dict(card.to_dict())
    assert round_trip.to_dict() == card.to_dict()
