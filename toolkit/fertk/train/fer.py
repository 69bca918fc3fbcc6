"""Train the paper's FER CNN: Adam, categorical cross-entropy, early stopping on validation loss,
best checkpoint kept, seeded and resumable.

A run directory holds:
  train_config.json   the FerTrainConfig and class list (written first)
  history.csv         epoch, loss, acc, val_loss, val_acc, lr, seconds (rewritten every epoch)
  model.safetensors   weights of the epoch with the lowest validation loss, + model.json card
  last.pt             resume state after the latest epoch (removed once the run is finished)
  curves.png          loss and accuracy curves
  result.json         written last: its presence means the run finished

Small data: the CNN starts on a plateau (uniform predictions) that it leaves after roughly
50-150 Adam steps; with a few hundred faces (a handful of steps per epoch) and lr 1e-4, patience 5
can stop training on that plateau. More data, `min_epochs`, a larger patience or lr avoid it.

Determinism: every random stream (weight init, shuffling, dropout, augmentation) is seeded from
(seed, epoch), so an epoch's randomness does not depend on what ran before it and resuming after
epoch k needs only the model, the optimizer and the early-stopping counters. On CPU a resumed run
is bit-identical to an uninterrupted one (same thread count); on CUDA cuDNN may differ slightly.

Progress: `progress` receives `fertk.core.progress` events: "advance" per batch (done/total
batches, loss and acc in data), "epoch" per epoch (done/total epochs, the history row in data),
"message" for notes (resume, restarts, warnings, the best epoch).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fertk.core.devices import resolve_device, torch_threads
from fertk.core.errors import DatasetError, InvalidInputError
from fertk.core.io import atomic_torch_save, atomic_write_text, save_figure
from fertk.core.progress import Progress, emit, say
from fertk.data.convert import faces_to_gray, map_labels, summarize_arrays
from fertk.data.options import canonical_class
from fertk.data.records import FaceArrays
from fertk.models.fer_cnn import FerCNN, FerCNNConfig, save_fer_model
from fertk.models.weights import load_into, read_state_dict
from fertk.train.fer_config import PLATEAU_FRACTION, FerTrainConfig, TrainResult
from fertk.train.fer_state import (HISTORY_COLUMNS, RUN_FILES, STATE_FORMAT, EarlyStopping, RunState,
                                   check_resumable, curves_figure, history_csv, load_state, read_result, run_fingerprint)


# -- data -------------------------------------------------------------------------------------------
def _prepare(arrays: FaceArrays, classes: tuple[str, ...], size: int, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 1, S, S] faces and int64 labels over `classes`; unknown classes are an error."""
    name = arrays.meta.get("root") or arrays.meta.get("name") or role + " set"
    if len(arrays) == 0:
        raise DatasetError(f"{name}: the {role} set is empty", hint="check the dataset path and --layout")
    labels, excluded = map_labels(arrays, classes)
    if excluded:
        raise DatasetError(
            f"{name}: {role} labels {sorted(excluded)} are not among the model classes {list(classes)}",
            hint="train on those classes too (--classes, Python: classes=...) or drop them when reading "
                 "the dataset",
        )
    faces = faces_to_gray(arrays.images, size)
    return torch.from_numpy(faces), torch.from_numpy(labels)


def absent_classes(labels: torch.Tensor, classes: tuple[str, ...]) -> list[str]:
    """Classes without a sample among `labels`."""
    counts = torch.bincount(labels, minlength=len(classes)) if len(labels) else torch.zeros(len(classes))
    return [c for c, n in zip(classes, counts.tolist()) if not n]


