"""`run_synth`: seed plan → engine → (filter) → encode → shard writer, pipelined, resumable and
split across torchrun ranks.

Stages. The calling thread only generates: it draws latents from the seed plan, runs the engine
and hands each batch to a bounded queue. A writer thread encodes (PNG through cv2, which releases
the GIL; a pool of `workers` threads when workers > 1), appends to the shard's temporary file and
commits finished shards. The engine never waits on disk unless the queue is full.

Resume. A shard counts as done only when its record (written last, by rename, holding every
file's size and sha256) exists; a rerun skips those and rewrites the rest from scratch, so a run
killed at any moment and rerun gives byte-identical files.

Determinism. Shards are a pure function of (options, execution, shard index): each shard is
generated in batches that start at the shard's first identity, whatever the rank or host. Options
that decide the data (CONTENT_OPTIONS) are recorded in .fertk/options.json and a rerun with
different ones is refused unless `force`. Execution choices that can move a pixel by a grey level
(EXECUTION_FLAGS: backend and ORT provider, torch.compile, device kind, and the engine's call
batch where it matters, see `_batch_matters`) are recorded there too, on the first run, and in
every shard's record. A rerun follows them where its own choice is left automatic (`--compile`
unset, `--backend`/`--device`/`--batch` unset or auto) and refuses an explicit conflicting one
like a content option; `fertk synth verify` reports shards whose recorded choices differ. Encode
workers, ranks and hosts never change a byte.
"""

from __future__ import annotations

import os
import platform
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import fertk
from fertk.data.shards import (
    FORMATS, MANIFEST_COLUMNS, META_DIR, DatasetLayout, ShardRows, encode_png, is_synth_dataset, merge_manifest,
    create_json_exclusive, open_shard_writer, options_fingerprint, read_json, read_options, remove_shard,
    remove_stale_dataset_temps, remove_stale_temps, shard_done, write_json_atomic,
)
from fertk.core.emotions import EKMAN, NEUTRAL, parse_emotions
from fertk.core.errors import BackendUnavailableError, DatasetError, FertkError, InvalidInputError, OutputExistsError
from fertk.synth.plan import SeedPlan, parse_intensity

FORMAT_VERSION = 1
# Options that decide the dataset's bytes; a rerun must match them (or pass --force).
CONTENT_OPTIONS = (
    "n", "seed", "emotions", "intensity", "format", "shard_size", "generator", "generator_weights",
    "translator_weights", "truncation", "style", "framing", "crop", "output_size", "precision", "filter",
    "filter_threshold", "filter_max_attempts", "translator_size",
)
# How each content option is spelled on the command line (for the refusal message).
OPTION_FLAGS = {
    "n": "--n", "seed": "--seed", "emotions": "--emotions/--neutral", "intensity": "--intensity",
    "format": "--format", "shard_size": "--shard-size", "generator": "--generator",
    "generator_weights": "--generator-weights", "translator_weights": "--translator-weights",
    "truncation": "--truncation", "style": "--style", "framing": "--framing", "crop": "--crop", "output_size": "--size",
    "precision": "--precision", "filter": "--filter", "filter_threshold": "--filter-threshold",
    "filter_max_attempts": "--filter-attempts", "translator_size": "--translator-size",
}
COMPILE_MIN_FACES = 30_000  # below this, torch.compile's one-off build (10-60 s on 2 cores) outweighs its gain
DEFAULT_BATCH = 128        # identities per engine call when neither the command nor the dataset says
# Byte-affecting execution choices and the flag that sets each (for the refusal message).
EXECUTION_FLAGS = {"backend": "--backend", "provider": "--backend", "compile": "--compile/--no-compile",
                   "device": "--device", "batch": "--batch"}
