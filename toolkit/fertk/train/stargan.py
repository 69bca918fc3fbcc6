"""Train a StarGAN expression translator on a labelled face set, following the official solver:
WGAN-GP adversarial loss, domain classification loss, cycle reconstruction loss, n_critic D steps
per G step, Adam, linear learning-rate decay, random horizontal flips.

Differences from the official code, on purpose:
* Domain loss: cross-entropy over the mutually exclusive emotion labels by default (the official
  code's single-label / RaFD path); `cls_loss="bce"` gives its multi-label CelebA path
  (BCE-with-logits on the one-hot labels, summed over labels, averaged over the batch).
* Learning-rate decay is linear per iteration over the last `num_iters_decay` iterations (the
  official code steps it every 1000 iterations).
* Randomness is a pure function of (seed, iteration): batch order comes from per-epoch
  permutations, flips / target labels / penalty mixing from a generator seeded per iteration.
  A resumed run therefore repeats the uninterrupted run exactly, and no RNG state needs saving.

Output folder: `models/{iter}-G.ckpt` / `{iter}-D.ckpt` (plain state dicts, loadable by the
official code) and/or `{iter}-G.safetensors` / `{iter}-D.safetensors` (config in the header),
`models/{iter}-optim.pt` (Adam states, tensors and numbers only: loads with weights_only=True;
only the latest is kept), `training_state.json` (written last, atomically: the latest complete
checkpoint), `samples/{iter}-images.png` (rows: faces; columns: input, then each label) and
`losses.csv`.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fertk.data.records import FaceArrays
from fertk.core.emotions import EKMAN, STARGAN_AUTHORS_ORDER
from fertk.core.errors import CheckpointError, DatasetError, InvalidInputError, OutputExistsError
from fertk.core.devices import resolve_device
from fertk.core.io import atomic_target, atomic_torch_save, atomic_write_bytes, atomic_write_text
from fertk.models.stargan import StarGANDiscriminator, StarGANGenerator, save_stargan
from fertk.models.weights import load_into, read_state_dict

STATE_FILE = "training_state.json"
LOSSES_FILE = "losses.csv"
LOSS_NAMES = ("D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_gp",
              "G/loss_fake", "G/loss_rec", "G/loss_cls")
CHECKPOINT_FORMATS = ("ckpt", "safetensors", "both")
# Options that define a run (networks, labels, data order): a resume must agree on these.
_RUN_FIELDS = ("image_size", "conv_dim", "d_conv_dim", "repeat_num", "d_repeat_num",
                        "with_neutral", "seed", "batch_size", "flip", "cls_loss")


@dataclass
class StarGANTrainConfig:
    """Everything a StarGAN run depends on (JSON-able); defaults follow the official solver."""

    image_size: int = 64               # training resolution (square)
    conv_dim: int = 64                 # G's first-layer width
    d_conv_dim: int | None = None      # D's first-layer width; None: conv_dim
    repeat_num: int = 6                # G's residual blocks
    d_repeat_num: int | None = None    # D's stride-2 convs; None: up to 6, keeping the final map >= 2x2
    with_neutral: bool = False         # labels: 6 Ekman, or 7 in the authors' order with neutral
    num_iters: int = 200_000
    num_iters_decay: int = 100_000     # linear LR decay to 0 over the last iterations (capped at num_iters)
    batch_size: int = 16
    n_critic: int = 5                  # D updates per G update
    g_lr: float = 1e-4
    d_lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    lambda_gp: float = 10.0
    cls_loss: str = "ce"               # "ce" (single-label) or "bce" (official multi-label form)
    flip: bool = True                  # random horizontal flips
    seed: int = 0
    log_every: int = 10                # rows in losses.csv
    sample_every: int = 1000           # sample grid PNGs
    save_every: int = 10_000           # checkpoints (the last iteration is always saved)
    sample_faces: int = 8              # rows of the sample grid
    checkpoint_format: str = "both"    # "ckpt" (official), "safetensors" or "both"
    device: str = "auto"               # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    resume: bool = False               # continue from out_dir's last checkpoint when there is one

    def __post_init__(self) -> None:
        if self.cls_loss not in ("ce", "bce"):
            raise InvalidInputError(f"unknown cls_loss {self.cls_loss!r}", hint="choose ce or bce")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise InvalidInputError(f"unknown checkpoint_format {self.checkpoint_format!r}",
                                    hint="choose " + ", ".join(CHECKPOINT_FORMATS))
        for name in ("num_iters", "batch_size", "n_critic", "log_every", "sample_every", "save_every"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"StarGAN training option {name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 8 or self.image_size % 4 != 0:
            raise InvalidInputError(f"image_size must be a multiple of 4 and >= 8, got {self.image_size}")
        repeat = self.discriminator_repeat_num
        if self.image_size % 2 ** repeat != 0:
            raise InvalidInputError(
                f"image_size {self.image_size} is not divisible by 2^d_repeat_num = {2 ** repeat}")

    @property
    def classes(self) -> tuple[str, ...]:
        """The label order G and D are trained on."""
        return STARGAN_AUTHORS_ORDER if self.with_neutral else EKMAN

    @property
    def discriminator_repeat_num(self) -> int:
        """D's stride-2 convs: given, or the most (<= 6, the official value) leaving a 2x2 map."""
        if self.d_repeat_num is not None:
            return self.d_repeat_num
        return max(1, min(6, int(math.log2(self.image_size)) - 1))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


