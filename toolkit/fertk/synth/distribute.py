"""Where shards run: `local` (this process; under torchrun a fixed round-robin slice per rank),
`torchrun` (the same, asking for torchrun's environment) or `ray` (fertk.synth.ray_runner: shards
handed to a Ray cluster's free workers, retried on failure). The only place that knows torchrun.

Every distributor runs the same `ShardWorker`, so the bytes never depend on it; the driver (rank 0
or the Ray driver) merges the manifest and writes the card afterwards (fertk.synth.run).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from fertk.core.errors import InvalidInputError
from fertk.core.optional import require
from fertk.core.progress import Progress, emit
from fertk.data.shards import remove_shard
from fertk.synth.engines import parity_vs_fp32
from fertk.synth.execution import Placement
from fertk.synth.plan import SeedPlan, Shard
from fertk.synth.worker import RunStats, ShardWorker

REPORT_EVERY_S = 0.2  # progress events at most this often (and at every committed shard)


def torchrun_placement() -> Placement:
    """(rank, world size, local rank) from torchrun's environment ((0, 1, 0) without it)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InvalidInputError("RANK / WORLD_SIZE / LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise InvalidInputError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return Placement(rank, world, local)


def placement_for(distributor: str) -> Placement:
    """This process's place in the run for a distributor (local follows torchrun's environment, as always)."""
    if distributor == "torchrun" and "WORLD_SIZE" not in os.environ:
        raise InvalidInputError("--distributor torchrun needs torchrun's environment (RANK, WORLD_SIZE)",
                                hint="launch with `torchrun --nproc-per-node N -m fertk.cli synth ...`, "
                                     "or use --distributor local")
    where = torchrun_placement()
    if distributor == "ray":  # before any work: without Ray this is a one-line error naming the extra
        require("ray", extra="ray", purpose="--distributor ray")
    if distributor == "ray" and where.world > 1:
        raise InvalidInputError("--distributor ray runs one driver; it was launched by torchrun "
                                f"(WORLD_SIZE={where.world})", hint="run `fertk synth ... --distributor ray` once")
    return where


def shows_progress() -> bool:
    """Whether this process draws the progress bar: under torchrun only rank 0 (its own share)."""
    return os.environ.get("RANK", "0") == "0"


class Ticker:
    """Turns faces written and shards committed into `fertk.core.progress` "advance" events."""

    def __init__(self, progress: Progress | None, faces_total: int, shards_total: int, started: float) -> None:
        self.progress = progress
        self.faces_total = faces_total
        self.shards_total = shards_total
        self.started = started
        self.faces = 0
        self.shards = 0
        self.extra: dict[str, Any] = {}
        self.last = 0.0

    def tick(self, faces: int, force: bool = False) -> None:
        """Report `faces` handed over so far (throttled unless `force`)."""
        self.faces = faces
        now = time.perf_counter()
        if self.progress is not None and (force or now - self.last > REPORT_EVERY_S):
            self.last = now
            emit(self.progress, "advance", done=faces, total=self.faces_total, unit="faces",
                 shards_done=self.shards, shards_total=self.shards_total, elapsed=now - self.started, **self.extra)

    def commit(self, shard: int, faces: int) -> None:
        """A shard is committed: count it and report now."""
        self.shards += 1
        self.tick(self.faces, True)


@dataclass
class Distributed:
    """What the distributor did for this process: stats, warm-up, parity, the engine's description."""

    stats: RunStats
    warmup_seconds: float = 0.0
    parity: dict[str, Any] | None = None
    described: dict[str, Any] = field(default_factory=dict)   # ShardWorker.describe()
    retried: int = 0                                           # ray: shards run again after a failure
    failures: list[dict[str, Any]] = field(default_factory=list)


def run_local(worker: ShardWorker, plan: SeedPlan, todo: list[Shard], *, progress: Progress | None,
              started: float, parity: bool = False) -> Distributed:
    """Generate this process's shards here, in order, through one writer thread."""
    for shard in todo:  # leftovers of a killed run are discarded: the shard is redone whole
        remove_shard(worker.layout, shard.index, identities=range(shard.start, shard.stop), emotions=plan.emotions)
    ticker = Ticker(progress, sum(s.identities for s in todo) * len(plan.emotions), len(todo), started)
    warmup = worker.warmup() if todo else 0.0
    measured = None
    if parity and todo:  # auto's GPU engine against eager fp32, recorded in the card
        measured = parity_vs_fp32(worker.pipeline, worker.engine, worker.setup.execution.device,
                                  worker.pad_to or worker.setup.options.batch)
    stats = worker.write(todo, tick=ticker.tick, on_commit=ticker.commit)
    ticker.tick(ticker.faces, True)
    return Distributed(stats, warmup_seconds=warmup, parity=measured, described=worker.describe())