@dataclass
class _Data:
    """The training and validation tensors of a run and what its card says about them."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    absent: dict[str, list[str]]
    card: dict[str, Any]
    fingerprint: str


def _training_data(train: FaceArrays, val: FaceArrays, config: FerTrainConfig, classes: tuple[str, ...],
                   data_info: Mapping[str, Any] | None, allow_missing_classes: bool) -> _Data:
    """Tensors over `classes`; a class missing from training is an error unless allowed."""
    train_x, train_y = _prepare(train, classes, config.input_size, "training")
    val_x, val_y = _prepare(val, classes, config.input_size, "validation")
    absent = {"train": absent_classes(train_y, classes), "val": absent_classes(val_y, classes)}
    if absent["train"] and not allow_missing_classes:
        name = train.meta.get("root") or train.meta.get("path") or "the training set"
        present = [c for c in classes if c not in absent["train"]]
        raise DatasetError(
            f"{name}: the training set has no sample of {', '.join(absent['train'])} "
            f"({len(present)} of the model's {len(classes)} classes present: {', '.join(present) or 'none'})",
            hint="train on the classes present (--classes " + ",".join(present or ["..."]) + "; Python: classes=...), "
                 "or pass --allow-missing-classes (Python: allow_missing_classes=True)")
    fingerprint = run_fingerprint(config, classes, train_x, train_y, val_x, val_y)
    card = {"train": summarize_arrays(train), "val": summarize_arrays(val), **dict(data_info or {})}
    if absent["train"] or absent["val"]:
        card["absent_classes"] = absent
    return _Data(train_x, train_y, val_x, val_y, absent, card, fingerprint)


# -- randomness -------------------------------------------------------------------------------------
def _stream_seed(seed: int, epoch: int, stream: str) -> int:
    """An independent 63-bit seed per (seed, epoch, purpose)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (dropout draws from it) without leaking the change to the caller."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip (p 0.5) and a small affine: rotation ±10°, scale ±10 %, shift ±5 %."""
    n = x.shape[0]
    draw = lambda *shape: torch.rand(*shape, generator=generator) * 2 - 1  # noqa: E731 - U(-1, 1)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    angle = draw(n) * math.radians(10.0)
    scale = 1.0 + 0.1 * draw(n)
    shift = 0.1 * draw(n, 2)  # normalised coordinates span 2, so 0.1 is 5 % of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
        torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
    ], dim=1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# -- one epoch --------------------------------------------------------------------------------------
def _run_epoch(model: FerCNN, optimizer: torch.optim.Optimizer, faces: torch.Tensor, labels: torch.Tensor,
               config: FerTrainConfig, epoch: int, device: torch.device,
               on_batch: Callable[[int, float, float], None] | None) -> tuple[float, float]:
    """One pass over the training set; returns (mean loss, accuracy) as seen during training."""
    shuffle = torch.Generator().manual_seed(_stream_seed(config.seed, epoch, "shuffle"))
    augment = torch.Generator().manual_seed(_stream_seed(config.seed, epoch, "augment"))
    order = torch.randperm(len(faces), generator=shuffle)
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    with _seeded(_stream_seed(config.seed, epoch, "dropout"), device):
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            x = faces[index].to(device).float().div_(255.0)
            y = labels[index].to(device)
            if config.augment:
                x = augment_batch(x, augment)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(index)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(index)
            if on_batch is not None:
                on_batch(len(index), loss_sum / seen, correct / seen)
    return loss_sum / seen, correct / seen


@torch.no_grad()
def _validate(model: FerCNN, faces: torch.Tensor, labels: torch.Tensor, device: torch.device,
              batch_size: int = 256) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a held-out set (eval mode: no dropout)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(faces), batch_size):
        x = faces[start:start + batch_size].to(device).float().div_(255.0)
        y = labels[start:start + batch_size].to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(faces), correct / len(faces)


def _epoch_line(row: Mapping[str, float], epochs: int, improved: bool) -> str:
    return (f"{int(row['epoch']):>3}/{epochs}: loss {row['loss']:.4f} acc {row['acc']:.3f}  "
            f"val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.3f}  ({row['seconds']:.1f} s)"
            + ("  best" if improved else ""))


