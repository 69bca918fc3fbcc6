"""A small registry: builders registered by name, each returning a model and its card."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fertk.core.errors import InvalidInputError

# Modules that register models on import; imported lazily by list_models/get_entry so that
# `import fertk` stays light.
_BUILTIN_MODULES = (
    "fertk.models.fer_cnn",
    "fertk.models.judges",
    "fertk.models.pipeline",
    "fertk.models.procedural",
    "fertk.models.stargan",
    "fertk.models.stylegan2",
)


@dataclass
class ModelCard:
    """What a loaded model is: architecture config, weights provenance and I/O description."""

    name: str
    architecture: str
    config: dict[str, Any]
    weights_sha256: str | None = None
    source: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)

    def to_json(self) -> str:
        """Pretty JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        """Inverse of to_dict; unknown keys go to `extra`."""
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        return cls(**kwargs, extra=extra)


# A builder takes (weights path or None, config overrides) and returns (nn.Module, ModelCard).
Builder = Callable[..., tuple[Any, ModelCard]]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model family."""

    name: str
    builder: Builder
    description: str
    task: str  # "classifier" | "generator" | "translator" | "pipeline"
    default_config: dict[str, Any]


_REGISTRY: dict[str, ModelEntry] = {}
_loaded_builtins = False


def register_model(
    name: str, *, description: str, task: str, default_config: dict[str, Any] | None = None
) -> Callable[[Builder], Builder]:
    """Decorator: register `builder(weights=None, **config) -> (model, card)` under `name`."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description, task, dict(default_config or {}))
        return builder

    return decorate


def _load_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only tolerate the module itself being absent, never a broken import inside it.
            if exc.name != module:
                raise


def list_models(pattern: str | None = None, *, task: str | None = None) -> list[str]:
    """Registered names, optionally filtered by substring and task."""
    _load_builtins()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if pattern.lower() in n.lower()]
    if task:
        names = [n for n in names if _REGISTRY[n].task == task]
    return names


def get_entry(name: str) -> ModelEntry:
    """The registry entry for `name`, or an error listing the known names."""
    _load_builtins()
    if name not in _REGISTRY:
        raise InvalidInputError(
            f"unknown model {name!r}", hint="known models: " + ", ".join(sorted(_REGISTRY))
        )
    return _REGISTRY[name]


def load_model(name: str, weights: str | Path | None = None, **config: Any) -> tuple[Any, ModelCard]:
    """Build model `name` (random init or procedural when weights is None) and return (model, card)."""
    entry = get_entry(name)
    return entry.builder(weights=Path(weights) if weights is not None else None, **config)


def count_parameters(module: Any) -> int:
    """Number of parameters of a torch module (recorded in every model card)."""
    return sum(p.numel() for p in module.parameters())
