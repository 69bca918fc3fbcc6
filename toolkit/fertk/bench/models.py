"""What `fertk bench` measures: each bench model built from the registry (or the fused pipeline),
its inputs, calibration data, and for generators the plain PyTorch loop a user would write.

Two scales: "paper" (the sizes the paper's system runs: StyleGAN2 at 256 px with channel_base
16384 / max 512, StarGAN 64/7/6 at 128 px, Table-1 CNN at 64 px) and "small" (the golden-vector
sizes, for quick runs and tests). Weights are random unless given: speed does not depend on
them, and parity is measured against the same weights in PyTorch. INT8 calibration for the FER
CNN uses procedural faces (real-looking inputs) rather than noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.errors import InvalidInputError
from fertk.core.specs import argmax_outputs
from fertk.data.records import FaceArrays
from fertk.engines.compare import make_inputs
from fertk.export import module_source, resolve_model
from fertk.models.pipeline import PipelineConfig, build_pipeline
from fertk.models.procedural import expression_aus
from fertk.models.stargan import StarGANConfig, StarGANGenerator, save_stargan
from fertk.models.stylegan2 import StyleGAN2Config, StyleGAN2Generator, save_stylegan2

SCALES = ("paper", "small")

# Architecture configs per scale (random init unless weights are given).
STYLEGAN2_CONFIGS: dict[str, dict[str, Any]] = {
    "paper": {"z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": 256, "img_channels": 3,
              "mapping_kwargs": {"num_layers": 8},
              "synthesis_kwargs": {"channel_base": 16384, "channel_max": 512, "num_fp16_res": 0,
                                   "conv_clamp": None, "architecture": "skip"}},
    "small": {"z_dim": 64, "c_dim": 0, "w_dim": 64, "img_resolution": 32, "img_channels": 3,
              "mapping_kwargs": {"num_layers": 2},
              "synthesis_kwargs": {"channel_base": 512, "channel_max": 64, "num_fp16_res": 0,
                                   "conv_clamp": None, "architecture": "skip"}},
}
STARGAN_CONFIGS: dict[str, dict[str, Any]] = {
    "paper": {"conv_dim": 64, "c_dim": 7, "repeat_num": 6, "image_size": 128},
    "small": {"conv_dim": 8, "c_dim": 7, "repeat_num": 1, "image_size": 32},
}


@dataclass
class BenchSubject:
    """A built model ready to bench: the module, its I/O, ranges, and what one batch row makes."""

    key: str
    module: Any                               # nn.Module (the PyTorch fp32 reference)
    input_specs: tuple[Any, ...]
    output_specs: tuple[Any, ...]
    task: str                                 # classifier | generator | translator | pipeline
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    unit: str = "image"
    items_per_sample: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    model_card: dict[str, Any] = field(default_factory=dict)
    hand_loop: "HandLoop | None" = None       # the plain PyTorch loop on the same weights, if any

    @property
    def argmax_outputs(self) -> list[str]:
        """Outputs compared by argmax agreement (classifier logits)."""
        return argmax_outputs(self.task, self.output_specs)

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        """Seeded inputs drawn from the specs and ranges (fertk.engines.compare.make_inputs)."""
        return make_inputs(self.input_specs, batch, seed, self.ranges)

    def export_source(self) -> Any:
        """The fertk.export ModelSource describing this module."""
        return module_source(self.module, name=self.key.replace(":", "-"), input_specs=self.input_specs,
                             output_specs=self.output_specs, task=self.task, ranges=self.ranges,
                             model_card=self.model_card)


@dataclass(frozen=True)
class BenchModel:
    """A model `fertk bench` knows: how to build it at a scale, and whether it is a synth run."""

    key: str
    description: str
    build: Callable[["BuildContext"], BenchSubject]
    synth_generator: str | None = None        # set for the end-to-end `synth` rows


@dataclass
class BuildContext:
    """Where and at which scale bench models are built."""

    workdir: Path
    scale: str = "paper"
    weights: Mapping[str, str] = field(default_factory=dict)   # model key -> weights file

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise InvalidInputError(f"unknown bench scale {self.scale!r}", hint="choose paper or small")
        self.workdir = Path(self.workdir)


# -- builders -------------------------------------------------------------------------------------

def _from_registry(key: str, name: str, ctx: BuildContext, config: dict[str, Any]) -> BenchSubject:
    weights = ctx.weights.get(key)
    # Given weights carry their own architecture; the FER CNN's variant is checked against them.
    source = resolve_model(name, weights=weights, config={} if weights and name != "fer-cnn" else config)
    return BenchSubject(key=key, module=source.module, input_specs=tuple(source.input_specs),
                        output_specs=tuple(source.output_specs), task=source.task, ranges=dict(source.ranges),
                        config=dict(source.config), model_card=dict(source.model_card))


def _fer(variant: str) -> Callable[[BuildContext], BenchSubject]:
    def build(ctx: BuildContext) -> BenchSubject:
        return _from_registry(f"fer-cnn:{variant}", "fer-cnn", ctx, {"variant": variant})
    return build


def _stargan(ctx: BuildContext) -> BenchSubject:
    return _from_registry("stargan", "stargan", ctx, dict(STARGAN_CONFIGS[ctx.scale]))


def _stylegan2(ctx: BuildContext) -> BenchSubject:
    # Engines call forward(z) positionally: truncation 1 and constant noise, as exported.
    return _from_registry("stylegan2", "stylegan2", ctx, dict(STYLEGAN2_CONFIGS[ctx.scale]))


def _procedural(ctx: BuildContext) -> BenchSubject:
    return _from_registry("procedural", "procedural", ctx, {})


def gan_weight_files(ctx: BuildContext) -> tuple[Path, Path]:
    """StyleGAN2 and StarGAN weight files for the GAN pipeline: given ones, else random ones saved once."""
    import torch

    given_g, given_t = ctx.weights.get("stylegan2"), ctx.weights.get("stargan")
    folder = ctx.workdir / f"gan-weights-{ctx.scale}"
    g_path = Path(given_g) if given_g else folder / "stylegan2.safetensors"
    t_path = Path(given_t) if given_t else folder / "stargan.safetensors"
    if not given_g and not g_path.is_file():
        torch.manual_seed(0)
        save_stylegan2(StyleGAN2Generator(StyleGAN2Config.from_kwargs(STYLEGAN2_CONFIGS[ctx.scale]), seed=0), g_path)
    if not given_t and not t_path.is_file():
        torch.manual_seed(1)
        save_stargan(StarGANGenerator.from_config(StarGANConfig(**STARGAN_CONFIGS[ctx.scale])).eval(), t_path)
    return g_path, t_path


def _pipeline_config(generator: str, ctx: BuildContext) -> dict[str, Any]:
    if generator == "procedural":
        return {"generator": "procedural"}
    g_path, t_path = gan_weight_files(ctx)
    return {"generator": "stylegan2", "generator_weights": str(g_path), "translator": "stargan",
            "translator_weights": str(t_path)}


def _pipeline(generator: str) -> Callable[[BuildContext], BenchSubject]:
    def build(ctx: BuildContext) -> BenchSubject:
        source = resolve_model("pipeline", config=_pipeline_config(generator, ctx))
        pipeline = source.module
        count = len(pipeline.emotions)
        subject = BenchSubject(key=f"pipeline:{generator}", module=pipeline, input_specs=tuple(source.input_specs),
                               output_specs=tuple(source.output_specs), task="pipeline",
                               ranges=dict(source.ranges), unit="face", items_per_sample=count,
                               config=dict(source.config), model_card=dict(source.model_card))
        subject.hand_loop = HandLoop(pipeline, ctx.workdir / "hand-loop" / generator)
        return subject
    return build


def _synth(generator: str) -> Callable[[BuildContext], BenchSubject]:
    def build(ctx: BuildContext) -> BenchSubject:
        subject = _pipeline(generator)(ctx)
        subject.key = f"synth:{generator}"
        subject.hand_loop = None
        subject.config = {"pipeline": subject.config, **_pipeline_config(generator, ctx)}
        return subject
    return build


MODELS: dict[str, BenchModel] = {m.key: m for m in (
    BenchModel("fer-cnn:paper", "Table-1 CNN, 'same' padding (8.64 M params)", _fer("paper")),
    BenchModel("fer-cnn:authors-code", "Table-1 CNN, 'valid' padding as in the authors' code", _fer("authors-code")),
    BenchModel("stargan", "StarGAN generator (translator)", _stargan),
    BenchModel("stylegan2", "StyleGAN2 generator z -> image", _stylegan2),
    BenchModel("procedural", "procedural FACS face renderer (identity, AUs) -> image", _procedural),
    BenchModel("pipeline:procedural", "fused graph: procedural identity x 6 expressions -> 64x64 gray faces",
               _pipeline("procedural")),
    BenchModel("pipeline:gan", "fused graph: StyleGAN2 -> StarGAN x 6 -> crop, gray, resize",
               _pipeline("stylegan2")),
    BenchModel("synth:procedural", "`fertk synth` end to end (procedural): generate, encode, write shards",
               _synth("procedural"), synth_generator="procedural"),
    BenchModel("synth:gan", "`fertk synth` end to end (StyleGAN2 + StarGAN)", _synth("stylegan2"),
               synth_generator="stylegan2"),
)}


def get_model(key: str) -> BenchModel:
    """A bench model by key, or InvalidInputError listing the known ones."""
    if key not in MODELS:
        raise InvalidInputError(f"unknown bench model {key!r}", hint="choose from " + ", ".join(MODELS))
    return MODELS[key]


# -- calibration ----------------------------------------------------------------------------------

def procedural_faces(count: int, seed: int = 0, size: int = 64) -> Any:
    """`count` labelled gray faces (FaceArrays) from the procedural pipeline: realistic FER inputs."""
    import torch

    pipeline = build_pipeline(PipelineConfig(generator="procedural", output_size=size))
    emotions = tuple(pipeline.emotions)
    identities = -(-count // len(emotions))
    gen = torch.Generator().manual_seed(seed)
    latent = torch.rand(identities, pipeline.latent_dim, generator=gen)
    intensity = 0.5 + 0.5 * torch.rand(identities, len(emotions), generator=gen)
    with torch.inference_mode():
        faces = pipeline(latent, intensity).numpy()               # [M, E, S, S] uint8
    images = faces.reshape(-1, size, size)[:count]
    labels = np.tile(np.arange(len(emotions)), identities)[:count].astype(np.int64)
    subjects = np.repeat(np.arange(identities), len(emotions))[:count].astype(str)
    return FaceArrays(images, labels, emotions, subjects, np.full(count, "procedural"))


def calibration_data(subject: BenchSubject, samples: int = 256) -> Any:
    """INT8 calibration data: procedural faces for a 64-px gray classifier, else seeded spec inputs."""
    spec = subject.input_specs[0]
    if subject.task == "classifier" and len(subject.input_specs) == 1 and list(spec.shape[1:2]) == [1]:
        size = int(spec.shape[-1])
        return procedural_faces(samples, seed=1234, size=size)
    # Generators: seeded inputs from the specs; at most 64 samples, since each costs a full
    # forward pass (a 256-px StyleGAN2 image is ~0.5 s on two CPU cores).
    batch = 16
    return [subject.make_inputs(batch, 10_000 + i) for i in range(max(1, min(samples, 64) // batch))]


# -- the plain PyTorch loop a user would write ------------------------------------------------------

class HandLoop:
    """What a user writes without fertk, on the same weights: generate, translate six times (one call
    per expression), then per face: to uint8, crop, gray, resize (OpenCV), save a PNG.

    For the procedural generator the loop renders each expression with its own call (the identity
    work is redone six times) and post-processes per face the same way. Items are faces.
    """

    def __init__(self, pipeline: Any, out_dir: Path) -> None:
        self.pipeline = pipeline
        self.out_dir = Path(out_dir)
        self.emotions = tuple(pipeline.emotions)
        self.config = pipeline.config
        self._counter = 0

    def prepare(self, device: str) -> None:
        """Copies of the networks on `device` (fp32, eval), as a user's own script would hold; the output folder."""
        import copy

        import torch

        self.device = torch.device(device)
        # Copies: moving the pipeline's own modules would move the parity reference with them.
        self.generator = copy.deepcopy(self.pipeline.generator).to(self.device).eval()
        translator = self.pipeline.translator
        self.translator = copy.deepcopy(translator).to(self.device).eval() if translator is not None else None
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Generate, translate, post-process and save the faces of one batch; return faces written."""
        import cv2
        import torch
        import torch.nn.functional as F

        latent = torch.as_tensor(inputs["latent"], device=self.device)
        written = 0
        with torch.no_grad():
            if self.translator is None:
                images_per_emotion = []
                for emotion in self.emotions:
                    au = expression_aus([emotion], 1.0).to(self.device).expand(latent.shape[0], -1)
                    images_per_emotion.append(self.generator(latent, au))
            else:
                faces = self.generator(latent, None, truncation_psi=self.config.truncation, noise_mode="const")
                size = self.pipeline.translator_size
                if faces.shape[-1] != size:
                    faces = F.interpolate(faces, size=(size, size), mode="area")
                classes = list(self.pipeline.translator_classes)
                images_per_emotion = []
                for emotion in self.emotions:
                    label = torch.zeros(latent.shape[0], len(classes), device=self.device)
                    label[:, classes.index(emotion)] = 1.0
                    images_per_emotion.append(self.translator(faces, label))
        top, left, height, width = self.config.crop
        for emotion, images in zip(self.emotions, images_per_emotion):
            array = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
            for image in array:
                side = image.shape[-1]
                if image.shape[0] == 3:
                    gray = cv2.cvtColor(np.ascontiguousarray(image.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
                else:
                    gray = image[0]
                t, lft = int(round(top * side)), int(round(left * side))
                crop = gray[t:t + int(round(height * side)), lft:lft + int(round(width * side))]
                face = cv2.resize(crop, (self.config.output_size, self.config.output_size),
                                  interpolation=cv2.INTER_AREA)
                self._counter += 1
                cv2.imwrite(str(self.out_dir / f"{self._counter % 4096:04d}_{emotion}.png"), face)
                written += 1
        return written