# -- the run ----------------------------------------------------------------------------------------
class _Run:
    """One call of `train_fer`: the model, optimizer and RunState, and the stages of the loop."""

    def __init__(self, config: FerTrainConfig, classes: tuple[str, ...], data: _Data, run_dir: Path,
                 progress: Progress | None) -> None:
        self.config, self.classes, self.data, self.run_dir, self.progress = config, classes, data, run_dir, progress
        self.paths = {name: run_dir / name for name in RUN_FILES}
        self.device = torch.device(resolve_device(config.device))
        self.steps_per_epoch = math.ceil(len(data.train_x) / config.batch_size)
        self.plateau_loss = PLATEAU_FRACTION * math.log(len(classes))
        self.state = RunState(EarlyStopping(config.patience, config.min_delta, config.min_epochs))

    def begin(self, resume: bool) -> None:
        """The first model (attempt 0), then last.pt's weights and counters when resuming."""
        self.model, self.optimizer = self.fresh_model(0)
        if resume and self.paths["last.pt"].is_file():
            self.resume()

    def fresh_model(self, attempt: int) -> tuple[FerCNN, torch.optim.Optimizer]:
        """A new model + Adam; attempt 0 uses the historical stream, restarts draw new, reproducible ones."""
        with _seeded(_stream_seed(self.config.seed, attempt, "init"), torch.device("cpu")):
            fresh = FerCNN(FerCNNConfig(self.config.variant, self.classes, self.config.input_size))
        fresh.to(self.device)
        return fresh, torch.optim.Adam(fresh.parameters(), lr=self.config.lr)

    def resume(self) -> None:
        """Continue from last.pt after checking it is this run."""
        path = self.paths["last.pt"]
        saved = load_state(path)
        check_resumable(path, saved, self.config, self.classes, self.data.fingerprint)
        load_into(self.model, saved["model"], source=path)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state.restore(saved)
        if self.state.stopping.best_epoch:
            self.state.best_state = read_state_dict(self.paths["model.safetensors"])
        say(self.progress, f"resuming {self.run_dir} after epoch {self.state.start_epoch}")

    def card_extra(self, stop_reason: str | None) -> dict[str, Any]:
        """The model card's training section."""
        best_row = self.state.best_row()
        return {"training": self.config.to_dict(), "training_data": self.data.card,
                "metrics": {"best_epoch": self.state.stopping.best_epoch,
                            **{k: best_row.get(k) for k in HISTORY_COLUMNS[1:5]},
                            "epochs_run": len(self.state.history), "stop_reason": stop_reason}}

    def epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        """Train and validate one epoch; keep the weights when it is the best so far."""
        started = time.perf_counter()
        batches = [0]

        def on_batch(items: int, loss: float, acc: float) -> None:
            batches[0] += 1
            emit(self.progress, "advance", f"epoch {epoch}/{self.config.epochs} loss {loss:.4f} acc {acc:.3f}",
                 done=batches[0], total=self.steps_per_epoch, unit="batches", epoch=epoch, loss=loss, acc=acc)

        d = self.data
        loss, acc = _run_epoch(self.model, self.optimizer, d.train_x, d.train_y, self.config, epoch, self.device,
                               on_batch if self.progress is not None else None)
        val_loss, val_acc = _validate(self.model, d.val_x, d.val_y, self.device)
        row = {"epoch": epoch, "loss": loss, "acc": acc, "val_loss": val_loss, "val_acc": val_acc,
               "lr": float(self.optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - started}
        self.state.history.append(row)
        improved = self.state.stopping.update(epoch, val_loss, self.state.attempt_start)
        if improved:
            self.state.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            save_fer_model(self.model, self.paths["model.safetensors"], extra=self.card_extra(None))
        return row, improved

    def maybe_restart(self, epoch: int, val_loss: float) -> None:
        """Re-initialise a run still on the initial plateau after plateau_steps steps (plateau_restarts)."""
        config, state = self.config, self.state
        if (state.restarts < config.plateau_restarts and not state.stopping.best_loss < self.plateau_loss
                and epoch < config.epochs
                and (epoch - state.attempt_start) * self.steps_per_epoch >= config.plateau_steps):
            state.restarts, state.attempt_start = state.restarts + 1, epoch
            self.model, self.optimizer = self.fresh_model(state.restarts)
            state.stopping.reset()
            state.best_state = None
            say(self.progress, f"epoch {epoch}: still on the initial plateau (val loss {val_loss:.3f} ≈ ln "
                               f"{len(self.classes)}); restart {state.restarts}/{config.plateau_restarts} "
                               "from a new initialisation")

    def save_epoch(self, epoch: int) -> None:
        """history.csv and last.pt after an epoch."""
        atomic_write_text(self.paths["history.csv"], history_csv(self.state.history))
        header = {"format": STATE_FORMAT, "config": self.config.to_dict(), "classes": list(self.classes),
                  "fingerprint": self.data.fingerprint}
        atomic_torch_save(self.state.to_saved(header, epoch, self.model, self.optimizer), self.paths["last.pt"])

    def loop(self, on_epoch_end: Callable[[dict[str, float]], None] | None) -> None:
        """Epochs from the one after the saved state to the last, or until early stopping."""
        for epoch in range(self.state.start_epoch + 1, self.config.epochs + 1):
            if self.state.stopping.stopped:
                break
            row, improved = self.epoch(epoch)
            self.maybe_restart(epoch, row["val_loss"])
            self.save_epoch(epoch)
            emit(self.progress, "epoch", _epoch_line(row, self.config.epochs, improved), done=epoch,
                 total=self.config.epochs, unit="epochs", improved=improved, **row)
            if on_epoch_end is not None:
                on_epoch_end(dict(row))

    def finish(self) -> TrainResult:
        """Save the best epoch's model, the curves and result.json; drop last.pt."""
        state, paths, config = self.state, self.paths, self.config
        stop_reason = "early-stopping" if state.stopping.stopped else "max-epochs"
        if state.best_state is None:
            raise DatasetError(f"{self.run_dir}: the validation loss was never finite; no checkpoint to keep",
                               hint="check the data for constant or corrupt images, or lower --lr")
        best_epoch = state.stopping.best_epoch
        best_model = FerCNN(FerCNNConfig(config.variant, self.classes, config.input_size))
        load_into(best_model, state.best_state, source=paths["model.safetensors"])
        save_fer_model(best_model, paths["model.safetensors"], extra=self.card_extra(stop_reason))
        save_figure(curves_figure(state.history, best_epoch), paths["curves.png"])
        result = TrainResult(
            run_dir=self.run_dir, model_path=paths["model.safetensors"], best_epoch=best_epoch,
            epochs_run=len(state.history), stop_reason=stop_reason, best=dict(state.best_row()),
            history=state.history, classes=self.classes, config=config.to_dict(), resumed_from=state.start_epoch,
            data={**self.data.card, "fingerprint": self.data.fingerprint}, restarts=state.restarts,
        )
        atomic_write_text(paths["result.json"], json.dumps(result.to_dict(), indent=2) + "\n")
        paths["last.pt"].unlink(missing_ok=True)  # finished: result.json + model are the run now
        say(self.progress, f"best epoch {best_epoch}: val_loss {state.stopping.best_loss:.4f} val_acc "
                           f"{result.best['val_acc']:.3f} ({stop_reason} after {len(state.history)} epochs) "
                           f"-> {paths['model.safetensors']}")
        return result


def _finished_run(paths: Mapping[str, Path], resume: bool, config: FerTrainConfig, classes: tuple[str, ...],
                  fingerprint: str) -> TrainResult | None:
    """Without `resume`, clear the run's files; with it, a finished run's result (None when unfinished)."""
    if not resume:
        for name in RUN_FILES:  # result.json first: the run stops looking finished before anything else goes
            paths[name].unlink(missing_ok=True)
        return None
    if not paths["result.json"].is_file():
        return None
    finished = read_result(paths["result.json"])
    check_resumable(paths["result.json"], {"config": finished.config, "classes": finished.classes,
                                           "fingerprint": finished.data.get("fingerprint")},
                    config, classes, fingerprint)
    return finished


def train_fer(train: FaceArrays, val: FaceArrays | None, config: FerTrainConfig | None = None,
              run_dir: str | Path = "runs/fer", *, progress: Progress | None = None, resume: bool = True,
              data_info: Mapping[str, Any] | None = None,
              on_epoch_end: Callable[[dict[str, float]], None] | None = None,
              allow_missing_classes: bool = False) -> TrainResult:
    """Train a FER CNN on `train`, stopping early on `val` loss; keep the best epoch's weights.

    `val` is required (it drives early stopping and picks the checkpoint): split one off by
    subject first (`fertk.data.splits`, or the CLI's --split / --val-fraction). With `resume`,
    an unfinished run in `run_dir` continues from its last epoch and a finished one is returned
    as is; without it, the run's files are replaced. `data_info` (e.g. dataset paths, the split
    manifest's sha256) goes into the card; `on_epoch_end` sees each history row; `progress`
    gets the events listed in the module docstring.

    A training set without a sample of some class of the model is a DatasetError naming those
    classes (the model could never learn them, and its metrics would hide it), unless
    `allow_missing_classes`; the classes absent from training and validation go into the card.
    """
    config = config or FerTrainConfig()
    if val is None:
        raise InvalidInputError(
            "training needs a validation set: it drives early stopping and picks the best checkpoint",
            hint="split one off by subject (fertk.data.splits.subject_split; CLI: --split or --val-fraction) or pass --val")
    classes = tuple(canonical_class(c) for c in (config.classes or train.classes))
    config = FerTrainConfig.from_dict({**config.to_dict(), "classes": classes})
    run_dir = Path(run_dir)
    data = _training_data(train, val, config, classes, data_info, allow_missing_classes)
    run = _Run(config, classes, data, run_dir, progress)
    finished = _finished_run(run.paths, resume, config, classes, data.fingerprint)
    if finished is not None:
        return finished
    run_dir.mkdir(parents=True, exist_ok=True)
    for role in ("train", "val"):
        if data.absent[role]:
            say(progress, f"warning: the {'training' if role == 'train' else 'validation'} set has no sample of "
                          f"{', '.join(data.absent[role])}")
    with torch_threads(config.threads):
        run.begin(resume)
        atomic_write_text(run.paths["train_config.json"], json.dumps(
            {"config": config.to_dict(), "fingerprint": data.fingerprint, "data": data.card}, indent=2) + "\n")
        run.loop(on_epoch_end)
    return run.finish()
