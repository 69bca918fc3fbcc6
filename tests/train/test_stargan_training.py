"""StarGAN training: resume repeats the uninterrupted run, files are safe to load, data handling."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fertk.data.records import FaceArrays
from fertk.emotions import EKMAN, STARGAN_AUTHORS_ORDER
from fertk.errors import DatasetError, OutputExistsError
from fertk.models.stargan import load_stargan_discriminator, load_stargan_generator
from fertk.models.weights import read_state_dict
from fertk.train.stargan import StarGANTrainConfig, learning_rate, prepare_images, train_stargan


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny convolutions run faster on one thread, and a shared CPU makes two threads far slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _faces(n_per_class: int = 4, side: int = 20, classes: tuple[str, ...] = EKMAN, gray: bool = False,
           seed: int = 0) -> FaceArrays:
    """Random blobs whose brightness depends on the label (enough structure for a few steps)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    base = (labels[:, None, None] * 30 + 40).astype(np.int16)
    shape = (len(labels), side, side) if gray else (len(labels), side, side, 3)
    noise = rng.integers(-20, 20, size=shape)
    images = np.clip((base if gray else base[..., None]) + noise, 0, 255).astype(np.uint8)
    subjects = np.array([f"s{i % n_per_class}" for i in range(len(labels))])
    return FaceArrays(images, labels.astype(np.int64), tuple(classes), subjects, np.full(len(labels), "test"))


def _tiny(**overrides) -> StarGANTrainConfig:
    options = dict(image_size=16, conv_dim=4, repeat_num=1, num_iters=6, num_iters_decay=3, batch_size=4,
                   n_critic=2, log_every=1, sample_every=3, save_every=2, sample_faces=3, device="cpu", seed=3)
    options.update(overrides)
    return StarGANTrainConfig(**options)


def test_resume_after_interrupt_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    data = _faces()
    straight = train_stargan(_tiny(), data, tmp_path / "straight", progress=False)
    assert straight.iterations == 6 and straight.checkpoints == [2, 4, 6]

    class Interrupt(Exception):
        pass

    def stop_at_5(done: int, losses: dict[str, float]) -> None:
        if done == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_stargan(_tiny(), data, tmp_path / "cut", progress=False, callback=stop_at_5)
    state = json.loads((tmp_path / "cut" / "training_state.json").read_text())
    assert state["iteration"] == 4  # iteration 5 was lost with the interruption

    with pytest.raises(OutputExistsError, match="already holds a StarGAN run"):
        train_stargan(_tiny(), data, tmp_path / "cut", progress=False)
    with pytest.raises(OutputExistsError, match="conv_dim: 4 -> 8"):
        train_stargan(_tiny(conv_dim=8, resume=True), data, tmp_path / "cut", progress=False)

    resumed = train_stargan(_tiny(resume=True), data, tmp_path / "cut", progress=False)
    assert (resumed.start_iteration, resumed.iterations) == (4, 6)
    assert resumed.checkpoints == [2, 4, 6]
    for net in ("G", "D"):
        a = read_state_dict(tmp_path / "straight" / "models" / f"6-{net}.safetensors")
        b = read_state_dict(tmp_path / "cut" / "models" / f"6-{net}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=f"{net} {key}")
    straight_rows = (tmp_path / "straight" / "losses.csv").read_text().splitlines()
    resumed_rows = (tmp_path / "cut" / "losses.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in resumed_rows[1:]] == [str(i) for i in range(1, 7)]  # no duplicate rows
    assert len(straight_rows) == len(resumed_rows)

    # Already at the requested count: resuming again does nothing and reports it.
    again = train_stargan(_tiny(resume=True), data, tmp_path / "cut", progress=False)
    assert (again.start_iteration, again.iterations) == (6, 6)


def test_checkpoints_are_safe_to_load_and_official_shaped(tmp_path: Path) -> None:
    result = train_stargan(_tiny(num_iters=4, with_neutral=True), _faces(classes=STARGAN_AUTHORS_ORDER),
                           tmp_path, progress=False)
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        "2-D.ckpt", "2-D.safetensors", "2-G.ckpt", "2-G.safetensors",
        "4-D.ckpt", "4-D.safetensors", "4-G.ckpt", "4-G.safetensors", "4-optim.pt"]  # only the latest optim
    for path in models.glob("*.ckpt"):
        state = torch.load(str(path), weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    optim = torch.load(str(models / "4-optim.pt"), weights_only=True)
    assert set(optim) == {"G", "D"} and optim["G"]["state"]
    G, card = load_stargan_generator(models / "4-G.ckpt")
    assert G.classes == STARGAN_AUTHORS_ORDER and card.config["conv_dim"] == 4
    D, dcard = load_stargan_discriminator(result.discriminator)
    assert dcard.config["image_size"] == 16 and D.config.classes == STARGAN_AUTHORS_ORDER
    # The trained G has non-trivial running stats: training forwards keep them up to date.
    assert not torch.allclose(G.main[1].running_mean, torch.zeros_like(G.main[1].running_mean))
    # Sample grid: a row per face, columns = the input + one per label.
    grid = cv2.imread(result.samples[-1])
    assert grid.shape == (3 * 16, (1 + 7) * 16, 3)
    assert not list(tmp_path.rglob("*.tmp*"))


def test_losses_csv_records_the_linear_learning_rate_decay(tmp_path: Path) -> None:
    config = _tiny(num_iters=6, num_iters_decay=4, checkpoint_format="safetensors")
    result = train_stargan(config, _faces(), tmp_path, progress=False)
    with open(result.losses_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["g_lr"]) for r in rows] == pytest.approx([1e-4, 1e-4, 1e-4, 7.5e-5, 5e-5, 2.5e-5])
    assert rows[0]["G/loss_rec"] == "" and rows[1]["G/loss_rec"] != ""  # G steps every n_critic = 2
    assert learning_rate(1e-4, 0, StarGANTrainConfig(num_iters=10, num_iters_decay=100)) == pytest.approx(1e-4)
    assert not list((tmp_path / "models").glob("*.ckpt"))


def test_gray_faces_are_replicated_and_foreign_labels_dropped() -> None:
    classes = EKMAN + ("neutral", "contempt")
    data = _faces(n_per_class=2, side=24, classes=classes, gray=True)
    images, labels, dropped = prepare_images(data, EKMAN, 16)
    assert images.shape == (12, 3, 16, 16) and images.dtype == torch.uint8
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    assert dropped == {"neutral": 2, "contempt": 2}
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    with pytest.raises(DatasetError, match=r"no training face for label\(s\) \['neutral'\]"):
        prepare_images(_faces(classes=EKMAN), STARGAN_AUTHORS_ORDER, 16)
