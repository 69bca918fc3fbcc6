"""StarGAN networks: the configs, the label-conditioned generator G (with its shared-first-conv
fast path) and the PatchGAN critic D, in the official yunjey/stargan module layout."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fertk.core.emotions import EKMAN, NEUTRAL, STARGAN_AUTHORS_ORDER, normalize_emotion
from fertk.core.errors import InvalidInputError

NORM_MODES = ("instance", "running")
DEFAULT_IMAGE_SIZE = 128  # used when neither the file nor the caller gives one (the paper's pipeline)


def default_classes(c_dim: int) -> tuple[str, ...] | None:
    """Label order implied by c_dim: the authors' 7 (with neutral), the 6 Ekman, else unknown."""
    if c_dim == len(STARGAN_AUTHORS_ORDER):
        return STARGAN_AUTHORS_ORDER
    if c_dim == len(EKMAN):
        return EKMAN
    return None


@dataclass
class StarGANConfig:
    """Generator architecture, label order and normalisation mode."""

    conv_dim: int = 64                      # channels after the first 7x7 conv
    c_dim: int = 7                          # number of domain labels
    repeat_num: int = 6                     # residual blocks at the bottleneck
    norm_mode: str = "instance"             # "instance" (per-sample stats) | "running"
    classes: tuple[str, ...] | None = None  # label order; None: implied by c_dim
    image_size: int = DEFAULT_IMAGE_SIZE    # input side it runs at (fully convolutional: any multiple of 4 runs)

    def __post_init__(self) -> None:
        if self.norm_mode not in NORM_MODES:
            raise InvalidInputError(f"unknown norm_mode {self.norm_mode!r}", hint="choose instance or running")
        if self.conv_dim < 1 or self.c_dim < 1 or self.repeat_num < 0:
            raise InvalidInputError(
                f"bad StarGAN generator config conv_dim={self.conv_dim} c_dim={self.c_dim} "
                f"repeat_num={self.repeat_num}")
        if self.image_size < 4 or self.image_size % 4 != 0:
            raise InvalidInputError(f"StarGAN image_size must be a positive multiple of 4, got {self.image_size}")
        self.classes = _check_classes(self.classes, self.c_dim)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["classes"] = list(self.classes) if self.classes else None
        return data


@dataclass
class StarGANDiscriminatorConfig:
    """Critic architecture: input size, width, labels, number of stride-2 convs."""

    image_size: int = 128                   # input side; the class head's kernel is image_size / 2^repeat_num
    conv_dim: int = 64                      # channels after the first conv (doubled per conv)
    c_dim: int = 7                          # number of domain labels
    repeat_num: int = 6                     # stride-2 4x4 convs
    classes: tuple[str, ...] | None = None  # label order; None: implied by c_dim

    def __post_init__(self) -> None:
        if self.conv_dim < 1 or self.c_dim < 1 or self.repeat_num < 1:
            raise InvalidInputError(
                f"bad StarGAN discriminator config conv_dim={self.conv_dim} c_dim={self.c_dim} "
                f"repeat_num={self.repeat_num}")
        if self.image_size < 2 ** self.repeat_num or self.image_size % (2 ** self.repeat_num) != 0:
            raise InvalidInputError(
                f"image_size {self.image_size} is not divisible by 2^repeat_num = {2 ** self.repeat_num}")
        self.classes = _check_classes(self.classes, self.c_dim)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["classes"] = list(self.classes) if self.classes else None
        return data


def _check_classes(classes: Sequence[str] | None, c_dim: int) -> tuple[str, ...] | None:
    if classes is None:
        return default_classes(c_dim)
    out = tuple(normalize_emotion(str(c)) for c in classes)
    if len(out) != c_dim:
        raise InvalidInputError(f"{len(out)} class names given for c_dim {c_dim}: {list(out)}")
    return out


# --------------------------------------------------------------------------------------------
# Free functions




