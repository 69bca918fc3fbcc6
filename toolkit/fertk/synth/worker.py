"""The shard worker: one generation engine (and filter judge), opened once, turns shards into
committed files through a writer thread — the same code under every distributor.

Shards are a pure function of (options, execution, shard index): each shard is generated in
batches that start at the shard's first identity, whatever process, rank or host runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.data.shards import DatasetLayout, ShardRows, options_fingerprint, remove_shard, remove_stale_temps
from fertk.models.pipeline import build_pipeline
from fertk.synth.engines import FaceScorer, open_generation_engine
from fertk.synth.execution import Execution
from fertk.synth.options import SynthOptions
from fertk.synth.plan import SeedPlan, Shard
from fertk.synth.writer import AddFaces, CommitShard, OpenShard, Writer

# Called with (faces handed to the writer so far, whether to report now whatever the throttle).
Tick = Callable[[int, bool], None]


class Generator:
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
            worst = worst_score(score)
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
                w2 = worst_score(sc2)
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


def worst_score(score: np.ndarray) -> np.ndarray:
    """Lowest intended-emotion probability per identity (emotions the scorer lacks are ignored)."""
    filled = np.where(np.isnan(score), np.inf, score)
    worst = filled.min(axis=1)
    return np.where(np.isinf(worst), 1.0, worst).astype(np.float32)


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a shard worker needs, resolved by the driver (picklable, for other processes)."""

    options: SynthOptions      # backend, device, precision, batch and compile made concrete
    execution: Execution
    record: dict[str, Any]     # .fertk/options.json as the driver wrote it (with "execution")
    rank: int = 0

    @property
    def fingerprint(self) -> str:
        """The options fingerprint every shard record carries."""
        return options_fingerprint(self.record)

    @property
    def layout(self) -> DatasetLayout:
        """The output directory's layout."""
        return DatasetLayout(Path(self.options.out), self.options.format)


@dataclass
class RunStats:
    """What a worker did: shards and faces committed, engine and writer time, filter counts."""

    shards: int = 0
    faces: int = 0
    seconds: float = 0.0                 # wall time of the generate-and-write loop
    engine_seconds: float = 0.0
    engine_items: int = 0                # identities through the engine (filter retries included)
    writer_cpu_seconds: float = 0.0
    attempts: int = 0
    rejected: int = 0
    retries_per_emotion: list[int] = field(default_factory=list)

    def add(self, other: RunStats) -> None:
        """Fold another worker's stats into these (wall time is the caller's to set)."""
        self.shards += other.shards
        self.faces += other.faces
        self.engine_seconds += other.engine_seconds
        self.engine_items += other.engine_items
        self.writer_cpu_seconds += other.writer_cpu_seconds
        self.attempts += other.attempts
        self.rejected += other.rejected
        if not self.retries_per_emotion:
            self.retries_per_emotion = [0] * len(other.retries_per_emotion)
        self.retries_per_emotion = [a + b for a, b in zip(self.retries_per_emotion, other.retries_per_emotion)]


def clear_shard(layout: DatasetLayout, plan: SeedPlan, shard: Shard) -> None:
    """Discard a killed run's leftovers of one shard: it is redone whole."""
    remove_stale_temps(layout, shard.index)
    remove_shard(layout, shard.index, identities=range(shard.start, shard.stop), emotions=plan.emotions)


