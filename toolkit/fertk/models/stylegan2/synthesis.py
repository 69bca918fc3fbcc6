"""StyleGAN2 synthesis network: blocks b4 ... bR (const or up-sampling conv, conv, ToRGB, the
image skip path) and the network that feeds them their slices of ws."""

from __future__ import annotations

import math

import torch
from torch import nn

from fertk.core.errors import InvalidInputError
from fertk.models.stylegan2.config import HALF_DTYPES, SynthesisConfig, check_int, check_noise_mode
from fertk.models.stylegan2.layers import Conv2dLayer, SynthesisLayer, ToRGBLayer
from fertk.models.stylegan2.ops import assert_shape, setup_filter, upsample2d


class SynthesisBlock(nn.Module):
    """One resolution: [const | conv0 (up 2)] -> conv1 -> [torgb], plus the image skip path."""

    def __init__(self,
                 in_channels: int,               # 0 = first block (learned constant input)
                 out_channels: int,              # feature channels
                 w_dim: int,                     # W width
                 resolution: int,                # block side
                 img_channels: int,              # image channels
                 is_last: bool,                  # the img_resolution block
                 config: SynthesisConfig,        # shared options
                 use_fp16: bool = False,         # run this block in half precision
                 ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = config.architecture
        self.use_fp16 = use_fp16
        self.half_dtype = torch.float16
        self.register_buffer("resample_filter", setup_filter(config.resample_filter))
        layer_kwargs = dict(w_dim=w_dim, resolution=resolution, kernel_size=config.kernel_size,
                            use_noise=config.use_noise, activation=config.activation,
                            resample_filter=config.resample_filter, conv_clamp=config.conv_clamp)
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.empty(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_kwargs)
        self.num_conv += 1
        if is_last or self.architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=config.conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and self.architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, config.resample_filter)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Upstream initialisation of the constant input."""
        if self.in_channels == 0:
            with torch.no_grad():
                self.const.copy_(torch.randn(self.const.shape, generator=generator))

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "const", force_fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ws [N, num_conv + num_torgb, w_dim] -> (features, image so far)."""
        assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], f"b{self.resolution} ws")
        dtype = self.half_dtype if self.use_fp16 and not force_fp32 else torch.float32
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            assert x is not None
            assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2],
                          f"b{self.resolution} input")
            x = x.to(dtype)
        w_index = 0
        if self.in_channels == 0:
            x = self.conv1(x, ws[:, 0], noise_mode=noise_mode)
            w_index = 1
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, ws[:, 0], noise_mode=noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode=noise_mode, gain=math.sqrt(0.5))
            x = y + x
            w_index = 2
        else:
            x = self.conv0(x, ws[:, 0], noise_mode=noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode=noise_mode)
            w_index = 2
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, ws[:, w_index]).to(torch.float32)
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, img_channels, R, R] through blocks b4 ... bR."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, config: SynthesisConfig) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = {res: min(config.channel_base // res, config.channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        self.block_ws: list[tuple[int, int]] = []  # (first index, count) of each block's ws slice
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels,
                                   is_last=(res == img_resolution), config=config)
            self.block_ws.append((self.num_ws, block.num_conv + block.num_torgb))
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            self.add_module(f"b{res}", block)
        self.mark_half_blocks(config.num_fp16_res)
        # Marked blocks run in float32 until a decision turns them on (see fp16_layers_choice).
        self.half_enabled = False

    def blocks(self) -> list[SynthesisBlock]:
        """The blocks, lowest resolution first."""
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def mark_half_blocks(self, num_fp16_res: int, dtype: torch.dtype = torch.float16) -> None:
        """Mark the `num_fp16_res` highest resolutions (never b4) as `dtype` (float16 or bfloat16)
        blocks; they compute in it only while `half_enabled`."""
        if dtype not in HALF_DTYPES:
            raise InvalidInputError(f"half-precision dtype must be float16 or bfloat16, got {dtype}")
        check_int("num_fp16_res", num_fp16_res, minimum=0)
        fp16_resolution = max(2 ** (int(math.log2(self.img_resolution)) + 1 - num_fp16_res), 8)
        for block in self.blocks():
            block.use_fp16 = block.resolution >= fp16_resolution
            block.half_dtype = dtype

    def set_half_precision(self, num_fp16_res: int, dtype: torch.dtype = torch.float16) -> None:
        """Run the `num_fp16_res` highest resolutions (never b4) in `dtype` (float16 or bfloat16)."""
        self.mark_half_blocks(num_fp16_res, dtype)
        self.half_enabled = num_fp16_res > 0

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", force_fp32: bool = False) -> torch.Tensor:
        """Image from per-layer latents ws [N, num_ws, w_dim]."""
        check_noise_mode(noise_mode)
        assert_shape(ws, [None, self.num_ws, self.w_dim], "synthesis ws")
        ws = ws.to(torch.float32)
        force_fp32 = force_fp32 or not self.half_enabled
        x = img = None
        for block, (start, count) in zip(self.blocks(), self.block_ws):
            x, img = block(x, img, ws[:, start:start + count], noise_mode=noise_mode, force_fp32=force_fp32)
        assert img is not None
        return img

    def extra_repr(self) -> str:
        return f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}"
