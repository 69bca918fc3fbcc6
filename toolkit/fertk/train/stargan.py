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

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fertk.core.devices import resolve_device
from fertk.core.errors import DatasetError, InvalidInputError, OutputExistsError
from fertk.core.progress import Progress, emit
from fertk.data.datasets import load_arrays
from fertk.data.preprocess import PreprocessConfig
from fertk.data.records import FaceArrays
from fertk.models.procedural import ProceduralConfig, ProceduralFaces, expression_aus, random_identities
from fertk.models.stargan import StarGANDiscriminator, StarGANGenerator
from fertk.train.stargan_config import StarGANTrainConfig, StarGANTrainResult
from fertk.train.stargan_files import (LOSSES_FILE, append_losses, check_resumable, image_grid, load_checkpoint,
                                       read_training_state, save_checkpoint, truncate_losses, write_png)


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
                        layout: str = "auto", detect: str = "auto", progress: Progress | None = None) -> FaceArrays:
    """Color faces at config.image_size: the word `procedural`, or any dataset `load_arrays` reads."""
    if str(dataset) == "procedural":
        return procedural_face_arrays(procedural_identities, config.image_size, config.classes, seed=config.seed)
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


@dataclass
class _Nets:
    """G, D and their Adam optimizers."""

    G: StarGANGenerator
    D: StarGANDiscriminator
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer

    def set_lr(self, config: StarGANTrainConfig, iteration: int) -> None:
        """This iteration's learning rates (constant, then the linear decay)."""
        for group in self.g_opt.param_groups:
            group["lr"] = learning_rate(config.g_lr, iteration, config)
        for group in self.d_opt.param_groups:
            group["lr"] = learning_rate(config.d_lr, iteration, config)


def _build_training(config: StarGANTrainConfig, device: torch.device) -> _Nets:
    """Seeded G and D on `device` in train mode, with Adam (the official betas)."""
    G, D = build_networks(config)
    G.to(device).train()
    D.to(device).train()
    g_opt = torch.optim.Adam(G.parameters(), config.g_lr, betas=(config.beta1, config.beta2))
    d_opt = torch.optim.Adam(D.parameters(), config.d_lr, betas=(config.beta1, config.beta2))
    return _Nets(G, D, g_opt, d_opt)


@dataclass
class _Batch:
    """One iteration's inputs: real faces, their labels, target labels, penalty mixing weights."""

    x_real: torch.Tensor
    label_org: torch.Tensor
    label_trg: torch.Tensor
    alpha: torch.Tensor
    c_org: torch.Tensor
    c_trg: torch.Tensor


def _draw_batch(i: int, config: StarGANTrainConfig, images: torch.Tensor, labels: torch.Tensor,
                order: _BatchOrder, eye: torch.Tensor, device: torch.device) -> _Batch:
    """Iteration i's batch; its randomness comes from a generator seeded by (seed, i) alone."""
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
    return _Batch(x_real, label_org, label_trg, alpha, eye[label_org], eye[label_trg])


def _discriminator_step(nets: _Nets, b: _Batch, config: StarGANTrainConfig) -> dict[str, float]:
    """D on real faces, their domains, fakes and the gradient penalty; one Adam step."""
    out_src, out_cls = nets.D(b.x_real)
    d_loss_real = -out_src.mean()
    d_loss_cls = classification_loss(out_cls, b.label_org, config.cls_loss)
    with torch.no_grad():  # D's step needs no graph through G (running stats follow in G's step)
        x_fake = nets.G(b.x_real, b.c_trg)
    out_src, _ = nets.D(x_fake)
    d_loss_fake = out_src.mean()
    x_hat = (b.alpha * b.x_real + (1 - b.alpha) * x_fake).requires_grad_(True)
    out_src, _ = nets.D(x_hat)
    d_loss_gp = gradient_penalty(out_src, x_hat)
    d_loss = d_loss_real + d_loss_fake + config.lambda_cls * d_loss_cls + config.lambda_gp * d_loss_gp
    nets.g_opt.zero_grad(set_to_none=True)
    nets.d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    nets.d_opt.step()
    return {"D/loss_real": d_loss_real.item(), "D/loss_fake": d_loss_fake.item(),
            "D/loss_cls": d_loss_cls.item(), "D/loss_gp": d_loss_gp.item()}


def _generator_step(nets: _Nets, b: _Batch, config: StarGANTrainConfig) -> dict[str, float]:
    """G: fool D, hit the target domain, cycle back to the input; one Adam step."""
    x_fake = nets.G(b.x_real, b.c_trg)
    out_src, out_cls = nets.D(x_fake)
    g_loss_fake = -out_src.mean()
    g_loss_cls = classification_loss(out_cls, b.label_trg, config.cls_loss)
    x_rec = nets.G(x_fake, b.c_org)
    g_loss_rec = (b.x_real - x_rec).abs().mean()
    g_loss = g_loss_fake + config.lambda_rec * g_loss_rec + config.lambda_cls * g_loss_cls
    nets.g_opt.zero_grad(set_to_none=True)
    nets.d_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    nets.g_opt.step()
    return {"G/loss_fake": g_loss_fake.item(), "G/loss_rec": g_loss_rec.item(), "G/loss_cls": g_loss_cls.item()}


