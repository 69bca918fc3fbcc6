"""`--distributor ray`: the driver plans, a Ray cluster's free workers write shards, failures are retried.

CPU shards run as Ray tasks (one CPU each); GPU shards go to a pool of actors holding one GPU each
(`num_gpus=1`), each building the generation graph once. A task's process keeps its ShardWorker for
the next shard of the same run (Ray reuses worker processes), so CPU tasks build it once per process
too. Assignment is dynamic: every shard is submitted and a free worker takes the next one. A shard
whose worker returned an error or died (even by SIGKILL) is resubmitted up to `max_retries` more
times; each error is kept. Workers write exactly as the local path does (temp file, checksum,
record last, atomic rename) into the shared output directory; the driver merges the manifest and
writes the card (fertk.synth.run).

Ray is imported only here and only when this distributor runs (`pip install 'fertk[ray]'`).
`connect_ray` and `run_with_retries` are generic: any fertk job can put its units on Ray with them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from fertk.core.errors import BackendUnavailableError
from fertk.core.optional import require
from fertk.core.progress import Progress
from fertk.synth.distribute import Distributed, Ticker
from fertk.synth.worker import RunStats, ShardWorker, WorkerSetup, clear_shard


def connect_ray(address: str | None, *, purpose: str = "--distributor ray", **init: Any) -> tuple[ModuleType, bool]:
    """(ray, started_here): join the cluster at `address` ("auto", HOST:PORT) or, with None, the one
    in $RAY_ADDRESS or a new local one; a clear one-line error when there is none to join."""
    ray = require("ray", extra="ray", purpose=purpose)
    if ray.is_initialized():
        return ray, False
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False, **init)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address!r}" if address else "(a local one)"
        raise BackendUnavailableError(
            f"cannot start or reach a Ray cluster {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            hint="start one with `ray start --head` and pass --ray-address auto (or HOST:PORT of its head)") from None
    return ray, True


@dataclass
class RetrySummary:
    """What `run_with_retries` did: values of the units that succeeded, errors of every failure."""

    results: dict[Hashable, Any] = field(default_factory=dict)
    errors: dict[Hashable, list[str]] = field(default_factory=dict)    # every failed attempt, in order
    failed: list[Hashable] = field(default_factory=list)               # gave up after the last retry
    retried: set[Hashable] = field(default_factory=set)


def _error_text(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def run_with_retries(ray: ModuleType, submit: Callable[[Hashable], Any], units: Sequence[Hashable], *,
                     max_retries: int, error_of: Callable[[Any], str | None] = lambda value: None,
                     on_done: Callable[[Hashable, Any], None] | None = None,
                     on_retry: Callable[[Hashable, str], None] | None = None,
                     settled: Callable[[Any, bool], None] | None = None,
                     capacity: int | None = None) -> RetrySummary:
    """Run every unit (`submit(unit)` returns an ObjectRef), take results as they come, resubmit a
    failed unit (an exception, a dead worker, or a value `error_of` calls an error) up to
    `max_retries` times. At most `capacity` units are in flight (None: all, Ray queues them);
    `settled(ref, crashed)` hears of every finished ref (for actor pools)."""
    summary = RetrySummary()
    waiting = [(unit, 0) for unit in units]
    pending: dict[Any, tuple[Hashable, int]] = {}

    def fill() -> None:
        while waiting and (capacity is None or len(pending) < capacity):
            unit, retries = waiting.pop(0)
            pending[submit(unit)] = (unit, retries)

    fill()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        unit, retries = pending.pop(ref)
        crashed = False
        try:
            value = ray.get(ref)
            error = error_of(value)
        except Exception as exc:  # noqa: BLE001 - a task error or a dead worker: recorded, retried
            value, error, crashed = None, _error_text(exc), True
        if settled is not None:
            settled(ref, crashed)
        if error is None:
            summary.results[unit] = value
            if on_done is not None:
                on_done(unit, value)
        else:
            summary.errors.setdefault(unit, []).append(error)
            if retries < max_retries:
                summary.retried.add(unit)
                if on_retry is not None:
                    on_retry(unit, error)
                waiting.append((unit, retries + 1))
            else:
                summary.failed.append(unit)
        fill()  # a slot is free: the next unit goes to it
    return summary


@dataclass
class ShardOutcome:
    """One shard attempt as a worker reports it (an error instead of raising, so it is recorded)."""

    index: int
    stats: RunStats = field(default_factory=RunStats)
    described: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def write_one_shard(worker: ShardWorker, index: int) -> ShardOutcome:
    """Clear the shard's leftovers, write it whole, and report (errors as a status)."""
    try:
        shard = worker.plan.shard(index)
        clear_shard(worker.layout, worker.plan, shard)
        stats = worker.write([shard])
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which retries
        return ShardOutcome(index, error=_error_text(exc))
    return ShardOutcome(index, stats=stats, described=worker.describe())


_PROCESS_WORKER: dict[str, ShardWorker] = {}   # this Ray worker process's ShardWorker, by run


