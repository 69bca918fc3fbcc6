"""A StarGAN run's files: checkpoints (official state dicts and/or safetensors, Adam state),
training_state.json (written last: the latest complete checkpoint), sample grids, losses.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fertk.core.errors import CheckpointError, OutputExistsError
from fertk.core.io import atomic_target, atomic_torch_save, atomic_write_bytes, atomic_write_text
from fertk.models.stargan import StarGANDiscriminator, StarGANGenerator, save_stargan
from fertk.models.weights import load_into, read_state_dict
from fertk.train.stargan_config import StarGANTrainConfig

STATE_FILE = "training_state.json"
LOSSES_FILE = "losses.csv"
LOSS_NAMES = ("D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_gp",
              "G/loss_fake", "G/loss_rec", "G/loss_cls")
# Options that define a run (networks, labels, data order): a resume must agree on these.
RUN_FIELDS = ("image_size", "conv_dim", "d_conv_dim", "repeat_num", "d_repeat_num",
              "with_neutral", "seed", "batch_size", "flip", "cls_loss")


def write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 HxWx3
        raise OSError(f"cannot encode {path}")
    atomic_write_bytes(path, encoded.tobytes(), fsync=False)


def image_grid(rows: list[torch.Tensor]) -> np.ndarray:
    """Rows of [K,3,S,S] images in [-1,1] -> one uint8 HxWx3 mosaic."""
    lines = [torch.cat(list(r), dim=2) for r in rows]  # each [3, S, K*S]
    image = torch.cat(lines, dim=1)
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def weights_paths(models_dir: Path, iteration: int, fmt: str) -> dict[str, list[Path]]:
    suffixes = {"ckpt": [".ckpt"], "safetensors": [".safetensors"], "both": [".ckpt", ".safetensors"]}[fmt]
    return {net: [models_dir / f"{iteration}-{net}{s}" for s in suffixes] for net in ("G", "D")}



def read_training_state(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def check_resumable(saved: dict[str, Any], config: StarGANTrainConfig, out_dir: Path) -> None:
    old = saved.get("config", {})
    new = config.to_dict()
    diffs = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in RUN_FIELDS if old.get(k) != new[k]]
    if diffs:
        raise OutputExistsError(f"{out_dir} holds a StarGAN run made with different options ({'; '.join(diffs)})",
                                hint="resume with the same options, or choose a new --out")


def load_checkpoint(out_dir: Path, saved: dict[str, Any], G: torch.nn.Module, D: torch.nn.Module,
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


def truncate_losses(path: Path, iteration: int) -> None:
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



def append_losses(path: Path, iteration: int, losses: dict[str, float], g_lr: float, d_lr: float) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["iteration", *LOSS_NAMES, "g_lr", "d_lr"])
        writer.writerow([iteration, *[f"{losses[k]:.6g}" if k in losses else "" for k in LOSS_NAMES],
                         f"{g_lr:.6g}", f"{d_lr:.6g}"])


def save_checkpoint(out_dir: Path, models_dir: Path, iteration: int, G: StarGANGenerator,
                     D: StarGANDiscriminator, g_opt: torch.optim.Optimizer, d_opt: torch.optim.Optimizer,
                     config: StarGANTrainConfig, checkpoints: list[int], previous: dict[str, Any]
                     ) -> dict[str, Any]:
    """Weights, then optimizer state, then the state JSON (its presence marks the checkpoint done)."""
    paths = weights_paths(models_dir, iteration, config.checkpoint_format)
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
