"""StyleGAN2 generator (Karras et al. 2020) in the state-dict layout of NVlabs stylegan2-ada-pytorch,
so its `G_ema` weights load key for key, rewritten for export.

Layout. `StyleGAN2Generator` has two submodules, `mapping` (z [, c] -> ws [N, num_ws, w_dim]) and
`synthesis` (ws -> img [N, C, R, R]), with the upstream names: `mapping.fc{i}`, `mapping.embed`
(c_dim > 0), `mapping.w_avg`, `synthesis.b{R}.{const, resample_filter, conv0, conv1, torgb, skip}`.
The constructor options are `StyleGAN2Config`, a JSON-able mirror of the upstream kwargs
(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, synthesis_kwargs).
Architectures 'skip' (the StyleGAN2 default), 'orig' and 'resnet' are built.

Written for export (the math is the upstream one; only the order of operations differs):
* modulated convolution scales the activations by the styles, runs one shared convolution with
  the plain weight and scales the result by per-sample demodulation coefficients, instead of a
  grouped convolution with groups = batch, so the batch axis can stay dynamic;
* up-sampling (upfirdn2d with the [1,3,3,1] filter) is zero insertion, pad and a depthwise conv;
* truncation is written out as w_avg + psi * (w - w_avg);
* noise_mode 'const' uses the stored `noise_const` buffers, 'none' skips noise, and 'random'
  draws fresh normal noise on every call: 'random' is for sampling in PyTorch, not for export
  (an exported graph would freeze or drop the random op).

Precision. `synthesis_kwargs.num_fp16_res` marks the top N resolutions as half-precision layers
(every official training config stores 4, with conv_clamp 256). Whether those layers really run in
half precision is one explicit rule, `fp16_layers_choice`: only on CUDA with precision fp16/bf16,
or when forced; on CPU, in exported graphs (always fp32; an fp16 variant converts the whole
graph) and at precision fp32 they run in float32, like the official `force_fp32=True`. A loaded
or built generator starts with them in float32 ("fp32 (cpu)"); `set_fp16_layers(choice)` applies
a decision and `fp16_layers` records it for the card. When they run in half precision the
upstream overflow guards apply: weights and styles pre-normalised before a half-precision
modulated conv, demodulation coefficients computed in float32, the image accumulated in float32.
conv_clamp clamps every synthesis layer's output (+-conv_clamp * gain) and ToRGB's in either
precision, as the official code does. `set_half_precision(n, dtype)` changes N and forces those
layers on in float16 or bfloat16; `forward(..., force_fp32=True)` runs everything in float32.

Loading: `load_stylegan2(path, config=None)` reads state dicts (.pt/.pth/.ckpt/.bin/.safetensors,
config from the argument or a JSON sidecar, see `config_sidecar_candidates`) and NVlabs `.pkl`
snapshots (through the restricted reader in `fertk.models.nvlabs_pickle`, never plain pickle).

Modules, bottom-up as in the upstream `training/networks.py`: `ops` (free functions), `config`
(options and the fp16-layers rule), `layers`, `mapping`, `synthesis`, `network` (the generator),
`card`, `sampler` (the exported graph), `io` (files and the registry entry). Every public name is
re-exported here.
"""

from fertk.models.stylegan2.card import stylegan2_card
from fertk.models.stylegan2.config import (
    ARCHITECTURES, HALF_DTYPES, HALF_PRECISIONS, NOISE_MODES, SMALL_CONFIG, Fp16Layers, MappingConfig,
    StyleGAN2Config, SynthesisConfig, check_int, check_noise_mode, fp16_layers_choice,
)
from fertk.models.stylegan2.io import (
    PICKLE_SUFFIXES, build_stylegan2, config_sidecar_candidates, load_stylegan2, save_stylegan2,
)
from fertk.models.stylegan2.layers import Conv2dLayer, FullyConnectedLayer, SynthesisLayer, ToRGBLayer
from fertk.models.stylegan2.mapping import MappingNetwork
from fertk.models.stylegan2.network import StyleGAN2Generator
from fertk.models.stylegan2.ops import (
    ACTIVATIONS, assert_shape, bias_act, conv2d_resample, modulated_conv2d, normalize_2nd_moment, setup_filter,
    upfirdn2d, upsample2d,
)
from fertk.models.stylegan2.sampler import EXPORT_NOISE_MODES, SamplingOptions, StyleGAN2Sampler
from fertk.models.stylegan2.synthesis import SynthesisBlock, SynthesisNetwork

__all__ = [
    "ACTIVATIONS", "ARCHITECTURES", "EXPORT_NOISE_MODES", "HALF_DTYPES", "HALF_PRECISIONS", "NOISE_MODES",
    "PICKLE_SUFFIXES", "SMALL_CONFIG",
    "Conv2dLayer", "Fp16Layers", "FullyConnectedLayer", "MappingConfig", "MappingNetwork", "SamplingOptions",
    "StyleGAN2Config", "StyleGAN2Generator", "StyleGAN2Sampler", "SynthesisBlock", "SynthesisConfig",
    "SynthesisLayer", "SynthesisNetwork", "ToRGBLayer",
    "assert_shape", "bias_act", "build_stylegan2", "check_int", "check_noise_mode", "config_sidecar_candidates",
    "conv2d_resample", "fp16_layers_choice", "load_stylegan2", "modulated_conv2d", "normalize_2nd_moment",
    "save_stylegan2", "setup_filter", "stylegan2_card", "upfirdn2d", "upsample2d",
]
