"""StarGAN files: architecture inferred from a state dict's shapes, official `{iter}-G.ckpt` /
`-D.ckpt` and fertk safetensors loading and saving, the model cards and the registry entries."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.models.registry import ModelCard, count_parameters, register_model
from fertk.models.stargan.networks import (
    DEFAULT_IMAGE_SIZE, StarGANConfig, StarGANDiscriminator, StarGANDiscriminatorConfig, StarGANGenerator,
)
from fertk.models.weights import cpu_state, load_into, provenance, read_header_config, read_state_dict, write_state_dict

_G_RES_KEY = re.compile(r"^main\.(\d+)\.main\.0\.weight$")
_D_CONV_KEY = re.compile(r"^main\.(\d+)\.weight$")


def infer_generator_config(state: Mapping[str, torch.Tensor], *, source: str | Path = "state dict") -> StarGANConfig:
    """Architecture from G's shapes: main.0.weight is [conv_dim, 3+c_dim, 7, 7]; repeat_num counts
    the residual blocks (keys main.{i}.main.0.weight)."""
    first = state.get("main.0.weight")
    if first is None or first.dim() != 4:
        raise CheckpointError(f"{source} is not a StarGAN generator state dict (no 4-d main.0.weight)")
    if tuple(first.shape[2:]) != (7, 7) or first.shape[1] <= 3:
        kind = " (it looks like a StarGAN discriminator)" if tuple(first.shape[1:]) == (3, 4, 4) else ""
        raise CheckpointError(
            f"{source} is not a StarGAN generator: main.0.weight has shape {list(first.shape)}, "
            f"expected [conv_dim, 3 + c_dim, 7, 7]{kind}")
    repeat_num = sum(1 for k in state if _G_RES_KEY.match(k))
    return StarGANConfig(conv_dim=int(first.shape[0]), c_dim=int(first.shape[1]) - 3, repeat_num=repeat_num)


def infer_discriminator_config(state: Mapping[str, torch.Tensor], *,
                               source: str | Path = "state dict") -> StarGANDiscriminatorConfig:
    """Architecture from D's shapes: conv_dim from main.0.weight, repeat_num counts the convs in
    main, c_dim from conv2's outputs and image_size = conv2's kernel * 2^repeat_num."""
    first, head = state.get("main.0.weight"), state.get("conv2.weight")
    if first is None or head is None or first.dim() != 4 or head.dim() != 4 or "conv1.weight" not in state:
        kind = " (it looks like a StarGAN generator)" if first is not None and first.dim() == 4 and \
            tuple(first.shape[2:]) == (7, 7) else ""
        raise CheckpointError(
            f"{source} is not a StarGAN discriminator state dict (needs main.0.weight, conv1.weight, "
            f"conv2.weight){kind}")
    repeat_num = sum(1 for k in state if _D_CONV_KEY.match(k) and state[k].dim() == 4)
    return StarGANDiscriminatorConfig(image_size=int(head.shape[-1]) * 2 ** repeat_num,
                                      conv_dim=int(first.shape[0]), c_dim=int(head.shape[0]),
                                      repeat_num=repeat_num)


def _merge(inferred: Any, stored: Mapping[str, Any], given: Any, cls: type) -> Any:
    """Inferred < stored-in-file < explicitly given values; a dataclass `given` wins entirely."""
    if isinstance(given, cls):
        return given
    values = asdict(inferred)
    names = {f.name for f in fields(cls)}
    for layer in (stored, given or {}):
        unknown = set(layer) - names
        if layer is given and unknown:
            raise InvalidInputError(f"unknown {cls.__name__} option(s): {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in layer.items() if k in names and v is not None})
    if values.get("classes") is not None:
        values["classes"] = tuple(values["classes"])
    return cls(**values)


def image_size_source(path: Path, stored: Mapping[str, Any], config: Any, given_as: str | None = None) -> str:
    """Where a loaded G's image size comes from, in words (for its card and `fertk models show`)."""
    if isinstance(config, StarGANConfig) or (isinstance(config, Mapping) and config.get("image_size") is not None):
        return f"given ({given_as or 'config image_size'})"
    if stored.get("image_size") is not None:
        return f"stored in {path.name}"
    return (f"not stored in {path.name} (a StarGAN checkpoint holds no image size): default "
            f"{DEFAULT_IMAGE_SIZE} px, the paper pipeline's; set --translator-size (the authors trained at 256)")


