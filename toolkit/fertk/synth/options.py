"""What `fertk synth` takes and returns: `SynthOptions` (the one options object of the entry
point; the CLI builds it in one place) and `SynthResult` (the run summary)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fertk.core.emotions import EKMAN, NEUTRAL, parse_emotions
from fertk.core.errors import InvalidInputError
from fertk.data.shards import FORMATS
from fertk.models.pipeline import PipelineConfig
from fertk.synth.plan import SeedPlan, parse_intensity

FORMAT_VERSION = 1
# Options that decide the dataset's bytes; a rerun must match them (or pass --force).
CONTENT_OPTIONS = (
    "n", "seed", "emotions", "intensity", "format", "shard_size", "generator", "generator_weights",
    "translator_weights", "truncation", "style", "framing", "crop", "output_size", "precision", "filter",
    "filter_threshold", "filter_max_attempts", "translator_size", "translator_precision",
)
# How each content option is spelled on the command line (for the refusal message).
OPTION_FLAGS = {
    "n": "--n", "seed": "--seed", "emotions": "--emotions/--neutral", "intensity": "--intensity",
    "format": "--format", "shard_size": "--shard-size", "generator": "--generator",
    "generator_weights": "--generator-weights", "translator_weights": "--translator-weights",
    "truncation": "--truncation", "style": "--style", "framing": "--framing", "crop": "--crop", "output_size": "--size",
    "precision": "--precision", "filter": "--filter", "filter_threshold": "--filter-threshold",
    "filter_max_attempts": "--filter-attempts", "translator_size": "--translator-size",
    "translator_precision": "--translator-precision",
}
DISTRIBUTORS = ("local", "torchrun", "ray")


@dataclass
class SynthOptions:
    """Everything `fertk synth` takes (JSON-able)."""

    n: int
    out: str
    seed: int = 0
    emotions: tuple[str, ...] = EKMAN
    neutral: bool = False
    intensity: tuple[float, float] = (1.0, 1.0)
    format: str = "wds"
    shard_size: int = 1000                 # identities per shard (× emotions faces)
    generator: str = "procedural"
    generator_weights: str | None = None
    translator_weights: str | None = None
    translator_size: int | None = None     # StarGAN input side; None: the translator card's (128)
    translator_precision: str | None = None  # "bf16": StarGAN in bf16, StyleGAN2 in fp32; None: --precision
    truncation: float = 0.7
    style: str = "studio"
    framing: str = "face"                  # procedural: "face" (the paper's crop) or "portrait"
    crop: tuple[float, float, float, float] | None = None
    output_size: int = 64
    filter: str | None = None              # judge scoring each face (fertk.models.judges.load_judge)
    filter_threshold: float = 0.5
    filter_max_attempts: int = 8
    judge: str | None = None               # judge for the card's `judge` block + DIR/report (synth.report)
    # Execution. None (and "auto") follow what the dataset recorded on resume; on a new dataset
    # backend None is torch, device None is cpu, batch None is DEFAULT_BATCH (synth.execution).
    backend: str | None = None             # torch, ort, trt or auto
    device: str | None = None              # cpu, cuda, cuda:N or auto
    precision: str = "fp32"                # "auto": fp32, or what --backend auto picks on a GPU
    batch: int | None = None               # identities per engine call
    workers: int = 1                       # encode threads
    compile: bool | None = None            # torch.compile the graph; None: when worth it (see synth.execution.compile_choice)
    preview: str | None = None             # grid PNG; its path is checked before any work, written last
    force: bool = False
    # Where shards run (fertk.synth.distribute); none of these changes a byte.
    distributor: str = "local"             # local (torchrun ranks when launched by torchrun), torchrun or ray
    ray_address: str | None = None         # ray: "auto", HOST:PORT, or None (a local Ray started for this run)
    max_shard_retries: int = 3             # ray: attempts after a shard's first failure

    def __post_init__(self) -> None:
        emotions = parse_emotions(self.emotions)
        if self.neutral and NEUTRAL not in emotions:
            emotions = emotions + (NEUTRAL,)
        self.emotions = emotions
        self.neutral = NEUTRAL in emotions
        self.intensity = parse_intensity(self.intensity if isinstance(self.intensity, (str, float, int))
                                         else tuple(self.intensity))
        if self.format not in FORMATS:
            raise InvalidInputError(f"unknown --format {self.format!r}", hint="choose one of " + ", ".join(FORMATS))
        if self.batch is not None and self.batch < 1:
            raise InvalidInputError(f"--batch must be at least 1, got {self.batch}")
        if self.workers < 1:
            raise InvalidInputError(f"--workers must be at least 1, got {self.workers}")
        if not 0.0 <= self.filter_threshold <= 1.0:
            raise InvalidInputError(f"--filter-threshold must be in [0, 1], got {self.filter_threshold}")
        if self.filter_max_attempts < 1:
            raise InvalidInputError("the filter needs at least one attempt per identity")
        if self.crop is not None:
            self.crop = tuple(float(v) for v in self.crop)  # type: ignore[assignment]
        if self.generator == "procedural" and (self.generator_weights or self.translator_weights):
            raise InvalidInputError("--generator-weights/--translator-weights need --generator stylegan2")
        if self.distributor not in DISTRIBUTORS:
            raise InvalidInputError(f"unknown --distributor {self.distributor!r}",
                                    hint="choose one of " + ", ".join(DISTRIBUTORS))
        if self.max_shard_retries < 0:
            raise InvalidInputError(f"--max-shard-retries must be at least 0, got {self.max_shard_retries}")

    def plan(self) -> SeedPlan:
        """The seed plan these options describe."""
        return SeedPlan(self.n, self.seed, self.emotions, self.shard_size, self.intensity)

    def pipeline_config(self) -> PipelineConfig:
        """The fused graph's config."""
        return PipelineConfig(
            generator=self.generator, generator_weights=self.generator_weights, truncation=self.truncation,
            translator="stargan" if self.generator == "stylegan2" else None,
            translator_weights=self.translator_weights, translator_size=self.translator_size,
            translator_precision=self.translator_precision, emotions=self.emotions, crop=self.crop,
            output_size=self.output_size, style=self.style, framing=self.framing,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        for key in ("emotions", "intensity", "crop"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data


@dataclass
class SynthResult:
    """Summary of one `run_synth` call (this rank's work, plus dataset-level state)."""

    out: str
    format: str
    identities: int
    faces: int
    emotions: list[str]
    shards_total: int
    shards_written: int
    shards_skipped: int
    faces_written: int
    seconds: float
    faces_per_s: float
    engine_faces_per_s: float
    complete: bool
    rank: int = 0
    world_size: int = 1
    manifest: str | None = None
    card: str | None = None
    preview: str | None = None
    preview_error: str | None = None       # the preview failed after the dataset was written (see run_synth)
    filter: dict[str, Any] | None = None
    judge: dict[str, Any] | None = None    # the judge report's summary (--judge)
    engine: dict[str, Any] = field(default_factory=dict)
    warmup_seconds: float = 0.0            # engine build (torch.compile) before generation, not in faces_per_s
    writer_cpu_us_per_face: float = 0.0    # CPU time of the writer thread per face (encode + write)
    distributor: str = "local"
    shards_retried: int = 0                # ray: shards that failed at least once and were run again
    failures: list[dict[str, Any]] = field(default_factory=list)  # ray: shards given up on, with their errors

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)
