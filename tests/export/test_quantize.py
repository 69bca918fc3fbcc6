"""fp16 graphs and INT8 QDQ quantisation with a real accuracy check.

The INT8 check uses a FER CNN briefly trained on a procedurally generated 6-class task (a bright
blob whose position is the class), so fp32 is confident and argmax agreement measures something:
on random-init weights the logits are near-ties and agreement would say little.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fertk.data.records import FaceArrays
from fertk.core.emotions import EKMAN
from fertk.export import open_engine
from fertk.core.specs import TensorSpec
from fertk.core.errors import InvalidInputError, ParityError
from fertk.export import ExportOptions, export_module
from fertk.export.onnx import export_onnx
from fertk.export.quantize import calibration_feeds, convert_fp16, faces_to_input, split_feeds

from tests.tools.limits import broken_limits

SIZE = 16


def blob_faces(n: int, seed: int) -> FaceArrays:
    """uint8 [n, 16, 16] faces: class c = a blob at one of six positions, with jitter and noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = np.empty((n, SIZE, SIZE), np.float32)
    for i, c in enumerate(labels):
        cy = 4 + 8 * (c // 3) + rng.integers(-1, 2)
        cx = 3 + 5 * (c % 3) + rng.integers(-1, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0) * rng.uniform(0.6, 1.0)
        images[i] = np.clip(blob + rng.normal(0, 0.08, (SIZE, SIZE)) + 0.1, 0, 1)
    pixels = (images * 255).round().astype(np.uint8)
    return FaceArrays(pixels, labels.astype(np.int64), EKMAN, np.array([f"s{i % 7}" for i in range(n)]),
                      np.array(["blobs"] * n))


def train_blob_fer(seed: int = 0):
    """A paper-variant FER CNN at 16 px, trained for 40 Adam steps (100 % on the blob task for
    every seed swept; 20 steps left seed 7 at 72 % on an AVX2 EPYC)."""
    from fertk.models.fer_cnn import FerCNN, FerCNNConfig, fer_card

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread avoids oversubscription on shared CPUs
    try:
        torch.manual_seed(seed)
        data = blob_faces(384, 0)
        x = torch.from_numpy(data.images.astype(np.float32)[:, None] / 255)
        y = torch.from_numpy(data.labels)
        model = FerCNN(FerCNNConfig(input_size=SIZE))
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        model.train()
        for _ in range(40):
            idx = torch.randint(0, len(y), (32,))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)
    return model, fer_card(model).to_dict()


@pytest.fixture(scope="module")
def trained_fer():
    return train_blob_fer(0)


def _int8_artifact(model, card, out: Path):
    calibration = blob_faces(160, 1)
    return export_module(model, model_card=card, task="classifier", out=out,
                         calibration=calibration, options=ExportOptions(precision="int8", calibration_batch=32))


def _fresh_accuracy(artifact) -> float:
    fresh = blob_faces(64, 2)
    x = faces_to_input(fresh.images, artifact.card.input_specs()[0])
    with open_engine(artifact.path, precision="int8") as engine:
        assert engine.describe()["model"].endswith("model.int8.onnx")
        predicted = engine.run({"image": x})["logits"].argmax(1)
    return float(np.mean(predicted == fresh.labels))


def int8_statistics(seed: int, workdir: Path) -> dict[str, float]:
    """Train (seed `seed`), quantise, and measure: fp32 / int8 held-out accuracy, their argmax
    agreement, the int8 accuracy on fresh faces. Also run by tests/tools/threshold_sweep.py."""
    model, card = train_blob_fer(seed)
    artifact = _int8_artifact(model, card, workdir / "fer")
    accuracy = artifact.card.variants["int8"]["accuracy"]
    return {"fp32_accuracy": accuracy["fp32_accuracy"], "argmax_agreement": accuracy["argmax_agreement"],
            "int8_drop": accuracy["fp32_accuracy"] - accuracy["int8_accuracy"],
            "fresh_int8_accuracy": _fresh_accuracy(artifact)}


