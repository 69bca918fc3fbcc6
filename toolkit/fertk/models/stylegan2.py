"""StyleGAN2 generator (Karras et al. 2020) in the state-dict layout of NVlabs stylegan2-ada-pytorch,
so its `G_ema` weights load key for key, rewritten for export.

Layout. `StyleGAN2Generator` has two submodules, `mapping` (z [, c] -> ws [N, num_ws, w_dim]) and
`synthesis` (ws -> img [N, C, R, R]), with the upstream names: `mapping.fc{i}`, `mapping.embed`
(c_dim > 0), `mapping.w_avg`, `synthesis.b{R}.{const, resample_filter, conv0, conv1, torgb, skip}`.
The constructor options are `StyleGAN2Config`, a JSON-able mirror of the upstream kwargs
(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, synthesis_kwargs).
Architectures 'skip' (the StyleGAN2 default), 'orig' and 'resnet' are built.

Written for export (the math is the upstream one; only the order of operations differs):
* modulated convolution scales the activations by the styles, runs one shared convolution with
  the plain weight and scales the result by per-sample demodulation coefficients, instead of a
  grouped convolution with groups = batch, so the batch axis can stay dynamic;
* up-sampling (upfirdn2d with the [1,3,3,1] filter) is zero insertion, pad and a depthwise conv;
* truncation is written out as w_avg + psi * (w - w_avg);
* noise_mode 'const' uses the stored `noise_const` buffers, 'none' skips noise, and 'random'
  draws fresh normal noise on every call: 'random' is for sampling in PyTorch, not for export
  (an exported graph would freeze or drop the random op).

Precision. `synthesis_kwargs.num_fp16_res` marks the top N resolutions as half-precision layers
(every official training config stores 4, with conv_clamp 256). Whether those layers really run in
half precision is one explicit rule, `fp16_layers_choice`: only on CUDA with precision fp16/bf16,
or when forced; on CPU, in exported graphs (always fp32; an fp16 variant converts the whole
graph) and at precision fp32 they run in float32, like the official `force_fp32=True`. A loaded
or built generator starts with them in float32 ("fp32 (cpu)"); `set_fp16_layers(choice)` applies
a decision and `fp16_layers` records it for the card. When they run in half precision the
upstream overflow guards apply: weights and styles pre-normalised before a half-precision
modulated conv, demodulation coefficients computed in float32, the image accumulated in float32.
conv_clamp clamps every synthesis layer's output (+-conv_clamp * gain) and ToRGB's in either
precision, as the official code does. `set_half_precision(n, dtype)` changes N and forces those
layers on in float16 or bfloat16; `forward(..., force_fp32=True)` runs everything in float32.

Loading: `load_stylegan2(path, config=None)` reads state dicts (.pt/.pth/.ckpt/.bin/.safetensors,
config from the argument or a JSON sidecar, see `config_sidecar_candidates`) and NVlabs `.pkl`
snapshots (through the restricted reader in `fertk.models.nvlabs_pickle`, never plain pickle).
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fertk.core.io import atomic_target, atomic_write_text
from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.core.io import sha256_file
from fertk.models.registry import ModelCard, count_parameters, register_model
from fertk.models.weights import STATE_DICT_SUFFIXES, load_into, read_state_dict

ARCHITECTURES = ("orig", "skip", "resnet")
ACTIVATIONS = {"linear": (0.0, 1.0), "relu": (0.0, math.sqrt(2)), "lrelu": (0.2, math.sqrt(2))}
NOISE_MODES = ("const", "none", "random")
HALF_DTYPES = (torch.float16, torch.bfloat16)
HALF_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}
PICKLE_SUFFIXES = (".pkl",)

# Upstream constructor arguments that only matter for training or memory layout; accepted in
# configs (they appear in snapshots) and dropped, since they change no output.
_IGNORED_MAPPING_KEYS = frozenset({"freeze_layers", "freeze_embed"})
_IGNORED_SYNTHESIS_KEYS = frozenset({"fp16_channels_last", "fused_modconv_default", "channels_last"})
_TOP_LEVEL_KEYS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class MappingConfig:
    """Mapping-network options (upstream `mapping_kwargs`)."""

    num_layers: int = 8                  # number of FC layers
    embed_features: int | None = None    # label embedding width, None = w_dim
    layer_features: int | None = None    # hidden width, None = w_dim
    activation: str = "lrelu"            # 'linear' | 'relu' | 'lrelu'
    lr_multiplier: float = 0.01          # runtime gain of weights and biases
    w_avg_beta: float | None = 0.995     # None = no w_avg buffer (then truncation is impossible)


@dataclass
class SynthesisConfig:
    """Synthesis-network options (upstream `synthesis_kwargs`)."""

    channel_base: int = 32768            # channels at resolution R = min(channel_base // R, channel_max)
    channel_max: int = 512
    num_fp16_res: int = 0                # run the N highest resolutions in half precision
    conv_clamp: float | None = None      # clamp conv outputs to +-X, None = no clamp
    architecture: str = "skip"           # 'orig' | 'skip' | 'resnet'
    resample_filter: list[int] = field(default_factory=lambda: [1, 3, 3, 1])
    use_noise: bool = True               # per-layer noise inputs
    activation: str = "lrelu"            # activation of the synthesis layers
    kernel_size: int = 3                 # synthesis conv kernel


@dataclass
class StyleGAN2Config:
    """The upstream `Generator(**kwargs)` arguments as a JSON-able dataclass."""

    z_dim: int = 512                     # latent Z width
    c_dim: int = 0                       # conditioning label width, 0 = unconditional
    w_dim: int = 512                     # intermediate latent W width
    img_resolution: int = 256            # output side, a power of two >= 4
    img_channels: int = 3                # output channels
    mapping_kwargs: MappingConfig = field(default_factory=MappingConfig)
    synthesis_kwargs: SynthesisConfig = field(default_factory=SynthesisConfig)

    def __post_init__(self) -> None:
        if isinstance(self.mapping_kwargs, Mapping):
            self.mapping_kwargs = _sub_config(MappingConfig, self.mapping_kwargs, _IGNORED_MAPPING_KEYS,
                                              "mapping_kwargs")
        if isinstance(self.synthesis_kwargs, Mapping):
            self.synthesis_kwargs = _sub_config(SynthesisConfig, self.synthesis_kwargs, _IGNORED_SYNTHESIS_KEYS,
                                                "synthesis_kwargs")
        self._validate()

    def _validate(self) -> None:
        m, s = self.mapping_kwargs, self.synthesis_kwargs
        for name in ("z_dim", "w_dim", "img_channels"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("c_dim", self.c_dim, minimum=0)
        _check_int("img_resolution", self.img_resolution, minimum=4)
        if self.img_resolution & (self.img_resolution - 1):
            raise InvalidInputError(f"StyleGAN2 img_resolution must be a power of two >= 4, got {self.img_resolution}")
        _check_int("mapping_kwargs.num_layers", m.num_layers, minimum=1)
        for name in ("embed_features", "layer_features"):
            if getattr(m, name) is not None:
                _check_int(f"mapping_kwargs.{name}", getattr(m, name), minimum=1)
        _check_int("synthesis_kwargs.channel_base", s.channel_base, minimum=1)
        _check_int("synthesis_kwargs.channel_max", s.channel_max, minimum=1)
        _check_int("synthesis_kwargs.num_fp16_res", s.num_fp16_res, minimum=0)
        _check_int("synthesis_kwargs.kernel_size", s.kernel_size, minimum=1)
        if min(s.channel_base // self.img_resolution, s.channel_max) < 1:
            raise InvalidInputError(
                f"channel_base {s.channel_base} gives 0 channels at {self.img_resolution} px",
                hint="channel_base must be at least img_resolution")
        if s.architecture not in ARCHITECTURES:
            raise InvalidInputError(f"unsupported StyleGAN2 architecture {s.architecture!r}",
                                    hint="supported: " + ", ".join(ARCHITECTURES))
        for where, act in (("mapping_kwargs", m.activation), ("synthesis_kwargs", s.activation)):
            if act not in ACTIVATIONS:
                raise InvalidInputError(f"unsupported {where}.activation {act!r}",
                                        hint="supported: " + ", ".join(ACTIVATIONS))
        if s.conv_clamp is not None and not s.conv_clamp >= 0:
            raise InvalidInputError(f"synthesis_kwargs.conv_clamp must be None or >= 0, got {s.conv_clamp}")
        s.resample_filter = [float(v) if not float(v).is_integer() else int(v) for v in s.resample_filter]
        if not s.resample_filter or sum(s.resample_filter) == 0:
            raise InvalidInputError("synthesis_kwargs.resample_filter must be a non-empty filter with a non-zero sum")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> StyleGAN2Config:
        """Build from upstream Generator kwargs (ada-pytorch nested form or stylegan3-repo flat form)."""
        if not isinstance(kwargs, Mapping):
            raise InvalidInputError(f"StyleGAN2 config must be a JSON object, got {type(kwargs).__name__}")
        data = dict(kwargs)
        class_name = data.pop("class_name", None)
        generator_classes = ("networks.Generator", "networks_stylegan2.Generator")
        if class_name is not None and not str(class_name).endswith(generator_classes):
            raise InvalidInputError(f"config names class {class_name!r}, not a StyleGAN2 Generator")
        if "img_resolution" not in data:
            raise InvalidInputError("StyleGAN2 config has no img_resolution",
                                    hint="give the upstream Generator kwargs, e.g. stylegan2_small-config.json")
        top = {k: data.pop(k) for k in _TOP_LEVEL_KEYS if k in data}
        mapping = dict(data.pop("mapping_kwargs", None) or {})
        synthesis = dict(data.pop("synthesis_kwargs", None) or {})
        # stylegan3-repo StyleGAN2 generators take the synthesis options as top-level kwargs.
        synthesis.update(data)
        return cls(**top, mapping_kwargs=mapping, synthesis_kwargs=synthesis)

    def to_kwargs(self) -> dict[str, Any]:
        """Upstream-shaped JSON-able kwargs (nested mapping_kwargs / synthesis_kwargs)."""
        return asdict(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (same as to_kwargs)."""
        return self.to_kwargs()

    @property
    def block_resolutions(self) -> list[int]:
        """Resolutions of the synthesis blocks: 4, 8, ..., img_resolution."""
        return [2 ** i for i in range(2, int(math.log2(self.img_resolution)) + 1)]

    def channels(self, resolution: int) -> int:
        """Feature channels of the block at `resolution`."""
        return min(self.synthesis_kwargs.channel_base // resolution, self.synthesis_kwargs.channel_max)


def _sub_config(cls: type, data: Mapping[str, Any], ignored: frozenset[str], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(k for k in data if k not in known and k not in ignored)
    if unknown:
        raise InvalidInputError(f"unknown StyleGAN2 {where} option(s): {', '.join(unknown)}",
                                hint="known: " + ", ".join(sorted(known)))
    values = {k: v for k, v in data.items() if k in known}
    if "resample_filter" in values:
        values["resample_filter"] = list(values["resample_filter"])
    return cls(**values)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"StyleGAN2 {name} must be an integer >= {minimum}, got {value!r}")


# The golden-vector configuration: small enough for tests and the registry default.
SMALL_CONFIG: dict[str, Any] = {
    "z_dim": 64, "c_dim": 0, "w_dim": 64, "img_resolution": 32, "img_channels": 3,
    "mapping_kwargs": {"num_layers": 2},
    "synthesis_kwargs": {"channel_base": 512, "channel_max": 64, "num_fp16_res": 0, "conv_clamp": None,
                         "architecture": "skip"},
}


@dataclass(frozen=True)
class Fp16Layers:
    """Whether the layers marked half precision (num_fp16_res) run in half precision, and why."""

    enabled: bool                        # True: the marked blocks compute in `dtype`
    dtype: str | None                    # "fp16" | "bf16" when enabled
    reason: str                          # what decided it, for cards ("cpu", "forced", ...)

    def describe(self) -> str:
        """One short phrase for cards: "fp32 (cpu)", "fp16 (cuda, precision fp16)", ..."""
        return f"{self.dtype if self.enabled else 'fp32'} ({self.reason})"


def fp16_layers_choice(num_fp16_res: int, *, device: str = "cpu", precision: str = "fp32",
                       target: str = "torch", force: bool = False) -> Fp16Layers:
    """The one rule for a snapshot's half-precision layers (upstream `num_fp16_res`).

    They run in half precision only where that is a real speed-up: on a CUDA device with
    precision fp16 or bf16 (that dtype), or when `force` is set (fp16, or bf16 when asked).
    Everywhere else they run in float32, as the official code's `force_fp32=True`: on CPU
    (half arithmetic is emulated there: 0.1 faces/s measured at paper scale), at precision
    fp32, and for `target="export"` (the ONNX graph is fp32; its fp16 variant converts the
    whole graph, so marking some layers fp16 would only break parity).
    """
    if num_fp16_res == 0:
        return Fp16Layers(False, None, "num_fp16_res 0")
    if precision not in ("fp32", *HALF_PRECISIONS):
        raise InvalidInputError(f"unknown precision {precision!r}", hint="choose fp32, fp16 or bf16")
    half = precision if precision in HALF_PRECISIONS else "fp16"
    if force:
        return Fp16Layers(True, half, "forced")
    if target == "export":
        return Fp16Layers(False, None, "export: the ONNX graph is fp32")
    if target != "torch":
        raise InvalidInputError(f"unknown fp16-layers target {target!r}", hint="choose torch or export")
    if not str(device).startswith("cuda"):
        return Fp16Layers(False, None, str(device).split(":")[0] or "cpu")
    if precision == "fp32":
        return Fp16Layers(False, None, "cuda, precision fp32")
    return Fp16Layers(True, half, f"cuda, precision {precision}")


# ----------------------------------------------------------------------------------------------
# Free functions (plain tensor ops; every one exports to ONNX)


def setup_filter(taps: Sequence[float]) -> torch.Tensor:
    """Normalised FIR filter: outer product of 1-D taps (< 8 taps) or the taps themselves (>= 8)."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    if f.numel() < 8:
        f = torch.outer(f, f)
    return f / f.sum()


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x scaled to unit second moment along `dim`."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """Bias along dim 1, activation, gain (default: the activation's), then optional clamp."""
    alpha, default_gain = ACTIVATIONS[act]
    gain = default_gain if gain is None else gain
    if b is not None:
        x = x + b.reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    elif act == "relu":
        x = F.relu(x)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, *, up: int = 1, padding: Sequence[int] = (0, 0, 0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (x0, x1, y0, y1; negative crops), FIR-filter depthwise."""
    channels, height, width = _static_dims(x, 1, 2, 3)
    if up > 1:
        x = x.reshape(-1, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(-1, channels, height * up, width * up)
    px0, px1, py0, py1 = padding
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if min(px0, px1, py0, py1) < 0:
        padded_h, padded_w = _static_dims(x, 2, 3)
        x = x[:, :, max(-py0, 0): padded_h - max(-py1, 0), max(-px0, 0): padded_w - max(-px1, 0)]
    # upfirdn2d convolves (flips the filter) where conv2d correlates; the gain is spread per axis.
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype).flip(list(range(f.ndim)))
    if f.ndim == 2:
        return F.conv2d(x, f[None, None].repeat(channels, 1, 1, 1), groups=channels)
    x = F.conv2d(x, f[None, None, None, :].repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, f[None, None, :, None].repeat(channels, 1, 1, 1), groups=channels)


def _static_dims(x: torch.Tensor, *axes: int) -> tuple[int, ...]:
    """Sizes that the architecture fixes, as Python ints: constants in a traced/exported graph."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        return tuple(int(x.shape[axis]) for axis in axes)


def _filter_size(f: torch.Tensor) -> tuple[int, int]:
    if f.ndim == 2:
        fh, fw = _static_dims(f, 0, 1)
        return fw, fh
    taps = _static_dims(f, 0)[0]
    return taps, taps


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """Upsample an image by `up` with the FIR filter (skip-architecture image path)."""
    fw, fh = _filter_size(f)
    padding = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=padding, gain=up * up)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, *, up: int = 1,
                    padding: int = 0, flip_weight: bool = True) -> torch.Tensor:
    """Convolution with optional FIR up-sampling, in the upstream order of operations."""
    kh, kw = _static_dims(w, 2, 3)
    if up == 1:
        if not flip_weight:
            w = w.flip([2, 3])
        return F.conv2d(x, w, padding=padding)
    assert f is not None, "up-sampling needs a resample filter"
    fw, fh = _filter_size(f)
    px0 = padding + (fw + up - 1) // 2
    px1 = padding + (fw - up) // 2
    py0 = padding + (fh + up - 1) // 2
    py1 = padding + (fh - up) // 2
    if kw == 1 and kh == 1:
        # 1x1 conv commutes with up-sampling: convolve at low resolution first.
        x = F.conv2d(x, w)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up)
    # Transposed strided conv (weight [in, out, k, k]); it flips the kernel unless told not to.
    w = w.transpose(0, 1)
    if flip_weight:
        w = w.flip([2, 3])
    px0 -= kw - 1
    px1 -= kw - up
    py0 -= kh - 1
    py1 -= kh - up
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    x = F.conv_transpose2d(x, w, stride=up, padding=[pyt, pxt])
    return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     noise: torch.Tensor | None = None, up: int = 1, padding: int = 0,
                     resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     flip_weight: bool = True) -> torch.Tensor:
    """Modulated conv written for a dynamic batch: x*style -> shared conv -> *demod (+ noise)."""
    out_channels, in_channels, kh, kw = _static_dims(weight, 0, 1, 2, 3)
    if x.dtype != torch.float32 and demodulate:
        # Half precision: pre-normalise weight and styles so products cannot overflow; the
        # demodulation below cancels the scale exactly.
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
    dcoefs = None
    if demodulate:
        # sum_{i,k} (W[o,i,k] * s[n,i])^2 = sum_i s[n,i]^2 * sum_k W[o,i,k]^2, in float32.
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
    x = x * styles.to(x.dtype).reshape(-1, in_channels, 1, 1)
    x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, padding=padding, flip_weight=flip_weight)
    if dcoefs is not None:
        x = x * dcoefs.to(x.dtype).reshape(-1, out_channels, 1, 1)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def _assert_shape(x: torch.Tensor, expected: Sequence[int | None], what: str) -> None:
    """Check rank and the static dims of `x` (None = any); works in eager, tracing and export."""
    torch._assert(x.dim() == len(expected), f"{what}: expected {len(expected)} dims, got {x.dim()}")
    with warnings.catch_warnings():
        # Under tracing, comparing a size is a constant check by design.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        for axis, size in enumerate(expected):
            if size is not None:
                torch._assert(x.shape[axis] == size,
                              f"{what}: expected size {size} on axis {axis}, got shape {list(x.shape)}")


