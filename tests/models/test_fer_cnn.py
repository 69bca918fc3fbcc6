"""The Table-1 CNN: parameter counts of both variants, shapes, save/load round trip and mismatch errors."""

from __future__ import annotations

import pytest
import torch

from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.models.fer_cnn import FerCNN, FerCNNConfig, load_fer_model, save_fer_model
from fertk.models.registry import count_parameters
from fertk.models.registry import load_model


@pytest.mark.parametrize(("variant", "expected"), [("paper", 8_636_038), ("authors-code", 4_966_022)])
def test_parameter_counts_match_the_paper_and_the_authors_code(variant: str, expected: int) -> None:
    assert count_parameters(FerCNN(FerCNNConfig(variant=variant))) == expected


def test_paper_variant_keeps_table1_shapes() -> None:
    model = FerCNN(FerCNNConfig(variant="paper")).eval()
    x = torch.rand(3, 1, 64, 64)
    shapes = []
    h = x
    for layer in model.features:
        h = layer(h)
        if isinstance(layer, torch.nn.MaxPool2d):
            shapes.append(tuple(h.shape[1:]))
    # Table 1: inputs to layers 5, 7 and the flatten are 32x32x64, 16x16x128, 8x8x128.
    assert shapes == [(64, 32, 32), (128, 16, 16), (128, 8, 8)]
    assert model(x).shape == (3, 6)


def test_save_load_round_trip_and_mismatch_errors(tmp_path) -> None:
    torch.manual_seed(0)
    model = FerCNN(FerCNNConfig(variant="authors-code")).eval()
    path = tmp_path / "model.safetensors"
    save_fer_model(model, path, extra={"note": "test"})
    loaded, card = load_fer_model(path)
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    assert card.config["variant"] == "authors-code" and card.extra["note"] == "test"
    assert len(card.weights_sha256) == 64
    with pytest.raises(CheckpointError, match="expected 'paper'"):
        load_fer_model(path, variant="paper")
    with pytest.raises(CheckpointError, match="classes"):
        load_fer_model(path, classes=("anger", "happiness"))
    # The card still travels inside the safetensors metadata when the JSON is lost.
    (tmp_path / "model.json").unlink()
    with pytest.raises(CheckpointError, match="expected 'paper'"):
        load_model("fer-cnn", weights=path, variant="paper")
    # Bare weights with no card at all: the shapes themselves give the mismatch away.
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bare))
    with pytest.raises(CheckpointError, match="shape mismatch: classifier.1.weight"):
        load_model("fer-cnn", weights=bare, variant="paper")


def test_bad_variant_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="unknown FER CNN variant"):
        FerCNNConfig(variant="resnet")


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_saved_weights_and_card_honour_the_umask(tmp_path, umask: int) -> None:
    # safetensors writes 0600 files; fertk's weights are as readable as anything else it writes.
    import os

    before = os.umask(umask)
    try:
        save_fer_model(FerCNN(FerCNNConfig(input_size=16)), tmp_path / "model.safetensors")
    finally:
        os.umask(before)
    for name in ("model.safetensors", "model.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
