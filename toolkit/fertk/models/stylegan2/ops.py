"""StyleGAN2 free functions: plain tensor ops (every one exports to ONNX), each the upstream math
in an export-friendly order of operations."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

ACTIVATIONS = {"linear": (0.0, 1.0), "relu": (0.0, math.sqrt(2)), "lrelu": (0.2, math.sqrt(2))}


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


def assert_shape(x: torch.Tensor, expected: Sequence[int | None], what: str) -> None:
    """Check rank and the static dims of `x` (None = any); works in eager, tracing and export."""
    torch._assert(x.dim() == len(expected), f"{what}: expected {len(expected)} dims, got {x.dim()}")
    with warnings.catch_warnings():
        # Under tracing, comparing a size is a constant check by design.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        for axis, size in enumerate(expected):
            if size is not None:
                torch._assert(x.shape[axis] == size,
                              f"{what}: expected size {size} on axis {axis}, got shape {list(x.shape)}")
