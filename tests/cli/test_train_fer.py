"""`fertk train fer` through Typer's test runner: a folder tree split by subject, the run
directory's files, resume, and one-line errors on bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fertk.cli import app
from fertk.core.emotions import EKMAN
from fertk.models.fer_cnn import load_fer_model
from tests.data.fixtures import make_folder_dataset, write_corrupt_image

# Cheap settings: the fixture faces are drawn centred, so no face detector is needed.
FAST = ["--detect", "none", "--subject-pattern", r"^(s\d+)_", "--variant", "authors-code", "--batch", "16",
        "--threads", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six subjects x six emotions of 64-px drawn faces, plus one corrupt file."""
    root = make_folder_dataset(tmp_path_factory.mktemp("faces") / "tree", per_class=6, subjects=6, size=64)
    write_corrupt_image(root / "happy" / "s00_999.png")
    return root


def test_train_on_a_folder_tree_writes_a_complete_run(tmp_path: Path, faces: Path) -> None:
    run_dir = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "fer", str(faces), "--epochs", "2", "--out", str(run_dir), "--json", *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "skipped 1 unreadable image" in result.stderr  # the corrupt file is counted, not fatal

    # The paper's 109:10:25 proportions on 6 subjects: 4 / 1 / 1.
    assert summary["split"]["sizes"] == {"train": 4, "val": 1, "test": 1}
    assert summary["training"]["epochs_run"] == 2 and summary["training"]["best_epoch"] in (1, 2)
    assert [t["name"] for t in summary["tests"]] == ["test"] and summary["tests"][0]["n"] == 6
    assert summary["datasets"][0]["unreadable"] == 1 and summary["datasets"][0]["n"] == 36

    for name in ("model.safetensors", "model.json", "history.csv", "curves.png", "split.json", "result.json",
                 "train_config.json", "eval/test.json", "eval/test_confusion.csv", "eval/test_confusion.png",
                 "eval/test_per_class.png", "eval/summary.csv"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "last.pt").exists()
    # Every file of the run honours the umask (safetensors and mkstemp alone would make 0600 files).
    mask = os.umask(0o022)
    os.umask(mask)
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
    with open(run_dir / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "loss", "acc", "val_loss", "val_acc", "lr", "seconds"] and len(rows) == 2

    model, card = load_fer_model(run_dir / "model.safetensors", variant="authors-code", classes=EKMAN)
    data = card.extra["training_data"]
    assert data["train"]["n"] == 24 and data["train"]["classes"] == {c: 4 for c in EKMAN}
    assert data["split_manifest"]["sha256"] == hashlib.sha256((run_dir / "split.json").read_bytes()).hexdigest()
    assert card.extra["metrics"]["test"][0]["n"] == 6
    assert card.inputs[0]["shape"] == ["batch", 1, 64, 64]

    # Same command again: the finished run is reported, not retrained.
    again = runner.invoke(app, ["train", "fer", str(faces), "--epochs", "2", "--out", str(run_dir), *FAST])
    assert again.exit_code == 0, again.output
    assert f"best epoch {summary['training']['best_epoch']} of 2" in again.stdout
    assert "epoch   1:" not in again.stderr

    # Reusing the saved split in a new run gives the same parts.
    reuse = runner.invoke(app, ["train", "fer", str(faces), "--epochs", "1", "--out", str(tmp_path / "again"),
                                "--split-manifest", str(run_dir / "split.json"), "--json", *FAST])
    assert reuse.exit_code == 0, reuse.output
    assert json.loads(reuse.stdout)["split"]["sizes"] == summary["split"]["sizes"]


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_bad_input_gives_one_line_errors(tmp_path: Path, faces: Path) -> None:
    runner = CliRunner()
    out = ["--out", str(tmp_path / "run")]

    strict = runner.invoke(app, ["train", "fer", str(faces), "--strict", *out, *FAST])
    assert strict.exit_code == 2 and "s00_999.png" in _error_line(strict)

    empty = tmp_path / "empty"
    (empty / "happy").mkdir(parents=True)
    (empty / "sad").mkdir()
    result = runner.invoke(app, ["train", "fer", str(empty), *out, *FAST])
    assert result.exit_code == 2 and str(empty) in _error_line(result)

    odd = make_folder_dataset(tmp_path / "odd", classes=("happiness", "sadness"), per_class=1, subjects=1, size=32,
                              words={"sadness": "confused"})
    result = runner.invoke(app, ["train", "fer", str(odd), "--layout", "folder", *out, *FAST])
    assert result.exit_code == 2 and "confused" in _error_line(result)

    result = runner.invoke(app, ["train", "fer", str(faces), "--split", "1,2", *out, *FAST])
    assert result.exit_code == 2 and "three sizes" in _error_line(result)
    result = runner.invoke(app, ["train", "fer", str(faces), "--val", str(faces), "--val-fraction", "0.2", *out, *FAST])
    assert result.exit_code == 2 and "give one of them" in _error_line(result)
    result = runner.invoke(app, ["train", "fer", str(faces), *out, *FAST, "--variant", "vgg"])  # the last wins
    assert result.exit_code == 2 and "vgg" in _error_line(result)
    assert not (tmp_path / "run" / "result.json").exists()


def test_one_class_data_is_refused_unless_allowed_and_then_warned_about(tmp_path: Path) -> None:
    # The issue: a one-class dataset trained a 6-class model and reported "accuracy 100.0 %".
    one = make_folder_dataset(tmp_path / "one", classes=("happiness",), per_class=6, subjects=6, size=64)
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "fer", str(one), "--epochs", "1", "--out", str(tmp_path / "a"), *FAST])
    assert refused.exit_code == 2, refused.output
    line = _error_line(refused)
    assert str(one) in line and "no sample of anger, disgust, fear, sadness, surprise" in line
    assert "--allow-missing-classes" in refused.stderr and "--classes happiness" in refused.stderr
    assert not (tmp_path / "a" / "split.json").exists()

    allowed = runner.invoke(app, ["train", "fer", str(one), "--epochs", "1", "--out", str(tmp_path / "b"),
                                  "--allow-missing-classes", "--json", *FAST])
    assert allowed.exit_code == 0, allowed.output
    test = json.loads(allowed.stdout)["tests"][0]
    assert test["absent_classes"] == ["anger", "disgust", "fear", "sadness", "surprise"]
    assert "warning: trained without any sample of anger, disgust, fear, sadness, surprise" in allowed.stderr
    assert "warning: test set test: no sample of 5 of the model's 6 classes" in allowed.stderr
