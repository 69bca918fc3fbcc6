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
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fertk.data.records import FaceArrays
from fertk.core.errors import CheckpointError, DatasetError, InvalidInputError, OutputExistsError
from fertk.core.devices import resolve_device, torch_threads
from fertk.data.splits import PAPER_SIZES
from fertk.core.io import atomic_write_bytes, atomic_write_text
from fertk.evaluate import (DatasetOptions, EvalReport, canonical_class,
                            dataset_info, dataset_name, evaluate_sets, faces_to_gray, map_labels,
                            save_figure, write_reports)
from fertk.models.fer_cnn import INPUT_SIZE, VARIANTS, FerCNN, FerCNNConfig, save_fer_model
from fertk.models.weights import load_into, read_json_object, read_state_dict

STATE_FORMAT = "fertk-fer-train-state/1"
PLATEAU_FRACTION = 0.98  # best val loss >= this × ln K: the model still predicts (nearly) uniformly
HISTORY_COLUMNS = ("epoch", "loss", "acc", "val_loss", "val_acc", "lr", "seconds")
# Options that may change between an interrupted run and its resumption without changing results
# (more epochs, other thread count or device).
_RESUMABLE_CHANGES = ("epochs", "threads", "device")
_RUN_FILES = ("result.json", "last.pt", "history.csv", "curves.png", "model.safetensors", "model.json",
              "train_config.json")


@dataclass
class FerTrainConfig:
    """Training options; defaults follow the paper (Adam 1e-4, batch 64, patience 5, no augmentation)."""

    variant: str = "paper"                 # FER CNN variant: "paper" or "authors-code"
    classes: tuple[str, ...] | None = None  # output classes in order; None = the training set's classes
    input_size: int = INPUT_SIZE           # square input side; faces of another size are resized
    epochs: int = 100                      # maximum epochs; early stopping usually ends sooner
    batch_size: int = 64
    lr: float = 1e-4                       # Adam learning rate
    patience: int = 5                      # epochs without a lower val loss before stopping; 0 = never
    min_delta: float = 0.0                 # a val loss must drop by more than this to count
    min_epochs: int = 0                    # never stop early before this epoch (0: the paper's rule)
    seed: int = 0
    augment: bool = False                  # random flip + small affine (rotation, scale, shift)
    threads: int | None = None             # torch CPU threads; None = leave torch's setting
    device: str = "auto"                   # "auto" (cuda when available), "cpu", "cuda" or "cuda:N"
    # Table 1's CNN (dropout .25/.25/.5, Adam) sometimes never leaves its starting plateau on small
    # data: every ReLU of the dense layer dies and it predicts uniformly for good. With restarts > 0,
    # a run whose best val loss is still >= PLATEAU_FRACTION × ln K after `plateau_steps` optimiser
    # steps is re-initialised from the next seed stream (the epoch budget is shared; the count is
    # recorded). Steps, not epochs: healthy runs can sit on the plateau for 50-250 steps first.
    plateau_restarts: int = 0
    plateau_steps: int = 400

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise InvalidInputError(f"unknown FER CNN variant {self.variant!r}", hint=f"choose one of {', '.join(VARIANTS)}")
        if self.classes is not None:
            self.classes = tuple(self.classes)
        for name in ("epochs", "batch_size", "input_size"):
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise InvalidInputError(f"the learning rate must be positive, got {self.lr}")
        if self.plateau_restarts < 0 or self.plateau_steps < 1:
            raise InvalidInputError(f"plateau_restarts must be >= 0 and plateau_steps >= 1, got "
                                    f"{self.plateau_restarts}, {self.plateau_steps}")
        if self.patience < 0 or self.min_epochs < 0:
            raise InvalidInputError(f"patience and min_epochs must be >= 0, got {self.patience}, {self.min_epochs}")
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["classes"] = list(self.classes) if self.classes is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FerTrainConfig":
        """Inverse of to_dict; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"unknown FER training option(s): {', '.join(unknown)}",
                                    hint="known: " + ", ".join(sorted(known)))
        return cls(**dict(data))


@dataclass
class TrainResult:
    """What a finished run produced: paths, the best epoch's metrics and the whole history."""

    run_dir: Path
    model_path: Path
    best_epoch: int
    epochs_run: int
    stop_reason: str                       # "early-stopping" | "max-epochs"
    best: dict[str, float]                 # the history row of the best epoch
    history: list[dict[str, float]]
    classes: tuple[str, ...]
    config: dict[str, Any]
    resumed_from: int = 0                  # epochs already done when this call started
    data: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0                      # re-initialisations after a plateau (FerTrainConfig.plateau_restarts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        data["model_path"] = str(self.model_path)
        data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainResult":
        """Inverse of to_dict."""
        values = dict(data)
        values["run_dir"] = Path(values["run_dir"])
        values["model_path"] = Path(values["model_path"])
        values["classes"] = tuple(values["classes"])
        return cls(**values)


