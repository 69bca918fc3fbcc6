"""StyleGAN2 layers: equalised-lr fully connected, the resnet skip conv, the modulated synthesis
conv and ToRGB, in the upstream state-dict layout."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fertk.models.stylegan2.ops import (
    ACTIVATIONS, assert_shape, bias_act, conv2d_resample, modulated_conv2d, setup_filter,
)


class FullyConnectedLayer(nn.Module):
    """Linear layer with runtime weight/bias gains (equalised learning rate)."""

    def __init__(self,
                 in_features: int,            # input width
                 out_features: int,           # output width
                 activation: str = "linear",  # 'linear' | 'relu' | 'lrelu'
                 lr_multiplier: float = 1.0,  # scales the runtime gains
                 bias_init: float = 0.0,      # initial bias value (as stored)
                 ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.lr_multiplier = lr_multiplier
        self.bias_init = bias_init
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Upstream initialisation: weight N(0,1)/lr_multiplier, constant bias."""
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator) / self.lr_multiplier)
            self.bias.fill_(self.bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in] -> [N, out]."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """The 'resnet' skip connection: bias-free 1x1 conv with FIR up-sampling by 2."""

    def __init__(self, in_channels: int, out_channels: int, resample_filter: Sequence[float]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Upstream initialisation: weight N(0,1)."""
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator))

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """x [N, in, H, W] -> [N, out, 2H, 2W]."""
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, self.resample_filter, up=2, flip_weight=False)
        return bias_act(x, None, act="linear", gain=gain)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally up-sampling by 2), noise, bias, activation, clamp."""

    def __init__(self,
                 in_channels: int,                 # input feature channels
                 out_channels: int,                # output feature channels
                 w_dim: int,                       # W width (style input)
                 resolution: int,                  # output side
                 kernel_size: int = 3,             # conv kernel
                 up: int = 1,                      # 1 or 2
                 use_noise: bool = True,           # noise input
                 activation: str = "lrelu",        # activation
                 resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = None,  # clamp outputs to +-X
                 ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATIONS[activation][1]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if use_noise:
            self.register_buffer("noise_const", torch.empty(resolution, resolution))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Upstream initialisation: weight and noise_const N(0,1), zero bias and noise strength."""
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator))
            self.bias.zero_()
            if self.use_noise:
                self.noise_const.copy_(torch.randn(self.noise_const.shape, generator=generator))
                self.noise_strength.zero_()

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", gain: float = 1.0) -> torch.Tensor:
        """x [N, in, R/up, R/up], w [N, w_dim] -> [N, out, R, R]."""
        in_res = self.resolution // self.up
        assert_shape(x, [None, self.in_channels, in_res, in_res], "SynthesisLayer input")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, resolution={self.resolution}, "
                f"up={self.up}")


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, no demodulation, linear."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Upstream initialisation: weight N(0,1), zero bias."""
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator))
            self.bias.zero_()

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x [N, in, R, R], w [N, w_dim] -> [N, img_channels, R, R]."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)
