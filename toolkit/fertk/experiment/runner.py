"""Run the paper's three experiments as independent, resumable cells, in one process or several.

A cell is one training mix × one repeat:
  real                 Exp 1: the real training split only
  synthetic-<set>      Exp 2: one unit of synthetic identities only
  mix-<set>-k<k>       Exp 3: the real split + k units of synthetic identities
A unit is as many synthetic identities as the real split has subjects (train / val / test each:
the paper's 109 / 10 / 25), every emotion of each. Repeat r draws its own real split (seed
split_seed + r), its own synthetic identities for each unit and its own initialisation; the units
of one repeat are nested (k = 2 holds the identities of k = 1) and shared by every synthetic set
with the same path (so a shuffled-label control sees the same faces as its true-label twin).

Run directory:
  config.toml, config.resolved.json   the config as written and with every default filled in
  splits/real-r<R>.json               the subject split of repeat R (fertk split manifest)
  splits/<set>-r<R>.json              the synthetic identities of every unit of repeat R
  cells/<cell>/r<R>/                  cell.json (what it trains on), train/ (the FER run),
                                      metrics.json, done.json (written last: the cell is finished)
  report/                             summary.md, results.json / .csv, figures, per-class reports

Resume: a cell whose done.json matches its settings is skipped; an unfinished one continues
(training resumes from its last epoch). Parallel: `jobs` worker processes (spawned, so torch's
thread pools start clean) each train one cell at a time with cores // jobs torch threads, or
Ray tasks (`distributor="ray"`, fertk.experiment.distribute). Stages: data (fertk.experiment.data),
plan (fertk.experiment.cells), cells (distribute → execute), report (fertk.experiment.report).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fertk.core.errors import OutputExistsError
from fertk.core.io import atomic_write_text
from fertk.core.progress import Progress, emit
from fertk.data.splits import save_manifest
from fertk.experiment.cells import (CELL_FILE, METRICS_FILE, CellTask, RepeatPlan, cell_state, make_task, plan_cells,
                                    plan_repeat, units_manifest)
from fertk.experiment.config import ExperimentConfig
from fertk.experiment.data import ExperimentData, load_data, prepare_all
from fertk.experiment.distribute import Distribution, available_cores, run_cells
from fertk.experiment.report import read_run_json, write_report


@dataclass
class ExperimentResult:
    """What a run did and where its outputs are."""

    run_dir: str
    cells: list[dict[str, Any]]         # one row per (cell, repeat): id, repeat, status, seconds, accuracies
    summary: dict[str, Any]             # aggregated table (see fertk.experiment.report.summarize)
    files: dict[str, Any]
    ran: int
    skipped: int
    failed: list[dict[str, Any]]
    seconds: float
    jobs: int
    threads: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dict(self.__dict__)


def default_run_dir(config: ExperimentConfig) -> Path:
    """[experiment] out, else runs/<name> beside the config file (or in the working directory)."""
    if config.out:
        return Path(config.out)
    base = Path(config.source).parent if config.source else Path.cwd()
    return base / "runs" / config.name


def run_experiment(config: ExperimentConfig, out: str | Path | None = None, *, jobs: int = 1,
                   threads: int | None = None, force: bool = False, distributor: str = "local",
                   ray_address: str | None = None, progress: Progress | None = None) -> ExperimentResult:
    """Run (or resume) every cell of the experiment and write the summary report.

    `jobs` > 1 trains cells in that many worker processes, each with `threads` torch threads
    (default: the cores divided among the workers); `distributor="ray"` runs them as Ray tasks
    (on the cluster at `ray_address`, else the Ray this process joined or a new local one).
    `force` redoes cells whose settings changed since they finished (otherwise such a run
    directory is refused).
    """
    started = time.perf_counter()
    how = Distribution(distributor, jobs, threads, ray_address)  # checks the options before any work
    if how.threads is None and jobs > 1:
        how = Distribution(distributor, jobs, max(1, available_cores() // jobs), ray_address)
    run_dir = _prepare_run_dir(config, out)
    data = _load(config, progress)
    plans, resolved = _plan(config, data, run_dir)
    tasks = [make_task(config, data, plan, cell, run_dir, how.threads) for plan in plans for cell in plan_cells(config)]
    emit(progress, "plan", f"{len(tasks) // config.repeats} training mixes × {config.repeats} repeat(s) = "
                           f"{len(tasks)} cells (unit: {resolved['unit_identities']} identities; {_how(how)})",
         total=len(tasks), unit="cells")
    ledger = _Ledger(tasks, progress)
    todo = ledger.sort(force)
    run_cells(todo, data, how, started=ledger.started, finished=ledger.finished)
    summary, files = write_report(run_dir, config, ledger.metrics_in_order(), resolved, progress=progress)
    rows = ledger.rows_in_order()
    return ExperimentResult(
        run_dir=str(run_dir), cells=rows, summary=summary, files=files,
        ran=sum(r["status"] == "ran" for r in rows), skipped=sum(r["status"] == "skipped" for r in rows),
        failed=ledger.failed, seconds=time.perf_counter() - started, jobs=jobs, threads=how.threads)


def _how(how: Distribution) -> str:
    where = "on Ray" if how.distributor == "ray" else f"{how.jobs} job(s)"
    return where + (f", {how.threads} torch thread(s) each" if how.threads else "")


def _prepare_run_dir(config: ExperimentConfig, out: str | Path | None) -> Path:
    """The run directory, created, with the config file as written."""
    run_dir = Path(out) if out is not None else default_run_dir(config)
    run_dir = run_dir.expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.source and Path(config.source).is_file():
        atomic_write_text(run_dir / "config.toml", Path(config.source).read_text(encoding="utf-8"))
    return run_dir


def _load(config: ExperimentConfig, progress: Progress | None) -> ExperimentData:
    """Generate what is missing, then every dataset in memory."""
    real_info: list[dict[str, Any]] = []
    real = prepare_all(config, progress=progress, info=real_info)
    data = load_data(config, real=real, progress=progress)
    data.info["real"] = real_info
    return data


def _plan(config: ExperimentConfig, data: ExperimentData, run_dir: Path) -> tuple[list[RepeatPlan], dict[str, Any]]:
    """Every repeat's split and units, saved under splits/, and the resolved config (config.resolved.json)."""
    plans = [plan_repeat(config, data, r) for r in range(config.repeats)]
    for plan in plans:
        save_manifest(plan.split, run_dir / "splits" / f"real-r{plan.repeat}.json")
        for spec in config.synthetic:
            if plan.units[spec.name]:
                atomic_write_text(run_dir / "splits" / f"{spec.name}-r{plan.repeat}.json",
                                  json.dumps(units_manifest(spec, plan), indent=1) + "\n")
    resolved = {"config": config.to_dict(), "data": data.info,
                "split_sizes": plans[0].split.sizes, "split_notes": list(plans[0].split.notes),
                "unit_identities": sum(plans[0].split.sizes.values()), "cells": [c.to_dict() for c in plan_cells(config)]}
    atomic_write_text(run_dir / "config.resolved.json", json.dumps(resolved, indent=1, default=str) + "\n")
    return plans, resolved


