"""StyleGAN2 mapping network: z (+ c) -> ws, with the tracked w_avg and truncation written out."""

from __future__ import annotations

import torch
from torch import nn

from fertk.core.errors import InvalidInputError
from fertk.models.stylegan2.config import MappingConfig
from fertk.models.stylegan2.layers import FullyConnectedLayer
from fertk.models.stylegan2.ops import assert_shape, normalize_2nd_moment


class MappingNetwork(nn.Module):
    """z [N, z_dim] (+ c [N, c_dim]) -> ws [N, num_ws, w_dim], with optional truncation."""

    # Casts its inputs to float32 on purpose (as NVlabs does), so a module cast to bf16/fp16 breaks
    # here: engines run reduced precision on modules holding this flag with autocast instead.
    pins_fp32 = True

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, config: MappingConfig) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = config.num_layers
        self.w_avg_beta = config.w_avg_beta
        embed_features = 0 if c_dim == 0 else (config.embed_features or w_dim)
        layer_features = config.layer_features or w_dim
        features = [z_dim + embed_features] + [layer_features] * (config.num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(config.num_layers):
            self.add_module(f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1],
                                                            activation=config.activation,
                                                            lr_multiplier=config.lr_multiplier))
        if config.w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False) -> torch.Tensor:
        """ws = truncate(broadcast(fc(normalize(z) [, normalize(embed(c))]))).

        truncation_psi may be a float or a tensor broadcastable to [N, num_ws, 1].
        `update_w_avg=True` moves w_avg toward this batch's mean (upstream training behaviour);
        it is off by default so that a forward never changes the module.
        """
        assert_shape(z, [None, self.z_dim], "mapping z")
        x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise InvalidInputError(f"this StyleGAN2 is conditional: pass c with shape [N, {self.c_dim}]")
            assert_shape(c, [None, self.c_dim], "mapping c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_w_avg:
            if self.w_avg_beta is None:
                raise InvalidInputError("this mapping network tracks no w_avg (w_avg_beta is None)")
            with torch.no_grad():
                self.w_avg.copy_(self.w_avg_beta * self.w_avg + (1 - self.w_avg_beta) * x.detach().mean(dim=0))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        # A tensor psi is always applied, so an exported graph can take psi as an input.
        if isinstance(truncation_psi, torch.Tensor) or truncation_psi != 1:
            if self.w_avg_beta is None:
                raise InvalidInputError("truncation needs w_avg, which this mapping network does not track")
            if truncation_cutoff is None or truncation_cutoff >= self.num_ws:
                x = self.w_avg + truncation_psi * (x - self.w_avg)
            else:
                head = x[:, :truncation_cutoff]
                x = torch.cat([self.w_avg + truncation_psi * (head - self.w_avg), x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"