@dataclass
class StarGANTrainResult:
    """What a run produced and where."""

    out_dir: str
    iterations: int
    start_iteration: int
    classes: list[str]
    generator: str | None               # latest G weights
    discriminator: str | None           # latest D weights
    checkpoints: list[int]
    samples: list[str]
    losses_csv: str
    final_losses: dict[str, float]
    samples_used: int
    samples_dropped: dict[str, int]     # label -> count of faces outside the label set
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Data


def prepare_images(data: FaceArrays, classes: tuple[str, ...], image_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """uint8 [N,3,S,S] faces (gray replicated, centre-cropped square, resized) and label indices
    over `classes`; faces whose label is outside `classes` are dropped and counted."""
    import cv2

    images = np.asarray(data.images)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise DatasetError(f"faces must be [N,H,W] gray or [N,H,W,3] color uint8, got shape {list(images.shape)}")
    names = [data.classes[int(i)] for i in np.asarray(data.labels)]
    keep = np.array([n in classes for n in names], dtype=bool)
    dropped: dict[str, int] = {}
    for n, k in zip(names, keep):
        if not k:
            dropped[n] = dropped.get(n, 0) + 1
    if not keep.any():
        raise DatasetError(f"no face is labelled with one of {list(classes)} (labels found: {sorted(set(names))})")
    labels = np.array([classes.index(n) for n, k in zip(names, keep) if k], dtype=np.int64)
    missing = [c for i, c in enumerate(classes) if not (labels == i).any()]
    if missing:
        raise DatasetError(f"no training face for label(s) {missing}; StarGAN needs examples of every domain",
                           hint="add faces of those classes, or train without neutral (drop --with-neutral)")
    kept = images[keep]
    out = np.empty((len(kept), image_size, image_size, 3), dtype=np.uint8)
    for i, face in enumerate(kept):
        h, w = face.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        face = face[top:top + side, left:left + side]
        if side != image_size:
            interp = cv2.INTER_AREA if side > image_size else cv2.INTER_LINEAR
            face = cv2.resize(face, (image_size, image_size), interpolation=interp)
        out[i] = face[..., None] if face.ndim == 2 else face
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels), dropped