# -- data -------------------------------------------------------------------------------------------
def summarize_arrays(arrays: FaceArrays) -> dict[str, Any]:
    """Counts for a card: samples, per class, per source, distinct subjects."""
    sources = Counter(map(str, arrays.sources))
    return {
        "n": int(len(arrays)),
        "classes": arrays.class_counts(),
        "sources": dict(sorted(sources.items())),
        "subjects": int(len({(str(a), str(b)) for a, b in zip(arrays.sources, arrays.subjects)})),
    }


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


def _absent(labels: torch.Tensor, classes: tuple[str, ...]) -> list[str]:
    """Classes without a sample among `labels`."""
    counts = torch.bincount(labels, minlength=len(classes)) if len(labels) else torch.zeros(len(classes))
    return [c for c, n in zip(classes, counts.tolist()) if not n]


def _fingerprint(config: FerTrainConfig, classes: tuple[str, ...], *tensors: torch.Tensor) -> str:
    """sha256 over the result-relevant config and the exact training/validation tensors."""
    h = hashlib.sha256()
    relevant = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE_CHANGES}
    relevant["classes"] = list(classes)
    h.update(json.dumps(relevant, sort_keys=True).encode())
    for tensor in tensors:
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


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


# -- the loop ---------------------------------------------------------------------------------------
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


