"""Execution choices of a synth run: backend, ORT provider, device, torch.compile, CUDA graphs and the
engine's call batch — the ones that can move a pixel by a grey level.

They are recorded in .fertk/options.json on a dataset's first run and in every shard's record. A
rerun follows them where its own choice is left automatic (`--compile` unset, `--backend` /
`--device` / `--batch` unset or auto) and refuses an explicit conflicting one like a content
option. `--backend auto` on a new dataset decides here too (`auto_choice`), and precision "auto"
becomes concrete in one place (`synth.engines.concrete_precision`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fertk.core.devices import cpu_has_amx, resolve_device
from fertk.core.errors import BackendUnavailableError, OutputExistsError
from fertk.data.shards import META_DIR
from fertk.engines import choose_backend
from fertk.engines.choice import DEFAULT_BATCH, GenerationChoice
from fertk.synth.engines import auto_cpu_backend, concrete_precision, plan_generation
from fertk.synth.options import SynthOptions
from fertk.synth.plan import SeedPlan

COMPILE_MIN_FACES = 30_000  # below this, torch.compile's one-off build (10-60 s on 2 cores) outweighs its gain
# Byte-affecting execution choices and the flag that sets each (for the refusal message).
EXECUTION_FLAGS = {"backend": "--backend", "provider": "--backend", "compile": "--compile/--no-compile",
                   "device": "--device", "batch": "--batch"}


@dataclass(frozen=True)
class Placement:
    """Where this process sits in the run: torchrun's rank, world size and local rank (0, 1, 0 alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0


@dataclass
class Execution:
    """The resolved execution choices of one run."""

    backend: str
    provider: str | None       # onnxruntime's provider (cpu, cuda, tensorrt); None for other backends
    device: str                # as opened: cpu, cuda, cuda:N
    compile: bool
    batch: int                 # identities per engine call (SynthOptions.batch resolved)
    compile_reason: str
    call_batch: int            # what the engine actually sees: min(batch, shard_size)
    batch_matters: bool
    cuda_graphs: bool = False  # replayed as CUDA graphs (--backend auto on a GPU without TensorRT)

    def record(self) -> dict[str, Any]:
        """The byte-affecting part, as stored in options.json and every shard record."""
        rec = {"backend": self.backend, "provider": self.provider, "compile": self.compile,
               "device": device_kind(self.device), "batch": self.call_batch if self.batch_matters else None}
        if self.cuda_graphs:  # only where used, so CPU datasets keep the bytes they always had
            rec["cuda_graphs"] = True
        return rec

    def engine_options(self) -> dict[str, Any]:
        """Keyword options for `open_generation_engine` that carry these choices."""
        opts: dict[str, Any] = {"compile": True} if self.compile else {}
        if self.provider is not None:
            opts["provider"] = self.provider
        if self.cuda_graphs:
            opts["cuda_graphs"] = True
        return opts

    @property
    def static_shapes(self) -> bool:
        """A compiled or captured engine wants one call shape (a shard's last batch is padded)."""
        return self.compile or self.cuda_graphs


def device_kind(device: str) -> str:
    """cpu or cuda (the part of a device that can change bytes)."""
    return "cuda" if device.startswith("cuda") else "cpu"


def has_cxx() -> bool:
    """Whether a C++ compiler is on PATH (torch.compile's CPU code needs one)."""
    return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


def compile_choice(options: SynthOptions, backend: str, device: str, faces_per_process: int) -> tuple[bool, str]:
    """What a new dataset's torch backend does about torch.compile, and why (recorded in the card).

    torch.compile fuses the procedural renderer's long elementwise chain (measured ~10x faster on
    2 CPU cores) but costs a one-off build and needs a C++ compiler on PATH for CPU code. The
    automatic rule looks at the whole dataset (its faces per process), never at what is left of
    it, so every rank and every rerun of a dataset agree.
    """
    if backend != "torch":
        return False, f"backend {backend} (compile is a torch option)"
    if options.compile is not None:
        return options.compile, "--compile" if options.compile else "--no-compile"
    if faces_per_process < COMPILE_MIN_FACES:
        return False, f"auto: {faces_per_process} faces per process < {COMPILE_MIN_FACES}, the build would not pay off"
    if device.startswith("cpu") and not has_cxx():
        return False, "auto: no C++ compiler on PATH for torch.compile's CPU code"
    return True, f"auto: {faces_per_process} faces per process"


