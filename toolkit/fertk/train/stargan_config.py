"""What a StarGAN training run depends on (`StarGANTrainConfig`) and what it produced."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fertk.core.emotions import EKMAN, STARGAN_AUTHORS_ORDER
from fertk.core.errors import InvalidInputError

CHECKPOINT_FORMATS = ("ckpt", "safetensors", "both")


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