# ----------------------------------------------------------------------------------------------
# Layers


class FullyConnectedLayer(nn.Module):
    """Linear layer with runtime weight/bias gains (equalised learning rate)."""

    def __init__(self,
                 in_features: int,            # input width
                 out_features: int,           # output width
                 activation: str = "linear",  # 'linear' | 'relu' | 'lrelu'
                 lr_multiplier: float = 1.0,  # scales the runtime gains
                 bias_init: float = 0.0,      # initial bias value (as stored)
                 ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.lr_multiplier = lr_multiplier
        self.bias_init = bias_init
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Upstream initialisation: weight N(0,1)/lr_multiplier, constant bias."""
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator) / self.lr_multiplier)
            self.bias.fill_(self.bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in] -> [N, out]."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """The 'resnet' skip connection: bias-free 1x1 conv with FIR up-sampling by 2."""

    def __init__(self, in_channels: int, out_channels: int, resample_filter: Sequence[float]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Upstream initialisation: weight N(0,1)."""
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator))

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """x [N, in, H, W] -> [N, out, 2H, 2W]."""
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, self.resample_filter, up=2, flip_weight=False)
        return bias_act(x, None, act="linear", gain=gain)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally up-sampling by 2), noise, bias, activation, clamp."""

    def __init__(self,
                 in_channels: int,                 # input feature channels
                 out_channels: int,                # output feature channels
                 w_dim: int,                       # W width (style input)
                 resolution: int,                  # output side
                 kernel_size: int = 3,             # conv kernel
                 up: int = 1,                      # 1 or 2
                 use_noise: bool = True,           # noise input
                 activation: str = "lrelu",        # activation
                 resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = None,  # clamp outputs to +-X
                 ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATIONS[activation][1]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if use_noise:
            self.register_buffer("noise_const", torch.empty(resolution, resolution))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Upstream initialisation: weight and noise_const N(0,1), zero bias and noise strength."""
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator))
            self.bias.zero_()
            if self.use_noise:
                self.noise_const.copy_(torch.randn(self.noise_const.shape, generator=generator))
                self.noise_strength.zero_()

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", gain: float = 1.0) -> torch.Tensor:
        """x [N, in, R/up, R/up], w [N, w_dim] -> [N, out, R, R]."""
        in_res = self.resolution // self.up
        _assert_shape(x, [None, self.in_channels, in_res, in_res], "SynthesisLayer input")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, resolution={self.resolution}, "
                f"up={self.up}")


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, no demodulation, linear."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Upstream initialisation: weight N(0,1), zero bias."""
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator))
            self.bias.zero_()

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x [N, in, R, R], w [N, w_dim] -> [N, img_channels, R, R]."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


