"""What `--backend auto` runs the fused generation graph on (issue #14), as a pure decision.

    choose_generation(device="cuda", tensorrt=False, precisions=("fp32", "fp16", "bf16"),
                      precision="auto", batch=None, free_bytes=..., bytes_per_identity=...)

- On a CUDA device without TensorRT: the torch backend, compiled (inductor) and replayed as CUDA
  graphs (`compile=True, cuda_graphs=True`: torch.compile's "reduce-overhead" mode), in fp16 (bf16
  when the model offers no fp16; fp32 when it computes in float32 only, like the procedural
  renderer), at a batch sized from the free GPU memory. Parts of the graph pinned to fp32 run under
  autocast (TorchEngine decides that from the module). This is the fastest GPU path that needs no
  TensorRT; its parity against fp32 is measured by synth and recorded in the dataset card.
- With TensorRT on a CUDA device, and on CPU: `open_engine`'s own `auto` order, unchanged (trt
  first on GPUs, onnxruntime before torch on CPU), in fp32 unless a precision is asked for.

An explicit precision or batch always wins; `compile=False` (synth's --no-compile) keeps the CUDA
graphs and drops the compile. The GPU path itself runs only where a GPU is: the decision and the
batch estimate are what the CPU tests check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fertk.core.errors import InvalidInputError

DEFAULT_BATCH = 128          # identities per call when nothing better is known (synth's old default)
REDUCED_ORDER = ("fp16", "bf16")   # fp16 first: same tensor-core rate as bf16, 3 more mantissa bits
MEMORY_FRACTION = 0.5        # of the free memory: CUDA graphs and the compiled graph keep their own pools
MAX_AUTO_BATCH = 1024        # identities per call (6,144 faces): beyond this calls stop getting faster
BATCH_MULTIPLE = 8           # tensor-core friendly batch sizes


@dataclass(frozen=True)
class GenerationChoice:
    """The engine `auto` opens for the generation graph, and why."""

    backend: str                          # for open_engine: "torch", or "auto" (open_engine's own order)
    precision: str
    batch: int
    options: dict[str, Any] = field(default_factory=dict)   # backend options (compile, cuda_graphs)
    reason: str = ""
    batch_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def auto_batch(free_bytes: int, bytes_per_identity: int, *, fraction: float = MEMORY_FRACTION,
               cap: int = MAX_AUTO_BATCH, multiple: int = BATCH_MULTIPLE) -> int:
    """Identities per call that fit `fraction` of the free memory, rounded down to a multiple of
    `multiple` (when at least that many fit), within [1, cap]."""
    if bytes_per_identity <= 0:
        raise InvalidInputError(f"bytes per identity must be positive, got {bytes_per_identity}")
    if free_bytes < 0 or not 0.0 < fraction <= 1.0 or cap < 1 or multiple < 1:
        raise InvalidInputError("auto_batch needs free_bytes >= 0, 0 < fraction <= 1, cap >= 1, multiple >= 1")
    fits = int(free_bytes * fraction // bytes_per_identity)
    if fits >= multiple:
        fits -= fits % multiple
    return max(1, min(cap, fits))


def choose_generation(*, device: str, tensorrt: bool, precisions: Sequence[str], precision: str = "auto",
                      batch: int | None = None, free_bytes: int | None = None,
                      bytes_per_identity: int | None = None, compile: bool | None = None,
                      max_batch: int | None = None) -> GenerationChoice:
    """The generation engine `--backend auto` opens (see the module docstring).

    `precisions`: what the model computes in (("fp32",) for a float32-only model); `precision`:
    "auto" or an explicit one; `batch`: None lets the choice size it; `max_batch`: an upper bound
    from the job (identities to make, shard size).
    """
    if precision != "auto" and precision not in ("fp32", "fp16", "bf16", "int8"):
        raise InvalidInputError(f"unknown precision {precision!r}", hint="choose auto, fp32, fp16 or bf16")
    if batch is not None and batch < 1:
        raise InvalidInputError(f"batch must be at least 1, got {batch}")
    limit = max(1, max_batch) if max_batch is not None else None
    on_gpu = device.startswith("cuda")
    if not on_gpu or tensorrt:
        chosen = "fp32" if precision == "auto" else precision
        size = batch if batch is not None else DEFAULT_BATCH
        size = min(size, limit) if limit is not None else size
        where = "TensorRT is installed" if on_gpu else f"device {device}"
        return GenerationChoice("auto", chosen, size, {},
                                reason=f"{where}: open_engine's auto order, {chosen}",
                                batch_reason="given" if batch is not None else f"default {DEFAULT_BATCH}")
    if precision == "auto":
        chosen = next((p for p in REDUCED_ORDER if p in precisions), "fp32")
        why = (f"{chosen}, the first reduced precision the model offers" if chosen != "fp32"
               else "fp32: the model computes in float32 only")
    else:
        chosen, why = precision, f"{precision} as asked"
    options: dict[str, Any] = {"cuda_graphs": True}
    if compile is not False:
        options["compile"] = True
    how = "torch.compile + CUDA graphs" if options.get("compile") else "CUDA graphs (eager, --no-compile)"
    if batch is not None:
        size, batch_reason = batch, "given"
    elif free_bytes is not None and bytes_per_identity:
        size = auto_batch(free_bytes, bytes_per_identity)
        batch_reason = (f"{MEMORY_FRACTION:.0%} of {free_bytes / 2**30:.1f} GiB free at "
                        f"{bytes_per_identity / 2**20:.1f} MiB per identity (cap {MAX_AUTO_BATCH})")
    else:
        size, batch_reason = DEFAULT_BATCH, f"default {DEFAULT_BATCH} (free memory unknown)"
    if limit is not None and size > limit:
        size, batch_reason = limit, f"{batch_reason}; capped at {limit} by the job"
    return GenerationChoice("torch", chosen, size, options,
                            reason=f"CUDA without TensorRT: torch {how}, {why}", batch_reason=batch_reason)


__all__ = ["BATCH_MULTIPLE", "DEFAULT_BATCH", "GenerationChoice", "MAX_AUTO_BATCH", "MEMORY_FRACTION",
           "REDUCED_ORDER", "auto_batch", "choose_generation"]
