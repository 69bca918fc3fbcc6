"""Metrics against a hand-computed confusion matrix; label matching by name; engines and modules
scored alike; report files (JSON, CSV, PNG) written whole."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fertk.data.records import FaceArrays
from fertk.engines.base import Engine
from fertk.core.specs import TensorSpec
from fertk.core.errors import CheckpointError, DatasetError, InvalidInputError
from fertk.data.convert import faces_to_gray, map_labels
from fertk.evaluate import (
    EvalReport,
    class_metrics,
    confusion_matrix,
    evaluate,
    evaluate_sets,
    write_report,
    write_reports,
)


def test_metrics_match_a_hand_computed_confusion_matrix() -> None:
    classes = ("anger", "happiness", "surprise")
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 0, 1, 1, 2, 0, 2, 2]
    # By hand: rows are true classes, columns predictions.
    #            anger happiness surprise
    # anger        2       1        0
    # happiness    0       2        0
    # surprise     1       0        3
    expected = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 3]])
    counts = confusion_matrix(np.array(y_true), np.array(y_pred), 3)
    np.testing.assert_array_equal(counts, expected)

    report = EvalReport("tiny", classes, counts)
    assert report.n == 9
    assert report.accuracy == pytest.approx(7 / 9)
    np.testing.assert_allclose(report.confusion_normalized,
                               [[2 / 3, 1 / 3, 0], [0, 1, 0], [1 / 4, 0, 3 / 4]])
    rows = {m.name: m for m in report.per_class}
    # precision = diagonal / column sum, recall = diagonal / row sum
    assert rows["anger"].precision == pytest.approx(2 / 3) and rows["anger"].recall == pytest.approx(2 / 3)
    assert rows["happiness"].precision == pytest.approx(2 / 3) and rows["happiness"].recall == 1.0
    assert rows["surprise"].precision == 1.0 and rows["surprise"].recall == pytest.approx(3 / 4)
    f1 = {"anger": 2 / 3, "happiness": 2 * (2 / 3) / (2 / 3 + 1), "surprise": 2 * 0.75 / 1.75}
    for name, value in f1.items():
        assert rows[name].f1 == pytest.approx(value)
    assert [rows[c].support for c in classes] == [3, 2, 4]
    assert report.macro_f1 == pytest.approx(sum(f1.values()) / 3)
    assert report.mean_recall == pytest.approx((2 / 3 + 1 + 3 / 4) / 3)


def test_class_absent_from_the_test_set_has_no_recall_and_is_left_out_of_macro_f1() -> None:
    # Class 2 has no test sample but was predicted once; class 1 was never predicted.
    counts = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 2, 0, 0]), 3)
    rows = class_metrics(counts, ("a", "b", "c"))
    assert rows[2].support == 0 and rows[2].recall is None and rows[2].f1 is None
    assert rows[2].precision == 0.0  # predicted once, never right
    assert rows[1].precision is None and rows[1].recall == 0.0 and rows[1].f1 == 0.0
    report = EvalReport("absent", ("a", "b", "c"), counts)
    assert report.present_classes == ("a", "b")
    # F1(a): precision 1/3, recall 1/2 -> 0.4; F1(b) = 0; class c is not averaged in.
    assert report.macro_f1 == pytest.approx((0.4 + 0.0) / 2)


def test_classes_absent_from_a_one_class_test_set_are_listed(tmp_path: Path) -> None:
    # A test set of one class scores 100 % / macro-F1 1.0 for a model that always says "happiness":
    # the report must say which of the model's classes it never saw.
    data = _faces([100, 105, 110], [0, 0, 0], ("happiness",))
    report = evaluate(BrightnessClassifier(CENTRES), data, MODEL_CLASSES, name="one")
    assert report.accuracy == 1.0 and report.macro_f1 == 1.0
    assert report.absent_classes == ("anger", "surprise", "sadness")
    assert report.summary()["absent_classes"] == ["anger", "surprise", "sadness"]
    warning = report.absent_warning()
    assert warning is not None and "anger, surprise, sadness" in warning and "cover only happiness" in warning
    assert EvalReport.from_dict(report.to_dict()).absent_classes == report.absent_classes
    files = write_reports([report], tmp_path)
    with open(files["summary_csv"], newline="") as fh:
        assert next(csv.DictReader(fh))["absent_classes"] == "anger;surprise;sadness"
    assert json.loads(files["summary_json"].read_text())["reports"][0]["absent_classes"] == ["anger", "surprise",
                                                                                            "sadness"]
    # Every class present: nothing to warn about.
    full = EvalReport("full", ("a", "b"), np.array([[1, 0], [1, 1]]))
    assert full.absent_classes == () and full.absent_warning() is None


def test_confusion_matrix_rejects_out_of_range_labels() -> None:
    with pytest.raises(InvalidInputError, match="outside"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(InvalidInputError, match="predictions"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)


class BrightnessClassifier(torch.nn.Module):
    """A real (weightless) classifier: the class whose brightness centre is nearest the face mean."""

    def __init__(self, centres: list[float]) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor(centres))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        return -(mean[:, None] - self.centres[None, :]) ** 2


class BrightnessEngine(Engine):
    """The same rule behind the Engine interface (numpy in, numpy out)."""

    backend = "test-brightness"

    def __init__(self, centres: list[float]) -> None:
        super().__init__([TensorSpec("image", "float32", ("batch", 1, 64, 64))],
                         [TensorSpec("logits", "float32", ("batch", len(centres)))])
        self.centres = np.asarray(centres, np.float32)

    def _run_impl(self, inputs: dict, as_torch: bool) -> dict:
        mean = inputs["image"].mean(axis=(1, 2, 3))
        return {"logits": -(mean[:, None] - self.centres[None, :]) ** 2}


def _faces(values: list[int], labels: list[int], classes: tuple[str, ...]) -> FaceArrays:
    images = np.stack([np.full((64, 64), v, np.uint8) for v in values])
    n = len(values)
    return FaceArrays(images, np.array(labels, np.int64), classes, np.array([f"s{i}" for i in range(n)]),
                      np.array(["toy"] * n), [f"toy/{i}" for i in range(n)], {"path": "toy"})


MODEL_CLASSES = ("anger", "happiness", "surprise", "sadness")
CENTRES = [0.1, 0.4, 0.7, 0.95]  # brightness per model class, in model order


def _dataset_in_other_order() -> FaceArrays:
    # Dataset classes in another order, spelled differently, with one class the model lacks.
    classes = ("happy", "neutral", "angry")
    values = [100, 105, 30, 20, 190, 250, 128]   # /255: .39 .41 .12 .08 .75 .98 .50
    labels = [0, 0, 2, 2, 0, 1, 1]               # happy happy angry angry happy neutral neutral
    return _faces(values, labels, classes)


def test_labels_are_matched_by_name_and_unknown_classes_excluded() -> None:
    data = _dataset_in_other_order()
    mapped, excluded = map_labels(data, MODEL_CLASSES)
    np.testing.assert_array_equal(mapped, [1, 1, 0, 0, 1, -1, -1])
    assert excluded == {"neutral": 2}

    report = evaluate(BrightnessClassifier(CENTRES), data, MODEL_CLASSES, name="toy")
    # Scored: happiness x3 (brightness .39, .41 -> happiness; .75 -> surprise), anger x2 (-> anger).
    expected = np.zeros((4, 4), np.int64)
    expected[1, 1] = 2
    expected[1, 2] = 1
    expected[0, 0] = 2
    np.testing.assert_array_equal(report.confusion, expected)
    assert report.n == 5 and report.excluded == {"neutral": 2}
    assert report.accuracy == pytest.approx(4 / 5)
    assert report.present_classes == ("anger", "happiness")
    by_name = {m.name: m for m in report.per_class}
    assert by_name["sadness"].support == 0 and by_name["sadness"].recall is None
    assert by_name["surprise"].precision == 0.0 and by_name["surprise"].f1 is None


def test_an_engine_and_a_torch_module_give_the_same_report() -> None:
    data = _dataset_in_other_order()
    from_module = evaluate(BrightnessClassifier(CENTRES), data, MODEL_CLASSES, name="toy", batch_size=3)
    engine = BrightnessEngine(CENTRES)
    from_engine = evaluate(engine, data, MODEL_CLASSES, name="toy", batch_size=3)
    np.testing.assert_array_equal(from_module.confusion, from_engine.confusion)
    assert engine.stats.items == 5 and engine.stats.calls == 2  # batches of 3, neutral rows not run


def test_evaluate_errors_name_the_dataset_and_the_expectation() -> None:
    model = BrightnessClassifier(CENTRES)
    empty = FaceArrays(np.zeros((0, 64, 64), np.uint8), np.zeros(0, np.int64), ("anger",), np.array([]),
                       np.array([]), [], {"path": "/data/empty"})
    with pytest.raises(DatasetError, match="/data/empty.*empty"):
        evaluate(model, empty, MODEL_CLASSES)
    only_neutral = _faces([10, 20], [0, 0], ("neutral",))
    with pytest.raises(DatasetError, match="none of its classes"):
        evaluate(model, only_neutral, MODEL_CLASSES)
    with pytest.raises(CheckpointError, match=r"expected \[N, 3\]"):
        evaluate(model, _dataset_in_other_order(), ("anger", "happiness", "surprise"))
    with pytest.raises(InvalidInputError, match="declare its classes"):
        evaluate(model, _dataset_in_other_order())


def test_faces_to_gray_converts_rgb_and_resizes() -> None:
    rgb = np.zeros((2, 32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # pure red -> luma 0.299 * 200
    out = faces_to_gray(rgb, 64)
    assert out.shape == (2, 1, 64, 64) and out.dtype == np.uint8
    assert int(out[0, 0, 10, 10]) == round(0.299 * 200)


def test_reports_are_written_as_json_csv_and_png(tmp_path: Path) -> None:
    data = _dataset_in_other_order()
    reports = evaluate_sets(BrightnessClassifier(CENTRES), {"in-db": data, "cross db/mmi": data}, MODEL_CLASSES)
    written = write_reports(reports, tmp_path / "eval")
    assert set(written["reports"]) == {"in-db", "cross_db_mmi"}
    for files in written["reports"].values():
        for path in files.values():
            assert path.is_file() and path.stat().st_size > 0
        assert files["confusion_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert files["per_class_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    files = written["reports"]["in-db"]
    data_json = json.loads(files["json"].read_text())
    again = EvalReport.from_dict(data_json)
    np.testing.assert_array_equal(again.confusion, reports[0].confusion)
    assert data_json["accuracy"] == pytest.approx(0.8) and data_json["excluded"] == {"neutral": 2}
    with open(files["confusion_csv"], newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["true\\predicted", *MODEL_CLASSES]
    assert [int(v) for v in rows[2][1:]] == [0, 2, 1, 0]  # happiness row
    with open(files["per_class_csv"], newline="") as fh:
        per_class = {r["class"]: r for r in csv.DictReader(fh)}
    assert per_class["sadness"]["recall"] == "" and per_class["anger"]["recall"] == "1.000000"
    summary = json.loads(written["summary_json"].read_text())
    assert [r["name"] for r in summary["reports"]] == ["in-db", "cross db/mmi"]
    assert not list((tmp_path / "eval").glob("*.tmp")) and not list((tmp_path / "eval").glob(".*"))
    # A single report under an explicit name.
    single = write_report(reports[0], tmp_path / "one", "renamed")
    assert single["json"].name == "renamed.json"


def test_a_classifier_always_runs_as_an_engine_and_a_module_keeps_its_mode(tmp_path: Path) -> None:
    from fertk.evaluate import open_classifier, predict_logits
    from fertk.models.fer_cnn import FerCNN, FerCNNConfig, save_fer_model

    torch.manual_seed(0)
    model = FerCNN(FerCNNConfig("authors-code", ("anger", "happiness", "sadness"), 32))
    save_fer_model(model, tmp_path / "model.safetensors")
    faces = np.random.default_rng(0).integers(0, 256, (5, 1, 32, 32), dtype=np.uint8)
    model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(faces).float().div_(255.0)
        expected = model(x).numpy()
        in_twos = np.concatenate([model(x[i:i + 2]).numpy() for i in range(0, 5, 2)])  # GEMMs depend on batch

    classifier = open_classifier(tmp_path)
    try:
        assert isinstance(classifier.runner, Engine) and classifier.backend == "torch"
        np.testing.assert_array_equal(predict_logits(classifier, faces, batch_size=2), in_twos)
        assert classifier.runner.stats.items == 5 and classifier.runner.stats.calls == 3
    finally:
        classifier.close()

    model.train()  # a bare module goes through the torch engine too, and gets its mode back
    np.testing.assert_array_equal(predict_logits(model, faces), expected)
    assert model.training


def test_evaluate_paths_reports_each_scored_test_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fertk.core.progress import ProgressEvent
    from fertk.data.options import DatasetOptions
    from fertk.evaluate import evaluate_paths
    from fertk.models.fer_cnn import FerCNN, FerCNNConfig, save_fer_model
    from tests.data.fixtures import make_folder_dataset

    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    save_fer_model(FerCNN(FerCNNConfig("authors-code", ("happiness", "sadness"), 32)), tmp_path / "model.safetensors")
    trees = [make_folder_dataset(tmp_path / name, per_class=2, subjects=2, size=32) for name in ("a", "b")]
    events: list[ProgressEvent] = []
    run = evaluate_paths(tmp_path / "model.safetensors", trees, options=DatasetOptions(detect="none"),
                         progress=events.append)
    scored = [e for e in events if e.kind == "scored"]
    assert [(e.done, e.total, e.unit) for e in scored] == [(1, 2, "test sets"), (2, 2, "test sets")]
    assert [e.data["accuracy"] for e in scored] == [r.accuracy for r in run.reports]
    assert scored[0].message.startswith("a: accuracy")