def _setup_key(setup: WorkerSetup) -> str:
    return json.dumps([setup.options.to_dict(), setup.record], sort_keys=True, default=str)


def shard_task(setup: WorkerSetup, index: int) -> ShardOutcome:
    """A Ray task: one shard, on this process's ShardWorker for the run (built on first use)."""
    key = _setup_key(setup)
    try:
        if key not in _PROCESS_WORKER:
            for old in _PROCESS_WORKER.values():
                old.close()
            _PROCESS_WORKER.clear()
            _PROCESS_WORKER[key] = ShardWorker(setup)
    except Exception as exc:  # noqa: BLE001 - e.g. no engine on this host: a failed attempt
        return ShardOutcome(index, error=_error_text(exc))
    return write_one_shard(_PROCESS_WORKER[key], index)


class ShardActor:
    """A shard worker that keeps its graph for every shard it is given (on GPUs: built once, on
    the GPU Ray gave the actor, which it sees as cuda:0 through CUDA_VISIBLE_DEVICES)."""

    def __init__(self, setup: WorkerSetup, device: str | None = None) -> None:
        if device is not None:
            setup = replace(setup, execution=replace(setup.execution, device=device),
                            options=replace(setup.options, device=device))
        self.worker = ShardWorker(setup)

    def run(self, index: int) -> ShardOutcome:
        """Write one shard."""
        return write_one_shard(self.worker, index)


@dataclass
class Submitter:
    """How shards reach Ray: `submit(index)` → ref; `settle` frees an actor; `capacity` in flight."""

    submit: Callable[[Hashable], Any]
    settle: Callable[[Any, bool], None]
    capacity: int | None


def actor_pool(ray: ModuleType, setup: WorkerSetup, *, actors: int, num_gpus: float,
               device: str | None) -> Submitter:
    """`actors` ShardActors, each taking the next shard when it is free; a dead one is replaced."""
    resources = {"num_gpus": num_gpus} if num_gpus else {"num_cpus": 1}  # (GPU actors: Ray's CPU default)
    actor_class = ray.remote(max_restarts=0, **resources)(ShardActor)
    free = [actor_class.remote(setup, device) for _ in range(actors)]
    busy: dict[Any, Any] = {}

    def submit(index: Hashable) -> Any:
        actor = free.pop()  # run_with_retries keeps at most `actors` in flight: one is free
        ref = actor.run.remote(index)
        busy[ref] = actor
        return ref

    def settle(ref: Any, crashed: bool) -> None:
        actor = busy.pop(ref, None)
        if actor is not None:
            free.append(actor_class.remote(setup, device) if crashed else actor)

    return Submitter(submit, settle, actors)


def submitter(ray: ModuleType, setup: WorkerSetup) -> Submitter:
    """Ray tasks (one CPU each) for CPU shards; for GPU shards one actor per GPU in the cluster."""
    if not setup.execution.device.startswith("cuda"):
        task = ray.remote(num_cpus=1, max_retries=0)(shard_task)
        return Submitter(lambda index: task.remote(setup, index), lambda ref, crashed: None, None)
    gpus = max(1, int(ray.cluster_resources().get("GPU", 0)))
    return actor_pool(ray, setup, actors=gpus, num_gpus=1, device="cuda")


def run_on_ray(ray: ModuleType, setup: WorkerSetup, todo: Sequence[Any], *, progress: Progress | None,
               started: float, max_retries: int, how: Submitter | None = None) -> Distributed:
    """Write `todo` (plan Shards) on the connected Ray (through `how`, default `submitter`); the
    summary of shards done, retried and failed."""
    emotions = len(setup.options.emotions)
    ticker = Ticker(progress, sum(s.identities for s in todo) * emotions, len(todo), started)
    ticker.extra = {"retries": 0, "failed": 0}
    stats, described = RunStats(), {}

    def done(index: Hashable, outcome: ShardOutcome) -> None:
        stats.add(outcome.stats)
        described.update(outcome.described)
        ticker.faces += outcome.stats.faces
        ticker.commit(outcome.index, outcome.stats.faces)

    def retry(index: Hashable, error: str) -> None:
        ticker.extra["retries"] += 1
        ticker.tick(ticker.faces, True)

    how = how if how is not None else submitter(ray, setup)
    tic = time.perf_counter()
    summary = run_with_retries(ray, how.submit, [s.index for s in todo], max_retries=max_retries,
                               error_of=lambda outcome: outcome.error, on_done=done, on_retry=retry,
                               settled=how.settle, capacity=how.capacity)
    stats.seconds = time.perf_counter() - tic
    failures = [{"shard": index, "attempts": len(summary.errors[index]), "error": summary.errors[index][-1],
                 "errors": summary.errors[index]} for index in sorted(summary.failed)]
    ticker.extra["failed"] = len(failures)
    ticker.tick(ticker.faces, True)
    return Distributed(stats, described=described, retried=len(summary.retried), failures=failures)
