"""What `fertk bench` measures: the models, backends, batches, precisions and time budgets of a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fertk.bench.backends import BACKENDS, get_backend
from fertk.bench.models import MODELS, get_model
from fertk.bench.timing import TimingPolicy
from fertk.core.errors import InvalidInputError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_BATCHES = (1, 8, 32, 128, 256)
PARITY_BATCH = 4            # parity runs on min(batch, PARITY_BATCH) seeded samples
PARITY_SEED = 4242
ROTATION_BYTES = 64 * 2**20  # pre-generated inputs per row: enough batches to exceed the CPU's last-level cache
# Why generator graphs get no INT8 rows unless asked (--int8-generators).
GENERATOR_INT8 = ("not offered for generator graphs: QDQ generators lose parity (procedural pipeline: 150 grey "
                  "levels), the quantised procedural pipeline does not load in onnxruntime 1.32 (Split axis "
                  "out of range), and calibrating a paper-scale GAN needs > 24 GiB; --int8-generators tries anyway")


@dataclass
class BenchConfig:
    """What to bench and how long (JSON-able)."""

    models: tuple[str, ...] = tuple(MODELS)
    backends: tuple[str, ...] = tuple(BACKENDS)
    batches: tuple[int, ...] = DEFAULT_BATCHES
    precisions: tuple[str, ...] = PRECISIONS
    threads: int | None = None          # CPU threads for torch and onnxruntime; None: torch's default
    budget_s: float = 2.0               # timed seconds per row
    warmup_s: float = 0.3
    min_iterations: int = 3
    max_call_s: float = 10.0            # rows whose single call is estimated longer are skipped (with the estimate)
    peak_budget_s: float | None = None  # seconds per GEMM peak; None: budget_s, kept within [0.2, 2]
    scale: str = "paper"                # model sizes: "paper" or "small" (golden-vector sizes)
    parity: bool = True
    calibration_samples: int = 256      # INT8 calibration + held-out check (procedural faces for the FER CNN)
    weights: dict[str, str] = field(default_factory=dict)   # model key -> weights file
    quick: bool = False
    # INT8 rows for generator/pipeline graphs. Off by default (also in --quick): ORT's QDQ
    # calibration keeps every activation of every calibration batch, which for the paper-scale GAN
    # pipeline went past 24 GiB (OOM-killed here); the quantised procedural pipeline does not load
    # in onnxruntime 1.32 ("Split ... axis 1 is not in valid range"); and QDQ generators fail
    # parity anyway (procedural pipeline: 150 grey levels).
    int8_generators: bool = False

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        self.backends = tuple(self.backends)
        self.precisions = tuple(self.precisions)
        self.batches = tuple(int(b) for b in self.batches)
        for key in self.models:
            get_model(key)
        self.backends = tuple(get_backend(name).name for name in self.backends)  # old spellings -> canonical
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise InvalidInputError(f"unknown precision {bad[0]!r}", hint="choose from " + ", ".join(PRECISIONS))
        if not self.models or not self.backends or not self.batches or not self.precisions:
            raise InvalidInputError("bench needs at least one model, backend, batch and precision")
        if any(b < 1 for b in self.batches):
            raise InvalidInputError(f"batch sizes must be >= 1, got {list(self.batches)}")
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"--threads must be >= 1, got {self.threads}")
        if self.budget_s <= 0 or self.max_call_s <= 0 or (self.peak_budget_s is not None and self.peak_budget_s <= 0):
            raise InvalidInputError("time budgets must be positive")
        if self.peak_budget_s is None:
            self.peak_budget_s = min(2.0, max(0.2, self.budget_s))

    def policy(self) -> TimingPolicy:
        """The timing policy of every row."""
        return TimingPolicy(budget_s=self.budget_s, warmup_s=self.warmup_s, warmup_iterations=1,
                            min_iterations=self.min_iterations)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        for key in ("models", "backends", "batches", "precisions"):
            data[key] = list(data[key])
        return data


def quick_config(**overrides: Any) -> BenchConfig:
    """`fertk bench --quick`: the FER CNN and the procedural pipeline on the CPU backends, short budgets."""
    base: dict[str, Any] = dict(
        models=("fer-cnn:paper", "pipeline:procedural"),
        backends=("torch-cpu", "torch-cpu-cl", "ort-cpu", "hand-loop-cpu"),
        batches=(1, 32), precisions=("fp32", "int8"), budget_s=1.0, warmup_s=0.2,
        max_call_s=5.0, scale="small", quick=True, int8_generators=False,
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    return BenchConfig(**base)