def batch_matters(compiled: bool, generator: str) -> bool:
    """Whether the engine's call batch can change a byte.

    Measured on the procedural graph (CPU, batches 1, 5, 32, 96 of the same identities): eager torch
    and onnxruntime give identical bytes at every batch; compiled torch does not (batch 1 against 96:
    11 pixels differ by one grey level). The StyleGAN2 + StarGAN graph is convolutions, whose
    kernels may be chosen per batch size: not shown invariant, so counted as mattering.
    """
    return compiled or generator != "procedural"


def conflict(root: Path, key: str, old: Any, new: Any) -> OutputExistsError:
    """The refusal of an explicit execution choice that differs from the dataset's recorded one."""
    flag = EXECUTION_FLAGS[key]
    return OutputExistsError(
        f"{root} was generated with {key} {old!r} and this run asks for {new!r} ({flag}); shards made both "
        "ways differ in bytes",
        hint=f"leave {flag} out (a resume follows the dataset's choice), give the recorded value, "
             "or pass --force to rebuild the dataset")


def auto_choice(options: SynthOptions, pipeline: Any, plan: SeedPlan, recorded: dict[str, Any],
                where: Placement) -> tuple[SynthOptions, GenerationChoice | None]:
    """Options with precision (and, for `--backend auto` on a new dataset, engine and batch) made
    concrete, and the GenerationChoice behind them (None when nothing was chosen automatically)."""
    if options.precision == "auto" and recorded.get("execution"):
        # A resume: "auto" is whatever the dataset's first run chose (precision decides bytes).
        before = recorded.get("options", {})
        options = replace(options, precision=before.get("precision", "fp32"),
                          translator_precision=options.translator_precision or before.get("translator_precision"))
        if options.translator_precision != pipeline.config.translator_precision:
            pipeline.set_translator_precision(options.translator_precision)
    choice = None
    if options.backend == "auto" and not recorded.get("execution"):
        # A new dataset: --backend auto picks engine, precision and batch (on a GPU without TensorRT
        # the compiled fp16/bf16 graph replayed as CUDA graphs, batch from free memory).
        auto_device = resolve_device(options.device or "auto", local_rank=where.local_rank, world_size=where.world)
        pays = bf16_translator_pays(options, auto_device)
        choice = plan_generation(pipeline, backend="auto", device=auto_device, precision=options.precision,
                                 batch=options.batch, compile=options.compile, max_batch=min(plan.shard_size, plan.n))
        if choice.options:  # the GPU path: a torch engine with these options
            options = replace(options, backend=choice.backend, device=auto_device, precision=choice.precision,
                              batch=choice.batch, compile=bool(choice.options.get("compile")))
        else:
            options = replace(options, precision=choice.precision)
        if pays:
            # The fastest measured CPU path: StyleGAN2 fp32 on onnxruntime, StarGAN in bf16 on the AMX
            # units (benchmarks/official: 2.3x the official code; the card records parity vs fp32).
            options = replace(options, translator_precision="bf16")
            pipeline.set_translator_precision("bf16")
            choice = replace(choice, reason=choice.reason + "; StarGAN in bf16 (this CPU has AMX), StyleGAN2 fp32")
    return replace(options, precision=concrete_precision(options.precision)), choice


def bf16_translator_pays(options: SynthOptions, device: str) -> bool:
    """Whether `--backend auto` runs StarGAN in bf16: a GAN graph on a CPU with AMX, precision and
    translator precision left to it."""
    return (options.generator == "stylegan2" and device_kind(device) == "cpu" and options.precision == "auto"
            and options.translator_precision is None and cpu_has_amx())


def _recorded_backend(options: SynthOptions, rec: dict[str, Any], root: Path) -> tuple[str, str, str | None]:
    """(backend, device, provider) of a resume: the record's, unless this run asks for another."""
    want_backend = options.backend if options.backend not in (None, "auto") else None
    want_device = options.device if options.device not in (None, "auto") else None
    provider = rec.get("provider")
    if want_backend is not None and want_backend != rec["backend"]:
        raise conflict(root, "backend", rec["backend"], want_backend)
    backend = rec["backend"]
    if want_device is not None and device_kind(want_device) != rec["device"]:
        raise conflict(root, "device", rec["device"], device_kind(want_device))
    device = want_device or rec["device"]
    if backend == "ort" and provider is None:
        provider = "cuda" if device.startswith("cuda") else "cpu"
    return backend, device, provider


