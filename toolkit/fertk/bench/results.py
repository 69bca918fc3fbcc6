"""Bench results: one row per (model, backend, device, precision, batch), the run's machine facts,
measured peaks and FLOP counts; JSON round trip and `compare` against an earlier run."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fertk.core.errors import InvalidInputError
from fertk.core.io import atomic_write_text
from fertk.engines import canonical_backend_name

SCHEMA = "fertk-bench/1"
STATUSES = ("ok", "skipped", "error")


@dataclass
class BenchRow:
    """One measured (or skipped) configuration."""

    model: str
    backend: str                        # bench backend name, e.g. "torch-cpu-cl", "ort-cpu", "hand-loop-cpu"
    device: str                         # "cpu" | "cuda"
    precision: str                      # "fp32" | "fp16" | "bf16" | "int8" (several, comma-joined, when skipped)
    batch: int | None                   # samples per call (identities for pipelines); None on a skipped backend
    status: str = "ok"                  # "ok" | "skipped" | "error"
    reason: str = ""                    # one line: why skipped / what failed / a caveat
    unit: str = "image"                 # what an item is ("image", "face")
    items_per_sample: int = 1           # items one batch row makes (6 faces per identity for pipelines)
    threads: int | None = None          # CPU threads (torch and onnxruntime intra-op alike)
    items_per_s: float | None = None    # throughput: items per batch / median latency
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    open_s: float | None = None         # opening the engine (deep copy, session, TensorRT build on open)
    first_call_s: float | None = None   # the first call alone (torch.compile compiles here)
    gflop_per_sample: float | None = None
    gflops: float | None = None         # achieved: dense GFLOP per sample × batch / median latency
    peak_gflops: float | None = None    # measured GEMM peak for this device and precision
    pct_of_peak: float | None = None
    host_rss_peak_mib: float | None = None
    host_rss_delta_mib: float | None = None
    gpu_torch_peak_mib: float | None = None
    gpu_used_delta_mib: float | None = None
    parity_max_abs: float | None = None
    parity_argmax_agreement: float | None = None
    parity_passed: bool | None = None
    speedup_vs_eager: float | None = None      # over torch eager fp32, same model, device and batch
    speedup_vs_hand_loop: float | None = None  # generators: over the plain PyTorch loop, same device
    timing: dict[str, Any] = field(default_factory=dict)   # full TimingStats
    memory: dict[str, Any] = field(default_factory=dict)   # full MemoryUse
    parity: dict[str, Any] = field(default_factory=dict)   # full ParityReport (per output)
    engine: dict[str, Any] = field(default_factory=dict)   # engine.describe(): providers really in use, ...
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise InvalidInputError(f"bench row status must be one of {STATUSES}, got {self.status!r}")

    @property
    def key(self) -> tuple[str, str, str, str, int | None]:
        """Identity of a row across runs."""
        return (self.model, self.backend, self.device, self.precision, self.batch)

    @property
    def ok(self) -> bool:
        """Measured successfully."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (non-finite floats become None)."""
        return _finite(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BenchRow":
        """Inverse of to_dict; unknown keys go to `extra`; old backend spellings (ort-trt) are mapped
        onto today's, so `--compare` matches rows of earlier runs."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        if isinstance(known.get("backend"), str):
            known["backend"] = canonical_backend_name(known["backend"])
        extra = dict(known.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in names})
        return cls(**known, extra=extra)


@dataclass
class BenchResults:
    """A whole bench run."""

    rows: list[BenchRow] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    peaks: list[dict[str, Any]] = field(default_factory=list)
    bandwidth: list[dict[str, Any]] = field(default_factory=list)
    flops: dict[str, dict[str, Any]] = field(default_factory=dict)   # per model: FlopCount.to_dict()
    builds: list[dict[str, Any]] = field(default_factory=list)       # exports, quantisation: model, step, seconds
    created: str = ""
    seconds: float = 0.0
    schema: str = SCHEMA
    # The answer to "which backend should I run?": per model and device, see `recommend`.
    recommendations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return _finite({
            "schema": self.schema, "created": self.created, "seconds": self.seconds, "config": self.config,
            "machine": self.machine, "peaks": self.peaks, "bandwidth": self.bandwidth, "flops": self.flops,
            "builds": self.builds, "rows": [r.to_dict() for r in self.rows],
            "recommendations": self.recommendations,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BenchResults":
        """Inverse of to_dict; refuses other schemas."""
        schema = data.get("schema")
        if schema != SCHEMA:
            raise InvalidInputError(f"not a fertk bench result (schema {schema!r}, expected {SCHEMA!r})")
        return cls(
            rows=[BenchRow.from_dict(r) for r in data.get("rows", [])], config=dict(data.get("config", {})),
            machine=dict(data.get("machine", {})), peaks=list(data.get("peaks", [])),
            bandwidth=list(data.get("bandwidth", [])), flops=dict(data.get("flops", {})),
            builds=list(data.get("builds", [])), created=str(data.get("created", "")),
            seconds=float(data.get("seconds", 0.0)), schema=schema,
            recommendations=list(data.get("recommendations", [])),
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n", fsync=False)

    def ok_rows(self) -> list[BenchRow]:
        """Rows that were measured."""
        return [r for r in self.rows if r.ok]

    def find(self, model: str, backend: str, precision: str = "fp32", batch: int | None = None,
             device: str | None = None) -> BenchRow | None:
        """The measured row with these keys, or None."""
        for row in self.rows:
            if (row.ok and row.model == model and row.backend == backend and row.precision == precision
                    and row.batch == batch and (device is None or row.device == device)):
                return row
        return None


def load_results(path: str | Path) -> BenchResults:
    """Read a results JSON written by `fertk bench --out` (or `--json`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"bench results {path} do not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read bench results {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} is not a fertk bench result (top level is not an object)")
    return BenchResults.from_dict(data)


def _finite(value: Any) -> Any:
    """Replace NaN/inf by None so the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# -- comparison ---------------------------------------------------------------------------------

@dataclass
class Comparison:
    """One row matched across two runs: new / old ratios (> 1 = faster now for throughput)."""

    model: str
    backend: str
    device: str
    precision: str
    batch: int | None
    old_items_per_s: float | None
    new_items_per_s: float | None
    throughput_ratio: float | None     # new / old items per second
    old_p50_ms: float | None
    new_p50_ms: float | None
    latency_ratio: float | None        # new / old median latency (< 1 = faster now)
    status: str                        # "both" | "new" (only in the current run) | "gone" (only in the old)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return _finite(asdict(self))


def _ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return new / old


def compare_results(current: BenchResults, previous: BenchResults) -> list[Comparison]:
    """Match measured rows of two runs by (model, backend, device, precision, batch)."""
    old = {r.key: r for r in previous.ok_rows()}
    new = {r.key: r for r in current.ok_rows()}
    out = []
    for key in list(new) + [k for k in old if k not in new]:
        a, b = old.get(key), new.get(key)
        status = "both" if a and b else ("new" if b else "gone")
        out.append(Comparison(
            model=key[0], backend=key[1], device=key[2], precision=key[3], batch=key[4],
            old_items_per_s=a.items_per_s if a else None, new_items_per_s=b.items_per_s if b else None,
            throughput_ratio=_ratio(b.items_per_s if b else None, a.items_per_s if a else None),
            old_p50_ms=a.p50_ms if a else None, new_p50_ms=b.p50_ms if b else None,
            latency_ratio=_ratio(b.p50_ms if b else None, a.p50_ms if a else None), status=status,
        ))
    return out


def fill_speedups(rows: Sequence[BenchRow], *, eager_backends: Mapping[str, str],
                  hand_loop_backends: Mapping[str, str], hand_loop_models: Mapping[str, str]) -> None:
    """Set speedup_vs_eager / speedup_vs_hand_loop on measured rows, in place.

    `eager_backends` maps a device to its torch-eager backend name; the baseline is that backend at
    fp32 for the same model, device and batch. `hand_loop_backends` maps a device to the hand-loop
    backend name, and `hand_loop_models` maps a model to the model whose hand-loop rows are its
    baseline (the same weights); hand-loop throughput is per item, so the best hand-loop batch is used.
    """
    measured = [r for r in rows if r.ok and r.items_per_s]
    index = {r.key: r for r in measured}
    for row in measured:
        eager = eager_backends.get(row.device)
        base = index.get((row.model, eager, row.device, "fp32", row.batch)) if eager else None
        row.speedup_vs_eager = row.items_per_s / base.items_per_s if base and base.items_per_s else None
        loop_backend = hand_loop_backends.get(row.device)
        loop_model = hand_loop_models.get(row.model)
        if loop_backend and loop_model and row.backend != loop_backend:
            loops = [r.items_per_s for r in measured if r.model == loop_model and r.backend == loop_backend
                     and r.device == row.device]
            row.speedup_vs_hand_loop = row.items_per_s / max(loops) if loops else None


# -- the recommendation -------------------------------------------------------------------------

@dataclass
class Recommendation:
    """The backend + precision to run a model with on one device, and what it measured."""

    model: str
    device: str
    backend: str
    precision: str
    batch: int | None                   # the batch the speed-up is measured at (the largest both ran)
    items_per_s: float | None
    unit: str
    eager_items_per_s: float | None     # torch eager fp32 at that batch
    speedup_vs_eager: float | None
    note: str = ""                      # caveats: int8 accuracy, parity not checked, eager is best
    excluded: list[str] = field(default_factory=list)   # faster rows left out, with why

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return _finite(asdict(self))

    def line(self) -> str:
        """One line for the table output."""
        speed = (f"{self.speedup_vs_eager:.2f}x torch eager fp32" if self.speedup_vs_eager is not None
                 else "no torch eager fp32 row at the same batch to compare with")
        rate = f"{self.items_per_s:,.1f} {self.unit}s/s" if self.items_per_s else "-"
        text = f"{self.model} on {self.device}: {self.backend} {self.precision} — {rate} at batch {self.batch}, {speed}"
        return text + (f" ({self.note})" if self.note else "")


def recommend(rows: Sequence[BenchRow], *, eager_backends: Mapping[str, str],
              baseline_backends: Iterable[str] = ()) -> list[Recommendation]:
    """Per (model, device): the measured backend + precision with the largest speed-up over torch
    eager fp32, compared at the largest batch both ran (`speedup_vs_eager` must be filled first).

    A (backend, precision) whose parity check failed on any batch is not recommended (it is listed
    in `excluded` when it was faster); `baseline_backends` (the plain PyTorch loop) are references,
    not engines, and never recommended. Rows without a parity check (--no-parity) count, with a note.
    """
    baselines = set(baseline_backends)
    out: list[Recommendation] = []
    groups: dict[tuple[str, str], dict[tuple[str, str], list[BenchRow]]] = {}
    for row in rows:
        if row.ok and row.items_per_s and row.batch is not None and row.backend not in baselines:
            groups.setdefault((row.model, row.device), {}).setdefault((row.backend, row.precision), []).append(row)
    for (model, device), candidates in groups.items():
        eager = eager_backends.get(device)
        scored = []
        for (backend, precision), group in candidates.items():
            compared = [r for r in group if r.speedup_vs_eager is not None]
            pick = max(compared or group, key=lambda r: r.batch or 0)
            failed = [r.batch for r in group if r.parity_passed is False]
            score = pick.speedup_vs_eager if pick.speedup_vs_eager is not None else 0.0
            scored.append((score, pick.items_per_s or 0.0, backend, precision, pick, failed))
        scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
        chosen = next((t for t in scored if not t[5]), None)
        if chosen is None:
            continue
        excluded = [f"{b} {p}: {s:.2f}x but parity failed at batch {', '.join(map(str, f))}"
                    for s, _, b, p, _, f in scored if f and s > chosen[0]]
        _, _, backend, precision, pick, _ = chosen
        base = next((r for r in candidates.get((eager or "", "fp32"), []) if r.batch == pick.batch), None)
        notes = []
        if backend == eager and precision == "fp32":
            notes.append("torch eager fp32 was the fastest row that passed parity")
        if pick.parity_passed is None:
            notes.append("parity not checked")
        accuracy = pick.extra.get("int8_accuracy") or {}
        if precision == "int8" and accuracy.get("int8_accuracy") is not None:
            notes.append(f"INT8 accuracy {accuracy['fp32_accuracy']:.1%} -> {accuracy['int8_accuracy']:.1%} on "
                         f"{accuracy.get('samples', '?')} held-out faces; check it with your trained --weights")
        out.append(Recommendation(model, device, backend, precision, pick.batch, pick.items_per_s, pick.unit,
                                  base.items_per_s if base else None, pick.speedup_vs_eager, "; ".join(notes),
                                  excluded))
    return out