@dataclass
class _Ledger:
    """The run's book of cells: which are done, the rows and metrics so far, and their progress events."""

    tasks: list[CellTask]
    progress: Progress | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    finished_count: int = 0
    position: dict[int, int] = field(default_factory=dict)  # id(task) -> its place in the plan, 1-based

    def __post_init__(self) -> None:
        self.position = {id(task): i + 1 for i, task in enumerate(self.tasks)}

    def sort(self, force: bool) -> list[CellTask]:
        """The tasks still to run (stale ones cleared when `force`); finished ones recorded as skipped."""
        states = [cell_state(task) for task in self.tasks]
        stale = [task for task, state in zip(self.tasks, states) if state == "stale"]
        if stale and not force:  # refused before anything in the run directory changes
            raise OutputExistsError(
                f"{stale[0].dir} holds cell {stale[0].cell.id} r{stale[0].repeat} made with other settings"
                + (f" (and {len(stale) - 1} more cell(s))" if len(stale) > 1 else ""),
                hint="use another --out, or --force to redo the cells whose settings changed")
        todo = []
        for task, state in zip(self.tasks, states):
            if state == "stale":
                shutil.rmtree(task.dir)
            if state == "done":
                metrics = read_run_json(task.dir / METRICS_FILE)
                self._record(task, "skip", f"{task.cell.label} r{task.repeat}: finished earlier",
                             _row(task, "skipped", metrics), metrics)
                continue
            task.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(task.dir / CELL_FILE, json.dumps(
                {"fingerprint": task.fingerprint, **task.description}, indent=1, default=str) + "\n")
            todo.append(task)
        return todo

    def started(self, task: CellTask, queued: bool) -> None:
        """A cell began (or was queued for a worker)."""
        emit(self.progress, "start", f"{task.cell.label} r{task.repeat}" + (" (queued)" if queued else ""),
             done=self.finished_count, total=len(self.tasks), unit="cells", **self._where(task))

    def finished(self, task: CellTask, outcome: dict[str, Any]) -> None:
        """A cell ended: its metrics and row, or its error."""
        if outcome["status"] == "done":
            self._record(task, "done", _done_message(task, outcome["metrics"]), _row(task, "ran", outcome["metrics"]),
                         outcome["metrics"])
            return
        self.failed.append({"cell": task.cell.id, "repeat": task.repeat, "error": outcome["error"]})
        row = {"cell": task.cell.id, "label": task.cell.label, "repeat": task.repeat, "status": "failed",
               "error": outcome["error"]}
        self._record(task, "failed", f"{task.cell.label} r{task.repeat}: {outcome['error']}", row, None)

    def _record(self, task: CellTask, kind: str, message: str, row: dict[str, Any],
                metrics: dict[str, Any] | None) -> None:
        self.rows.append(row)
        if metrics is not None:
            self.metrics[(task.cell.id, task.repeat)] = metrics
        self.finished_count += 1
        emit(self.progress, kind, message, done=self.finished_count, total=len(self.tasks), unit="cells",
             row=row, **self._where(task))

    def _where(self, task: CellTask) -> dict[str, Any]:
        # `index`: the cell's place in the plan (1-based), what a progress line shows as [index/total].
        return {"cell": task.cell.id, "repeat": task.repeat, "index": self.position[id(task)]}

    def metrics_in_order(self) -> list[dict[str, Any]]:
        """Finished cells' metrics in plan order."""
        return [self.metrics[(t.cell.id, t.repeat)] for t in self.tasks if (t.cell.id, t.repeat) in self.metrics]

    def rows_in_order(self) -> list[dict[str, Any]]:
        """Every cell's row in plan order."""
        order = {(t.cell.id, t.repeat): i for i, t in enumerate(self.tasks)}
        return sorted(self.rows, key=lambda r: order[(r["cell"], r["repeat"])])


def _row(task: CellTask, status: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"cell": task.cell.id, "label": task.cell.label, "repeat": task.repeat, "status": status,
            "seconds": round(float(metrics.get("seconds", 0.0)), 2), "train_acc": metrics["train"]["acc"],
            "epochs": metrics["train"]["epochs_run"], "plateau": bool(metrics.get("plateau", False)),
            "accuracy": dict(metrics["accuracy"])}


def _done_message(task: CellTask, metrics: dict[str, Any]) -> str:
    acc = metrics["accuracy"]
    parts = [f"train {metrics['train']['acc']:.3f}", f"test {acc['test']:.3f}"]
    parts += [f"{name} {value:.3f}" for name, value in acc.items() if name not in ("test", "test_real")]
    return (f"{task.cell.label} r{task.repeat}: " + ", ".join(parts)
            + f" ({metrics['train']['epochs_run']} epochs, {metrics['seconds']:.1f} s)"
            + (" — never left the initial plateau (uniform predictions)" if metrics.get("plateau") else ""))