def _new_backend(options: SynthOptions, where: Placement) -> tuple[str, str, str | None]:
    """(backend, device, provider) of a new dataset: what was asked, the defaults, or auto's pick."""
    want_device = options.device if options.device not in (None, "auto") else None
    backend = options.backend or "torch"
    device = want_device or ("cpu" if options.device is None else "auto")
    provider = None
    if backend == "auto" and resolve_device(device, local_rank=where.local_rank, world_size=where.world) \
            .startswith("cpu") and options.precision == "fp32":
        # The fastest measured CPU engine per generator (benchmarks/synth, benchmarks/official).
        backend, device = auto_cpu_backend(options.generator), "cpu"
    elif backend == "auto":
        backend, device, extra = choose_backend("module", None if device == "auto" else device, options.precision)
        provider = extra.get("provider")
    if device == "auto":
        device = resolve_device("auto", local_rank=where.local_rank, world_size=where.world)
    if backend == "ort" and provider is None:
        provider = "cuda" if device.startswith("cuda") else "cpu"
    return backend, device, provider


def _resolve_compile(options: SynthOptions, plan: SeedPlan, rec: dict[str, Any], root: Path, backend: str,
                     device: str, world: int) -> tuple[bool, str]:
    """(compiled, why): the record's choice on a resume, the automatic rule on a new dataset."""
    if rec:
        compiled = bool(rec.get("compile"))
        if backend == "torch" and options.compile is not None and options.compile != compiled:
            raise conflict(root, "compile", compiled, options.compile)
        reason = f"as recorded in {META_DIR}/options.json by the dataset's first run"
    else:
        compiled, reason = compile_choice(options, backend, device, -(-plan.faces // world))
    if compiled and device.startswith("cpu") and not has_cxx():
        source = (f"{root} was generated with torch.compile (recorded in {META_DIR}/options.json); "
                  if rec else "--compile: ")
        raise BackendUnavailableError(
            source + "no C++ compiler (c++, g++, clang++) on PATH for torch.compile's CPU code",
            hint="install one and rerun the same command" + (
                "; eager shards would differ in bytes, so `--force --no-compile` rebuilds instead" if rec else ""))
    return compiled, reason


def _resolve_batch(options: SynthOptions, plan: SeedPlan, rec: dict[str, Any], root: Path, matters: bool) -> int:
    """Identities per engine call: asked, recorded (where it changes bytes) or the default."""
    batch = options.batch or DEFAULT_BATCH
    if rec.get("batch") is not None and matters:
        if options.batch is None:
            batch = int(rec["batch"])
        elif min(options.batch, plan.shard_size) != rec["batch"]:
            raise conflict(root, "batch", rec["batch"], min(options.batch, plan.shard_size))
    return batch


def resolve_execution(options: SynthOptions, plan: SeedPlan, recorded: dict[str, Any] | None, root: Path,
                      where: Placement, *, cuda_graphs: bool = False) -> Execution:
    """Backend, device, compile and batch for this run: the dataset's recorded choices where this run
    leaves them automatic, an error where it asks for another one (a new dataset: the defaults;
    `cuda_graphs` what `auto_choice` picked)."""
    rec = recorded or {}
    backend, device, provider = _recorded_backend(options, rec, root) if rec else _new_backend(options, where)
    device = resolve_device(device, local_rank=where.local_rank, world_size=where.world)
    compiled, reason = _resolve_compile(options, plan, rec, root, backend, device, where.world)
    matters = batch_matters(compiled, options.generator)
    batch = _resolve_batch(options, plan, rec, root, matters)
    graphs = bool(rec.get("cuda_graphs")) if rec else cuda_graphs
    return Execution(backend=backend, provider=provider, device=device, compile=compiled, batch=batch,
                     compile_reason=reason, call_batch=min(batch, plan.shard_size), batch_matters=matters,
                     cuda_graphs=graphs)
