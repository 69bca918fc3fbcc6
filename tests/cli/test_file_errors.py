"""Damaged files given to `fertk eval` and `fertk export --weights`: every one is a typed error,
one line naming the file, exit 2 (never a raw library exception with exit 1)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fertk.cli import app
from fertk.models.fer_cnn import FerCNN, FerCNNConfig, save_fer_model
from fertk.models.stargan import StarGANGenerator
from tests.cli.conftest import FAST
from tests.data.fixtures import make_folder_dataset

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A FER run directory, its exported artifact and a test set, all intact."""
    root = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    run = root / "run"
    save_fer_model(FerCNN(FerCNNConfig(variant="authors-code")).eval(), run / "model.safetensors")
    faces = make_folder_dataset(root / "faces", per_class=1, subjects=1, size=64)
    artifact = root / "artifact"
    result = CliRunner().invoke(app, ["export", "fer-cnn", "--weights", str(run / "model.safetensors"),
                                      "--out", str(artifact)])
    assert result.exit_code == 0, result.output
    return {"run": run, "faces": faces, "artifact": artifact}


def _cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _bare_safetensors(tmp: Path, good: dict[str, Path]) -> tuple[Path, Path]:
    bare = tmp / "weights.safetensors"  # no model.json beside it: the config is read from its header
    shutil.copy(good["run"] / "model.safetensors", bare)
    return bare, _cut(bare)


def _run_dir_safetensors(tmp: Path, good: dict[str, Path]) -> tuple[Path, Path]:
    run = shutil.copytree(good["run"], tmp / "run")
    return run, _cut(run / "model.safetensors")


def _corrupt_card(tmp: Path, good: dict[str, Path]) -> tuple[Path, Path]:
    run = shutil.copytree(good["run"], tmp / "run")
    text = (run / "model.json").read_text()
    (run / "model.json").write_text(text[: len(text) // 2])
    return run, run / "model.json"


def _card_not_an_object(tmp: Path, good: dict[str, Path]) -> tuple[Path, Path]:
    run = shutil.copytree(good["run"], tmp / "run")
    (run / "model.json").write_text("[1, 2, 3]\n")
    return run, run / "model.json"


def _card_with_a_bad_config(tmp: Path, good: dict[str, Path]) -> tuple[Path, Path]:
    run = shutil.copytree(good["run"], tmp / "run")
    card = json.loads((run / "model.json").read_text())
    card["config"]["variant"] = "resnet"
    (run / "model.json").write_text(json.dumps(card))
    return run, run / "model.json"


def _truncated_pt(tmp: Path, good: dict[str, Path]) -> tuple[Path, Path]:
    path = tmp / "weights.pt"
    torch.save(FerCNN(FerCNNConfig(variant="authors-code")).state_dict(), path)
    return path, _cut(path)


def _truncated_ckpt(tmp: Path, good: dict[str, Path]) -> tuple[Path, Path]:
    path = tmp / "200000-G.ckpt"
    torch.save(FerCNN(FerCNNConfig(variant="authors-code")).state_dict(), path)
    return path, _cut(path, 0.1)


# case -> (how to damage a copy, what the one error line must say besides the file name)
DAMAGED: dict[str, tuple[Callable[[Path, dict[str, Path]], tuple[Path, Path]], str]] = {
    "truncated bare safetensors": (_bare_safetensors, "truncated or corrupt safetensors"),
    "truncated safetensors in a run dir": (_run_dir_safetensors, "truncated or corrupt safetensors"),
    "corrupt model.json": (_corrupt_card, "not a readable FER CNN card"),
    "model.json not an object": (_card_not_an_object, "not a FER CNN card"),
    "model.json with a bad config": (_card_with_a_bad_config, "not a usable FER CNN config"),
    "truncated .pt": (_truncated_pt, "truncated or corrupt archive"),
    "truncated .ckpt": (_truncated_ckpt, "truncated or corrupt archive"),
}


def _one_line_error(result, name: Path) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "FERTK_DEBUG" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert str(name) in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_weights_or_card_through_eval(tmp_path: Path, good: dict[str, Path], case: str) -> None:
    damage, says = DAMAGED[case]
    given, damaged = damage(tmp_path, good)
    result = CliRunner().invoke(app, ["eval", str(given), str(good["faces"]), "--out", str(tmp_path / "r"), *FAST])
    assert says in _one_line_error(result, damaged)


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_weights_or_card_through_export(tmp_path: Path, good: dict[str, Path], case: str) -> None:
    damage, says = DAMAGED[case]
    given, damaged = damage(tmp_path, good)
    weights = given / "model.safetensors" if given.is_dir() else given
    result = CliRunner().invoke(app, ["export", "fer-cnn", "--weights", str(weights), "--out", str(tmp_path / "a")])
    assert says in _one_line_error(result, damaged)
    assert not (tmp_path / "a").exists()


def test_truncated_stargan_checkpoint_through_export(tmp_path: Path) -> None:
    path = tmp_path / "200000-G.ckpt"
    torch.save(StarGANGenerator(conv_dim=8, c_dim=3, repeat_num=1).state_dict(), path)
    _cut(path)
    result = CliRunner().invoke(app, ["export", "stargan", "--weights", str(path), "--out", str(tmp_path / "a")])
    assert "truncated or corrupt" in _one_line_error(result, path)


def test_corrupt_onnx_in_an_artifact_through_eval(tmp_path: Path, good: dict[str, Path]) -> None:
    artifact = shutil.copytree(good["artifact"], tmp_path / "artifact")
    onnx_file = artifact / "model.onnx"
    _cut(onnx_file, 0.01)
    for backend in ("torch", "ort"):
        result = CliRunner().invoke(app, ["eval", str(artifact), str(good["faces"]), "--backend", backend,
                                          "--out", str(tmp_path / "r"), *FAST])
        _one_line_error(result, onnx_file)


@pytest.mark.parametrize("text", ['{"format": ', '["not", "a", "card"]'], ids=["cut", "list"])
def test_corrupt_artifact_card_through_eval(tmp_path: Path, good: dict[str, Path], text: str) -> None:
    artifact = shutil.copytree(good["artifact"], tmp_path / "artifact")
    (artifact / "card.json").write_text(text)
    result = CliRunner().invoke(app, ["eval", str(artifact), str(good["faces"]), "--out", str(tmp_path / "r"), *FAST])
    _one_line_error(result, artifact / "card.json")


def test_corrupt_onnx_file_through_export(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x04fertk" + bytes(range(256)) * 4)
    result = CliRunner().invoke(app, ["export", str(path), "--out", str(tmp_path / "a")])
    _one_line_error(result, path)


def test_corrupt_config_and_calibration_files_through_export(tmp_path: Path) -> None:
    config = tmp_path / "fer.json"
    config.write_text('{"variant": ')
    result = CliRunner().invoke(app, ["export", "fer-cnn", "--config", str(config), "--out", str(tmp_path / "a")])
    assert "not valid JSON" in _one_line_error(result, config)
    for name, data in (("calib.npy", b"\x93NUMPY garbage"), ("calib.npz", b"PK\x03\x04 garbage")):
        calib = tmp_path / name
        calib.write_bytes(data)
        result = CliRunner().invoke(app, ["export", "fer-cnn", "--precision", "int8", "--calib", str(calib),
                                          "--out", str(tmp_path / "b")])
        assert "calibration data" in _one_line_error(result, calib)