def _static_size(x: torch.Tensor, axis: int) -> int:
    """A size the graph fixes (image sides), as a Python int: a constant when traced or exported."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        return int(x.shape[axis])


def _tap_mask(taps: int, size: int, padding: int, like: torch.Tensor) -> torch.Tensor:
    """[taps, size] 0/1: kernel tap i at output position p reads input p + i - padding inside [0, size)."""
    pos = torch.arange(size, device=like.device).unsqueeze(0) + torch.arange(taps, device=like.device).unsqueeze(1)
    pos = pos - padding
    return ((pos >= 0) & (pos < size)).to(like.dtype)


# --------------------------------------------------------------------------------------------
# Layers


class StarGANInstanceNorm(nn.InstanceNorm2d):
    """InstanceNorm2d(affine, running stats) whose statistics source is chosen by `norm_mode`,
    not by train()/eval(); running stats update only in train-mode forwards with grad enabled."""

    def __init__(self, num_features: int, norm_mode: str = "instance") -> None:
        super().__init__(num_features, affine=True, track_running_stats=True)
        self.norm_mode = norm_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise [N, C, H, W] per sample (instance) or with the stored stats (running)."""
        if self.norm_mode == "running":
            return F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                   use_input_stats=False, momentum=0.0, eps=self.eps)
        if self.training and torch.is_grad_enabled():
            # A training step: per-sample output, and the running averages follow (momentum 0.1).
            return F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                   use_input_stats=True, momentum=self.momentum, eps=self.eps)
        return F.instance_norm(x, None, None, self.weight, self.bias, use_input_stats=True, eps=self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", norm_mode={self.norm_mode}"


class ResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN plus the input (no ReLU after the sum)."""

    def __init__(self, channels: int, norm_mode: str = "instance") -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
            StarGANInstanceNorm(channels, norm_mode),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
            StarGANInstanceNorm(channels, norm_mode),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + F(x)."""
        return x + self.main(x)


# --------------------------------------------------------------------------------------------
# Networks


class StarGANGenerator(nn.Module):
    """G(x [N,3,H,W] in [-1,1], c [N,c_dim]) -> [N,3,H,W] in [-1,1]; H, W multiples of 4."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 7, repeat_num: int = 6, *,
                 norm_mode: str = "instance", classes: Sequence[str] | None = None,
                 image_size: int = 128) -> None:
        super().__init__()
        self.config = StarGANConfig(conv_dim, c_dim, repeat_num, norm_mode,
                                    tuple(classes) if classes is not None else None, image_size)
        layers: list[nn.Module] = [
            nn.Conv2d(3 + c_dim, conv_dim, 7, stride=1, padding=3, bias=False),
            StarGANInstanceNorm(conv_dim, norm_mode),
            nn.ReLU(inplace=True),
        ]
        channels = conv_dim
        for _ in range(2):  # two stride-2 downsamplings
            layers += [nn.Conv2d(channels, channels * 2, 4, stride=2, padding=1, bias=False),
                       StarGANInstanceNorm(channels * 2, norm_mode), nn.ReLU(inplace=True)]
            channels *= 2
        layers += [ResidualBlock(channels, norm_mode) for _ in range(repeat_num)]
        for _ in range(2):  # two stride-2 upsamplings
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1, bias=False),
                       StarGANInstanceNorm(channels // 2, norm_mode), nn.ReLU(inplace=True)]
            channels //= 2
        layers += [nn.Conv2d(channels, 3, 7, stride=1, padding=3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, config: StarGANConfig) -> "StarGANGenerator":
        """Build from a config object."""
        return cls(config.conv_dim, config.c_dim, config.repeat_num,
                   norm_mode=config.norm_mode, classes=config.classes, image_size=config.image_size)

    @property
    def c_dim(self) -> int:
        """Number of domain labels."""
        return self.config.c_dim

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Label order of c, when known."""
        return self.config.classes

    @property
    def norm_mode(self) -> str:
        """Where every InstanceNorm takes its statistics from ("instance" or "running")."""
        return self.config.norm_mode

    @norm_mode.setter
    def norm_mode(self, mode: str) -> None:
        if mode not in NORM_MODES:
            raise InvalidInputError(f"unknown norm_mode {mode!r}", hint="choose instance or running")
        self.config.norm_mode = mode
        for module in self.modules():
            if isinstance(module, StarGANInstanceNorm):
                module.norm_mode = mode

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Translate images x to the domains described by label vectors c."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InvalidInputError(f"StarGAN G expects x of shape [N, 3, H, W], got {list(x.shape)}")
        if c.dim() != 2 or c.shape[1] != self.c_dim:
            raise InvalidInputError(f"StarGAN G expects c of shape [N, {self.c_dim}], got {list(c.shape)}")
        torch._assert(x.shape[0] == c.shape[0], "x and c must have the same batch size")
        torch._assert(x.shape[2] % 4 == 0, "image height must be a multiple of 4")
        torch._assert(x.shape[3] % 4 == 0, "image width must be a multiple of 4")
        # Tile the labels over the grid: expand (not repeat) keeps the batch dimension symbolic.
        tiled = c.to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self.main(torch.cat([x, tiled], dim=1))

    def forward_shared(self, x: torch.Tensor, c: torch.Tensor,
                       box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Every image of x [B, 3, H, W] under each of its E label vectors c [B, E, c_dim] → [B·E, 3, H, W].

        Equals `forward(x.repeat_interleave(E, 0), c.reshape(-1, c_dim))` up to float rounding,
        with the first conv's image part computed once per image instead of once per label. The
        first conv is linear in its input, so conv([x, tile(c)]) = conv(x, W_img) + Σ_k c_k ·
        conv(1, W_k): the label part is a per-class response to a map of ones under zero padding,
        which is the kernel sum inside the image and falls off within 3 px of the border, and is
        computed here from the kernel and two 0/1 masks of valid taps (no [c_dim, 64, H, W] buffer).

        `box` (top, left, height, width) in pixels returns only that region, [B·E, 3, height, width]:
        the last conv (7x7, then tanh) is the only layer after the last InstanceNorm, so it is
        computed on the box plus its 3-px halo (zeros where the halo leaves the image, as the full
        conv's padding) — the same values as cropping the full output, without the rest.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise InvalidInputError(f"StarGAN G expects x of shape [B, 3, H, W], got {list(x.shape)}")
        if c.dim() != 3 or c.shape[2] != self.c_dim:
            raise InvalidInputError(f"forward_shared expects c of shape [B, E, {self.c_dim}], got {list(c.shape)}")
        torch._assert(x.shape[0] == c.shape[0], "x and c must have the same batch size")
        first = self.main[0]
        assert isinstance(first, nn.Conv2d)
        weight = first.weight.to(x.dtype)                                  # [O, 3 + c_dim, k, k]
        out_channels, _, kh, kw = weight.shape
        height, width = _static_size(x, 2), _static_size(x, 3)
        torch._assert(height % 4 == 0 and width % 4 == 0, "image sides must be multiples of 4")
        image_part = F.conv2d(x, weight[:, :3], padding=first.padding)    # [B, O, H, W]
        rows = _tap_mask(kh, height, first.padding[0], x)                  # [kh, H]
        cols = _tap_mask(kw, width, first.padding[1], x)                   # [kw, W]
        # response[k, o, h, w] = Σ_ij W[o, 3 + k, i, j] · rows[i, h] · cols[j, w]
        label_w = weight[:, 3:].permute(1, 0, 2, 3)                        # [c_dim, O, kh, kw]
        response = torch.matmul(rows.t(), torch.matmul(label_w, cols))     # [c_dim, O, H, W]
        count = c.shape[1]
        labels = c.to(x.dtype).reshape(-1, self.c_dim)                     # [B·E, c_dim]
        label_part = torch.matmul(labels, response.reshape(self.c_dim, -1))
        y = image_part.unsqueeze(1) + label_part.reshape(-1, count, out_channels, height, width)
        y = y.reshape(-1, out_channels, height, width)
        if box is None:
            return self.main[1:](y)
        last, tanh = self.main[-2], self.main[-1]
        assert isinstance(last, nn.Conv2d) and isinstance(tanh, nn.Tanh)
        top, left, box_h, box_w = (int(v) for v in box)
        if not (0 <= top and 0 <= left and box_h > 0 and box_w > 0 and top + box_h <= height
                and left + box_w <= width):
            raise InvalidInputError(f"box {list(box)} is not inside the {height}x{width} image")
        features = self.main[1:-2](y)
        pad_h, pad_w = last.padding
        r0, r1 = max(top - pad_h, 0), min(top + box_h + pad_h, height)
        c0, c1 = max(left - pad_w, 0), min(left + box_w + pad_w, width)
        region = F.pad(features[:, :, r0:r1, c0:c1],
                       [c0 - (left - pad_w), left + box_w + pad_w - c1, r0 - (top - pad_h), top + box_h + pad_h - r1])
        return tanh(F.conv2d(region, last.weight.to(region.dtype)))

    def label_vector(self, labels: Any, batch: int) -> torch.Tensor:
        """[batch, c_dim] float labels from an index, a name, a sequence of those, or a tensor."""
        device = next(self.parameters()).device
        if isinstance(labels, torch.Tensor) and labels.is_floating_point():
            vec = labels.to(device=device, dtype=torch.float32)
            if vec.dim() == 1:
                vec = vec.expand(batch, -1)
            if vec.shape != (batch, self.c_dim):
                raise InvalidInputError(f"label vectors must be [{batch}, {self.c_dim}], got {list(vec.shape)}")
            return vec
        if isinstance(labels, (int, str)):
            labels = [labels] * batch
        elif isinstance(labels, torch.Tensor):
            labels = labels.reshape(-1).tolist()
            if len(labels) == 1:
                labels = labels * batch
        labels = list(labels)
        if len(labels) != batch:
            raise InvalidInputError(f"{len(labels)} labels given for a batch of {batch}")
        index = torch.tensor([self._label_index(v) for v in labels], device=device)
        return F.one_hot(index, self.c_dim).float()

    def _label_index(self, label: Any) -> int:
        if isinstance(label, str):
            if not self.classes:
                raise InvalidInputError(f"this generator's label order is unknown; give an index, not {label!r}")
            name = normalize_emotion(label)
            if name not in self.classes:
                raise InvalidInputError(f"{name!r} is not one of this generator's labels {list(self.classes)}")
            return self.classes.index(name)
        index = int(label)
        if not 0 <= index < self.c_dim:
            raise InvalidInputError(f"label index {index} out of range for c_dim {self.c_dim}")
        return index

    def neutral_vector(self, batch: int) -> torch.Tensor:
        """The default source label: neutral one-hot if the label set has neutral, else zeros."""
        if self.classes and NEUTRAL in self.classes:
            return self.label_vector(NEUTRAL, batch)
        return torch.zeros(batch, self.c_dim, device=next(self.parameters()).device)

    def translate(self, x: torch.Tensor, target: Any, source: Any = None,
                  alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Graded translation with c = alpha*onehot(target) + (1-alpha)*source; no buffer changes."""
        batch = x.shape[0]
        c_target = self.label_vector(target, batch)
        c_source = self.neutral_vector(batch) if source is None else self.label_vector(source, batch)
        a = torch.as_tensor(alpha, dtype=torch.float32, device=c_target.device).reshape(-1, 1)
        if a.shape[0] not in (1, batch):
            raise InvalidInputError(f"alpha must be a scalar or have {batch} values, got {a.shape[0]}")
        c = a * c_target + (1.0 - a) * c_source
        with torch.no_grad():  # grad off: the norms never update running stats here
            return self(x, c)


class StarGANDiscriminator(nn.Module):
    """D(x [N,3,S,S]) -> (out_src [N,1,S/2^r,S/2^r] realness map, out_cls [N,c_dim] logits)."""

    def __init__(self, image_size: int = 128, conv_dim: int = 64, c_dim: int = 7, repeat_num: int = 6,
                 *, classes: Sequence[str] | None = None) -> None:
        super().__init__()
        self.config = StarGANDiscriminatorConfig(image_size, conv_dim, c_dim, repeat_num,
                                                 tuple(classes) if classes is not None else None)
        layers: list[nn.Module] = [nn.Conv2d(3, conv_dim, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
        channels = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(channels, channels * 2, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            channels *= 2
        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(channels, 1, 3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, c_dim, image_size // 2 ** repeat_num, bias=False)

    @classmethod
    def from_config(cls, config: StarGANDiscriminatorConfig) -> "StarGANDiscriminator":
        """Build from a config object."""
        return cls(config.image_size, config.conv_dim, config.c_dim, config.repeat_num, classes=config.classes)

    @property
    def c_dim(self) -> int:
        """Number of domain labels."""
        return self.config.c_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Realness map and domain logits of images in [-1, 1]."""
        size = self.config.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise InvalidInputError(f"StarGAN D expects x of shape [N, 3, {size}, {size}], got {list(x.shape)}")
        h = self.main(x)
        return self.conv1(h), self.conv2(h).reshape(x.shape[0], self.c_dim)
