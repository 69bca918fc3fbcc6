"""The StyleGAN2 generator: mapping + synthesis, initialisation and the half-precision switches."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fertk.models.stylegan2.config import (
    HALF_PRECISIONS, SMALL_CONFIG, Fp16Layers, StyleGAN2Config, check_noise_mode, fp16_layers_choice,
)
from fertk.models.stylegan2.mapping import MappingNetwork
from fertk.models.stylegan2.ops import assert_shape
from fertk.models.stylegan2.synthesis import SynthesisNetwork


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 G: z [N, z_dim] (+ c [N, c_dim]) -> img [N, C, R, R], float32, roughly [-1, 1]."""

    def __init__(self, config: StyleGAN2Config | Mapping[str, Any] | None = None, *, seed: int | None = 0) -> None:
        super().__init__()
        if config is None:
            config = StyleGAN2Config.from_kwargs(SMALL_CONFIG)
        elif isinstance(config, Mapping):
            config = StyleGAN2Config.from_kwargs(config)
        self.config = copy.deepcopy(config)  # set_half_precision edits it; never the caller's object
        self.z_dim = config.z_dim
        self.c_dim = config.c_dim
        self.w_dim = config.w_dim
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.synthesis = SynthesisNetwork(config.w_dim, config.img_resolution, config.img_channels,
                                          config.synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(config.z_dim, config.c_dim, config.w_dim, self.num_ws, config.mapping_kwargs)
        self.fp16_layers = fp16_layers_choice(config.synthesis_kwargs.num_fp16_res)
        if seed is not None:
            self.reset_parameters(seed)

    def reset_parameters(self, seed: int = 0) -> None:
        """Random initialisation as upstream (distributions, not draws), from a private generator."""
        generator = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters(generator)

    def set_half_precision(self, num_fp16_res: int, dtype: torch.dtype = torch.float16) -> StyleGAN2Generator:
        """Run the top `num_fp16_res` resolutions in float16/bfloat16 (0 = all float32); returns self."""
        self.synthesis.set_half_precision(num_fp16_res, dtype)
        self.config.synthesis_kwargs.num_fp16_res = num_fp16_res
        name = "bf16" if dtype == torch.bfloat16 else "fp16"
        self.fp16_layers = (Fp16Layers(True, name, "forced: set_half_precision") if num_fp16_res
                            else fp16_layers_choice(0))
        return self

    def set_fp16_layers(self, choice: Fp16Layers) -> StyleGAN2Generator:
        """Apply a `fp16_layers_choice` decision to the marked blocks (num_fp16_res stays); returns self."""
        num_fp16_res = self.config.synthesis_kwargs.num_fp16_res
        if num_fp16_res == 0:
            choice = fp16_layers_choice(0)  # nothing is marked: nothing to turn on
        if choice.enabled:
            self.synthesis.mark_half_blocks(num_fp16_res, HALF_PRECISIONS[choice.dtype or "fp16"])
        self.synthesis.half_enabled = choice.enabled
        self.fp16_layers = choice
        return self

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const",
                force_fp32: bool = False) -> torch.Tensor:
        """Images for latents z (and labels c when conditional)."""
        check_noise_mode(noise_mode)
        assert_shape(z, [None, self.z_dim], "StyleGAN2 z")
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32)
