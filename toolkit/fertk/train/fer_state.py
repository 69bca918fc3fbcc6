"""A FER training run's state between epochs and on disk: early stopping, the run's counters and
history (`RunState`, saved as last.pt after every epoch), history.csv, the curves, and the checks
that a run found in the run directory is the one being asked for."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fertk.core.errors import CheckpointError, OutputExistsError
from fertk.train.fer_config import FerTrainConfig, TrainResult

STATE_FORMAT = "fertk-fer-train-state/1"
HISTORY_COLUMNS = ("epoch", "loss", "acc", "val_loss", "val_acc", "lr", "seconds")
# Options that may change between an interrupted run and its resumption without changing results
# (more epochs, other thread count or device).
RESUMABLE_CHANGES = ("epochs", "threads", "device")
RUN_FILES = ("result.json", "last.pt", "history.csv", "curves.png", "model.safetensors", "model.json",
             "train_config.json")


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not dropped by more than `min_delta` for `patience`
    epochs (0: never), but not before `min_epochs` epochs of the current attempt."""

    patience: int
    min_delta: float = 0.0
    min_epochs: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def update(self, epoch: int, val_loss: float, attempt_start: int = 0) -> bool:
        """Record an epoch's validation loss; True when it is the new best."""
        improved = val_loss < self.best_loss - self.min_delta  # NaN never improves
        if improved:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
        else:
            self.bad_epochs += 1
            self.stopped = 0 < self.patience <= self.bad_epochs and epoch - attempt_start >= self.min_epochs
        return improved

    def reset(self) -> None:
        """Forget everything (a restart from a new initialisation)."""
        self.best_loss, self.best_epoch, self.bad_epochs, self.stopped = math.inf, 0, 0, False


@dataclass
class RunState:
    """What a run carries from epoch to epoch besides the model and optimizer."""

    stopping: EarlyStopping
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0                   # epochs done before this call (resume)
    restarts: int = 0                      # plateau restarts so far
    attempt_start: int = 0                 # the epoch the current attempt started after
    best_state: dict[str, torch.Tensor] | None = None  # weights of the best epoch (CPU copies)

    def best_row(self) -> dict[str, float]:
        """The history row of the best epoch ({} before the first)."""
        return next((r for r in self.history if r["epoch"] == self.stopping.best_epoch), {})

    def to_saved(self, header: Mapping[str, Any], epoch: int, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The last.pt dict after `epoch` (`header`: format, config, classes, fingerprint)."""
        s = self.stopping
        return {**header, "epoch": epoch,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "history": self.history,
                "best_val_loss": s.best_loss, "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs,
                "early_stopped": s.stopped, "restarts": self.restarts, "attempt_start": self.attempt_start}

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Take the counters and history of a saved state (weights are loaded by the caller)."""
        self.history = [dict(row) for row in saved["history"]]
        self.start_epoch = int(saved["epoch"])
        s = self.stopping
        s.best_loss, s.best_epoch = float(saved["best_val_loss"]), int(saved["best_epoch"])
        s.bad_epochs, s.stopped = int(saved["bad_epochs"]), bool(saved["early_stopped"])
        # The saved weights and optimizer state are the current attempt's, whichever restart it is.
        self.restarts, self.attempt_start = int(saved.get("restarts", 0)), int(saved.get("attempt_start", 0))


def run_fingerprint(config: FerTrainConfig, classes: tuple[str, ...], *tensors: torch.Tensor) -> str:
    """sha256 over the result-relevant config and the exact training/validation tensors."""
    h = hashlib.sha256()
    relevant = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    relevant["classes"] = list(classes)
    h.update(json.dumps(relevant, sort_keys=True).encode())
    for tensor in tensors:
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def history_csv(history: list[dict[str, float]]) -> str:
    """history.csv's text: one row per epoch, floats as repr (they read back exactly)."""
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


def load_state(path: Path) -> dict[str, Any]:
    """Read last.pt; an unreadable or foreign file is a CheckpointError naming it."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state file gets the same one-line error
        raise CheckpointError(f"cannot read the resume state {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                              hint="delete it (or use --no-resume) to start the run over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a fertk FER training state (expected format {STATE_FORMAT})",
                              hint="use --no-resume to start over, or another --out")
    return state


def read_result(path: Path) -> TrainResult:
    """A finished run's result.json; a damaged one is a CheckpointError naming it."""
    try:
        return TrainResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a readable fertk training result ({type(exc).__name__}: {exc})",
                              hint="use --no-resume to train the run again, or another --out") from None


def check_resumable(path: Path, saved: Mapping[str, Any], config: FerTrainConfig, classes: tuple[str, ...],
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
    changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and k != "classes"
                     and old.get(k, defaults[k]) != new[k])
    if changed:
        raise OutputExistsError(
            f"{path.parent} holds a run with different options ({', '.join(f'{k}: {old.get(k)!r} -> {new[k]!r}' for k in changed)})",
            hint="use --no-resume to start over, or another --out")
    if saved.get("fingerprint") != fingerprint:
        raise OutputExistsError(f"{path.parent} holds a run trained on different data",
                                hint="use --no-resume to start over, or another --out")
