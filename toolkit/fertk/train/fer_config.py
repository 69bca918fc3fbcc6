"""What a FER CNN training run is given (`FerTrainConfig`) and what it produced (`TrainResult`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fertk.core.errors import InvalidInputError, reject_unknown_keys
from fertk.models.fer_cnn import INPUT_SIZE, VARIANTS

PLATEAU_FRACTION = 0.98  # best val loss >= this × ln K: the model still predicts (nearly) uniformly


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
        reject_unknown_keys(data, (f.name for f in fields(cls)), "FER training option")
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
