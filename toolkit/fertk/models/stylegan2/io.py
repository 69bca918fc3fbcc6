"""StyleGAN2 files: load state dicts (+ a JSON config sidecar) or NVlabs .pkl snapshots (through
the restricted reader, never plain pickle), save safetensors + sidecar, and the registry entry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.core.io import atomic_write_text
from fertk.models.nvlabs_pickle import read_nvlabs_pickle
from fertk.models.registry import ModelCard, register_model
from fertk.models.stylegan2.card import stylegan2_card
from fertk.models.stylegan2.config import SMALL_CONFIG, StyleGAN2Config
from fertk.models.stylegan2.network import StyleGAN2Generator
from fertk.models.weights import (
    STATE_DICT_SUFFIXES, cpu_state, load_into, read_json_object, read_state_dict, write_safetensors,
)

PICKLE_SUFFIXES = (".pkl",)


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
    data: Any = read_json_object(path, "StyleGAN2 config",
                                 hint="give the upstream Generator kwargs as a JSON object, or pass config=")
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
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InvalidInputError(f"save StyleGAN2 weights as .safetensors, got {path.name}")
    write_safetensors(path, cpu_state(model, torch.float32))
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