class ShardWorker:
    """The generation engine (and filter judge) for one process, built once, used for many shards."""

    def __init__(self, setup: WorkerSetup, pipeline: Any = None) -> None:
        options, execution = setup.options, setup.execution
        self.setup = setup
        self.plan = options.plan()
        self.layout = setup.layout
        self.pipeline = pipeline if pipeline is not None else build_pipeline(options.pipeline_config())
        # StyleGAN2 layers marked fp16 run in half precision only where that pays (torch on CUDA).
        self.fp16_layers = self.pipeline.set_fp16_layers(
            device=execution.device, precision=options.precision,
            target="torch" if execution.backend == "torch" else "export")
        self.engine = open_generation_engine(self.pipeline, backend=execution.backend, device=execution.device,
                                             precision=options.precision, **execution.engine_options())
        self.scorer = None
        try:
            if options.filter:
                self.scorer = FaceScorer(options.filter, backend=execution.backend, device=execution.device,
                                         precision=options.precision)
        except BaseException:
            self.engine.close()
            raise
        # A compiled engine gets fixed-size calls (a shard's last batch is padded): one compiled shape,
        # no recompilation per odd batch size.
        self.pad_to = execution.call_batch if execution.static_shapes else None
        self.generator = Generator(self.plan, self.pipeline, self.engine, self.scorer, options, self.pad_to)

    def warmup(self) -> float:
        """Build a compiled / captured graph before the clock starts; seconds it took (0 if eager)."""
        if not self.setup.execution.static_shapes:
            return 0.0
        tic = time.perf_counter()
        self.generator.warmup()
        return round(time.perf_counter() - tic, 3)

    def produce(self, shard: Shard, writer: Writer, tick: Tick | None = None) -> None:
        """Generate one shard in batches from its first identity and hand it to the writer."""
        plan, gen, batch = self.plan, self.generator, self.setup.options.batch
        assert batch is not None, "WorkerSetup.options.batch must be resolved"
        shard_start = time.perf_counter()
        attempts0, rejected0 = gen.attempts, gen.rejected
        retries0 = gen.retries_per_emotion.copy()
        writer.put(OpenShard(shard.index, shard.identities * len(plan.emotions)))
        for first in range(shard.start, shard.stop, batch):
            ids = np.arange(first, min(first + batch, shard.stop), dtype=np.int64)
            faces, rows = gen.generate(ids)
            writer.put(AddFaces(faces, rows))
            if tick is not None:
                tick(writer.faces_added, False)
        extra = {"seconds": round(time.perf_counter() - shard_start, 4), "rank": self.setup.rank,
                 "fingerprint": self.setup.fingerprint, "execution": self.setup.record["execution"],
                 "identities": [shard.start, shard.stop]}
        if self.scorer is not None:
            extra["filter"] = {"attempts": gen.attempts - attempts0, "rejected": gen.rejected - rejected0,
                               "retries_per_emotion": dict(zip(plan.emotions, (
                                   gen.retries_per_emotion - retries0).tolist()))}
        writer.put(CommitShard(extra))

    def write(self, shards: list[Shard], *, tick: Tick | None = None,
              on_commit: Callable[[int, int], None] | None = None) -> RunStats:
        """Generate and commit `shards` in order through one writer thread."""
        stats = RunStats()

        def committed(shard: int, faces: int) -> None:
            stats.shards += 1
            stats.faces += faces
            if on_commit is not None:
                on_commit(shard, faces)

        side = self.setup.options.output_size
        writer = Writer(self.layout, (side, side), self.setup.options.workers, committed)
        writer.start()
        engine_start, engine_items = self.engine.stats.seconds, self.engine.stats.items
        attempts0, rejected0 = self.generator.attempts, self.generator.rejected
        retries0 = self.generator.retries_per_emotion.copy()
        started = time.perf_counter()
        try:
            for shard in shards:
                self.produce(shard, writer, tick)
            writer.finish()
        except BaseException:
            writer.abandon()
            raise
        stats.seconds = time.perf_counter() - started
        stats.engine_seconds = self.engine.stats.seconds - engine_start
        stats.engine_items = self.engine.stats.items - engine_items
        stats.writer_cpu_seconds = writer.cpu_seconds
        stats.attempts = self.generator.attempts - attempts0
        stats.rejected = self.generator.rejected - rejected0
        stats.retries_per_emotion = (self.generator.retries_per_emotion - retries0).tolist()
        return stats

    def describe(self) -> dict[str, Any]:
        """The engine, the fp16-layer decision and the filter's scorer, as the dataset card records them."""
        return {"engine": self.engine.describe(), "fp16_layers": self.fp16_layers,
                "scorer": self.scorer.describe() if self.scorer is not None else None}

    def close(self) -> None:
        """Release the engine and the judge."""
        self.engine.close()
        if self.scorer is not None:
            self.scorer.close()
