"""Keras layers as torch modules (NCHW), Keras' semantics kept: kernel layouts, TensorFlow's
asymmetric 'same' padding, pooling that ignores padded cells, NHWC flatten order."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fertk.core.errors import CheckpointError
from fertk.models.keras_h5.reader import KerasLayer

SUPPORTED = (
    "InputLayer", "Conv2D", "SeparableConv2D", "DepthwiseConv2D", "BatchNormalization", "Activation",
    "ReLU", "LeakyReLU", "ELU", "Softmax", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D", "Add", "Multiply", "Average", "Maximum", "Concatenate", "Dense", "Flatten",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "ZeroPadding2D",
)
IDENTITY_LAYERS = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout")
_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "elu", "softplus", "softsign", "relu6",
                "hard_sigmoid", "swish", "silu", "selu")


def pair(value: Any) -> tuple[int, int]:
    """A Keras size option (an int or a pair) as (rows, columns)."""
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


def take_weight(weights: dict[str, np.ndarray], key: str, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """Weight `key` of one layer as a float32 tensor, checked against `shape` (CheckpointError naming `where`)."""
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
    kh, kw = pair(cfg.get("kernel_size", 1))
    sh, sw = pair(cfg.get("strides", 1))
    dh, dw = pair(cfg.get("dilation_rate", 1))
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
            conv.weight.data = take_weight(weights, "kernel", (kh, kw, c_in, filters), where).permute(3, 2, 0, 1).contiguous()
        parts.append(conv)
        last = conv
    else:
        mult = int(cfg.get("depth_multiplier", 1))
        is_sep = layer.class_name == "SeparableConv2D"
        depth = nn.Conv2d(c_in, c_in * mult, (kh, kw), (sh, sw), dilation=(dh, dw), groups=c_in,
                          bias=use_bias and not is_sep)
        if weights is not None:
            dk = take_weight(weights, "depthwise_kernel", (kh, kw, c_in, mult), where)
            depth.weight.data = dk.reshape(kh, kw, c_in * mult).permute(2, 0, 1).unsqueeze(1).contiguous()
        parts.append(depth)
        last = depth
        if is_sep:
            filters = int(cfg["filters"])
            point = nn.Conv2d(c_in * mult, filters, 1, bias=use_bias)
            if weights is not None:
                pk = take_weight(weights, "pointwise_kernel", (1, 1, c_in * mult, filters), where)
                point.weight.data = pk.permute(3, 2, 0, 1).contiguous()
            parts.append(point)
            last = point
    if use_bias and weights is not None:
        last.bias.data = take_weight(weights, "bias", (last.out_channels,), where)
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
        bn.running_mean.data = take_weight(weights, "moving_mean", shape, where)
        bn.running_var.data = take_weight(weights, "moving_variance", shape, where)
        if cfg.get("scale", True):
            bn.weight.data = take_weight(weights, "gamma", shape, where)
        if cfg.get("center", True):
            bn.bias.data = take_weight(weights, "beta", shape, where)
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
        linear.weight.data = take_weight(weights, "kernel", (in_shape[0], units), where).t().contiguous()
        if linear.bias is not None:
            linear.bias.data = take_weight(weights, "bias", (units,), where)
    return nn.Sequential(linear, _activation(cfg.get("activation", "linear"), where))


def _pool(layer: KerasLayer, in_shape: tuple[int, ...], where: str) -> nn.Module:
    cfg = layer.config
    _, h, w = in_shape
    kh, kw = pair(cfg.get("pool_size", 2))
    sh, sw = pair(cfg.get("strides") or (kh, kw))
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
    if kind in IDENTITY_LAYERS:
        return nn.Identity()
    if kind == "ZeroPadding2D":
        pad = cfg.get("padding", 1)
        if isinstance(pad, int):
            pads = (pad, pad, pad, pad)
        else:
            (top, bottom), (left, right) = (pair(p) for p in pad)
            pads = (left, right, top, bottom)
        return _Pad(pads)
    if kind in ("Add", "Multiply", "Average", "Maximum"):
        if len({tuple(s) for s in in_shapes}) != 1:
            raise CheckpointError(f"{where}: inputs of different shapes {list(in_shapes)}")
        return _Merge(kind.lower())
    if kind == "Concatenate":
        return _Merge("concat", _channel_dim(int(cfg.get("axis", -1)), len(shape) + 1))
    raise AssertionError(kind)