# ----------------------------------------------------------------------------------------------
# Blocks and networks


class SynthesisBlock(nn.Module):
    """One resolution: [const | conv0 (up 2)] -> conv1 -> [torgb], plus the image skip path."""

    def __init__(self,
                 in_channels: int,               # 0 = first block (learned constant input)
                 out_channels: int,              # feature channels
                 w_dim: int,                     # W width
                 resolution: int,                # block side
                 img_channels: int,              # image channels
                 is_last: bool,                  # the img_resolution block
                 config: SynthesisConfig,        # shared options
                 use_fp16: bool = False,         # run this block in half precision
                 ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = config.architecture
        self.use_fp16 = use_fp16
        self.half_dtype = torch.float16
        self.register_buffer("resample_filter", setup_filter(config.resample_filter))
        layer_kwargs = dict(w_dim=w_dim, resolution=resolution, kernel_size=config.kernel_size,
                            use_noise=config.use_noise, activation=config.activation,
                            resample_filter=config.resample_filter, conv_clamp=config.conv_clamp)
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.empty(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_kwargs)
        self.num_conv += 1
        if is_last or self.architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=config.conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and self.architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, config.resample_filter)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Upstream initialisation of the constant input."""
        if self.in_channels == 0:
            with torch.no_grad():
                self.const.copy_(torch.randn(self.const.shape, generator=generator))

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "const", force_fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ws [N, num_conv + num_torgb, w_dim] -> (features, image so far)."""
        _assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], f"b{self.resolution} ws")
        dtype = self.half_dtype if self.use_fp16 and not force_fp32 else torch.float32
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            assert x is not None
            _assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2],
                          f"b{self.resolution} input")
            x = x.to(dtype)
        w_index = 0
        if self.in_channels == 0:
            x = self.conv1(x, ws[:, 0], noise_mode=noise_mode)
            w_index = 1
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, ws[:, 0], noise_mode=noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode=noise_mode, gain=math.sqrt(0.5))
            x = y + x
            w_index = 2
        else:
            x = self.conv0(x, ws[:, 0], noise_mode=noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode=noise_mode)
            w_index = 2
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, ws[:, w_index]).to(torch.float32)
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, img_channels, R, R] through blocks b4 ... bR."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, config: SynthesisConfig) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = {res: min(config.channel_base // res, config.channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        self.block_ws: list[tuple[int, int]] = []  # (first index, count) of each block's ws slice
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels,
                                   is_last=(res == img_resolution), config=config)
            self.block_ws.append((self.num_ws, block.num_conv + block.num_torgb))
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            self.add_module(f"b{res}", block)
        self.mark_half_blocks(config.num_fp16_res)
        # Marked blocks run in float32 until a decision turns them on (see fp16_layers_choice).
        self.half_enabled = False

    def blocks(self) -> list[SynthesisBlock]:
        """The blocks, lowest resolution first."""
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def mark_half_blocks(self, num_fp16_res: int, dtype: torch.dtype = torch.float16) -> None:
        """Mark the `num_fp16_res` highest resolutions (never b4) as `dtype` (float16 or bfloat16)
        blocks; they compute in it only while `half_enabled`."""
        if dtype not in HALF_DTYPES:
            raise InvalidInputError(f"half-precision dtype must be float16 or bfloat16, got {dtype}")
        _check_int("num_fp16_res", num_fp16_res, minimum=0)
        fp16_resolution = max(2 ** (int(math.log2(self.img_resolution)) + 1 - num_fp16_res), 8)
        for block in self.blocks():
            block.use_fp16 = block.resolution >= fp16_resolution
            block.half_dtype = dtype

    def set_half_precision(self, num_fp16_res: int, dtype: torch.dtype = torch.float16) -> None:
        """Run the `num_fp16_res` highest resolutions (never b4) in `dtype` (float16 or bfloat16)."""
        self.mark_half_blocks(num_fp16_res, dtype)
        self.half_enabled = num_fp16_res > 0

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", force_fp32: bool = False) -> torch.Tensor:
        """Image from per-layer latents ws [N, num_ws, w_dim]."""
        _check_noise_mode(noise_mode)
        _assert_shape(ws, [None, self.num_ws, self.w_dim], "synthesis ws")
        ws = ws.to(torch.float32)
        force_fp32 = force_fp32 or not self.half_enabled
        x = img = None
        for block, (start, count) in zip(self.blocks(), self.block_ws):
            x, img = block(x, img, ws[:, start:start + count], noise_mode=noise_mode, force_fp32=force_fp32)
        assert img is not None
        return img

    def extra_repr(self) -> str:
        return f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}"


