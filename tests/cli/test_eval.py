"""`fertk eval` through Typer's test runner: several test sets in one call, report files,
expectations on the checkpoint, skipped files, and the same numbers through an ONNX engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fertk.cli import app
from fertk.core.emotions import EKMAN
from fertk.models.fer_cnn import FerCNN, FerCNNConfig, save_fer_model
from tests.cli.conftest import FAST
from tests.data.fixtures import make_folder_dataset, write_corrupt_image

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "run" / "model.safetensors"
    save_fer_model(FerCNN(FerCNNConfig(variant="authors-code")).eval(), path)
    return path


@pytest.fixture(scope="module")
def test_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sets")
    indb = make_folder_dataset(root / "indb", per_class=2, subjects=2, size=64)
    # A cross-database set with fewer classes, a class the model lacks, and a corrupt file.
    cross = make_folder_dataset(root / "mmi", classes=("happiness", "surprise", "neutral"), per_class=3,
                                subjects=3, size=64)
    write_corrupt_image(cross / "happy" / "broken.png")
    return indb, cross


def test_eval_scores_several_test_sets_and_writes_reports(tmp_path: Path, model_path: Path, test_sets) -> None:
    indb, cross = test_sets
    out = tmp_path / "reports"
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(model_path), str(indb), str(cross), "--out", str(out), "--json", *FAST])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"]["classes"] == list(EKMAN) and data["model"]["backend"] == "torch"
    first, second = data["results"]
    assert first["name"] == "indb" and first["n"] == 12
    assert second["name"] == "mmi" and second["n"] == 6  # neutral not scored, corrupt file skipped
    assert second["present_classes"] == ["happiness", "surprise"]
    assert first["absent_classes"] == [] and second["absent_classes"] == ["anger", "disgust", "fear", "sadness"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: mmi: no sample of 4 of the model's 6 classes (anger, disgust, fear, sadness); "
                        "accuracy and macro-F1 cover only happiness, surprise"]
    assert second["info"]["unreadable"] == 1
    assert "mmi: skipped 1 unreadable image" in result.stderr
    for report in (first, second):
        confusion = np.array(report["confusion"])
        assert confusion.sum() == report["n"]
        assert report["accuracy"] == pytest.approx(np.trace(confusion) / report["n"])
    for name in ("indb.json", "indb_confusion.csv", "indb_confusion_normalized.csv", "indb_per_class.csv",
                 "indb_confusion.png", "indb_per_class.png", "mmi.json", "summary.csv", "summary.json"):
        assert (out / name).is_file(), name

    # Human output: one row per test set; reports default to <run dir>/reports.
    plain = runner.invoke(app, ["eval", str(model_path.parent), str(indb), *FAST])
    assert plain.exit_code == 0, plain.output
    assert "indb" in plain.stdout and "accuracy" in plain.stdout
    assert (model_path.parent / "reports" / "indb.json").is_file()


def test_checkpoint_expectations_and_missing_files_are_one_line_errors(tmp_path: Path, model_path: Path,
                                                                       test_sets) -> None:
    indb, cross = test_sets
    runner = CliRunner()

    def error(args: list[str]) -> str:
        result = runner.invoke(app, ["eval", *args, *FAST])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, result.output
        return lines[0]

    line = error([str(model_path), str(indb), "--variant", "paper"])
    assert str(model_path) in line and "expected 'paper'" in line
    line = error([str(model_path), str(indb), "--classes", "anger,happiness"])
    assert str(model_path) in line and "expected ['anger', 'happiness']" in line
    line = error([str(tmp_path / "nope.safetensors"), str(indb)])
    assert "model not found" in line
    line = error([str(model_path), str(cross), "--strict"])
    assert "broken.png" in line
    # Weights that do not fit the card's architecture.
    bad = tmp_path / "bad" / "model.safetensors"
    save_fer_model(FerCNN(FerCNNConfig(variant="paper")), bad)
    card = json.loads(bad.with_suffix(".json").read_text())
    card["config"]["variant"] = "authors-code"
    bad.with_suffix(".json").write_text(json.dumps(card))
    line = error([str(bad), str(indb)])
    assert str(bad) in line


def test_onnx_engine_gives_the_same_metrics_as_pytorch(tmp_path: Path, model_path: Path, test_sets) -> None:
    pytest.importorskip("onnxruntime")
    indb, _cross = test_sets
    runner = CliRunner()
    reference = runner.invoke(app, ["eval", str(model_path), str(indb), "--json", "--out", str(tmp_path / "a"), *FAST])
    engine = runner.invoke(app, ["eval", str(model_path), str(indb), "--json", "--backend", "ort",
                                 "--out", str(tmp_path / "b"), *FAST])
    assert reference.exit_code == 0, reference.output
    assert engine.exit_code == 0, engine.output
    ref, got = json.loads(reference.stdout), json.loads(engine.stdout)
    assert got["model"]["backend"] == "ort"
    assert got["results"][0]["confusion"] == ref["results"][0]["confusion"]


def test_an_exported_artifact_is_evaluated_through_its_engine(tmp_path: Path, model_path: Path, test_sets) -> None:
    pytest.importorskip("onnxruntime")
    from fertk.core.specs import TensorSpec
    from fertk.export import export_module
    from fertk.models.fer_cnn import load_fer_model

    model, card = load_fer_model(model_path)
    artifact = export_module(model, input_specs=[TensorSpec.from_dict(s) for s in card.inputs],
                             output_specs=[TensorSpec.from_dict(s) for s in card.outputs], out=tmp_path / "artifact")
    indb, _cross = test_sets
    runner = CliRunner()
    reference = runner.invoke(app, ["eval", str(model_path), str(indb), "--json", "--out", str(tmp_path / "a"), *FAST])
    exported = runner.invoke(app, ["eval", str(artifact.path), str(indb), "--json", "--out", str(tmp_path / "b"), *FAST])
    assert exported.exit_code == 0, exported.output
    got = json.loads(exported.stdout)
    assert got["model"]["backend"] == "ort" and got["model"]["classes"] == list(EKMAN)
    assert got["results"][0]["confusion"] == json.loads(reference.stdout)["results"][0]["confusion"]
    wrong = runner.invoke(app, ["eval", str(artifact.path), str(indb), "--variant", "paper", *FAST])
    assert wrong.exit_code == 2 and "expected 'paper'" in wrong.stderr
