"""Reading a Keras `model.save()` HDF5 file: the graph config (Sequential or functional, Keras 2
or 3 inbound-node forms) in topological order, and every layer's weights by short name."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.errors import CheckpointError
from fertk.models.weights import first_line


@dataclass
class KerasLayer:
    """One layer of the config: class, name, config dict, the layer names it reads."""

    class_name: str
    name: str
    config: dict[str, Any]
    inputs: list[str]


@dataclass
class KerasFile:
    """What an HDF5 model file holds: layers in graph order, the weights per layer, metadata."""

    path: Path
    model_class: str
    layers: list[KerasLayer]
    outputs: list[str]
    weights: dict[str, dict[str, np.ndarray]]
    keras_version: str | None = None
    backend: str | None = None
    input_shape: tuple[int, int, int] = (0, 0, 0)   # H, W, C of the (single) input
    notes: list[str] = field(default_factory=list)

    def layer_summary(self) -> str:
        """E.g. 'InputLayer×1, Conv2D×7, BatchNormalization×14, ...' in first-seen order."""
        counts = Counter(layer.class_name for layer in self.layers)
        return ", ".join(f"{name}×{count}" for name, count in counts.items())


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_h5(path: str | Path) -> KerasFile:
    """Read a Keras `model.save()` HDF5 file: graph config and weights (no TensorFlow)."""
    try:
        import h5py
    except ModuleNotFoundError:  # a base dependency of fertk: a broken install, not a missing extra
        raise CheckpointError("reading Keras .h5 files needs h5py",
                              hint="pip install h5py (fertk depends on it; reinstall fertk)") from None
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Keras model file not found: {path}")
    size = path.stat().st_size
    try:
        with h5py.File(path, "r") as fh:
            if "model_config" not in fh.attrs:
                raise CheckpointError(
                    f"{path} has no model_config: it holds weights only (save_weights), not a model",
                    hint="save the model with model.save('model.h5') so the architecture is in the file")
            try:
                config = json.loads(_text(fh.attrs["model_config"]))
            except ValueError as exc:
                raise CheckpointError(f"{path}: model_config is not valid JSON ({exc})") from None
            group = fh["model_weights"] if "model_weights" in fh else fh
            weights = {name: _layer_weights(group[name]) for name in group if isinstance(group[name], h5py.Group)}
            version = _text(fh.attrs["keras_version"]) if "keras_version" in fh.attrs else None
            backend = _text(fh.attrs["backend"]) if "backend" in fh.attrs else None
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot read {path} ({size} bytes): not a readable HDF5 model file, truncated or corrupt "
            f"({first_line(exc)})",
            hint="check the download; a Keras model saved with model.save('x.h5') is expected") from None
    model_class, layers, outputs = _parse_config(config, path)
    first = layers[0] if layers else None
    shape = _input_shape(first, path) if first is not None else (0, 0, 0)
    return KerasFile(path, model_class, layers, outputs, weights, version, backend, shape)


def _layer_weights(group: Any) -> dict[str, np.ndarray]:
    """{short name ('kernel', 'bias', 'gamma', ...): array} of one layer group."""
    names = [_text(n) for n in group.attrs.get("weight_names", [])]
    if not names:  # some writers omit the attribute: walk the datasets
        found: list[str] = []
        group.visit(lambda key: found.append(key) if hasattr(group[key], "shape") else None)
        names = found
    out: dict[str, np.ndarray] = {}
    for name in names:
        short = name.split("/")[-1].split(":")[0]
        out[short] = np.asarray(group[name][()], dtype=np.float32)
    return out


def _history(obj: Any) -> list[str]:
    """Layer names referenced by a Keras-3 inbound-node structure (keras_history entries)."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]["keras_history"][0]]
        return [n for v in obj.values() for n in _history(v)]
    if isinstance(obj, (list, tuple)):
        return [n for v in obj for n in _history(v)]
    return []