def procedural_face_arrays(identities: int, image_size: int, classes: tuple[str, ...], *, seed: int = 0,
                           chunk: int = 32) -> FaceArrays:
    """Every procedural identity (seeded) rendered with every label's prototype expression, color uint8."""
    from fertk.models.procedural import ProceduralConfig, ProceduralFaces, expression_aus, random_identities

    if identities < 1:
        raise InvalidInputError(f"need at least one procedural identity, got {identities}")
    model = ProceduralFaces(ProceduralConfig(resolution=image_size)).eval()
    ids = random_identities(identities, seed)
    aus = expression_aus(list(classes))  # [E, au_dim]; neutral is all zeros
    per = len(classes)
    faces = []
    with torch.no_grad():
        for lo in range(0, identities, chunk):
            rendered = model.render_expressions(ids[lo:lo + chunk], aus)  # [M, E, 3, S, S]
            rendered = rendered.reshape(-1, *rendered.shape[2:])
            faces.append(((rendered.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    images = np.concatenate(faces)
    subjects = np.repeat(np.array([f"procedural-{seed}-{i}" for i in range(identities)]), per)
    return FaceArrays(images=images, labels=np.tile(np.arange(per, dtype=np.int64), identities),
                      classes=tuple(classes), subjects=subjects,
                      sources=np.full(len(images), "procedural"),
                      keys=[f"{s}:{c}" for s, c in zip(subjects, np.tile(classes, identities))],
                      meta={"procedural": {"identities": identities, "seed": seed, "resolution": image_size}})


def load_training_faces(dataset: str | Path, config: StarGANTrainConfig, *, procedural_identities: int = 200,
                        layout: str = "auto", detect: str = "auto", progress: bool = False) -> FaceArrays:
    """Color faces at config.image_size: the word `procedural`, or any dataset `load_arrays` reads."""
    if str(dataset) == "procedural":
        return procedural_face_arrays(procedural_identities, config.image_size, config.classes, seed=config.seed)
    from fertk.data.datasets import load_arrays
    from fertk.data.preprocess import PreprocessConfig

    return load_arrays(dataset, layout=layout, classes=config.classes,
                       preprocess=PreprocessConfig(size=config.image_size, gray=False, detect=detect),
                       progress=progress)


def _to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float [-1,1] (the official Normalize(0.5, 0.5))."""
    return batch.float().div_(127.5).sub_(1.0)


def _seed_for(seed: int, *path: int) -> int:
    """A 63-bit seed derived from (seed, path) with numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _BatchOrder:
    """Sample indices of iteration i: the i-th batch of the endless chain of per-epoch permutations."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(_seed_for(self.seed, 1, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def indices(self, iteration: int) -> torch.Tensor:
        """Indices (length batch_size) of the batch for `iteration`."""
        start = iteration * self.batch_size
        positions = range(start, start + self.batch_size)
        return torch.stack([self._permutation(p // self.n)[p % self.n] for p in positions])


# --------------------------------------------------------------------------------------------
# Losses


def gradient_penalty(out_src: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: mean over the batch of (||d out_src / d x_hat||_2 - 1)^2."""
    grad = torch.autograd.grad(outputs=out_src, inputs=x_hat, grad_outputs=torch.ones_like(out_src),
                               create_graph=True, retain_graph=True)[0]
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Domain loss: cross-entropy on indices, or BCE-with-logits on one-hot (summed, batch mean)."""
    if kind == "ce":
        return F.cross_entropy(logits, labels)
    target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[0]


def learning_rate(base: float, iteration: int, config: StarGANTrainConfig) -> float:
    """Constant, then linear decay to 0 over the last num_iters_decay iterations."""
    window = min(config.num_iters_decay, config.num_iters)
    if window <= 0:
        return base
    return base * min(1.0, (config.num_iters - iteration) / window)


# --------------------------------------------------------------------------------------------
# Files


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 HxWx3
        raise OSError(f"cannot encode {path}")
    atomic_write_bytes(path, encoded.tobytes(), fsync=False)


def _grid(rows: list[torch.Tensor]) -> np.ndarray:
    """Rows of [K,3,S,S] images in [-1,1] -> one uint8 HxWx3 mosaic."""
    lines = [torch.cat(list(r), dim=2) for r in rows]  # each [3, S, K*S]
    image = torch.cat(lines, dim=1)
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def _weights_paths(models_dir: Path, iteration: int, fmt: str) -> dict[str, list[Path]]:
    suffixes = {"ckpt": [".ckpt"], "safetensors": [".safetensors"], "both": [".ckpt", ".safetensors"]}[fmt]
    return {net: [models_dir / f"{iteration}-{net}{s}" for s in suffixes] for net in ("G", "D")}


# --------------------------------------------------------------------------------------------
# The loop


def build_networks(config: StarGANTrainConfig) -> tuple[StarGANGenerator, StarGANDiscriminator]:
    """G and D for a config, initialised from its seed (the global RNG is left untouched)."""
    classes = config.classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_for(config.seed, 0))
        G = StarGANGenerator(config.conv_dim, len(classes), config.repeat_num, classes=classes,
                             image_size=config.image_size)
        D = StarGANDiscriminator(config.image_size, config.d_conv_dim or config.conv_dim, len(classes),
                                 config.discriminator_repeat_num, classes=classes)
    return G, D


def _read_state(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def _check_resumable(saved: dict[str, Any], config: StarGANTrainConfig, out_dir: Path) -> None:
    old = saved.get("config", {})
    new = config.to_dict()
    diffs = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in _RUN_FIELDS if old.get(k) != new[k]]
    if diffs:
        raise OutputExistsError(f"{out_dir} holds a StarGAN run made with different options ({'; '.join(diffs)})",
                                hint="resume with the same options, or choose a new --out")


def _load_checkpoint(out_dir: Path, saved: dict[str, Any], G: torch.nn.Module, D: torch.nn.Module,
                     g_opt: torch.optim.Optimizer, d_opt: torch.optim.Optimizer) -> None:
    files = saved["files"]
    for net, module in (("G", G), ("D", D)):
        # Prefer safetensors (no pickle at all) when the run wrote both.
        path = out_dir / sorted(files[net], key=lambda p: not p.endswith(".safetensors"))[0]
        load_into(module, read_state_dict(path), source=path)
    optim_path = out_dir / files["optim"]
    try:
        optim = torch.load(str(optim_path), map_location="cpu", weights_only=True)
        g_opt.load_state_dict(optim["G"])
        d_opt.load_state_dict(optim["D"])
    except (OSError, RuntimeError, KeyError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot restore optimizer state from {optim_path}: {exc}") from None


def _truncate_losses(path: Path, iteration: int) -> None:
    """Drop rows logged after the checkpoint being resumed (they will be logged again)."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= iteration]
    with atomic_target(path) as tmp, open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)


def train_stargan(config: StarGANTrainConfig, data: FaceArrays, out_dir: str | Path, progress: bool = True,
                  *, callback: Callable[[int, dict[str, float]], None] | None = None) -> StarGANTrainResult:
    """Train StarGAN on `data`, writing checkpoints, sample grids and a loss log under `out_dir`.

    `callback(iteration, losses)` runs after every iteration (1-based count of finished ones).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    classes = config.classes
    device = torch.device(resolve_device(config.device))

    saved = _read_state(out_dir)
    if saved is not None and not config.resume:
        raise OutputExistsError(f"{out_dir} already holds a StarGAN run (iteration {saved.get('iteration')})",
                                hint="pass --resume to continue it, or choose a new --out")
    if saved is not None:
        _check_resumable(saved, config, out_dir)

    images, labels, dropped = prepare_images(data, classes, config.image_size)
    n = len(images)
    G, D = build_networks(config)
    G.to(device).train()
    D.to(device).train()
    g_opt = torch.optim.Adam(G.parameters(), config.g_lr, betas=(config.beta1, config.beta2))
    d_opt = torch.optim.Adam(D.parameters(), config.d_lr, betas=(config.beta1, config.beta2))

    models_dir, samples_dir = out_dir / "models", out_dir / "samples"
    models_dir.mkdir(parents=True, exist_ok=True)
    samples_dir.mkdir(parents=True, exist_ok=True)
    losses_path = out_dir / LOSSES_FILE

    start = 0
    checkpoints: list[int] = []
    if saved is not None:
        _load_checkpoint(out_dir, saved, G, D, g_opt, d_opt)
        start = int(saved["iteration"])
        checkpoints = [int(i) for i in saved.get("checkpoints", [start])]
    # Rows past the checkpoint (or from a run that died before its first one) are logged again.
    _truncate_losses(losses_path, start)

    # Fixed faces for the sample grids: a seeded choice, unflipped, the same on every resume.
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(_seed_for(config.seed, 2)))
    sample_x = _to_unit_range(images[pick[: config.sample_faces]]).to(device)
    eye = torch.eye(len(classes), device=device)

    order = _BatchOrder(n, config.batch_size, config.seed)
    losses: dict[str, float] = {}
    samples: list[str] = []
    state_files: dict[str, Any] = dict(saved["files"]) if saved else {}

    bar = _Progress(enabled=progress, total=config.num_iters, start=start)
    try:
        for i in range(start, config.num_iters):
            gen = torch.Generator().manual_seed(_seed_for(config.seed, 3, i))
            idx = order.indices(i)
            x_real = _to_unit_range(images[idx])
            if config.flip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x_real[flip] = x_real[flip].flip(-1)
            label_org = labels[idx]
            label_trg = label_org[torch.randperm(len(idx), generator=gen)]
            alpha = torch.rand(len(idx), 1, 1, 1, generator=gen)
            x_real, label_org, label_trg, alpha = (t.to(device) for t in (x_real, label_org, label_trg, alpha))
            c_org, c_trg = eye[label_org], eye[label_trg]
            for group in g_opt.param_groups:
                group["lr"] = learning_rate(config.g_lr, i, config)
            for group in d_opt.param_groups:
                group["lr"] = learning_rate(config.d_lr, i, config)

            # Discriminator: real faces, their domains, fakes, gradient penalty.
            out_src, out_cls = D(x_real)
            d_loss_real = -out_src.mean()
            d_loss_cls = classification_loss(out_cls, label_org, config.cls_loss)
            with torch.no_grad():  # D's step needs no graph through G (running stats follow in G's step)
                x_fake = G(x_real, c_trg)
            out_src, _ = D(x_fake)
            d_loss_fake = out_src.mean()
            x_hat = (alpha * x_real + (1 - alpha) * x_fake).requires_grad_(True)
            out_src, _ = D(x_hat)
            d_loss_gp = gradient_penalty(out_src, x_hat)
            d_loss = d_loss_real + d_loss_fake + config.lambda_cls * d_loss_cls + config.lambda_gp * d_loss_gp
            g_opt.zero_grad(set_to_none=True)
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            losses.update({"D/loss_real": d_loss_real.item(), "D/loss_fake": d_loss_fake.item(),
                           "D/loss_cls": d_loss_cls.item(), "D/loss_gp": d_loss_gp.item()})

            # Generator, every n_critic iterations: fool D, hit the target domain, cycle back.
            if (i + 1) % config.n_critic == 0:
                x_fake = G(x_real, c_trg)
                out_src, out_cls = D(x_fake)
                g_loss_fake = -out_src.mean()
                g_loss_cls = classification_loss(out_cls, label_trg, config.cls_loss)
                x_rec = G(x_fake, c_org)
                g_loss_rec = (x_real - x_rec).abs().mean()
                g_loss = g_loss_fake + config.lambda_rec * g_loss_rec + config.lambda_cls * g_loss_cls
                g_opt.zero_grad(set_to_none=True)
                d_opt.zero_grad(set_to_none=True)
                g_loss.backward()
                g_opt.step()
                losses.update({"G/loss_fake": g_loss_fake.item(), "G/loss_rec": g_loss_rec.item(),
                               "G/loss_cls": g_loss_cls.item()})

            done = i + 1
            if done % config.log_every == 0 or done == config.num_iters:
                _append_losses(losses_path, done, losses, learning_rate(config.g_lr, i, config),
                               learning_rate(config.d_lr, i, config))
            if done % config.sample_every == 0 or done == config.num_iters:
                path = samples_dir / f"{done}-images.png"
                with torch.no_grad():  # no grad: the norms leave their running stats alone
                    rows = [torch.cat([face[None], G(face[None].expand(len(classes), -1, -1, -1), eye)])
                            for face in sample_x]
                _write_png(path, _grid(rows))
                samples.append(str(path))
            if done % config.save_every == 0 or done == config.num_iters:
                state_files = _save_checkpoint(out_dir, models_dir, done, G, D, g_opt, d_opt, config,
                                               checkpoints, state_files)
            bar.advance(done, losses)
            if callback is not None:
                callback(done, dict(losses))
    finally:
        bar.close()

    final = max(start, config.num_iters)
    weights = state_files.get("G", [])
    return StarGANTrainResult(
        out_dir=str(out_dir),
        iterations=final,
        start_iteration=start,
        classes=list(classes),
        generator=str(out_dir / weights[-1]) if weights else None,
        discriminator=str(out_dir / state_files["D"][-1]) if state_files.get("D") else None,
        checkpoints=checkpoints,
        samples=samples,
        losses_csv=str(losses_path),
        final_losses=dict(losses),
        samples_used=n,
        samples_dropped=dropped,
        seconds=round(time.perf_counter() - started, 3),
        config=config.to_dict(),
    )


def _append_losses(path: Path, iteration: int, losses: dict[str, float], g_lr: float, d_lr: float) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["iteration", *LOSS_NAMES, "g_lr", "d_lr"])
        writer.writerow([iteration, *[f"{losses[k]:.6g}" if k in losses else "" for k in LOSS_NAMES],
                         f"{g_lr:.6g}", f"{d_lr:.6g}"])


def _save_checkpoint(out_dir: Path, models_dir: Path, iteration: int, G: StarGANGenerator,
                     D: StarGANDiscriminator, g_opt: torch.optim.Optimizer, d_opt: torch.optim.Optimizer,
                     config: StarGANTrainConfig, checkpoints: list[int], previous: dict[str, Any]
                     ) -> dict[str, Any]:
    """Weights, then optimizer state, then the state JSON (its presence marks the checkpoint done)."""
    paths = _weights_paths(models_dir, iteration, config.checkpoint_format)
    for path in paths["G"]:
        save_stargan(G, path)
    for path in paths["D"]:
        save_stargan(D, path)
    optim_path = models_dir / f"{iteration}-optim.pt"
    atomic_torch_save({"G": g_opt.state_dict(), "D": d_opt.state_dict()}, optim_path)
    if iteration not in checkpoints:
        checkpoints.append(iteration)
    files = {
        "G": [str(p.relative_to(out_dir)) for p in paths["G"]],
        "D": [str(p.relative_to(out_dir)) for p in paths["D"]],
        "optim": str(optim_path.relative_to(out_dir)),
    }
    state = {
        "iteration": iteration,
        "files": files,
        "checkpoints": checkpoints,
        "classes": list(config.classes),
        "config": config.to_dict(),
        "rng": "per-iteration generators seeded from (seed, iteration); nothing to restore",
    }
    atomic_write_text(out_dir / STATE_FILE, json.dumps(state, indent=2))
    # Only the latest optimizer state is kept: it is as large as G and D together, twice.
    old = previous.get("optim")
    if old and old != files["optim"]:
        (out_dir / old).unlink(missing_ok=True)
    return files


class _Progress:
    """A rich progress bar with the latest losses, on stderr; silent when disabled."""

    def __init__(self, *, enabled: bool, total: int, start: int) -> None:
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("stargan"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                                  console=Console(stderr=True), transient=False)
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=start, losses="")

    def advance(self, done: int, losses: dict[str, float]) -> None:
        """Show `done` iterations finished and the current losses."""
        if self._progress is None:
            return
        shown = " ".join(f"{k.split('/')[0]}{k.split('_')[-1]}={v:.3f}" for k, v in losses.items())
        self._progress.update(self._task, completed=done, losses=shown)

    def close(self) -> None:
        """Stop rendering."""
        if self._progress is not None:
            self._progress.stop()
