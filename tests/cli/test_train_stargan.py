"""`fertk train stargan` through Typer's test runner: a folder dataset, procedural faces, resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fertk.cli import app
from fertk.core.emotions import EKMAN
from fertk.models.stargan import load_stargan_generator

TINY = ["--image-size", "16", "--conv-dim", "4", "--repeat-num", "1", "--iters", "4", "--batch", "4",
        "--n-critic", "2", "--save-every", "2", "--sample-every", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _folder_tree(root: Path, per_class: int = 3, side: int = 24) -> Path:
    """An ImageFolder tree `<root>/<emotion>/<i>.png` of pre-cropped colour faces."""
    rng = np.random.default_rng(0)
    for k, emotion in enumerate(EKMAN):
        folder = root / emotion
        folder.mkdir(parents=True)
        for i in range(per_class):
            face = np.clip(rng.normal(40 + 30 * k, 20, size=(side, side, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{i}.png"), face)
    return root


def test_train_stargan_on_a_folder_dataset_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "cache"))
    data = _folder_tree(tmp_path / "faces")
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "stargan", str(data), "--out", str(out), "--detect", "none",
                                 "--json", *TINY])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["iterations"] == 4 and summary["samples_used"] == 18
    assert summary["classes"] == list(EKMAN) and summary["checkpoints"] == [2, 4]
    G, card = load_stargan_generator(summary["generator"])
    assert card.config["c_dim"] == 6 and G.classes == EKMAN

    again = runner.invoke(app, ["train", "stargan", str(data), "--out", str(out), "--detect", "none", *TINY])
    assert again.exit_code == 2
    assert "already holds a StarGAN run" in again.output and "--resume" in again.output

    longer = list(TINY)
    longer[longer.index("--iters") + 1] = "6"
    resumed = runner.invoke(app, ["train", "stargan", str(data), "--out", str(out), "--detect", "none",
                                  "--resume", *longer])
    assert resumed.exit_code == 0, resumed.output
    assert "trained StarGAN to iteration 6 (from 4)" in resumed.stdout
    assert (out / "models" / "6-G.ckpt").is_file()


def test_train_stargan_on_procedural_faces_with_neutral(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "stargan", "procedural", "--procedural-identities", "2",
                                      "--with-neutral", "--out", str(out), "--json", *TINY])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["samples_used"] == 14  # 2 identities x 7 labels
    assert summary["classes"][4] == "neutral" and len(summary["classes"]) == 7
    assert cv2.imread(summary["samples"][-1]).shape == (8 * 16, 8 * 16, 3)  # 8 sample rows max, 14 faces
