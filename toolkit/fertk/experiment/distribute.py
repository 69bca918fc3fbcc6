"""Where cells run: in this process, in `jobs` spawned worker processes, or as Ray tasks.

Every distributor takes the cells still to do and reports each one, as it ends, to `finished`
on the driver (a status dict: {"status": "done", "metrics": ...} or {"status": "failed",
"error": ...}); a failed cell never stops the others. The cell itself writes its directory
(metrics, done marker last), so resume works the same whichever distributor ran it. On a Ray
cluster the run directory must be a path every node sees and every node needs the same fertk;
the datasets travel once per node through Ray's object store.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from fertk.core.devices import is_cuda, torch_threads
from fertk.core.errors import InvalidInputError
from fertk.core.optional import require
from fertk.experiment.cells import CellTask
from fertk.experiment.data import ExperimentData
from fertk.experiment.execute import cell_failure, execute_cell

DISTRIBUTORS = ("local", "ray")
Finished = Callable[[CellTask, dict[str, Any]], None]
Started = Callable[[CellTask, bool], None]  # (task, queued): queued when it waits for a free worker


@dataclass(frozen=True)
class Distribution:
    """How the cells of a run are spread: `local` (`jobs` processes, 1 = this one) or `ray`."""

    distributor: str = "local"
    jobs: int = 1
    threads: int | None = None       # torch threads per cell (Ray: also the CPUs a cell task asks for)
    ray_address: str | None = None   # None: the Ray this process already joined, else a new local one

    def __post_init__(self) -> None:
        if self.distributor not in DISTRIBUTORS:
            raise InvalidInputError(f"unknown distributor {self.distributor!r}", hint="choose from " + ", ".join(DISTRIBUTORS))
        if self.jobs < 1:
            raise InvalidInputError(f"--jobs must be at least 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"--threads must be at least 1, got {self.threads}")
        if self.ray_address is not None and self.distributor != "ray":
            raise InvalidInputError("--ray-address needs --distributor ray")
        if self.distributor == "ray":
            require("ray", extra="ray", purpose="--distributor ray")  # say so before any data is made


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_cells(todo: Sequence[CellTask], data: ExperimentData, how: Distribution, *, started: Started,
              finished: Finished) -> None:
    """Run every task of `todo` the way `how` says, reporting each as it starts and ends."""
    if how.distributor == "ray":
        run_ray(todo, data, how, started=started, finished=finished)
    elif how.jobs == 1 or len(todo) <= 1:
        run_sequential(todo, data, how.threads, started=started, finished=finished)
    else:
        run_processes(todo, data, how, started=started, finished=finished)


def run_one(task: CellTask, data: ExperimentData, threads: int | None) -> dict[str, Any]:
    """One cell with `threads` torch threads; a status instead of an exception."""
    try:
        with torch_threads(threads):
            return {"status": "done", "metrics": execute_cell(task, data)}
    except Exception as exc:  # noqa: BLE001 - one failed cell must not lose the others' results
        return cell_failure(task, exc)


def run_sequential(todo: Sequence[CellTask], data: ExperimentData, threads: int | None, *, started: Started,
                   finished: Finished) -> None:
    """The cells one after another in this process."""
    for task in todo:
        started(task, False)
        finished(task, run_one(task, data, threads))


# -- worker processes -------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}  # what a spawned worker got at start: the data and its thread count


def _init_worker(data: ExperimentData, threads: int | None) -> None:
    _WORKER.update(data=data, threads=threads)


def _run_in_worker(task: CellTask) -> dict[str, Any]:
    assert "data" in _WORKER, "worker not initialised"
    return run_one(task, _WORKER["data"], _WORKER["threads"])


def run_processes(todo: Sequence[CellTask], data: ExperimentData, how: Distribution, *, started: Started,
                  finished: Finished) -> None:
    """The cells in `how.jobs` spawned worker processes, each holding one copy of the data."""
    # Spawned, not forked: a forked child inherits torch's (possibly busy) OpenMP pool and can hang.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(how.jobs, len(todo)), mp_context=context, initializer=_init_worker,
                               initargs=(data, how.threads))
    futures = {}
    try:
        for task in todo:
            futures[pool.submit(_run_in_worker, task)] = task
            started(task, True)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                finished(futures[future], future.result())
    except BaseException:
        # Interrupted: queued cells are dropped; running ones finish their epoch files and are
        # resumed by the next run (their done marker is missing).
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# -- Ray --------------------------------------------------------------------------------------------
def cell_resources(task: CellTask, threads: int | None, cluster_gpus: float) -> dict[str, float]:
    """What one cell task asks Ray for: its torch threads as CPUs, one GPU when it trains on CUDA."""
    device = str(task.train_config.get("device") or "auto")
    wants_gpu = is_cuda(device) or (device == "auto" and cluster_gpus > 0)
    return {"num_cpus": float(threads or 1), "num_gpus": 1.0 if wants_gpu else 0.0}


def _ray_cell(task: CellTask, data: ExperimentData, threads: int | None) -> dict[str, Any]:
    # Ray hands the data object in already fetched from the object store (one copy per node).
    return run_one(task, data, threads)


def run_ray(todo: Sequence[CellTask], data: ExperimentData, how: Distribution, *, started: Started,
            finished: Finished) -> None:
    """The cells as Ray tasks (the data put once in the object store); a free worker takes the next."""
    if not todo:  # every cell finished earlier: no cluster needed
        return
    ray = require("ray", extra="ray", purpose="--distributor ray")
    joined_here = not ray.is_initialized()
    if joined_here:
        ray.init(address=how.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        threads = how.threads or 1
        gpus = float(ray.cluster_resources().get("GPU", 0))
        data_ref = ray.put(data)
        # A lost worker's cell is retried (its training run resumes from its last epoch); a cell
        # that raises is already a "failed" status, never retried.
        remote = ray.remote(max_retries=2)(_ray_cell)
        refs = {}
        for task in todo:
            refs[remote.options(**cell_resources(task, threads, gpus)).remote(task, data_ref, threads)] = task
            started(task, True)
        _collect(ray, refs, finished)
    finally:
        if joined_here:
            ray.shutdown()


def _collect(ray: Any, refs: dict[Any, CellTask], finished: Finished) -> None:
    """Report each cell as it ends, in the order they end; interrupted, the cells not ended are cancelled."""
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                finished(refs[ref], _ray_outcome(ray, ref, refs[ref]))
    except BaseException:
        # Like the process pool: the cells cancelled here have no done marker and the next run resumes them.
        for ref in pending:
            ray.cancel(ref)
        raise


def _ray_outcome(ray: Any, ref: Any, task: CellTask) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - a lost worker (killed, out of memory) fails that cell only
        return cell_failure(task, exc)