STALE_TEMP_AGE_S = 600.0   # under torchrun, a dataset-level temp file this old is no live merge
QUEUE_BATCHES = 6  # batches in flight between generator and writer: bounds memory, absorbs jitter


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
    # backend None is torch, device None is cpu, batch None is DEFAULT_BATCH (see _resolve_execution).
    backend: str | None = None             # torch, ort, trt or auto
    device: str | None = None              # cpu, cuda, cuda:N or auto
    precision: str = "fp32"                # "auto": fp32, or what --backend auto picks on a GPU
    batch: int | None = None               # identities per engine call
    workers: int = 1                       # encode threads
    compile: bool | None = None            # torch.compile the graph; None: when worth it (see _compile_choice)
    preview: str | None = None             # grid PNG; its path is checked before any work, written last
    force: bool = False

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

    def plan(self) -> SeedPlan:
        """The seed plan these options describe."""
        return SeedPlan(self.n, self.seed, self.emotions, self.shard_size, self.intensity)

    def pipeline_config(self) -> Any:
        """The fused graph's config."""
        from fertk.models.pipeline import PipelineConfig

        return PipelineConfig(
            generator=self.generator, generator_weights=self.generator_weights, truncation=self.truncation,
            translator="stargan" if self.generator == "stylegan2" else None,
            translator_weights=self.translator_weights, translator_size=self.translator_size,
            emotions=self.emotions, crop=self.crop,
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
class ProgressEvent:
    """A progress update: faces handed to the writer so far (this run), shards committed."""

    faces_done: int
    faces_total: int
    shards_done: int
    shards_total: int
    elapsed: float


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InvalidInputError("RANK / WORLD_SIZE / LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise InvalidInputError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return rank, world, local


def _has_cxx() -> bool:
    import shutil

    return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


def _compile_choice(options: SynthOptions, backend: str, device: str, faces_per_process: int) -> tuple[bool, str]:
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
    if device.startswith("cpu") and not _has_cxx():
        return False, "auto: no C++ compiler on PATH for torch.compile's CPU code"
    return True, f"auto: {faces_per_process} faces per process"


def _batch_matters(compiled: bool, generator: str) -> bool:
    """Whether the engine's call batch can change a byte.

    Measured on the procedural graph (CPU, batches 1, 5, 32, 96 of the same identities): eager torch
    and onnxruntime give identical bytes at every batch; compiled torch does not (batch 1 against 96:
    11 pixels differ by one grey level). The StyleGAN2 + StarGAN graph is convolutions, whose
    kernels may be chosen per batch size: not shown invariant, so counted as mattering.
    """
    return compiled or generator != "procedural"


@dataclass
class _Execution:
    """The resolved execution choices of one run."""

    backend: str
    provider: str | None       # onnxruntime's provider (cpu, cuda, tensorrt); None for other backends
    device: str                # as opened: cpu, cuda, cuda:N
    compile: bool
    batch: int                 # identities per engine call (SynthOptions.batch resolved)
    compile_reason: str
    call_batch: int            # what the engine actually sees: min(batch, shard_size)
    batch_matters: bool

    def record(self) -> dict[str, Any]:
        """The byte-affecting part, as stored in options.json and every shard record."""
        return {"backend": self.backend, "provider": self.provider, "compile": self.compile,
                "device": _device_kind(self.device), "batch": self.call_batch if self.batch_matters else None}


def _device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _conflict(root: Path, key: str, old: Any, new: Any) -> OutputExistsError:
    flag = EXECUTION_FLAGS[key]
    return OutputExistsError(
        f"{root} was generated with {key} {old!r} and this run asks for {new!r} ({flag}); shards made both "
        "ways differ in bytes",
        hint=f"leave {flag} out (a resume follows the dataset's choice), give the recorded value, "
             "or pass --force to rebuild the dataset")


def _resolve_execution(options: SynthOptions, plan: SeedPlan, recorded: dict[str, Any] | None, root: Path,
                       rank: int, world: int, local_rank: int) -> _Execution:
    """Backend, device, compile and batch for this run: the dataset's recorded choices where this run
    leaves them automatic, an error where it asks for another one (a new dataset: the defaults)."""
    from fertk.core.devices import resolve_device

    rec = recorded or {}
    want_backend = options.backend if options.backend not in (None, "auto") else None
    want_device = options.device if options.device not in (None, "auto") else None
    if rec:
        provider = rec.get("provider")
        if want_backend is not None and want_backend != rec["backend"]:
            raise _conflict(root, "backend", rec["backend"], want_backend)
        backend = rec["backend"]
        if want_device is not None and _device_kind(want_device) != rec["device"]:
            raise _conflict(root, "device", rec["device"], _device_kind(want_device))
        device = want_device or rec["device"]
        if backend == "ort" and provider is None:
            provider = "cuda" if device.startswith("cuda") else "cpu"
    else:
        backend = options.backend or "torch"
        device = want_device or ("cpu" if options.device is None else "auto")
        provider = None
        if backend == "auto" and resolve_device(device, local_rank=local_rank, world_size=world).startswith("cpu") \
                and options.precision == "fp32":
            from fertk.synth.engines import auto_cpu_backend

            # The fastest measured CPU engine per generator (benchmarks/synth, benchmarks/official).
            backend, device = auto_cpu_backend(options.generator), "cpu"
        elif backend == "auto":
            from fertk.engines import choose_backend

            backend, device, extra = choose_backend("module", None if device == "auto" else device,
                                                    options.precision)
            provider = extra.get("provider")
        if device == "auto":
            device = resolve_device("auto", local_rank=local_rank, world_size=world)
        if backend == "ort" and provider is None:
            provider = "cuda" if device.startswith("cuda") else "cpu"
    device = resolve_device(device, local_rank=local_rank, world_size=world)
    if rec:
        compiled = bool(rec.get("compile"))
        if backend == "torch" and options.compile is not None and options.compile != compiled:
            raise _conflict(root, "compile", compiled, options.compile)
        reason = f"as recorded in {META_DIR}/options.json by the dataset's first run"
    else:
        compiled, reason = _compile_choice(options, backend, device, -(-plan.faces // world))
    if compiled and device.startswith("cpu") and not _has_cxx():
        source = (f"{root} was generated with torch.compile (recorded in {META_DIR}/options.json); "
                  if rec else "--compile: ")
        raise BackendUnavailableError(
            source + "no C++ compiler (c++, g++, clang++) on PATH for torch.compile's CPU code",
            hint="install one and rerun the same command" + (
                "; eager shards would differ in bytes, so `--force --no-compile` rebuilds instead" if rec else ""))
    matters = _batch_matters(compiled, options.generator)
    batch = options.batch or DEFAULT_BATCH
    if rec.get("batch") is not None and matters:
        if options.batch is None:
            batch = int(rec["batch"])
        elif min(options.batch, plan.shard_size) != rec["batch"]:
            raise _conflict(root, "batch", rec["batch"], min(options.batch, plan.shard_size))
    return _Execution(backend=backend, provider=provider, device=device, compile=compiled, batch=batch,
                      compile_reason=reason, call_batch=min(batch, plan.shard_size), batch_matters=matters)


def _content_options(options: SynthOptions, hashes: dict[str, str | None]) -> dict[str, Any]:
    data = options.to_dict()
    content = {key: data[key] for key in CONTENT_OPTIONS}
    # Weights are identified by content, not by where they sit.
    for key in ("generator_weights", "translator_weights", "filter"):
        content[key] = hashes.get(key)
    return content


def _weights_hashes(options: SynthOptions) -> dict[str, str | None]:
    from fertk.core.io import sha256_file

    hashes: dict[str, str | None] = {}
    for key in ("generator_weights", "translator_weights", "filter"):
        value = getattr(options, key)
        if key == "filter" and value:
            from fertk.models.judges import judge_sha256

            hashes[key] = judge_sha256(value)
        elif value and Path(value).is_file():
            hashes[key] = sha256_file(value)
        elif value and Path(value).is_dir() and (Path(value) / "model.safetensors").is_file():
            hashes[key] = sha256_file(Path(value) / "model.safetensors")
        else:
            hashes[key] = None
    return hashes


def _prepare_out(options: SynthOptions, layout: DatasetLayout, record: dict[str, Any], plan: SeedPlan,
                 rank: int, world: int, local_rank: int) -> _Execution:
    """Create or reuse the output directory; refuse foreign contents, other options or conflicting
    execution choices (unless force). Records the run's execution choices and returns them."""
    root = layout.root
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"--out {root} exists and is not a directory")
    for _attempt in range(3):
        if is_synth_dataset(root):
            old = read_options(root)
            old_content = old.get("options", {})
            differing = [key for key in CONTENT_OPTIONS if old_content.get(key) != record["options"].get(key)]
            if differing and not options.force:
                key = differing[0]
                raise OutputExistsError(
                    f"{root} holds a dataset made with different options: {OPTION_FLAGS[key]} was "
                    f"{old_content.get(key)!r}, now {record['options'].get(key)!r}"
                    + (f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""),
                    hint="use the same options to resume, another --out, or --force to replace it")
            try:
                execution = _resolve_execution(options, plan, None if differing else old.get("execution"), root,
                                               rank, world, local_rank)
            except (OutputExistsError, BackendUnavailableError):
                if not options.force:
                    raise
                execution = _resolve_execution(options, plan, None, root, rank, world, local_rank)
                differing = ["execution"]
            if differing:
                _remove_old(root, old, rank, world)
            record["execution"] = execution.record()
            write_json_atomic(layout.options_path, record)
            return execution
        if root.is_dir() and not options.force and any(entry.name != META_DIR for entry in root.iterdir()):
            # (A directory holding only .fertk is one that another rank is initialising right now.)
            raise OutputExistsError(f"--out {root} is not empty and is not a fertk synth dataset",
                                    hint="choose an empty or new directory, or pass --force to write into it")
        execution = _resolve_execution(options, plan, None, root, rank, world, local_rank)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create {root}: {exc.strerror or exc}") from None
        record["execution"] = execution.record()
        # The first process to create options.json decides; the others (torchrun ranks starting
        # together, maybe on hosts that would decide otherwise) loop and follow it.
        if create_json_exclusive(layout.options_path, record):
            return execution
    raise DatasetError(f"cannot initialise {layout.options_path}: it keeps changing under this run",
                       hint="is another `fertk synth` with other options writing into the same --out?")


def _remove_old(root: Path, old: dict[str, Any], rank: int, world: int) -> None:
    """--force: each rank deletes its share of the previous dataset's shards (disjoint, no races)."""
    old_layout = DatasetLayout(root, old["options"]["format"])
    plan = old["plan"]
    n, size = int(plan["n"]), int(plan["shard_size"])
    for shard in range(rank, int(old["num_shards"]), world):
        start, stop = shard * size, min((shard + 1) * size, n)
        remove_shard(old_layout, shard, identities=range(start, stop), emotions=plan["emotions"])
    if rank == 0:
        old_layout.manifest_path.unlink(missing_ok=True)
        old_layout.card_path.unlink(missing_ok=True)


class _Writer(threading.Thread):
    """The writer stage: encode → append → commit, fed by a bounded queue."""

    def __init__(self, layout: DatasetLayout, image_shape: tuple[int, int], workers: int,
                 on_commit: Callable[[int, int], None]) -> None:
        super().__init__(name="fertk-synth-writer", daemon=True)
        self.layout = layout
        self.image_shape = image_shape
        self.queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="fertk-encode") if workers > 1 else None
        self.workers = workers
        self.on_commit = on_commit
        self.error: BaseException | None = None
        self.current = None
        self.faces_added = 0
        self.cpu_seconds = 0.0

    def put(self, item: tuple[Any, ...] | None) -> None:
        """Hand an item over; raise the writer's error instead of waiting on a dead writer."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _encode(self, images: np.ndarray) -> list[bytes]:
        if self.pool is None:
            return [encode_png(im) for im in images]
        chunks = np.array_split(np.arange(len(images)), self.workers)
        parts = self.pool.map(lambda idx: [encode_png(images[i]) for i in idx], chunks)
        return [png for part in parts for png in part]

    def run(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                kind = item[0]
                if kind == "open":
                    _, shard, faces = item
                    self.current = open_shard_writer(self.layout, shard, faces, self.image_shape)
                elif kind == "add":
                    _, faces, rows = item
                    flat = faces.reshape(-1, *self.image_shape)
                    pngs = self._encode(flat) if self.current.needs_png else None
                    self.current.add(flat, rows, pngs)
                    self.faces_added += len(flat)
                elif kind == "commit":
                    _, extra = item
                    result = self.current.commit(extra)
                    self.current = None
                    self.on_commit(result.shard, result.faces)
        except BaseException as exc:  # noqa: BLE001 - handed to the generating thread
            self.error = exc if isinstance(exc, FertkError) else DatasetError(
                f"writer failed: {type(exc).__name__}: {exc}")
            if self.current is not None:
                self.current.abort()
            # Drain so a blocked producer wakes up and sees the error.
            while True:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break
        finally:
            self.cpu_seconds = time.thread_time()  # this thread's CPU: encode + write cost (workers=1)
            if self.pool is not None:
                self.pool.shutdown(wait=True)


class _Generator:
    """Turns identity indices into faces and manifest rows (with filter regenerations)."""

    def __init__(self, plan: SeedPlan, pipeline: Any, engine: Any, scorer: Any, options: SynthOptions,
                 pad_to: int | None = None) -> None:
        self.plan = plan
        self.pad_to = pad_to
        self.engine = engine
        self.scorer = scorer
        self.options = options
        self.emotions = plan.emotions
        self.latent_dim = pipeline.latent_dim
        self.latent_kind = pipeline.latent_kind
        self.attempts = 0
        self.rejected = 0
        self.retries_per_emotion = np.zeros(len(plan.emotions), dtype=np.int64)  # retries each emotion caused

    def _run(self, ids: np.ndarray, attempt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seeds, latent, intensity = self.plan.inputs(ids, self.latent_dim, self.latent_kind, attempt)
        if self.pad_to is None or len(ids) == self.pad_to:
            return seeds, intensity, np.asarray(self.engine.run({"latent": latent, "intensity": intensity})["faces"])
        parts = []
        for first in range(0, len(ids), self.pad_to):
            lat, inten = latent[first:first + self.pad_to], intensity[first:first + self.pad_to]
            real = len(lat)
            if real < self.pad_to:  # repeat the last row: valid inputs, outputs dropped
                lat = np.concatenate([lat, np.repeat(lat[-1:], self.pad_to - real, axis=0)])
                inten = np.concatenate([inten, np.repeat(inten[-1:], self.pad_to - real, axis=0)])
            parts.append(np.asarray(self.engine.run({"latent": lat, "intensity": inten})["faces"])[:real])
        return seeds, intensity, np.concatenate(parts)

    def warmup(self) -> None:
        """One engine call at the production batch size (compiles a compiled engine)."""
        size = self.pad_to or min(self.options.batch, self.plan.n)
        latent = np.full((size, self.latent_dim), 0.5 if self.latent_kind == "uniform" else 0.0, np.float32)
        self.engine.run({"latent": latent, "intensity": np.ones((size, len(self.emotions)), np.float32)})

    def generate(self, ids: np.ndarray) -> tuple[np.ndarray, ShardRows]:
        """faces uint8 [B, E, S, S] and their rows, identities in order."""
        seeds, intensity, faces = self._run(ids, 0)
        count = len(self.emotions)
        attempt = np.zeros(len(ids), dtype=np.int64)
        score = None
        if self.scorer is not None:
            faces = faces.copy()
            score = self.scorer.score(faces, self.emotions)
            worst = _worst(score)
            self.attempts += len(ids)
            passed = worst >= self.options.filter_threshold
            for a in range(1, self.options.filter_max_attempts):
                todo = np.flatnonzero(~passed)
                if not len(todo):
                    break
                self.rejected += len(todo)
                self.retries_per_emotion += (np.nan_to_num(score[todo], nan=np.inf)
                                             < self.options.filter_threshold).sum(axis=0)
                s2, i2, f2 = self._run(ids[todo], a)
                sc2 = self.scorer.score(f2, self.emotions)
                w2 = _worst(sc2)
                self.attempts += len(todo)
                better = w2 > worst[todo]
                pick = todo[better]
                faces[pick], seeds[pick], intensity[pick] = f2[better], s2[better], i2[better]
                score[pick], worst[pick], attempt[pick] = sc2[better], w2[better], a
                passed[todo] = w2 >= self.options.filter_threshold
            else:
                self.rejected += int((~passed).sum())
        rows = ShardRows(
            identity=np.repeat(ids.astype(np.int64), count),
            seed=np.repeat(seeds, count),
            emotion=list(self.emotions) * len(ids),
            label=np.tile(np.arange(count, dtype=np.int64), len(ids)),
            intensity=intensity.reshape(-1),
            attempt=np.repeat(attempt, count),
            score=None if score is None else score.reshape(-1),
        )
        return faces, rows


def _worst(score: np.ndarray) -> np.ndarray:
    """Lowest intended-emotion probability per identity (emotions the scorer lacks are ignored)."""
    filled = np.where(np.isnan(score), np.inf, score)
    worst = filled.min(axis=1)
    return np.where(np.isinf(worst), 1.0, worst).astype(np.float32)


def _versions() -> dict[str, str | None]:
    from fertk.core.versions import package_version

    names = ("torch", "numpy", "opencv-python-headless", "onnxruntime", "webdataset")
    return {"fertk": fertk.__version__, "python": platform.python_version(),
            **{name: package_version(name) for name in names}}


def run_synth(options: SynthOptions, *, progress: Callable[[ProgressEvent], None] | None = None) -> SynthResult:
    """Generate (or resume) the dataset described by `options` into `options.out`."""
    started = time.perf_counter()
    rank, world, local_rank = dist_env()
    plan = options.plan()
    root = Path(options.out)
    layout = DatasetLayout(root, options.format)

    # Everything that can fail on bad input fails here, before any shard work.
    from fertk.models.pipeline import build_pipeline
    from fertk.core.devices import resolve_device
    from fertk.synth.engines import FaceScorer, open_generation_engine, parity_vs_fp32, plan_generation

    if options.preview and rank == 0:
        from fertk.synth.preview import check_preview_path

        check_preview_path(options.preview)
    pipeline = build_pipeline(options.pipeline_config())
    recorded = read_options(root) if is_synth_dataset(root) and not options.force else {}
    if options.precision == "auto" and recorded.get("execution"):
        # A resume: "auto" is whatever the dataset's first run chose (precision decides bytes).
        options = replace(options, precision=recorded.get("options", {}).get("precision", "fp32"))
    choice = None
    if options.backend == "auto" and not recorded.get("execution"):
        # A new dataset: --backend auto picks engine, precision and batch (on a GPU without TensorRT
        # the compiled fp16/bf16 graph replayed as CUDA graphs, batch from free memory).
        auto_device = resolve_device(options.device or "auto", local_rank=local_rank, world_size=world)
        choice = plan_generation(pipeline, backend="auto", device=auto_device, precision=options.precision,
                                 batch=options.batch, compile=options.compile, max_batch=min(plan.shard_size, plan.n))
        if choice.options:  # the GPU path: a torch engine with these options
            options = replace(options, backend=choice.backend, device=auto_device, precision=choice.precision,
                              batch=choice.batch, compile=bool(choice.options.get("compile")))
        else:
            options = replace(options, precision=choice.precision)
    if options.precision == "auto":
        options = replace(options, precision="fp32")
    hashes = _weights_hashes(options)
    record = {
        "format_version": FORMAT_VERSION,
        "options": _content_options(options, hashes),
        "plan": plan.to_dict(),
        "num_shards": plan.num_shards,
        "pipeline": {"latent_kind": pipeline.latent_kind, "latent_dim": pipeline.latent_dim},
    }
    from fertk.models.judges import load_judge

    for judge in dict.fromkeys(j for j in (options.filter, options.judge) if j):
        load_judge(judge)  # a bad judge fails before the output directory is touched
    execution = _prepare_out(options, layout, record, plan, rank, world, local_rank)
    options = replace(options, backend=execution.backend, device=execution.device, batch=execution.batch,
                      compile=execution.compile)
    device, compiled, compile_reason = execution.device, execution.compile, execution.compile_reason
    # StyleGAN2 layers marked fp16 run in half precision only where that pays (torch on CUDA).
    fp16_layers = pipeline.set_fp16_layers(device=device, precision=options.precision,
                                           target="torch" if options.backend == "torch" else "export")
    mine = plan.shards_for_rank(rank, world)
    fingerprint = options_fingerprint(record)
    # A record made under other options or other execution choices (a --force race under torchrun)
    # never counts as done.
    todo = [s for s in mine if not shard_done(layout, s.index, fingerprint, record["execution"])]
    # Temporary files of a killed run: this rank's shards' are its own (no other live rank writes
    # them); the dataset-level ones only where their process is gone (and, under torchrun, where
    # they are too old to be another host's merge in progress).
    for shard in mine:
        remove_stale_temps(layout, shard.index)
    if rank == 0:
        remove_stale_dataset_temps(layout, min_age_s=0.0 if world == 1 else STALE_TEMP_AGE_S)
    engine_opts: dict[str, Any] = {"compile": True} if compiled else {}
    if execution.provider is not None:
        engine_opts["provider"] = execution.provider
    if choice is not None and choice.options:  # auto on a GPU: compiled and/or CUDA graphs, fixed shapes
        engine_opts.update(choice.options)
        compile_reason = choice.reason
    static_shapes = compiled or bool(engine_opts.get("cuda_graphs"))
    engine = open_generation_engine(pipeline, backend=options.backend, device=device, precision=options.precision,
                                    **engine_opts)
    scorer = None
    try:
        if options.filter:
            scorer = FaceScorer(options.filter, backend=options.backend, device=device, precision=options.precision)
        # A compiled engine gets fixed-size calls (a shard's last batch is padded): one compiled shape,
        # no recompilation per odd batch size.
        pad_to = execution.call_batch if static_shapes else None
        generator = _Generator(plan, pipeline, engine, scorer, options, pad_to)
        for shard in todo:  # leftovers of a killed run are discarded: the shard is redone whole
            remove_shard(layout, shard.index, identities=range(shard.start, shard.stop), emotions=plan.emotions)
        count = len(plan.emotions)
        faces_total = sum(s.identities for s in todo) * count
        side = options.output_size
        committed = {"shards": 0, "faces": 0}
        last_report = [0.0]

        def report(force_now: bool = False) -> None:
            now = time.perf_counter()
            if progress is not None and (force_now or now - last_report[0] > 0.2):
                last_report[0] = now
                progress(ProgressEvent(writer.faces_added, faces_total, committed["shards"], len(todo),
                                       now - started))

        def on_commit(shard: int, faces: int) -> None:
            committed["shards"] += 1
            committed["faces"] += faces
            report(True)

        warmup_seconds = 0.0
        if static_shapes and todo:  # build the compiled graph before the clock starts (reported apart)
            tic = time.perf_counter()
            generator.warmup()
            warmup_seconds = round(time.perf_counter() - tic, 3)
        parity = None
        if choice is not None and choice.options and todo:  # auto's GPU engine against eager fp32, recorded in the card
            parity = parity_vs_fp32(pipeline, engine, device, pad_to or options.batch)
        writer = _Writer(layout, (side, side), options.workers, on_commit)
        writer.start()
        engine_start, engine_items = engine.stats.seconds, engine.stats.items
        gen_start = time.perf_counter()
        try:
            for shard in todo:
                shard_start = time.perf_counter()
                attempts0, rejected0 = generator.attempts, generator.rejected
                retries0 = generator.retries_per_emotion.copy()
                writer.put(("open", shard.index, shard.identities * count))
                for first in range(shard.start, shard.stop, options.batch):
                    ids = np.arange(first, min(first + options.batch, shard.stop), dtype=np.int64)
                    faces, rows = generator.generate(ids)
                    writer.put(("add", faces, rows))
                    report()
                extra = {"seconds": round(time.perf_counter() - shard_start, 4), "rank": rank,
                         "fingerprint": fingerprint, "execution": record["execution"],
                         "identities": [shard.start, shard.stop]}
                if scorer is not None:
                    extra["filter"] = {"attempts": generator.attempts - attempts0,
                                       "rejected": generator.rejected - rejected0,
                                       "retries_per_emotion": dict(zip(plan.emotions, (
                                           generator.retries_per_emotion - retries0).tolist()))}
                writer.put(("commit", extra))
            writer.put(None)
            while writer.is_alive():
                writer.join(timeout=0.2)
            if writer.error is not None:
                raise writer.error
        except BaseException:
            if writer.is_alive():
                try:
                    writer.queue.put_nowait(None)
                except queue.Full:
                    pass
            raise
        gen_seconds = time.perf_counter() - gen_start
        report(True)
        engine_seconds = engine.stats.seconds - engine_start
        engine_faces = (engine.stats.items - engine_items) * len(plan.emotions)  # filter retries included
        engine_desc = {**engine.describe(), "compile_reason": compile_reason, "execution": record["execution"],
                       "fp16_layers": fp16_layers}
        if choice is not None:
            engine_desc["choice"] = choice.to_dict()
        if parity is not None:
            engine_desc["parity_vs_fp32"] = parity
        filter_stats = None
        if scorer is not None:
            filter_stats = {"threshold": options.filter_threshold, "attempts": generator.attempts,
                            "rejected": generator.rejected,
                            "retries_per_emotion": dict(zip(plan.emotions, generator.retries_per_emotion.tolist())),
                            "rejection_rate": generator.rejected / generator.attempts if generator.attempts else 0.0}
        complete = merge_manifest(layout, plan.num_shards, fingerprint)
        result = SynthResult(
            out=str(root), format=options.format, identities=plan.n, faces=plan.faces,
            emotions=list(plan.emotions), shards_total=plan.num_shards, shards_written=committed["shards"],
            shards_skipped=len(mine) - len(todo), faces_written=committed["faces"],
            seconds=round(time.perf_counter() - started, 3),
            faces_per_s=round(committed["faces"] / gen_seconds, 1) if gen_seconds > 0 and committed["faces"] else 0.0,
            engine_faces_per_s=round(engine_faces / engine_seconds, 1) if engine_seconds > 0 else 0.0,
            complete=complete, rank=rank, world_size=world,
            manifest=str(layout.manifest_path) if complete else None,
            filter=filter_stats, engine=engine_desc, warmup_seconds=warmup_seconds,
            writer_cpu_us_per_face=round(1e6 * writer.cpu_seconds / committed["faces"], 1) if committed["faces"] else 0.0,
        )
        if complete and (committed["shards"] or not layout.card_path.is_file()):
            card = _dataset_card(options, layout, plan, pipeline, engine_desc, scorer, result, hashes)
            write_json_atomic(layout.card_path, card)
        if complete:
            result.card = str(layout.card_path)
        if complete and options.judge and rank == 0:
            from fertk.synth.report import synth_report

            judged = synth_report(root, options.judge, backend=options.backend, device=device)
            card = read_json(layout.card_path)
            card["judge"] = result.judge = judged.summary()
            write_json_atomic(layout.card_path, card)
        if options.preview and rank == 0:
            # Last, so that a failure here (the path was checked, but disks fill and folders go)
            # never costs the manifest or the card: it is reported in the result instead.
            from fertk.synth.preview import write_preview

            try:
                result.preview = str(write_preview(options.preview, generator, plan))
            except FertkError as exc:
                result.preview_error = str(exc)
        return result
    finally:
        engine.close()
        if scorer is not None:
            scorer.close()


def _dataset_card(options: SynthOptions, layout: DatasetLayout, plan: SeedPlan, pipeline: Any,
                  engine_desc: dict[str, Any], scorer: Any, result: SynthResult,
                  hashes: dict[str, str | None]) -> dict[str, Any]:
    """dataset_card.json: what made the data, with which engine, how much, how fast."""
    from fertk.core.versions import cpu_model

    shard_seconds = 0.0
    attempts = rejected = 0
    retries = {e: 0 for e in plan.emotions}
    for s in range(plan.num_shards):
        rec = read_json(layout.record_path(s))
        shard_seconds += float(rec.get("seconds", 0.0))
        attempts += rec.get("filter", {}).get("attempts", 0)
        rejected += rec.get("filter", {}).get("rejected", 0)
        for e, n in rec.get("filter", {}).get("retries_per_emotion", {}).items():
            retries[e] = retries.get(e, 0) + int(n)
    pipe_card = pipeline.card()
    return {
        "fertk_dataset": "synth",
        "format_version": FORMAT_VERSION,
        "format": options.format,
        "layout": {"wds": "shards/shard-NNNNNN.tar (<key>.png/.cls/.json)",
                   "npy": "shards/shard-NNNNNN.images.npy + .labels.npy",
                   "folder": "images/<emotion>/id<identity>.png"}[options.format],
        "manifest": {"file": layout.manifest_path.name, "format": "csv", "columns": list(MANIFEST_COLUMNS)},
        "classes": list(plan.emotions),
        "counts": {"identities": plan.n, "faces": plan.faces, "per_emotion": {e: plan.n for e in plan.emotions},
                   "shards": plan.num_shards, "shard_size_identities": plan.shard_size},
        "seed_plan": plan.to_dict(),
        "generator": {"name": options.generator, "weights": options.generator_weights,
                      "sha256": hashes.get("generator_weights"), "card": pipe_card.get("generator"),
                      "truncation": options.truncation if options.generator == "stylegan2" else None,
                      "style": options.style if options.generator == "procedural" else None,
                      "framing": options.framing if options.generator == "procedural" else None},
        "translator": None if options.generator == "procedural" else {
            "name": "stargan", "weights": options.translator_weights,
            "sha256": hashes.get("translator_weights"), "card": pipe_card.get("translator")},
        "pipeline": {k: v for k, v in pipe_card.items() if k not in ("generator", "translator")},
        "engine": engine_desc,
        "precision": options.precision,
        "filter": None if not options.filter else {
            "model": options.filter, "sha256": hashes.get("filter"), "threshold": options.filter_threshold,
            "max_attempts": options.filter_max_attempts, "attempts": attempts, "rejected": rejected,
            "rejection_rate": rejected / attempts if attempts else 0.0,
            "retries_per_emotion": retries,
            "retries_note": "identity regenerations in which each emotion's judge probability was below the threshold",
            "scorer": scorer.describe() if scorer is not None else None},
        "options": options.to_dict(),
        "versions": _versions(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
        "timing": {"shard_seconds_total": round(shard_seconds, 3),
                   "last_run": {"seconds": result.seconds, "warmup_seconds": result.warmup_seconds,
                                "faces_written": result.faces_written,
                                "faces_per_s": result.faces_per_s, "engine_faces_per_s": result.engine_faces_per_s,
                                "world_size": result.world_size}},
    }