def _open_run(config: StarGANTrainConfig, out_dir: Path) -> dict[str, Any] | None:
    """The run's saved state when resuming (None for a new run); a run there without --resume is refused."""
    saved = read_training_state(out_dir)
    if saved is not None and not config.resume:
        raise OutputExistsError(f"{out_dir} already holds a StarGAN run (iteration {saved.get('iteration')})",
                                hint="pass --resume to continue it, or choose a new --out")
    if saved is not None:
        check_resumable(saved, config, out_dir)
    return saved


class _StarGANRun:
    """One call of `train_stargan`: data, networks, files, and the stages of the loop."""

    def __init__(self, config: StarGANTrainConfig, data: FaceArrays, out_dir: Path, progress: Progress | None) -> None:
        self.config, self.out_dir, self.progress = config, out_dir, progress
        self.device = torch.device(resolve_device(config.device))
        self.saved = _open_run(config, out_dir)
        self.images, self.labels, self.dropped = prepare_images(data, config.classes, config.image_size)
        self.nets = _build_training(config, self.device)
        self.models_dir, self.samples_dir = out_dir / "models", out_dir / "samples"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        self.losses_path = out_dir / LOSSES_FILE
        self.start, self.checkpoints = 0, []
        if self.saved is not None:
            load_checkpoint(out_dir, self.saved, self.nets.G, self.nets.D, self.nets.g_opt, self.nets.d_opt)
            self.start = int(self.saved["iteration"])
            self.checkpoints = [int(i) for i in self.saved.get("checkpoints", [self.start])]
        # Rows past the checkpoint (or from a run that died before its first one) are logged again.
        truncate_losses(self.losses_path, self.start)
        # Fixed faces for the sample grids: a seeded choice, unflipped, the same on every resume.
        n = len(self.images)
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(_seed_for(config.seed, 2)))
        self.sample_x = _to_unit_range(self.images[pick[: config.sample_faces]]).to(self.device)
        self.eye = torch.eye(len(config.classes), device=self.device)
        self.order = _BatchOrder(n, config.batch_size, config.seed)
        self.losses: dict[str, float] = {}
        self.samples: list[str] = []
        self.state_files: dict[str, Any] = dict(self.saved["files"]) if self.saved else {}

    def iteration(self, i: int) -> None:
        """One D step, and a G step every n_critic iterations."""
        config = self.config
        batch = _draw_batch(i, config, self.images, self.labels, self.order, self.eye, self.device)
        self.nets.set_lr(config, i)
        self.losses.update(_discriminator_step(self.nets, batch, config))
        if (i + 1) % config.n_critic == 0:
            self.losses.update(_generator_step(self.nets, batch, config))

    def write_sample(self, done: int) -> None:
        """A grid: per sample face, the input and G's output for every label."""
        path = self.samples_dir / f"{done}-images.png"
        G, classes = self.nets.G, self.config.classes
        with torch.no_grad():  # no grad: the norms leave their running stats alone
            rows = [torch.cat([face[None], G(face[None].expand(len(classes), -1, -1, -1), self.eye)])
                    for face in self.sample_x]
        write_png(path, image_grid(rows))
        self.samples.append(str(path))

    def after_iteration(self, i: int) -> int:
        """Log losses, write samples and checkpoints when due; report progress. Returns iterations done."""
        config, done, nets = self.config, i + 1, self.nets
        last = done == config.num_iters
        if done % config.log_every == 0 or last:
            append_losses(self.losses_path, done, self.losses, learning_rate(config.g_lr, i, config),
                          learning_rate(config.d_lr, i, config))
        if done % config.sample_every == 0 or last:
            self.write_sample(done)
        if done % config.save_every == 0 or last:
            self.state_files = save_checkpoint(self.out_dir, self.models_dir, done, nets.G, nets.D, nets.g_opt,
                                               nets.d_opt, config, self.checkpoints, self.state_files)
        shown = " ".join(f"{k.split('/')[0]}{k.split('_')[-1]}={v:.3f}" for k, v in self.losses.items())
        emit(self.progress, "advance", f"stargan {shown}", done=done, total=config.num_iters, unit="iterations",
             losses=dict(self.losses))
        return done

    def result(self, seconds: float) -> StarGANTrainResult:
        """Where the run's files are and its last losses."""
        weights = self.state_files.get("G", [])
        return StarGANTrainResult(
            out_dir=str(self.out_dir), iterations=max(self.start, self.config.num_iters),
            start_iteration=self.start, classes=list(self.config.classes),
            generator=str(self.out_dir / weights[-1]) if weights else None,
            discriminator=str(self.out_dir / self.state_files["D"][-1]) if self.state_files.get("D") else None,
            checkpoints=self.checkpoints, samples=self.samples, losses_csv=str(self.losses_path),
            final_losses=dict(self.losses), samples_used=len(self.images), samples_dropped=self.dropped,
            seconds=round(seconds, 3), config=self.config.to_dict(),
        )


def train_stargan(config: StarGANTrainConfig, data: FaceArrays, out_dir: str | Path,
                  progress: Progress | None = None, *,
                  callback: Callable[[int, dict[str, float]], None] | None = None) -> StarGANTrainResult:
    """Train StarGAN on `data`, writing checkpoints, sample grids and a loss log under `out_dir`.

    `callback(iteration, losses)` runs after every iteration (1-based count of finished ones);
    `progress` gets an "advance" event per iteration (done/total iterations, the losses in data).
    """
    started = time.perf_counter()
    run = _StarGANRun(config, data, Path(out_dir), progress)
    for i in range(run.start, config.num_iters):
        run.iteration(i)
        done = run.after_iteration(i)
        if callback is not None:
            callback(done, dict(run.losses))
    return run.result(time.perf_counter() - started)