class _Progress:
    """A rich progress bar with loss/acc on stderr, or nothing."""

    def __init__(self, enabled: bool, total_batches: int) -> None:
        self.enabled = enabled
        self.total = total_batches
        self._bar: Any = None
        self._task: Any = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True, soft_wrap=True)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        # A live bar only on a terminal; logs and pipes get one line per epoch.
        if not self.enabled or not self.console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f}"),
                             TimeElapsedColumn(), console=self.console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task("train", total=self.total, epoch=f"{epoch}/{epochs}", loss=0.0, acc=0.0)

    def batch(self, items: int, loss: float, acc: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, loss=loss, acc=acc)

    def end_epoch(self, row: Mapping[str, float], improved: bool) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self.enabled:
            mark = "  [green]best[/]" if improved else ""
            self.console.print(
                f"epoch {row['epoch']:>3}: loss {row['loss']:.4f} acc {row['acc']:.3f}  "
                f"val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.3f}  ({row['seconds']:.1f} s){mark}",
                highlight=False)

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _history_csv(history: list[dict[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for row in history:
        writer.writerow([int(row["epoch"])] + [repr(float(row[c])) for c in HISTORY_COLUMNS[1:]])
    return buffer.getvalue()


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Rows of a history.csv as dicts (epoch as int, the rest as float)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


def curves_figure(history: list[dict[str, float]], best_epoch: int | None = None) -> Any:
    """Two panels: training/validation loss and accuracy per epoch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 3.8))
    epochs = [r["epoch"] for r in history]
    for ax, (metric, label) in zip(fig.subplots(1, 2), (("loss", "cross-entropy"), ("acc", "accuracy"))):
        ax.plot(epochs, [r[metric] for r in history], marker=".", label="train")
        ax.plot(epochs, [r["val_" + metric] for r in history], marker=".", label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("FER CNN training")
    return fig


def _save_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state file gets the same one-line error
        raise CheckpointError(f"cannot read the resume state {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                              hint="delete it (or use --no-resume) to start the run over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a fertk FER training state (expected format {STATE_FORMAT})",
                              hint="use --no-resume to start over, or another --out")
    return state


def _read_result(path: Path) -> TrainResult:
    """A finished run's result.json; a damaged one is a CheckpointError naming it."""
    try:
        return TrainResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a readable fertk training result ({type(exc).__name__}: {exc})",
                              hint="use --no-resume to train the run again, or another --out") from None


def _check_resumable(path: Path, saved: Mapping[str, Any], config: FerTrainConfig, classes: tuple[str, ...],
                     fingerprint: str) -> None:
    """The saved run must have the same architecture, classes, options and data as this call."""
    old = dict(saved.get("config", {}))
    if old.get("variant") != config.variant or tuple(saved.get("classes", ())) != classes:
        raise CheckpointError(
            f"{path} belongs to a {old.get('variant')!r} FER CNN with classes {list(saved.get('classes', ()))}, "
            f"expected {config.variant!r} with classes {list(classes)}",
            hint="use --no-resume to start over, or another --out")
    new = config.to_dict()
    # An option a run predates (saved by an older fertk) counts as its default.
    defaults = FerTrainConfig().to_dict()
    changed = sorted(k for k in new if k not in _RESUMABLE_CHANGES and k != "classes"
                     and old.get(k, defaults[k]) != new[k])
    if changed:
        raise OutputExistsError(
            f"{path.parent} holds a run with different options ({', '.join(f'{k}: {old.get(k)!r} -> {new[k]!r}' for k in changed)})",
            hint="use --no-resume to start over, or another --out")
    if saved.get("fingerprint") != fingerprint:
        raise OutputExistsError(f"{path.parent} holds a run trained on different data",
                                hint="use --no-resume to start over, or another --out")


def train_fer(train: FaceArrays, val: FaceArrays | None, config: FerTrainConfig | None = None,
              run_dir: str | Path = "runs/fer", *, progress: bool = True, resume: bool = True,
              data_info: Mapping[str, Any] | None = None,
              on_epoch_end: Callable[[dict[str, float]], None] | None = None,
              allow_missing_classes: bool = False) -> TrainResult:
    """Train a FER CNN on `train`, stopping early on `val` loss; keep the best epoch's weights.

    `val` is required (it drives early stopping and picks the checkpoint): split one off by
    subject first (`fertk.data.splits`, or the CLI's --split / --val-fraction). With `resume`,
    an unfinished run in `run_dir` continues from its last epoch and a finished one is returned
    as is; without it, the run's files are replaced. `data_info` (e.g. dataset paths, the split
    manifest's sha256) goes into the card; `on_epoch_end` sees each history row.

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
    train_x, train_y = _prepare(train, classes, config.input_size, "training")
    val_x, val_y = _prepare(val, classes, config.input_size, "validation")
    absent = {"train": _absent(train_y, classes), "val": _absent(val_y, classes)}
    if absent["train"] and not allow_missing_classes:
        name = train.meta.get("root") or train.meta.get("path") or "the training set"
        present = [c for c in classes if c not in absent["train"]]
        raise DatasetError(
            f"{name}: the training set has no sample of {', '.join(absent['train'])} "
            f"({len(present)} of the model's {len(classes)} classes present: {', '.join(present) or 'none'})",
            hint="train on the classes present (--classes " + ",".join(present or ["..."]) + "; Python: classes=...), "
                 "or pass --allow-missing-classes (Python: allow_missing_classes=True)")
    fingerprint = _fingerprint(config, classes, train_x, train_y, val_x, val_y)
    device = torch.device(resolve_device(config.device))
    card_data = {"train": summarize_arrays(train), "val": summarize_arrays(val), **dict(data_info or {})}
    if absent["train"] or absent["val"]:
        card_data["absent_classes"] = absent

    paths = {name: run_dir / name for name in _RUN_FILES}
    if not resume:
        for name in _RUN_FILES:  # result.json first: the run stops looking finished before anything else goes
            paths[name].unlink(missing_ok=True)
    elif paths["result.json"].is_file():
        finished = _read_result(paths["result.json"])
        _check_resumable(paths["result.json"], {"config": finished.config, "classes": finished.classes,
                                                "fingerprint": finished.data.get("fingerprint")},
                         config, classes, fingerprint)
        return finished

    run_dir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    bar = _Progress(progress, steps_per_epoch)
    for role in ("train", "val"):
        if absent[role]:
            bar.note(f"warning: the {'training' if role == 'train' else 'validation'} set has no sample of "
                     f"{', '.join(absent[role])}")
    plateau_loss = PLATEAU_FRACTION * math.log(len(classes))

    def fresh_model(attempt: int) -> tuple[FerCNN, Any]:
        # Attempt 0 uses the historical stream; restarts draw new, reproducible initialisations.
        with _seeded(_stream_seed(config.seed, attempt, "init"), torch.device("cpu")):
            fresh = FerCNN(FerCNNConfig(config.variant, classes, config.input_size))
        fresh.to(device)
        return fresh, torch.optim.Adam(fresh.parameters(), lr=config.lr)

    with torch_threads(config.threads):
        model, optimizer = fresh_model(0)
        history: list[dict[str, float]] = []
        best_loss, best_epoch, bad_epochs, early_stopped = math.inf, 0, 0, False
        best_state: dict[str, torch.Tensor] | None = None
        start_epoch, restarts, attempt_start = 0, 0, 0
        if resume and paths["last.pt"].is_file():
            saved = _load_state(paths["last.pt"])
            _check_resumable(paths["last.pt"], saved, config, classes, fingerprint)
            load_into(model, saved["model"], source=paths["last.pt"])
            optimizer.load_state_dict(saved["optimizer"])
            history = [dict(row) for row in saved["history"]]
            start_epoch = int(saved["epoch"])
            best_loss, best_epoch = float(saved["best_val_loss"]), int(saved["best_epoch"])
            bad_epochs, early_stopped = int(saved["bad_epochs"]), bool(saved["early_stopped"])
            # The saved weights and optimizer state are the current attempt's, whichever restart it is.
            restarts, attempt_start = int(saved.get("restarts", 0)), int(saved.get("attempt_start", 0))
            if best_epoch:
                best_state = read_state_dict(paths["model.safetensors"])
            bar.note(f"resuming {run_dir} after epoch {start_epoch}")
        atomic_write_text(paths["train_config.json"], json.dumps(
            {"config": config.to_dict(), "fingerprint": fingerprint, "data": card_data}, indent=2) + "\n")

        def card_extra(stop_reason: str | None) -> dict[str, Any]:
            best_row = next((r for r in history if r["epoch"] == best_epoch), {})
            return {"training": config.to_dict(), "training_data": card_data,
                    "metrics": {"best_epoch": best_epoch, **{k: best_row.get(k) for k in HISTORY_COLUMNS[1:5]},
                                "epochs_run": len(history), "stop_reason": stop_reason}}

        try:
            for epoch in range(start_epoch + 1, config.epochs + 1):
                if early_stopped:
                    break
                started = time.perf_counter()
                bar.start_epoch(epoch, config.epochs)
                loss, acc = _run_epoch(model, optimizer, train_x, train_y, config, epoch, device, bar.batch)
                val_loss, val_acc = _validate(model, val_x, val_y, device)
                row = {"epoch": epoch, "loss": loss, "acc": acc, "val_loss": val_loss, "val_acc": val_acc,
                       "lr": float(optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - started}
                history.append(row)
                improved = val_loss < best_loss - config.min_delta  # NaN never improves
                if improved:
                    best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    save_fer_model(model, paths["model.safetensors"], extra=card_extra(None))
                else:
                    bad_epochs += 1
                    early_stopped = (0 < config.patience <= bad_epochs
                                     and epoch - attempt_start >= config.min_epochs)
                if (restarts < config.plateau_restarts and not best_loss < plateau_loss and epoch < config.epochs
                        and (epoch - attempt_start) * steps_per_epoch >= config.plateau_steps):
                    restarts, attempt_start = restarts + 1, epoch
                    model, optimizer = fresh_model(restarts)
                    best_loss, best_epoch, bad_epochs, early_stopped = math.inf, 0, 0, False
                    best_state = None
                    bar.note(f"epoch {epoch}: still on the initial plateau (val loss {val_loss:.3f} ≈ ln "
                             f"{len(classes)}); restart {restarts}/{config.plateau_restarts} from a new initialisation")
                atomic_write_text(paths["history.csv"], _history_csv(history))
                _save_state(paths["last.pt"], {
                    "format": STATE_FORMAT, "config": config.to_dict(), "classes": list(classes),
                    "fingerprint": fingerprint, "epoch": epoch,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(), "history": history,
                    "best_val_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                    "early_stopped": early_stopped, "restarts": restarts, "attempt_start": attempt_start,
                })
                bar.end_epoch(row, improved)
                if on_epoch_end is not None:
                    on_epoch_end(dict(row))
        finally:
            bar.close()

    stop_reason = "early-stopping" if early_stopped else "max-epochs"
    if best_state is None:
        raise DatasetError(f"{run_dir}: the validation loss was never finite; no checkpoint to keep",
                           hint="check the data for constant or corrupt images, or lower --lr")
    best_model = FerCNN(FerCNNConfig(config.variant, classes, config.input_size))
    load_into(best_model, best_state, source=paths["model.safetensors"])
    save_fer_model(best_model, paths["model.safetensors"], extra=card_extra(stop_reason))
    save_figure(curves_figure(history, best_epoch), paths["curves.png"])
    result = TrainResult(
        run_dir=run_dir, model_path=paths["model.safetensors"], best_epoch=best_epoch, epochs_run=len(history),
        stop_reason=stop_reason, best=dict(next(r for r in history if r["epoch"] == best_epoch)),
        history=history, classes=classes, config=config.to_dict(), resumed_from=start_epoch,
        data={**card_data, "fingerprint": fingerprint}, restarts=restarts,
    )
    atomic_write_text(paths["result.json"], json.dumps(result.to_dict(), indent=2) + "\n")
    paths["last.pt"].unlink(missing_ok=True)  # finished: result.json + model are the run now
    bar.note(f"best epoch {best_epoch}: val_loss {best_loss:.4f} val_acc {result.best['val_acc']:.3f} "
             f"({stop_reason} after {len(history)} epochs) -> {paths['model.safetensors']}")
    return result


# -- from dataset paths to a trained, evaluated model (what `fertk train fer` runs) ------------------
# The paper's 109 / 10 / 25 subjects as fractions, so any number of subjects splits in those
# proportions (subject counts would leave extra subjects out, or be scaled down).
PAPER_SPLIT_FRACTIONS: tuple[float, ...] = tuple(n / sum(PAPER_SIZES) for n in PAPER_SIZES)
SPLIT_FILE = "split.json"
EVAL_DIR = "eval"


@dataclass
class FerRun:
    """A `fertk train fer` run: the training result, how the data was split, and test metrics."""

    training: TrainResult
    datasets: list[dict[str, Any]]
    split: dict[str, Any] | None
    tests: list[EvalReport]
    files: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (history left out: it is in history.csv)."""
        training = self.training.to_dict()
        training.pop("history")
        training.pop("data", None)
        return {"training": training, "datasets": self.datasets, "split": self.split,
                "tests": [r.summary() for r in self.tests],
                "files": json.loads(json.dumps(self.files, default=str))}


def concat_arrays(parts: Sequence[FaceArrays], classes: Sequence[str], size: int = INPUT_SIZE) -> FaceArrays:
    """One FaceArrays from several (e.g. real + synthetic), labels matched by name onto `classes`."""
    if not parts:
        raise DatasetError("no dataset to combine")
    if len(parts) == 1 and tuple(parts[0].classes) == tuple(classes) and parts[0].images.shape[1:] == (size, size):
        return parts[0]
    paths = [str(dataset_info(p).get("path", f"dataset {i}")) for i, p in enumerate(parts)]
    twice = [p for p, n in Counter(paths).items() if n > 1]
    if twice:
        raise DatasetError(f"{twice[0]} is given twice", hint="give each dataset once")
    keys_of = [list(p.keys or [f"{i}" for i in range(len(p))]) for p in parts]
    sources_of = [np.asarray(p.sources, dtype=str) for p in parts]
    if len(parts) > 1 and sum(map(len, keys_of)) != len({k for keys in keys_of for k in keys}):
        # Two datasets name samples alike (e.g. two `fertk synth` runs with other seeds): qualify
        # keys and sources by dataset so samples and subjects stay distinct.
        names = _unique_names([dataset_name(p) for p in paths], taken=set())
        keys_of = [[f"{name}::{k}" for k in keys] for name, keys in zip(names, keys_of)]
        sources_of = [np.char.add(src, f"@{name}") if len(src) else src for name, src in zip(names, sources_of)]
    images, labels = [], []
    for part in parts:
        mapped, excluded = map_labels(part, classes)
        if excluded:
            raise DatasetError(f"{dataset_info(part).get('path', 'a dataset')}: labels {sorted(excluded)} "
                               f"are not among the classes {list(classes)}")
        images.append(faces_to_gray(part.images, size)[:, 0])
        labels.append(mapped)
    return FaceArrays(np.concatenate(images), np.concatenate(labels), tuple(classes),
                      np.concatenate([np.asarray(p.subjects, dtype=str) for p in parts]),
                      np.concatenate(sources_of), [k for keys in keys_of for k in keys], {"path": ", ".join(paths)})


def _say(progress: bool, text: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(text, highlight=False)


def _write_split(run_dir: Path, split: Any, resume: bool) -> tuple[Path, str]:
    """Save the split manifest in the run dir; refuse to replace a different one when resuming."""
    from fertk.data.splits import save_manifest

    path = run_dir / SPLIT_FILE
    new = json.dumps(split.to_dict(), sort_keys=True)
    if resume and path.is_file():
        try:
            old = json.dumps(json.loads(path.read_text()), sort_keys=True)
        except (OSError, ValueError):
            old = None
        if old is not None and old != new and ((run_dir / "result.json").is_file() or (run_dir / "last.pt").is_file()):
            raise OutputExistsError(f"{path} holds a different split than this run asks for",
                                    hint="pass --split-manifest " + str(path) + " to reuse it, --no-resume, or another --out")
    save_manifest(split, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def train_fer_from_paths(
    datasets: Sequence[str | Path],
    *,
    config: FerTrainConfig | None = None,
    run_dir: str | Path = "runs/fer",
    read: DatasetOptions | None = None,
    val: Sequence[str | Path] = (),
    test: Sequence[str | Path] = (),
    split: Sequence[float] | None = None,
    split_manifest: str | Path | None = None,
    split_seed: int = 0,
    val_fraction: float | None = None,
    progress: bool = True,
    resume: bool = True,
    allow_missing_classes: bool = False,
) -> FerRun:
    """Read datasets, split them by subject (or use `val`), train, and evaluate on the test part
    and on every extra `test` dataset; reports go to `<run_dir>/eval/`.

    The validation set comes from exactly one of: `val` datasets; `split_manifest` (a saved
    split); `val_fraction` (train/val only, no test part); `split` sizes (subject counts or
    fractions, three parts); or, when none is given, the paper's 109:10:25 proportions.

    Training data without a sample of some class is an error unless `allow_missing_classes`
    (see `train_fer`); test reports list the classes a test set lacks (`absent_classes`).
    """
    from fertk.data.splits import load_manifest, subject_split
    from fertk.models.fer_cnn import load_fer_model

    config = config or FerTrainConfig()
    read = read or DatasetOptions()
    run_dir = Path(run_dir)
    if not datasets:
        raise InvalidInputError("no training dataset given", hint="fertk train fer DATASET [--dataset ...]")
    chosen = [name for name, given in (("--val", bool(val)), ("--split-manifest", split_manifest is not None),
                                       ("--val-fraction", val_fraction is not None), ("--split", split is not None)) if given]
    if len(chosen) > 1:
        raise InvalidInputError(f"{' and '.join(chosen)} both choose the validation set; give one of them")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise InvalidInputError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    classes = tuple(config.classes or read.classes)
    read = DatasetOptions(**{**read.__dict__, "classes": classes})
    config = FerTrainConfig.from_dict({**config.to_dict(), "classes": classes})

    loaded = []
    for path in datasets:
        arrays = read.load(path, size=config.input_size, progress=progress)
        _say(progress, f"read {path}: {len(arrays)} faces, {summarize_arrays(arrays)['subjects']} subjects"
             + "".join(f", {k} {v}" for k, v in dataset_info(arrays).items() if k in ("unreadable", "no_face") and v))
        loaded.append(arrays)
    infos = [{"path": str(p), **dataset_info(a), **summarize_arrays(a)} for p, a in zip(datasets, loaded)]
    everything = concat_arrays(loaded, classes, config.input_size)
    missing = _absent(torch.from_numpy(np.asarray(everything.labels, np.int64)), classes)
    if missing and not allow_missing_classes:
        present = [c for c in classes if c not in missing]
        raise DatasetError(
            f"{', '.join(map(str, datasets))}: no sample of {', '.join(missing)} "
            f"({len(present)} of the {len(classes)} classes present: {', '.join(present) or 'none'})",
            hint="train on the classes present (--classes " + ",".join(present or ["..."]) + "; Python: classes=...), "
                 "or pass --allow-missing-classes (Python: allow_missing_classes=True)")

    split_info: dict[str, Any] | None = None
    test_sets: dict[str, FaceArrays] = {}
    if val:
        train_part = everything
        val_part = concat_arrays([read.load(p, size=config.input_size, progress=progress) for p in val],
                                 classes, config.input_size)
    else:
        if split_manifest is not None:
            the_split = load_manifest(split_manifest)
        else:
            sizes = (1 - val_fraction, val_fraction, 0.0) if val_fraction is not None else tuple(split or PAPER_SPLIT_FRACTIONS)
            the_split = subject_split(everything, sizes, seed=split_seed)
        if "val" not in the_split.parts:
            raise InvalidInputError(f"the split has parts {list(the_split.parts)}, but training needs a val part",
                                    hint="give three sizes (train, val, test), e.g. --split 109,10,25")
        parts = the_split.apply(everything)
        train_part, val_part = parts["train"], parts["val"]
        if len(parts.get("test", ())) > 0:
            test_sets["test"] = parts["test"]
        run_dir.mkdir(parents=True, exist_ok=True)
        manifest, sha = _write_split(run_dir, the_split, resume)
        split_info = {"manifest": str(manifest), "sha256": sha, "seed": the_split.seed,
                      "sizes": the_split.sizes, "notes": list(the_split.notes),
                      "from": str(split_manifest) if split_manifest is not None else "subject_split"}
        _say(progress, "split by subject: " + ", ".join(f"{k} {v} subjects ({len(parts[k])} faces)"
                                                       for k, v in the_split.sizes.items()))
        for note in the_split.notes:
            _say(progress, f"split note: {note}")
    for name, path in zip(_unique_names([dataset_name(p) for p in test], taken=set(test_sets)), test):
        test_sets[name] = read.load(path, size=config.input_size, progress=progress)

    data_info = {"datasets": [str(p) for p in datasets], "val_datasets": [str(p) for p in val],
                 "read_options": read.to_dict(),
                 "split_manifest": ({"path": split_info["manifest"], "sha256": split_info["sha256"]}
                                    if split_info else None)}
    training = train_fer(train_part, val_part, config, run_dir, progress=progress, resume=resume, data_info=data_info,
                         allow_missing_classes=allow_missing_classes)

    reports: list[EvalReport] = []
    files: dict[str, Any] = {"run_dir": str(run_dir), "model": str(training.model_path),
                             "history": str(run_dir / "history.csv"), "curves": str(run_dir / "curves.png")}
    if split_info:
        files["split"] = split_info["manifest"]
    if test_sets:
        model, _card = load_fer_model(training.model_path)
        reports = evaluate_sets(model, test_sets)
        files["eval"] = write_reports(reports, run_dir / EVAL_DIR)
        _record_test_metrics(training.model_path, reports)
    return FerRun(training, infos, split_info, reports, files)


def _unique_names(names: Sequence[str], taken: set[str]) -> list[str]:
    out = []
    for name in names:
        candidate, k = name, 2
        while candidate in taken:
            candidate, k = f"{name}_{k}", k + 1
        taken.add(candidate)
        out.append(candidate)
    return out


def _record_test_metrics(model_path: Path, reports: Sequence[EvalReport]) -> None:
    """Add the test-set summaries to the model's JSON card (weights untouched)."""
    from fertk.models.fer_cnn import card_path_for

    card_file = card_path_for(model_path)
    card = read_json_object(card_file, "FER CNN card")
    card.setdefault("extra", {}).setdefault("metrics", {})["test"] = [r.summary() for r in reports]
    atomic_write_text(card_file, json.dumps(card, indent=2, default=str) + "\n")