def _load(path: Path, config: Any, config_cls: type, infer: Callable[..., Any], network_cls: type
          ) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint, merge its config (inferred < header < given), build and fill the network
    in eval mode; also return the header config (it tells where the image size came from)."""
    state = read_state_dict(path)
    stored = read_header_config(path) or {}
    model = network_cls.from_config(_merge(infer(state, source=path), stored, config, config_cls))
    load_into(model, state, source=path)
    model.eval()
    return model, stored


def load_stargan_generator(path: str | Path, config: StarGANConfig | Mapping[str, Any] | None = None, *,
                           size_source: str | None = None) -> tuple[StarGANGenerator, ModelCard]:
    """Load G from an official `{iter}-G.ckpt` or a safetensors file; architecture inferred from
    shapes unless `config` says otherwise (a mismatch is one CheckpointError). `size_source` names
    the option a given image_size came from, for the card."""
    path = Path(path)
    model, stored = _load(path, config, StarGANConfig, infer_generator_config, StarGANGenerator)
    return model, generator_card(model, weights=path,
                                 size_source=image_size_source(path, stored, config, size_source))


def load_stargan_discriminator(path: str | Path,
                               config: StarGANDiscriminatorConfig | Mapping[str, Any] | None = None
                               ) -> tuple[StarGANDiscriminator, ModelCard]:
    """Load D from an official `{iter}-D.ckpt` or a safetensors file (image_size from conv2's kernel)."""
    path = Path(path)
    model, stored = _load(path, config, StarGANDiscriminatorConfig, infer_discriminator_config, StarGANDiscriminator)
    return model, discriminator_card(model, weights=path)


def save_stargan(model: StarGANGenerator | StarGANDiscriminator, path: str | Path) -> Path:
    """Write weights atomically: `.safetensors` (config in the header) or `.ckpt`/`.pt` (a plain
    state dict via torch.save, like the official solver)."""
    return write_state_dict(path, cpu_state(model), config=model.config.to_dict())


def generator_card(model: StarGANGenerator, *, weights: Path | None = None,
                   size_source: str | None = None) -> ModelCard:
    """Card of a generator: config, label order, provenance, I/O, where its image size came from."""
    cfg = model.config
    size = cfg.image_size
    size_source = size_source or "config image_size"
    return ModelCard(
        name="stargan",
        architecture="StarGANGenerator",
        config=cfg.to_dict(),
        **provenance(weights),
        inputs=[
            {"name": "x", "dtype": "float32", "shape": ["batch", 3, size, size], "range": [-1.0, 1.0],
             "note": f"runs at {size} px (image size {size_source.split(' (')[0].split(':')[0]}); "
                     "fully convolutional, any height and width multiple of 4 runs"},
            {"name": "c", "dtype": "float32", "shape": ["batch", cfg.c_dim], "range": [0.0, 1.0],
             "classes": list(cfg.classes) if cfg.classes else None,
             "note": "one-hot target label; blends give graded expressions"},
        ],
        outputs=[{"name": "y", "dtype": "float32", "shape": ["batch", 3, size, size], "range": [-1.0, 1.0]}],
        extra={"parameters": count_parameters(model), "classes": list(cfg.classes) if cfg.classes else None,
               "image_size": size, "image_size_source": size_source},
    )


def discriminator_card(model: StarGANDiscriminator, *, weights: Path | None = None) -> ModelCard:
    """Card of a discriminator: config, label order, provenance, I/O."""
    cfg = model.config
    side = cfg.image_size // 2 ** cfg.repeat_num
    return ModelCard(
        name="stargan-d",
        architecture="StarGANDiscriminator",
        config=cfg.to_dict(),
        **provenance(weights),
        inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 3, cfg.image_size, cfg.image_size],
                 "range": [-1.0, 1.0]}],
        outputs=[
            {"name": "out_src", "dtype": "float32", "shape": ["batch", 1, side, side], "note": "WGAN critic map"},
            {"name": "out_cls", "dtype": "float32", "shape": ["batch", cfg.c_dim],
             "classes": list(cfg.classes) if cfg.classes else None, "note": "domain logits"},
        ],
        extra={"parameters": count_parameters(model), "classes": list(cfg.classes) if cfg.classes else None},
    )


@register_model("stargan", description="StarGAN expression translator G (official yunjey/stargan layout)",
                task="translator", default_config=StarGANConfig().to_dict())
def build_stargan(weights: Path | None = None, **config: Any) -> tuple[StarGANGenerator, ModelCard]:
    """Registry builder: load G (architecture inferred, `config` overrides) or random-init from config."""
    if weights is not None:
        return load_stargan_generator(weights, config or None)
    cfg = _merge(StarGANConfig(), {}, config, StarGANConfig)
    model = StarGANGenerator.from_config(cfg).eval()
    return model, generator_card(model)


@register_model("stargan-d", description="StarGAN PatchGAN critic with domain classifier head (official layout)",
                task="discriminator", default_config=StarGANDiscriminatorConfig().to_dict())
def build_stargan_discriminator(weights: Path | None = None, **config: Any
                                ) -> tuple[StarGANDiscriminator, ModelCard]:
    """Registry builder: load D (architecture inferred, `config` overrides) or random-init from config."""
    if weights is not None:
        return load_stargan_discriminator(weights, config or None)
    cfg = _merge(StarGANDiscriminatorConfig(), {}, config, StarGANDiscriminatorConfig)
    model = StarGANDiscriminator.from_config(cfg).eval()
    return model, discriminator_card(model)
