"""Safe weight files, shared by every model: read state dicts from safetensors or `weights_only`
torch archives (refusing pickles that need code), write them atomically, read the fertk config a
safetensors header carries, and load them into modules with one-line errors naming missing /
unexpected / mis-shaped keys. Each model keeps its own key mapping; this module knows none."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fertk.core.errors import CheckpointError, UnsafeFileError
from fertk.core.io import atomic_target, atomic_torch_save, sha256_file

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
# The safetensors header key under which fertk stores a model's JSON config.
META_KEY = "fertk"
CARD_HINT = "fix or delete it: a card beside the weights is rewritten by training"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat {name: tensor} mapping from .safetensors or a torch archive (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"weights file is empty: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot read {path} ({size} bytes): truncated or corrupt safetensors file ({first_line(exc)})",
                hint="re-copy or re-create the file (training writes it whole, by atomic rename)",
            ) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # a damaged pickle stream, not a refused global
            raise CheckpointError(
                f"cannot read {path} ({size} bytes): truncated or corrupt archive ({first_line(exc)})",
                hint="re-copy or re-create the file",
            ) from None
        raise UnsafeFileError(
            f"refusing to load {path}: it needs code execution to unpickle ({first_line(exc)})",
            hint="convert it to safetensors with the code that made it, or use a .pkl reader fertk supports",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, KeyError,
            IndexError, TypeError) as exc:
        # A damaged archive surfaces as any of these, depending on where the bytes stop.
        raise CheckpointError(
            f"cannot read {path} ({size} bytes): truncated or corrupt archive ({first_line(exc)})",
            hint="re-copy or re-create the file",
        ) from None
    return _flatten_state(obj, path)


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors header; CheckpointError naming the file if unreadable."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), "pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {path} ({path.stat().st_size} bytes): truncated or corrupt safetensors file "
            f"({first_line(exc)})",
            hint="re-copy or re-create the file (training writes it whole, by atomic rename)",
        ) from None


def read_header_config(path: str | Path) -> dict[str, Any] | None:
    """The fertk config (JSON) in a safetensors header; None for other files or when absent."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    meta = read_safetensors_metadata(path)
    if META_KEY not in meta:
        return None
    try:
        config = json.loads(meta[META_KEY])
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the fertk config in its header is not a JSON object")
    return config


def read_json_object(path: str | Path, what: str = "JSON card", *, hint: str = CARD_HINT) -> dict[str, Any]:
    """A JSON file holding an object (a model card, a config); CheckpointError naming the file if not."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable {what} ({first_line(exc)})", hint=hint) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a {what}: it holds a JSON {type(data).__name__}, not an object")
    return data


def cpu_state(module: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of a module's state dict (optionally cast): what a file stores."""
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}


def write_safetensors(path: str | Path, state: Mapping[str, torch.Tensor], *,
                      config: Mapping[str, Any] | None = None) -> Path:
    """Write `state` as safetensors atomically; `config` goes into the header as JSON (see META_KEY)."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {META_KEY: json.dumps(config)} if config is not None else None
    with atomic_target(path) as tmp:  # safetensors writes 0600 files; atomic_target gives the umask's mode
        save_file(dict(state), str(tmp), metadata=metadata)
    return path


def write_state_dict(path: str | Path, state: Mapping[str, torch.Tensor], *,
                     config: Mapping[str, Any] | None = None) -> Path:
    """Write `state` atomically: `.safetensors` (config in the header) or a plain torch.save state dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return write_safetensors(path, state, config=config)
    return atomic_torch_save(dict(state), path)


def provenance(weights: Path | None) -> dict[str, str | None]:
    """A card's `weights_sha256` and `source` for a weights file (None: a random init)."""
    return {"weights_sha256": sha256_file(weights) if weights else None,
            "source": str(weights) if weights else "random-init"}


def _flatten_state(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # Accept a bare state dict, or the common wrappers {"state_dict": ...} / {"model": ...}.
    if isinstance(obj, Mapping):
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in ("state_dict", "model", "G_ema", "G"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")


def load_into(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str | Path,
    ignore: tuple[str, ...] = (),
) -> None:
    """Copy `state` into `module` strictly; raise one CheckpointError listing every mismatch.

    Keys ending with a name in `ignore` may be absent or extra (e.g. buffers a format omits).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(ignore)]
    unexpected = [k for k in state if k not in own and not k.endswith(ignore)]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_preview(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch: {_preview(shapes)}")
        raise CheckpointError(
            f"{source} does not match {type(module).__name__}: " + "; ".join(parts),
            hint="check the architecture options (e.g. --config / variant) match the weights",
        )
    filtered = {k: v for k, v in state.items() if k in own}
    module.load_state_dict(filtered, strict=False)


def _preview(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit})" if len(items) > limit else "")


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line (first sentence, at most `limit` characters) of an exception's message."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    sentence = line.split(". ", 1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."
