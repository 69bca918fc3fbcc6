"""The fused generation graph: latent + intensities → every expression of one identity → crop →
gray → 64×64 uint8, as ONE nn.Module that exports to ONNX with a dynamic batch.

Two generator paths, one postprocess:

* procedural (default): latent = the model's identity vector (uniform [0, 1)); each expression is
  its FACS prototype scaled by the intensity (AU = intensity · prototype).
* GAN: latent = StyleGAN2 z (standard normal) → identity image (truncation ψ written out) →
  area-resized to the StarGAN input size → StarGAN with c = α·onehot(target) + (1 − α)·source
  (source = the neutral label when the translator has one, else zeros), α = the intensity.

Postprocess (the paper's "face cropping, gray-scale, and resizing"): a fixed ROI box (fractions
of the generator image, per-generator defaults), ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B)
of the image mapped from [-1, 1] to [0, 255], resized to `output_size` by two matmuls with a
resampling matrix (area averaging when shrinking, as cv2.INTER_AREA; bilinear with half-pixel
centres when enlarging, as cv2.INTER_LINEAR), rounded half-to-even (torch.round / ONNX Round),
clamped to [0, 255] and cast to uint8. Matmuls, slices and Round export to every ONNX runtime;
no resize op with backend-specific antialiasing is involved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fertk.core.emotions import EKMAN, NEUTRAL, parse_emotions
from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.core.specs import TensorSpec
from fertk.models.procedural import ProceduralConfig, ProceduralFaces, expression_aus
from fertk.models.registry import ModelCard, register_model
from fertk.models.stargan import load_stargan_generator
from fertk.models.stylegan2 import fp16_layers_choice, load_stylegan2

GENERATORS = ("procedural", "stylegan2")
TRANSLATORS = ("stargan",)
TRANSLATOR_PRECISIONS = ("bf16",)
BT601 = (0.299, 0.587, 0.114)
# ROI box (top, left, height, width) as fractions of the generator image.
DEFAULT_CROPS: dict[str, tuple[float, float, float, float]] = {
    # The procedural renderer frames head and shoulders; the box keeps brows to chin, cheek to cheek.
    "procedural": (0.0, 0.0, 1.0, 1.0),
    # FFHQ-aligned StyleGAN2 faces: eyes near 0.46 of the height, chin near 0.85; a square around them.
    "stylegan2": (0.28, 0.20, 0.60, 0.60),
}


@dataclass
class PipelineConfig:
    """What the fused graph generates (JSON-able)."""

    generator: str = "procedural"                  # "procedural" | "stylegan2"
    generator_weights: str | None = None           # StyleGAN2 weights (required for stylegan2)
    truncation: float = 0.7                        # StyleGAN2 truncation ψ
    translator: str | None = None                  # None (procedural: AUs) | "stargan"
    translator_weights: str | None = None          # StarGAN G weights (required for stargan)
    translator_classes: tuple[str, ...] | None = None  # StarGAN label order; None: from its card
    translator_size: int | None = None             # StarGAN input side; None: its card's (128, the paper's)
    # StarGAN's arithmetic: None = the graph's precision; "bf16" = StarGAN under bf16 autocast with
    # StyleGAN2 in fp32 (on AMX CPUs 2.6-3x faster StarGAN within the bf16 tolerance;
    # StyleGAN2 in bf16 is not: up to 19 grey levels, benchmarks/official).
    translator_precision: str | None = None
    emotions: tuple[str, ...] = EKMAN              # expressions generated per identity, in order
    crop: tuple[float, float, float, float] | None = None  # (top, left, height, width); None: default
    output_size: int = 64                          # side of the output faces
    style: str = "studio"                          # procedural rendering style
    # Procedural framing: "face" renders a face detector's box at full resolution (the paper's face crop,
    # what its CNN trains on); "portrait" renders head and shoulders (then crop with `crop`).
    framing: str = "face"
    resolution: int = 64                           # procedural render side
    color: bool = False                            # procedural: render RGB (True) or BT.601 luma directly

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise InvalidInputError(f"unknown generator {self.generator!r}", hint="choose " + " or ".join(GENERATORS))
        if self.translator is not None and self.translator not in TRANSLATORS:
            raise InvalidInputError(f"unknown translator {self.translator!r}", hint="choose " + " or ".join(TRANSLATORS))
        if self.generator == "stylegan2" and self.translator is None:
            self.translator = "stargan"
        if self.generator == "procedural" and self.translator is not None:
            raise InvalidInputError("the procedural generator makes its own expressions (AUs); it takes no translator")
        self.emotions = parse_emotions(self.emotions)
        if self.translator_classes is not None:
            self.translator_classes = parse_emotions(self.translator_classes)
        self.crop = tuple(float(v) for v in (self.crop or DEFAULT_CROPS[self.generator]))  # type: ignore[assignment]
        top, left, height, width = self.crop  # type: ignore[misc]
        if not (0 <= top and 0 <= left and height > 0 and width > 0 and top + height <= 1.0 + 1e-9
                and left + width <= 1.0 + 1e-9):
            raise InvalidInputError(f"crop box {list(self.crop)} is not inside the image",
                                    hint="give (top, left, height, width) as fractions in [0, 1]")
        if self.output_size < 4:
            raise InvalidInputError(f"output size must be at least 4, got {self.output_size}")
        if not 0.0 <= self.truncation <= 1.0:
            raise InvalidInputError(f"truncation ψ must be in [0, 1], got {self.truncation}")
        if self.translator_size is not None:
            if isinstance(self.translator_size, bool) or not isinstance(self.translator_size, int) \
                    or self.translator_size < 4 or self.translator_size % 4:
                raise InvalidInputError(
                    f"translator size must be a positive multiple of 4, got {self.translator_size!r}",
                    hint="StarGAN downsamples twice by 2; the authors trained at 256, fertk's default is 128")
            if self.generator == "procedural":
                raise InvalidInputError("--translator-size needs --generator stylegan2 (the procedural "
                                        "generator has no translator)")
        if self.translator_precision is not None:
            if self.translator_precision not in TRANSLATOR_PRECISIONS:
                raise InvalidInputError(f"unknown translator precision {self.translator_precision!r}",
                                        hint="choose " + " or ".join(TRANSLATOR_PRECISIONS)
                                             + " (or leave it out: the graph's precision)")
            if self.generator == "procedural":
                raise InvalidInputError("--translator-precision needs --generator stylegan2 (the procedural "
                                        "generator has no translator)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        for key in ("emotions", "translator_classes", "crop"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineConfig":
        """Inverse of to_dict."""
        values = dict(data)
        for key in ("emotions", "translator_classes", "crop"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


# -- plain-op image helpers (shared by the graph; tests use an independent cv2 path) ------------

def resample_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """[out, in] float32 weights: area averaging when shrinking, bilinear (half-pixel) when enlarging."""
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    if out_size <= in_size:
        scale = in_size / out_size
        for j in range(out_size):
            lo, hi = j * scale, (j + 1) * scale
            i = int(lo)
            while i < in_size and i < hi:
                overlap = min(hi, i + 1) - max(lo, i)
                if overlap > 0:
                    weights[j, i] = overlap / scale
                i += 1
    else:
        scale = in_size / out_size
        for j in range(out_size):
            x = min(max((j + 0.5) * scale - 0.5, 0.0), in_size - 1.0)
            i0 = int(x)
            i1 = min(i0 + 1, in_size - 1)
            frac = x - i0
            weights[j, i0] += 1.0 - frac
            weights[j, i1] += frac
    return weights.to(torch.float32)


def crop_pixels(size: int, crop: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) in pixels of a fractional crop box on a size×size image."""
    top, left, height, width = crop
    t, lft = int(round(top * size)), int(round(left * size))
    h, w = max(1, int(round(height * size))), max(1, int(round(width * size)))
    return t, lft, min(h, size - t), min(w, size - lft)