# (statistic, op, bound), checked over training seeds 0-11 (tests/tools/threshold_sweep.py
# int8-blobs; 2-core AMD EPYC, AVX2, torch 2.13.0+cpu, onnxruntime 1.32.0): with 40 Adam steps
# every seed gave fp32 and int8 accuracy 1.0, agreement 1.0, fresh int8 accuracy 1.0. (With the
# earlier 20 steps seed 7 stopped at fp32 0.72 / fresh 0.83, so the bounds below held for seed 0
# by luck.) Training and ORT's INT8 kernels both depend on the CPU (AVX2 vs AVX-512 / VNNI).
INT8_LIMITS: tuple[tuple[str, str, float], ...] = (
    ("fp32_accuracy", ">", 0.9 - 1e-9),     # the briefly trained model solves the blob task
    ("argmax_agreement", ">", 0.95 - 1e-9),
    ("int8_drop", "<", 0.05 + 1e-9),
    ("fresh_int8_accuracy", ">", 0.9 - 1e-9),
)


def test_int8_qdq_keeps_accuracy_of_a_trained_classifier(trained_fer, tmp_path: Path) -> None:
    model, card = trained_fer
    artifact = _int8_artifact(model, card, tmp_path / "fer")
    entry = artifact.card.variants["int8"]
    accuracy = entry["accuracy"]
    assert entry["per_channel"] and entry["calibration_batches"] == 4  # 5 batches: 4 calibrate, 1 held out
    assert accuracy["held_out"] and accuracy["samples"] == 32
    ops = {n.op_type for n in onnx.load(str(artifact.onnx_path("int8"))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    stats = {"fp32_accuracy": accuracy["fp32_accuracy"], "argmax_agreement": accuracy["argmax_agreement"],
             "int8_drop": accuracy["fp32_accuracy"] - accuracy["int8_accuracy"],
             "fresh_int8_accuracy": _fresh_accuracy(artifact)}
    assert not broken_limits(stats, INT8_LIMITS), (broken_limits(stats, INT8_LIMITS), stats)


def test_int8_agreement_gate_fails_loudly(trained_fer, tmp_path: Path) -> None:
    model, card = trained_fer
    options = ExportOptions(precision="int8", calibration_batch=32, int8_min_agreement=1.01)
    with pytest.raises(ParityError, match="agrees with fp32"):
        export_module(model, model_card=card, task="classifier", out=tmp_path / "gate",
                      calibration=blob_faces(64, 3), options=options)
    assert not (tmp_path / "gate").exists()
    with pytest.raises(InvalidInputError, match="calibration data"):
        export_module(model, model_card=card, task="classifier", out=tmp_path / "nocal",
                      options=ExportOptions(precision="int8"))


def test_fp16_conversion_keeps_fp32_io_and_order(tiny_net, tmp_path: Path) -> None:
    export_onnx(tiny_net, tiny_net.input_specs, tiny_net.output_specs, tmp_path / "m.onnx")
    info = convert_fp16(tmp_path / "m.onnx", tmp_path / "m16.onnx")
    assert info["keep_io_types"] and info["sha256"]
    graph = onnx.load(str(tmp_path / "m16.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    for node in graph.node:  # topological order
        assert all(name in produced for name in node.input), node.name
        produced.update(node.output)


def test_calibration_feeds_from_arrays_dicts_and_faces() -> None:
    spec = TensorSpec("image", "float32", ("batch", 1, SIZE, SIZE))
    faces = blob_faces(10, 0)
    feeds = calibration_feeds(faces, [spec], batch_size=4, ranges={"image": (-1.0, 1.0)})
    assert [len(f["image"]) for f in feeds] == [4, 4, 2]
    x = feeds[0]["image"]
    assert x.shape == (4, 1, SIZE, SIZE) and x.dtype == np.float32 and -1.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x[0, 0], faces.images[0] / 127.5 - 1.0, atol=1e-6)
    arrays = calibration_feeds(x.astype(np.float64), [spec], batch_size=3, max_samples=3)
    assert len(arrays) == 1 and arrays[0]["image"].dtype == np.float32
    calib, held, held_out = split_feeds(feeds)
    assert len(calib) == 2 and len(held) == 1 and held_out
    assert split_feeds(feeds[:1])[2] is False
    with pytest.raises(InvalidInputError, match="calibration data has"):
        calibration_feeds({"other": x}, [spec])
    with pytest.raises(InvalidInputError, match="empty"):
        calibration_feeds(x[:0], [spec])
    with pytest.raises(InvalidInputError, match="do not fit"):
        faces_to_input(blob_faces(2, 0).images[:, :8, :8], spec)
    with pytest.raises(InvalidInputError, match="expected"):
        calibration_feeds(np.zeros((4, 1, 8, 8), np.float32), [spec])
