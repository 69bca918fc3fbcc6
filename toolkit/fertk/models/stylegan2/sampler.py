"""What `fertk export stylegan2` writes: sampling options and the fixed-truncation sampler graph."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fertk.core.errors import InvalidInputError
from fertk.models.stylegan2.card import stylegan2_card
from fertk.models.stylegan2.config import check_int
from fertk.models.stylegan2.network import StyleGAN2Generator


EXPORT_NOISE_MODES = ("const", "none")


@dataclass
class SamplingOptions:
    """What an exported StyleGAN2 graph asks the generator for (JSON-able; `fertk export` flags).

    noise_mode 'random' cannot be exported: a graph would either freeze one draw into a constant
    or drop the random op, so it is refused here; sample with it in PyTorch instead.
    """

    truncation: float = 1.0                  # ψ: ws = w_avg + ψ (w - w_avg); 1 = no truncation
    truncation_cutoff: int | None = None     # truncate only the first N ws; None = all
    noise_mode: str = "const"                # "const" (stored noise_const buffers) | "none"
    ws_output: bool = False                  # also output ws [batch, num_ws, w_dim]

    def __post_init__(self) -> None:
        if isinstance(self.truncation, bool) or not isinstance(self.truncation, (int, float)) \
                or not math.isfinite(self.truncation):
            raise InvalidInputError(f"truncation ψ must be a finite number, got {self.truncation!r}")
        self.truncation = float(self.truncation)
        if self.truncation_cutoff is not None:
            check_int("truncation_cutoff", self.truncation_cutoff, minimum=1)
        if self.noise_mode == "random":
            raise InvalidInputError(
                "noise mode 'random' is not exportable: an ONNX graph would freeze one draw or drop the noise",
                hint="export with noise const (the stored noise_const buffers) or none; "
                     "sample random noise in PyTorch (StyleGAN2Generator(..., noise_mode='random'))")
        if self.noise_mode not in EXPORT_NOISE_MODES:
            raise InvalidInputError(f"unknown noise mode {self.noise_mode!r}",
                                    hint="choose " + " or ".join(EXPORT_NOISE_MODES))
        self.ws_output = bool(self.ws_output)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


class StyleGAN2Sampler(nn.Module):
    """z [N, z_dim] (+ c) -> img (+ ws) at fixed truncation and noise: the graph `fertk export
    stylegan2` writes (truncation written out, noise as constant buffers or absent)."""

    task = "generator"

    def __init__(self, generator: StyleGAN2Generator, options: SamplingOptions | None = None) -> None:
        super().__init__()
        options = options or SamplingOptions()
        if options.truncation != 1 and generator.mapping.w_avg_beta is None:
            raise InvalidInputError("truncation needs w_avg, which this generator does not track",
                                    hint="export with truncation 1")
        self.generator = generator
        self.options = options
        self.config = generator.config
        base = stylegan2_card(generator)
        # I/O as card dicts (name, dtype, shape): the exporter reads its specs from the card.
        self.inputs = [dict(d) for d in base.inputs]
        self.outputs = [dict(d) for d in base.outputs]
        if options.ws_output:
            self.outputs.append({"name": "ws", "dtype": "float32",
                                 "shape": ["batch", generator.num_ws, generator.config.w_dim],
                                 "description": "per-layer latents after truncation"})

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> Any:
        """img, or (img, ws) with ws_output."""
        o = self.options
        ws = self.generator.mapping(z, c, truncation_psi=o.truncation, truncation_cutoff=o.truncation_cutoff)
        img = self.generator.synthesis(ws, noise_mode=o.noise_mode)
        return (img, ws) if o.ws_output else img

    def card(self, model_card: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The generator's card (as loaded, or a fresh one) with this graph's I/O and options."""
        card = dict(model_card or stylegan2_card(self.generator).to_dict())
        card["inputs"] = [dict(d) for d in self.inputs]
        card["outputs"] = [dict(d) for d in self.outputs]
        extra = dict(card.get("extra") or {})
        extra.update({"sampling": self.options.to_dict(), "fp16_layers": self.generator.fp16_layers.describe()})
        extra.pop("default_noise_mode", None)
        card["extra"] = extra
        return card
