"""StyleGAN2 configuration: the upstream Generator kwargs as JSON-able dataclasses, and the one
rule deciding whether the layers marked half precision (num_fp16_res) run in half precision."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from fertk.core.errors import InvalidInputError
from fertk.models.stylegan2.ops import ACTIVATIONS

ARCHITECTURES = ("orig", "skip", "resnet")
NOISE_MODES = ("const", "none", "random")
HALF_DTYPES = (torch.float16, torch.bfloat16)
HALF_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}

# Upstream constructor arguments that only matter for training or memory layout; accepted in
# configs (they appear in snapshots) and dropped, since they change no output.
_IGNORED_MAPPING_KEYS = frozenset({"freeze_layers", "freeze_embed"})
_IGNORED_SYNTHESIS_KEYS = frozenset({"fp16_channels_last", "fused_modconv_default", "channels_last"})
_TOP_LEVEL_KEYS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")


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
            check_int(name, getattr(self, name), minimum=1)
        check_int("c_dim", self.c_dim, minimum=0)
        check_int("img_resolution", self.img_resolution, minimum=4)
        if self.img_resolution & (self.img_resolution - 1):
            raise InvalidInputError(f"StyleGAN2 img_resolution must be a power of two >= 4, got {self.img_resolution}")
        check_int("mapping_kwargs.num_layers", m.num_layers, minimum=1)
        for name in ("embed_features", "layer_features"):
            if getattr(m, name) is not None:
                check_int(f"mapping_kwargs.{name}", getattr(m, name), minimum=1)
        check_int("synthesis_kwargs.channel_base", s.channel_base, minimum=1)
        check_int("synthesis_kwargs.channel_max", s.channel_max, minimum=1)
        check_int("synthesis_kwargs.num_fp16_res", s.num_fp16_res, minimum=0)
        check_int("synthesis_kwargs.kernel_size", s.kernel_size, minimum=1)
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


def check_int(name: str, value: Any, *, minimum: int) -> None:
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


def check_noise_mode(noise_mode: str) -> None:
    """InvalidInputError unless `noise_mode` is one of NOISE_MODES."""
    if noise_mode not in NOISE_MODES:
        raise InvalidInputError(f"unknown noise_mode {noise_mode!r}", hint="choose one of " + ", ".join(NOISE_MODES))