class MappingNetwork(nn.Module):
    """z [N, z_dim] (+ c [N, c_dim]) -> ws [N, num_ws, w_dim], with optional truncation."""

    # Casts its inputs to float32 on purpose (as NVlabs does), so a module cast to bf16/fp16 breaks
    # here: engines run reduced precision on modules holding this flag with autocast instead.
    pins_fp32 = True

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, config: MappingConfig) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = config.num_layers
        self.w_avg_beta = config.w_avg_beta
        embed_features = 0 if c_dim == 0 else (config.embed_features or w_dim)
        layer_features = config.layer_features or w_dim
        features = [z_dim + embed_features] + [layer_features] * (config.num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(config.num_layers):
            self.add_module(f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1],
                                                            activation=config.activation,
                                                            lr_multiplier=config.lr_multiplier))
        if config.w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False) -> torch.Tensor:
        """ws = truncate(broadcast(fc(normalize(z) [, normalize(embed(c))]))).

        truncation_psi may be a float or a tensor broadcastable to [N, num_ws, 1].
        `update_w_avg=True` moves w_avg toward this batch's mean (upstream training behaviour);
        it is off by default so that a forward never changes the module.
        """
        _assert_shape(z, [None, self.z_dim], "mapping z")
        x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise InvalidInputError(f"this StyleGAN2 is conditional: pass c with shape [N, {self.c_dim}]")
            _assert_shape(c, [None, self.c_dim], "mapping c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_w_avg:
            if self.w_avg_beta is None:
                raise InvalidInputError("this mapping network tracks no w_avg (w_avg_beta is None)")
            with torch.no_grad():
                self.w_avg.copy_(self.w_avg_beta * self.w_avg + (1 - self.w_avg_beta) * x.detach().mean(dim=0))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        # A tensor psi is always applied, so an exported graph can take psi as an input.
        if isinstance(truncation_psi, torch.Tensor) or truncation_psi != 1:
            if self.w_avg_beta is None:
                raise InvalidInputError("truncation needs w_avg, which this mapping network does not track")
            if truncation_cutoff is None or truncation_cutoff >= self.num_ws:
                x = self.w_avg + truncation_psi * (x - self.w_avg)
            else:
                head = x[:, :truncation_cutoff]
                x = torch.cat([self.w_avg + truncation_psi * (head - self.w_avg), x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


def _check_noise_mode(noise_mode: str) -> None:
    if noise_mode not in NOISE_MODES:
        raise InvalidInputError(f"unknown noise_mode {noise_mode!r}", hint="choose one of " + ", ".join(NOISE_MODES))


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 G: z [N, z_dim] (+ c [N, c_dim]) -> img [N, C, R, R], float32, roughly [-1, 1]."""

    def __init__(self, config: StyleGAN2Config | Mapping[str, Any] | None = None, *, seed: int | None = 0) -> None:
        super().__init__()
        if config is None:
            config = StyleGAN2Config.from_kwargs(SMALL_CONFIG)
        elif isinstance(config, Mapping):
            config = StyleGAN2Config.from_kwargs(config)
        self.config = copy.deepcopy(config)  # set_half_precision edits it; never the caller's object
        self.z_dim = config.z_dim
        self.c_dim = config.c_dim
        self.w_dim = config.w_dim
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.synthesis = SynthesisNetwork(config.w_dim, config.img_resolution, config.img_channels,
                                          config.synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(config.z_dim, config.c_dim, config.w_dim, self.num_ws, config.mapping_kwargs)
        self.fp16_layers = fp16_layers_choice(config.synthesis_kwargs.num_fp16_res)
        if seed is not None:
            self.reset_parameters(seed)

    def reset_parameters(self, seed: int = 0) -> None:
        """Random initialisation as upstream (distributions, not draws), from a private generator."""
        generator = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters(generator)

    def set_half_precision(self, num_fp16_res: int, dtype: torch.dtype = torch.float16) -> StyleGAN2Generator:
        """Run the top `num_fp16_res` resolutions in float16/bfloat16 (0 = all float32); returns self."""
        self.synthesis.set_half_precision(num_fp16_res, dtype)
        self.config.synthesis_kwargs.num_fp16_res = num_fp16_res
        name = "bf16" if dtype == torch.bfloat16 else "fp16"
        self.fp16_layers = (Fp16Layers(True, name, "forced: set_half_precision") if num_fp16_res
                            else fp16_layers_choice(0))
        return self

    def set_fp16_layers(self, choice: Fp16Layers) -> StyleGAN2Generator:
        """Apply a `fp16_layers_choice` decision to the marked blocks (num_fp16_res stays); returns self."""
        num_fp16_res = self.config.synthesis_kwargs.num_fp16_res
        if num_fp16_res == 0:
            choice = fp16_layers_choice(0)  # nothing is marked: nothing to turn on
        if choice.enabled:
            self.synthesis.mark_half_blocks(num_fp16_res, HALF_PRECISIONS[choice.dtype or "fp16"])
        self.synthesis.half_enabled = choice.enabled
        self.fp16_layers = choice
        return self

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const",
                force_fp32: bool = False) -> torch.Tensor:
        """Images for latents z (and labels c when conditional)."""
        _check_noise_mode(noise_mode)
        _assert_shape(z, [None, self.z_dim], "StyleGAN2 z")
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32)


EXPORT_NOISE_MODES = ("const", "none")


@dataclass
class SamplingOptions:
    """What an exported StyleGAN2 graph asks the generator for (JSON-able; `fertk export` flags).

    noise_mode 'random' cannot be exported: a graph would either freeze one draw into a constant
    or drop the random op, so it is refused here; sample with it in PyTorch instead.
    """

    truncation: float = 1.0                  # ψ: ws = w_avg + ψ (w - w_avg); 1 = no truncation
    truncation_cutoff: int | None = None     # truncate only the first N ws; None = all
    noise_mode: str = "const"                # "const" (stored noise_const buffers) | "none"
    ws_output: bool = False                  # also output ws [batch, num_ws, w_dim]

    def __post_init__(self) -> None:
        if isinstance(self.truncation, bool) or not isinstance(self.truncation, (int, float)) \
                or not math.isfinite(self.truncation):
            raise InvalidInputError(f"truncation ψ must be a finite number, got {self.truncation!r}")
        self.truncation = float(self.truncation)
        if self.truncation_cutoff is not None:
            _check_int("truncation_cutoff", self.truncation_cutoff, minimum=1)
        if self.noise_mode == "random":
            raise InvalidInputError(
                "noise mode 'random' is not exportable: an ONNX graph would freeze one draw or drop the noise",
                hint="export with noise const (the stored noise_const buffers) or none; "
                     "sample random noise in PyTorch (StyleGAN2Generator(..., noise_mode='random'))")
        if self.noise_mode not in EXPORT_NOISE_MODES:
            raise InvalidInputError(f"unknown noise mode {self.noise_mode!r}",
                                    hint="choose " + " or ".join(EXPORT_NOISE_MODES))
        self.ws_output = bool(self.ws_output)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


class StyleGAN2Sampler(nn.Module):
    """z [N, z_dim] (+ c) -> img (+ ws) at fixed truncation and noise: the graph `fertk export
    stylegan2` writes (truncation written out, noise as constant buffers or absent)."""

    task = "generator"

    def __init__(self, generator: StyleGAN2Generator, options: SamplingOptions | None = None) -> None:
        super().__init__()
        options = options or SamplingOptions()
        if options.truncation != 1 and generator.mapping.w_avg_beta is None:
            raise InvalidInputError("truncation needs w_avg, which this generator does not track",
                                    hint="export with truncation 1")
        self.generator = generator
        self.options = options
        self.config = generator.config
        base = stylegan2_card(generator)
        # I/O as card dicts (name, dtype, shape): the exporter reads its specs from the card.
        self.inputs = [dict(d) for d in base.inputs]
        self.outputs = [dict(d) for d in base.outputs]
        if options.ws_output:
            self.outputs.append({"name": "ws", "dtype": "float32",
                                 "shape": ["batch", generator.num_ws, generator.config.w_dim],
                                 "description": "per-layer latents after truncation"})

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> Any:
        """img, or (img, ws) with ws_output."""
        o = self.options
        ws = self.generator.mapping(z, c, truncation_psi=o.truncation, truncation_cutoff=o.truncation_cutoff)
        img = self.generator.synthesis(ws, noise_mode=o.noise_mode)
        return (img, ws) if o.ws_output else img

    def card(self, model_card: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The generator's card (as loaded, or a fresh one) with this graph's I/O and options."""
        card = dict(model_card or stylegan2_card(self.generator).to_dict())
        card["inputs"] = [dict(d) for d in self.inputs]
        card["outputs"] = [dict(d) for d in self.outputs]
        extra = dict(card.get("extra") or {})
        extra.update({"sampling": self.options.to_dict(), "fp16_layers": self.generator.fp16_layers.describe()})
        extra.pop("default_noise_mode", None)
        card["extra"] = extra
        return card


# ----------------------------------------------------------------------------------------------
# Cards, files and the registry entry


def stylegan2_card(model: StyleGAN2Generator, *, weights: Path | None = None,
                   extra: Mapping[str, Any] | None = None) -> ModelCard:
    """The card describing a StyleGAN2 generator: config, provenance, inputs and outputs."""
    cfg = model.config
    inputs: list[dict[str, Any]] = [{"name": "z", "dtype": "float32", "shape": ["batch", cfg.z_dim],
                                     "distribution": "standard normal"}]
    if cfg.c_dim > 0:
        inputs.append({"name": "c", "dtype": "float32", "shape": ["batch", cfg.c_dim],
                       "description": "conditioning label (one-hot for class-conditional models)"})
    res = cfg.img_resolution
    return ModelCard(
        name="stylegan2",
        architecture="StyleGAN2Generator",
        config=cfg.to_kwargs(),
        weights_sha256=sha256_file(weights) if weights else None,
        source=str(weights) if weights else "random-init",
        inputs=inputs,
        outputs=[{"name": "img", "dtype": "float32", "shape": ["batch", cfg.img_channels, res, res],
                  "nominal_range": [-1.0, 1.0], "description": "linear output, not clamped"}],
        extra={"parameters": count_parameters(model), "num_ws": model.num_ws, "w_dim": cfg.w_dim,
               "layout": "NVlabs stylegan2-ada-pytorch Generator state dict",
               "default_noise_mode": "const", "num_fp16_res": cfg.synthesis_kwargs.num_fp16_res,
               "fp16_layers": model.fp16_layers.describe(), **dict(extra or {})},
    )


def _strip_network_suffix(stem: str) -> str:
    for suffix in ("-G_ema", "_G_ema", "-G", "_G"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def config_sidecar_candidates(weights: str | Path) -> list[Path]:
    """JSON files searched for the config of a state-dict file, in order.

    For `dir/name.ext`: `name-config.json`, `name.json`, then the same two with a trailing
    network tag (-G, _G, -G_ema, _G_ema) removed from `name` (so `stylegan2_small-G.pt` finds
    `stylegan2_small-config.json`), then `config.json`, all in `dir`.
    """
    weights = Path(weights)
    stem = weights.stem
    names = [f"{stem}-config.json", f"{stem}.json"]
    base = _strip_network_suffix(stem)
    if base != stem:
        names += [f"{base}-config.json", f"{base}.json"]
    names.append("config.json")
    seen: list[Path] = []
    for name in names:
        path = weights.with_name(name)
        if path not in seen and path != weights:
            seen.append(path)
    return seen


def _read_sidecar_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read StyleGAN2 config {path}: {exc}") from None
    # A fertk model card stores the kwargs under "config".
    if isinstance(data, dict) and "config" in data and "architecture" in data:
        data = data["config"]
    if not isinstance(data, dict):
        raise CheckpointError(f"StyleGAN2 config {path} is not a JSON object")
    return data


def _config_from(kwargs: Mapping[str, Any], source: str) -> StyleGAN2Config:
    try:
        return StyleGAN2Config.from_kwargs(kwargs)
    except InvalidInputError as exc:
        raise CheckpointError(f"bad StyleGAN2 config from {source}: {exc}", hint=exc.hint) from None
    except TypeError as exc:
        raise CheckpointError(f"bad StyleGAN2 config from {source}: {exc}") from None


def load_stylegan2(path: str | Path, config: Mapping[str, Any] | StyleGAN2Config | None = None, *,
                   network: str | None = None) -> tuple[StyleGAN2Generator, ModelCard]:
    """Load a StyleGAN2 generator from a state dict (+ config) or an NVlabs .pkl; eval mode.

    `config` (upstream kwargs) overrides the sidecar JSON or the pickle's stored kwargs.
    `network` picks the snapshot entry of a .pkl (default 'G_ema', falling back to 'G').
    """
    path = Path(path)
    suffix = path.suffix.lower()
    extra: dict[str, Any] = {}
    if suffix in PICKLE_SUFFIXES:
        from fertk.models.nvlabs_pickle import read_nvlabs_pickle

        snapshot = read_nvlabs_pickle(path, network=network)
        state = snapshot.state_dict
        kwargs = config if config is not None else snapshot.init_kwargs
        config_source = "the argument" if config is not None else f"{path} ({snapshot.network} _init_kwargs)"
        extra = {"pickle_network": snapshot.network, "pickle_class": snapshot.class_name}
    elif suffix in STATE_DICT_SUFFIXES:
        if network is not None:
            raise InvalidInputError("network= applies to NVlabs .pkl snapshots only")
        state = read_state_dict(path)
        if config is not None:
            kwargs, config_source = config, "the argument"
        else:
            candidates = config_sidecar_candidates(path)
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise CheckpointError(
                    f"no StyleGAN2 config for {path}: looked for "
                    f"{', '.join(p.name for p in candidates)} in {path.parent}",
                    hint="pass config= (the upstream Generator kwargs) or write one of those JSON files")
            kwargs, config_source = _read_sidecar_config(found), str(found)
            extra["config_file"] = str(found)
    else:
        raise CheckpointError(f"unsupported StyleGAN2 weights file {path.name}",
                              hint="supported: " + ", ".join(STATE_DICT_SUFFIXES + PICKLE_SUFFIXES))
    cfg = config if isinstance(config, StyleGAN2Config) else _config_from(kwargs, config_source)
    model = StyleGAN2Generator(cfg, seed=None)
    load_into(model, state, source=path)
    model.eval()
    return model, stylegan2_card(model, weights=path, extra=extra)


def save_stylegan2(model: StyleGAN2Generator, path: str | Path) -> ModelCard:
    """Write weights as safetensors plus the `<stem>-config.json` sidecar; return the new card."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InvalidInputError(f"save StyleGAN2 weights as .safetensors, got {path.name}")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    with atomic_target(path) as tmp:
        save_file(state, str(tmp))
    sidecar = config_sidecar_candidates(path)[0]
    atomic_write_text(sidecar, json.dumps(model.config.to_kwargs(), indent=1), fsync=False)
    return stylegan2_card(model, weights=path, extra={"config_file": str(sidecar)})


def _merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if key in ("mapping_kwargs", "synthesis_kwargs") and isinstance(value, Mapping):
            merged[key] = {**dict(base.get(key, {})), **dict(value)}
        else:
            merged[key] = value
    return merged


@register_model("stylegan2", description="StyleGAN2 generator, NVlabs stylegan2-ada-pytorch layout (z -> image)",
                task="generator", default_config=SMALL_CONFIG)
def build_stylegan2(weights: Path | None = None, **config: Any) -> tuple[StyleGAN2Generator, ModelCard]:
    """Registry builder: load weights (config = upstream kwargs override) or random-init a config.

    Without weights the config is the small golden one updated by `config` (nested
    mapping_kwargs / synthesis_kwargs are merged key by key); `seed` (default 0) picks the init.
    """
    seed = config.pop("seed", 0)
    if weights is not None:
        return load_stylegan2(weights, config or None)
    model = StyleGAN2Generator(StyleGAN2Config.from_kwargs(_merge_config(SMALL_CONFIG, config)), seed=seed)
    model.eval()
    return model, stylegan2_card(model, extra={"seed": seed})