class Postprocess(nn.Module):
    """[N, C, S, S] in [-1, 1] → [N, out, out] uint8: fixed crop, BT.601 gray (C = 3), resample, round."""

    def __init__(self, image_size: int, crop: tuple[float, float, float, float], output_size: int,
                 channels: int = 3) -> None:
        super().__init__()
        self.image_size = image_size
        self.box = crop_pixels(image_size, crop)
        _, _, h, w = self.box
        weights = torch.tensor(BT601 if channels == 3 else (1.0,), dtype=torch.float32)
        # Fold the [-1, 1] → [0, 255] map into the gray weights (everything before rounding is linear).
        self.register_buffer("gray", weights.reshape(1, channels, 1, 1) * 127.5, persistent=False)
        self.register_buffer("rows", resample_matrix(h, output_size), persistent=False)
        self.register_buffer("cols_t", resample_matrix(w, output_size).t().contiguous(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Crop → gray → resize → uint8."""
        t, lft, h, w = self.box
        return self.reduce(images[:, :, t:t + h, lft:lft + w])

    def reduce(self, roi: torch.Tensor) -> torch.Tensor:
        """The box's pixels [N, C, h, w] → gray → resize → uint8 (for a generator that computed only the box)."""
        gray = (roi * self.gray).sum(dim=1) + 127.5          # [N, h, w] in [0, 255]
        small = torch.matmul(torch.matmul(self.rows, gray), self.cols_t)
        return torch.round(small).clamp(0.0, 255.0).to(torch.uint8)


# -- the fused module -------------------------------------------------------------------------

class GenerationPipeline(nn.Module):
    """latent float32[batch, D] + intensity float32[batch, E] → faces uint8[batch, E, S, S]."""

    def __init__(self, config: PipelineConfig, generator: nn.Module, translator: nn.Module | None,
                 cards: dict[str, Any], prototypes: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.generator = generator
        self.translator = translator
        self.emotions: tuple[str, ...] = tuple(config.emotions)
        self._cards = cards
        count = len(self.emotions)
        channels = 3
        if config.generator == "procedural":
            self.latent_kind = "uniform"
            self.latent_dim = int(generator.identity_dim)
            self.image_size = int(config.resolution)
            channels = int(generator.channels)
            if prototypes is None:
                raise InvalidInputError("the procedural path needs the emotions' AU prototypes")
            self.register_buffer("prototypes", torch.as_tensor(prototypes, dtype=torch.float32).reshape(
                count, -1).clone(), persistent=False)
        else:
            assert translator is not None
            self.latent_kind = "normal"
            self.latent_dim = int(_attr(generator, "z_dim"))
            self.image_size = int(_attr(generator, "img_resolution"))
            size = int(config.translator_size or translator.config.image_size)
            self.translator_size_source = (
                "translator_size option" if config.translator_size
                else (cards.get("translator") or {}).get("extra", {}).get("image_size_source", "translator card"))
            classes = tuple(config.translator_classes or translator.classes or ())
            if len(classes) != translator.c_dim:
                raise CheckpointError(
                    f"the StarGAN label order is unknown (c_dim {translator.c_dim})",
                    hint="give the translator's classes in order (PipelineConfig.translator_classes)")
            missing = [e for e in self.emotions if e not in classes]
            if missing:
                raise InvalidInputError(f"the translator has no label for {', '.join(missing)} "
                                        f"(its labels: {', '.join(classes)})")
            targets = torch.zeros(count, len(classes))
            for row, emotion in enumerate(self.emotions):
                targets[row, classes.index(emotion)] = 1.0
            source = torch.zeros(len(classes))
            if NEUTRAL in classes:
                source[classes.index(NEUTRAL)] = 1.0
            self.translator_size = size
            self.translator_classes = classes
            self.register_buffer("targets", targets, persistent=False)
            self.register_buffer("source", source, persistent=False)
            resize = resample_matrix(self.image_size, size)
            self.register_buffer("to_translator", resize, persistent=False)
            self.register_buffer("to_translator_t", resize.t().contiguous(), persistent=False)
        self.channels = channels
        self._fp32_translator = False          # set inside `fp32_translator()` (parity references)
        # The box is a fraction of the final expression image: the render (procedural) or StarGAN's output.
        post_size = self.image_size if config.generator == "procedural" else self.translator_size
        self.post = Postprocess(post_size, config.crop, config.output_size, channels)  # type: ignore[arg-type]
        side = config.output_size
        self.input_specs = (TensorSpec("latent", "float32", ("batch", self.latent_dim)),
                            TensorSpec("intensity", "float32", ("batch", count)))
        self.output_specs = (TensorSpec("faces", "uint8", ("batch", count, side, side)),)

    def forward(self, latent: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """All expressions of each identity, postprocessed to uint8 faces."""
        torch._assert(latent.dim() == 2, "latent must be [batch, D]")
        torch._assert(intensity.dim() == 2, "intensity must be [batch, E]")
        count = len(self.emotions)
        side = self.config.output_size
        if self.config.generator == "procedural":
            # Identity-only drawing is shared by the E expressions of each identity.
            aus = intensity.unsqueeze(2) * self.prototypes.unsqueeze(0)            # [B, E, A]
            images = self.generator.render_expressions(latent, aus)               # [B, E, C, H, W]
            images = images.reshape(-1, self.channels, self.image_size, self.image_size)
            return self.post(images).reshape(-1, count, side, side)
        return self.translate(self.identity_images(latent), intensity)

    def identity_images(self, z: torch.Tensor) -> torch.Tensor:
        """GAN path, first stage: StyleGAN2 identities [B, 3, S, S] in [-1, 1] at the translator side."""
        faces = self.generator(z, None, truncation_psi=self.config.truncation, noise_mode="const")
        faces = faces.clamp(-1.0, 1.0)
        if self.image_size != self.translator_size:
            faces = torch.matmul(torch.matmul(self.to_translator, faces), self.to_translator_t)
        return faces

    def translate(self, faces: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """GAN path, second stage: identities [B, 3, S, S] + intensities [B, E] → uint8 faces [B, E, s, s]."""
        count = len(self.emotions)
        side = self.config.output_size
        a = alpha.unsqueeze(2)
        labels = a * self.targets.unsqueeze(0) + (1.0 - a) * self.source.reshape(1, 1, -1)  # [B, E, c_dim]
        # The E expressions of an identity share its face: StarGAN's first conv sees it once (its
        # image part), the labels enter as a per-class response map (StarGANGenerator.forward_shared).
        torch._assert(labels.shape[1] == count, "one label vector per expression")
        # StarGAN computes only the crop box (its last conv is local); the postprocess takes the box.
        if self.translator_bf16:
            with torch.autocast(faces.device.type, dtype=torch.bfloat16):
                images = self.translator.forward_shared(faces, labels, box=self.post.box)
            images = images.float()
        else:
            images = self.translator.forward_shared(faces, labels, box=self.post.box)
        return self.post.reduce(images).reshape(-1, count, side, side)

    @property
    def translator_bf16(self) -> bool:
        """Whether StarGAN runs under bf16 autocast now (the config's choice, unless inside `fp32_translator`)."""
        return self.config.translator_precision == "bf16" and not self._fp32_translator

    def set_translator_precision(self, precision: str | None) -> None:
        """Run StarGAN in `precision` ("bf16" or None: the graph's), recorded in the config."""
        self.config = replace(self.config, translator_precision=precision)

    @contextmanager
    def fp32_translator(self) -> Iterator[None]:
        """StarGAN in fp32 inside the block whatever `translator_precision` says (parity references)."""
        saved, self._fp32_translator = self._fp32_translator, True
        try:
            yield
        finally:
            self._fp32_translator = saved

    def stages(self) -> tuple[nn.Module, nn.Module]:
        """The GAN graph as two modules with specs, (identities, translation), for engines that run
        them apart (StyleGAN2 exported, StarGAN in bf16 on torch); chained they equal `forward`."""
        if self.config.generator != "stylegan2":
            raise InvalidInputError("only the StyleGAN2 + StarGAN graph has stages")
        return IdentityStage(self), TranslationStage(self)

    def set_fp16_layers(self, *, device: str = "cpu", precision: str = "fp32", target: str = "torch",
                        force: bool = False) -> str | None:
        """Apply fertk.models.stylegan2.fp16_layers_choice to the StyleGAN2 generator (no-op for
        the procedural one); returns the decision as recorded in the card, or None."""
        if self.config.generator != "stylegan2":
            return None
        choice = fp16_layers_choice(self.generator.config.synthesis_kwargs.num_fp16_res, device=device,
                                    precision=precision, target=target, force=force)
        self.generator.set_fp16_layers(choice)
        generator_card = self._cards.get("generator")
        if isinstance(generator_card, dict):
            generator_card.setdefault("extra", {})["fp16_layers"] = choice.describe()
        return choice.describe()

    def value_ranges(self) -> dict[str, tuple[float, float]]:
        """Value ranges of the inputs (parity and calibration draw from them)."""
        ranges = {"intensity": (0.0, 1.0)}
        if self.latent_kind == "uniform":
            ranges["latent"] = (0.0, 1.0)
        return ranges

    def model_card(self) -> ModelCard:
        """The registry card: config, the parts' weight hashes, specs with their value ranges."""
        card = self.card()
        ranges = self.value_ranges()
        inputs = [{**s.to_dict(), **({"range": list(ranges[s.name])} if s.name in ranges else {})}
                  for s in self.input_specs]
        hashes = [c.get("weights_sha256") for c in (card.get("generator"), card.get("translator")) if c]
        return ModelCard(name="pipeline", architecture=type(self).__name__, config=card["config"],
                         weights_sha256=",".join(h for h in hashes if h) or None, source="fertk.models.pipeline",
                         inputs=inputs, outputs=card["outputs"],
                         extra={k: v for k, v in card.items() if k not in ("config", "inputs", "outputs")})

    def card(self) -> dict[str, Any]:
        """What this graph is: config, model cards (with weight hashes), specs, latent kind."""
        gan = {}
        if self.config.generator == "stylegan2":
            gan = {"translator_size": self.translator_size, "translator_size_source": self.translator_size_source,
                   "fp16_layers": self.generator.fp16_layers.describe()}
        return {
            "config": self.config.to_dict(),
            "latent_kind": self.latent_kind,
            "latent_dim": self.latent_dim,
            "emotions": list(self.emotions),
            "image_size": self.image_size,
            "crop_pixels": list(self.post.box),
            "inputs": [s.to_dict() for s in self.input_specs],
            "outputs": [s.to_dict() for s in self.output_specs],
            **gan,
            **self._cards,
        }


STAGE_IMAGE = "identity_images"


@dataclass
class StageConfig:
    """A stage's config as a dict (what `to_dict` returns)."""

    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dict(self.values)


class IdentityStage(nn.Module):
    """latent float32[batch, D] → identity_images float32[batch, 3, S, S] (GenerationPipeline.identity_images)."""

    def __init__(self, pipeline: GenerationPipeline) -> None:
        super().__init__()
        self.pipeline = pipeline
        size = pipeline.translator_size
        self.input_specs = pipeline.input_specs[:1]
        self.output_specs = (TensorSpec(STAGE_IMAGE, "float32", ("batch", 3, size, size)),)

    @property
    def config(self) -> "StageConfig":
        """What the stage computes (an export's cache key reads it): the pipeline's config, the stage
        and how StyleGAN2's half-precision layers run."""
        return StageConfig({**self.pipeline.config.to_dict(), "stage": STAGE_IMAGE,
                            "fp16_layers": self.pipeline.generator.fp16_layers.describe()})

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """The StyleGAN2 identities at the translator's input side."""
        return self.pipeline.identity_images(latent)


class TranslationStage(nn.Module):
    """identity_images + intensity → faces uint8[batch, E, s, s] (GenerationPipeline.translate)."""

    def __init__(self, pipeline: GenerationPipeline) -> None:
        super().__init__()
        self.pipeline = pipeline
        size = pipeline.translator_size
        self.input_specs = (TensorSpec(STAGE_IMAGE, "float32", ("batch", 3, size, size)), pipeline.input_specs[1])
        self.output_specs = pipeline.output_specs

    def forward(self, identity_images: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """Every expression of each identity, postprocessed."""
        return self.pipeline.translate(identity_images, intensity)


def _attr(module: nn.Module, name: str) -> Any:
    value = getattr(module, name, None)
    if value is None:
        config = getattr(module, "config", None)
        value = getattr(config, name, None)
    if value is None:
        raise CheckpointError(f"{type(module).__name__} has no {name!r}; is it a StyleGAN2 generator?")
    return value


def _require_file(path: str | None, what: str, option: str) -> Path:
    if not path:
        raise CheckpointError(f"{what} weights are required", hint=f"pass {option} PATH")
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} weights not found: {p}", hint=f"check {option}")
    return p


def build_pipeline(config: PipelineConfig | None = None) -> GenerationPipeline:
    """Load the models named by `config` (weights checked up front) and fuse them into one graph."""
    config = config or PipelineConfig()
    cards: dict[str, Any] = {}
    prototypes = None
    if config.generator == "procedural":
        generator = ProceduralFaces(ProceduralConfig(resolution=config.resolution, style=config.style,
                                                     framing=config.framing, color=config.color))
        cards["generator"] = {"name": "procedural", "architecture": type(generator).__name__,
                              "config": generator.config.to_dict(), "weights_sha256": None,
                              "source": "embedded (no weights)"}
        translator = None
        cards["translator"] = None
        prototypes = expression_aus(list(config.emotions), 1.0)
    else:
        g_path = _require_file(config.generator_weights, "StyleGAN2 generator", "--generator-weights")
        t_path = _require_file(config.translator_weights, "StarGAN translator", "--translator-weights")
        generator, g_card = load_stylegan2(g_path)
        size = {"image_size": config.translator_size} if config.translator_size else None
        translator, t_card = load_stargan_generator(t_path, size, size_source="translator_size option")
        cards["generator"] = _card_dict(g_card)
        cards["translator"] = _card_dict(t_card)
    pipeline = GenerationPipeline(config, generator, translator, cards, prototypes)
    return pipeline.eval().requires_grad_(False)


@register_model("pipeline", description="The fused generation graph: latent + intensities -> every expression "
                                       "-> cropped gray uint8 faces", task="pipeline",
                default_config=PipelineConfig().to_dict())
def build_pipeline_model(weights: Path | None = None, **config: Any) -> tuple[GenerationPipeline, ModelCard]:
    """Registry builder: the pipeline from config overrides (its parts' weights are named in the config)."""
    if weights is not None:
        raise InvalidInputError(
            "the pipeline takes its weights from --config, not --weights",
            hint='e.g. --config \'{"generator": "stylegan2", "generator_weights": "G.pkl", '
                 '"translator_weights": "200000-G.ckpt"}\'')
    pipeline = build_pipeline(PipelineConfig.from_dict(config))
    return pipeline, pipeline.model_card()


def _card_dict(card: Any) -> dict[str, Any] | None:
    if card is None:
        return None
    if callable(card):
        card = card()
    return card.to_dict() if hasattr(card, "to_dict") else dict(card)


__all__ = ["GENERATORS", "DEFAULT_CROPS", "GenerationPipeline", "PipelineConfig", "Postprocess",
           "build_pipeline", "build_pipeline_model", "crop_pixels", "resample_matrix"]
