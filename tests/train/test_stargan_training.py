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
from fertk.core.emotions import EKMAN, STARGAN_AUTHORS_ORDER
from fertk.core.errors import DatasetError, OutputExistsError
from fertk.models.stargan import load_stargan_discriminator, load_stargan_generator
from fertk.models.weights import read_state_dict
from fertk.train.stargan import learning_rate, prepare_images, train_stargan
from fertk.train.stargan_config import StarGANTrainConfig

from tests.tools.limits import broken_limits


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
    straight = train_stargan(_tiny(), data, tmp_path / "straight")
    assert straight.iterations == 6 and straight.checkpoints == [2, 4, 6]

    class Interrupt(Exception):
        pass

    def stop_at_5(done: int, losses: dict[str, float]) -> None:
        if done == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_stargan(_tiny(), data, tmp_path / "cut", callback=stop_at_5)
    state = json.loads((tmp_path / "cut" / "training_state.json").read_text())
    assert state["iteration"] == 4  # iteration 5 was lost with the interruption

    with pytest.raises(OutputExistsError, match="already holds a StarGAN run"):
        train_stargan(_tiny(), data, tmp_path / "cut")
    with pytest.raises(OutputExistsError, match="conv_dim: 4 -> 8"):
        train_stargan(_tiny(conv_dim=8, resume=True), data, tmp_path / "cut")

    resumed = train_stargan(_tiny(resume=True), data, tmp_path / "cut")
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
    again = train_stargan(_tiny(resume=True), data, tmp_path / "cut")
    assert (again.start_iteration, again.iterations) == (6, 6)


def test_checkpoints_are_safe_to_load_and_official_shaped(tmp_path: Path) -> None:
    result = train_stargan(_tiny(num_iters=4, with_neutral=True), _faces(classes=STARGAN_AUTHORS_ORDER),
                           tmp_path)
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
    result = train_stargan(config, _faces(), tmp_path)
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


# ---------------------------------------------------------------------------------------------
# The signal: after a short run on procedural faces, translated faces carry the target expression.


def _procedural_faces(identities: int, seed: int) -> FaceArrays:
    """Procedural faces of every Ekman expression, rendered at 48 px and cropped to the central
    32 px (the face), so the expression features cover a useful number of pixels."""
    from fertk.train.stargan import procedural_face_arrays

    faces = procedural_face_arrays(identities, 48, EKMAN, seed=seed)
    faces.images = np.ascontiguousarray(faces.images[:, 8:40, 8:40])
    return faces