def _inbound(layer: dict[str, Any], path: Path) -> list[str]:
    nodes = layer.get("inbound_nodes", [])
    if not nodes:
        return []
    if len(nodes) > 1:
        raise CheckpointError(f"{path}: layer {layer.get('name')!r} is shared (called {len(nodes)} times); "
                              "shared layers are not supported")
    node = nodes[0]
    if isinstance(node, dict):                      # Keras 3
        return _history(node.get("args", []))
    return [entry[0] for entry in node]             # Keras 2: [[name, node_index, tensor_index, kwargs]]


def _parse_config(config: dict[str, Any], path: Path) -> tuple[str, list[KerasLayer], list[str]]:
    model_class = config.get("class_name", "?")
    body = config.get("config", {})
    if model_class == "Sequential":
        raw = body if isinstance(body, list) else body.get("layers", [])
        layers: list[KerasLayer] = []
        previous: list[str] = []
        for item in raw:
            cfg = dict(item.get("config", {}))
            name = cfg.get("name") or item.get("name") or f"layer_{len(layers)}"
            if not layers and item.get("class_name") != "InputLayer":
                shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
                if shape:
                    layers.append(KerasLayer("InputLayer", "input", {"batch_input_shape": shape}, []))
                    previous = ["input"]
            layers.append(KerasLayer(item.get("class_name", "?"), name, cfg, list(previous)))
            previous = [name]
        return model_class, layers, previous
    if model_class in ("Model", "Functional"):
        raw = body.get("layers", [])
        layers = [KerasLayer(item.get("class_name", "?"), item.get("name") or item["config"]["name"],
                             dict(item.get("config", {})), _inbound(item, path)) for item in raw]
        outputs = [o[0] for o in body.get("output_layers", [])]
        inputs = [i[0] for i in body.get("input_layers", [])]
        if len(inputs) != 1 or len(outputs) != 1:
            raise CheckpointError(f"{path}: {len(inputs)} inputs and {len(outputs)} outputs; "
                                  "one image input and one output are supported")
        return model_class, _topological(layers, path), outputs
    raise CheckpointError(f"{path}: unknown Keras model class {model_class!r}",
                          hint="Sequential and functional (Model) graphs are supported")


def _topological(layers: list[KerasLayer], path: Path) -> list[KerasLayer]:
    done: set[str] = set()
    order: list[KerasLayer] = []
    pending = list(layers)
    while pending:
        ready = [layer for layer in pending if all(i in done for i in layer.inputs)]
        if not ready:
            raise CheckpointError(f"{path}: the graph has inputs that no layer makes: "
                                  + ", ".join(sorted({i for layer in pending for i in layer.inputs} - done)))
        for layer in ready:
            order.append(layer)
            done.add(layer.name)
        pending = [layer for layer in pending if layer.name not in done]
    return order


def _input_shape(first: KerasLayer, path: Path) -> tuple[int, int, int]:
    shape = first.config.get("batch_input_shape") or first.config.get("batch_shape")
    if first.class_name != "InputLayer" or not shape or len(shape) != 4 or any(d is None for d in shape[1:]):
        raise CheckpointError(f"{path}: expected an image input [batch, H, W, C] with known H, W, C, "
                              f"found {first.class_name} {shape}")
    if first.config.get("data_format", "channels_last") != "channels_last":
        raise CheckpointError(f"{path}: channels_first models are not supported")
    return int(shape[1]), int(shape[2]), int(shape[3])


def keras_file_from_config(config: dict[str, Any], *, path: str | Path = "<config>",
                           weights: dict[str, dict[str, np.ndarray]] | None = None) -> KerasFile:
    """A `KerasFile` from an in-memory config (and optional weights): architecture-only builds."""
    path = Path(path)
    model_class, layers, outputs = _parse_config(config, path)
    return KerasFile(path, model_class, layers, outputs, dict(weights or {}), None, None,
                     _input_shape(layers[0], path))