def _as_tensors(faces: FaceArrays) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(faces.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, torch.from_numpy(faces.labels)


def _other_targets(labels: torch.Tensor) -> torch.Tensor:
    """A target label different from each face's own, cycling through the other five."""
    return (labels + 1 + torch.arange(len(labels)) % 5) % 6


def _translation_accuracy(G: torch.nn.Module, classify, faces: torch.Tensor, labels: torch.Tensor) -> float:
    targets = _other_targets(labels)
    with torch.no_grad():
        translated = G.eval()(faces, torch.eye(6)[targets])
        return float((classify(translated).argmax(1) == targets).float().mean())


def _expression_cnn(faces: torch.Tensor, labels: torch.Tensor, epochs: int = 15) -> torch.nn.Module:
    """A small CNN trained on real faces only: the independent judge of translated faces."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 4 * 4, 6))
    optimizer = torch.optim.Adam(net.parameters(), 2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(faces), generator=generator)
        for start in range(0, len(faces), 32):
            index = order[start:start + 32]
            batch = faces[index].clone()
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch[flip] = batch[flip].flip(-1)
            loss = torch.nn.functional.cross_entropy(net(batch), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def short_run_statistics(seed: int, workdir: Path) -> dict[str, float]:
    """One short StarGAN run (training seed `seed`; data fixed) and what the fast test checks:
    D's classifier head on translations by the untrained G (`before`) and the trained G
    (`after`), on unseen real faces (`real`), and the cycle loss's last/first ratio (`rec_ratio`).
    Also run by tests/tools/threshold_sweep.py over several seeds."""
    from fertk.train.stargan import build_networks

    config = StarGANTrainConfig(image_size=32, conv_dim=8, repeat_num=1, batch_size=16, n_critic=3,
                                g_lr=2e-4, d_lr=2e-4, lambda_cls=10.0, num_iters=300, num_iters_decay=150,
                                log_every=10, sample_every=300, save_every=300, device="cpu",
                                checkpoint_format="safetensors", seed=seed)
    test_x, test_y = _as_tensors(_procedural_faces(20, seed=2))
    G0, D0 = build_networks(config)  # exactly the networks the run starts from
    before = _translation_accuracy(G0, lambda x: D0(x)[1], test_x, test_y)

    result = train_stargan(config, _procedural_faces(40, seed=0), workdir)
    G, _ = load_stargan_generator(result.generator)
    D, _ = load_stargan_discriminator(result.discriminator)
    with torch.no_grad():
        real = float((D(test_x)[1].argmax(1) == test_y).float().mean())
    after = _translation_accuracy(G, lambda x: D(x)[1], test_x, test_y)
    with open(result.losses_csv, newline="") as fh:
        rec = [float(r["G/loss_rec"]) for r in csv.DictReader(fh) if r["G/loss_rec"]]
    return {"before": before, "real": real, "after": after, "gain": after - before,
            "rec_ratio": float(np.mean(rec[-3:]) / np.mean(rec[:3]))}


# Limits of the fast test, (statistic, "<" or ">", bound): the worst of six training seeds minus a
# quarter of their range (tests/tools/threshold_sweep.py stargan-short; measured on the 2-core
# AMD EPYC, AVX2, torch 2.13.0+cpu, 2026-12-01). Seeds 0-5 gave
#   before     0.133 0.167 0.200 0.158 0.167 0.167   (chance 1/6)
#   real       0.658 0.608 0.558 0.450 0.433 0.475
#   after      0.758 0.808 0.383 0.342 0.542 0.425
#   gain       0.625 0.642 0.183 0.183 0.375 0.258
#   rec_ratio  0.901 0.730 0.683 0.766 0.735 0.688
# The values depend on the CPU's kernels (AVX2 vs AVX-512 oneDNN paths round differently and 300
# GAN steps carry that on): seed 0's rec_ratio was 0.9006 here and just under 0.9 on the Zen-5
# AVX-512 VM, so the old bounds (real > 0.45, after > 0.6, gain > 0.4, rec_ratio < 0.9, all fit to
# seed 0 on one machine) passed there and failed here, and seeds 2-5 break them anywhere. After
# 300 steps G has learned the expressions on some seeds and only begun on others (after is
# bimodal), so this fast test claims "well above chance and better than the untrained G"; the
# slow test checks the strong form with an independent judge.
SHORT_RUN_LIMITS: tuple[tuple[str, str, float], ...] = (
    ("before", "<", 0.35),     # the untrained G's translations are at chance for D0
    ("real", ">", 0.37),       # D tells unseen identities' expressions (chance is 1/6)
    ("after", ">", 0.22),      # G's translations read as their targets, above chance
    ("gain", ">", 0.06),       # and better than the untrained G's
    ("rec_ratio", "<", 0.96),  # the cycle reconstruction improves
)


def test_short_run_teaches_the_discriminator_and_generator_the_expressions(tmp_path: Path) -> None:
    """Fast check with D's own classifier head (the independent-judge version is the slow test):
    D learns to tell expressions of unseen identities, and G's translations of unseen faces are
    classified as their targets, where the untrained G's are at chance."""
    stats = short_run_statistics(0, tmp_path)
    assert not broken_limits(stats, SHORT_RUN_LIMITS), (broken_limits(stats, SHORT_RUN_LIMITS), stats)


@pytest.mark.slow
def test_translations_fool_an_independent_expression_classifier(tmp_path: Path) -> None:
    """The strong form: a CNN trained only on real procedural faces (other identities) labels
    G's translations of unseen faces as their targets well above chance after ~900 iterations."""
    from fertk.train.stargan import build_networks

    judge = _expression_cnn(*_as_tensors(_procedural_faces(60, seed=1)))
    test_x, test_y = _as_tensors(_procedural_faces(20, seed=2))
    with torch.no_grad():
        assert float((judge(test_x).argmax(1) == test_y).float().mean()) > 0.8  # the judge is competent

    config = StarGANTrainConfig(image_size=32, conv_dim=16, repeat_num=2, batch_size=16, g_lr=2e-4, d_lr=2e-4,
                                num_iters=900, num_iters_decay=450, sample_every=900, save_every=900,
                                device="cpu", checkpoint_format="safetensors", seed=0)
    G0, _ = build_networks(config)
    before = _translation_accuracy(G0, judge, test_x, test_y)
    result = train_stargan(config, _procedural_faces(40, seed=0), tmp_path)
    G, _ = load_stargan_generator(result.generator)
    after = _translation_accuracy(G, judge, test_x, test_y)
    assert before < 0.3, before
    assert after > 0.4 and after > before + 0.2, (before, after)
