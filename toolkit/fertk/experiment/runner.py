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
thread pools start clean) each train one cell at a time with cores // jobs torch threads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.data.records import FaceArrays
from fertk.core.errors import DatasetError, FertkError, InvalidInputError, OutputExistsError
from fertk.core.io import atomic_write_text
from fertk.experiment.config import DatasetSpec, ExperimentConfig

UNITS_FORMAT = "fertk-synthetic-units"
DONE_FILE = "done.json"
METRICS_FILE = "metrics.json"
CELL_FILE = "cell.json"


# -- seeds ------------------------------------------------------------------------------------------
def derive_seed(base: int, *parts: Any) -> int:
    """An independent 31-bit seed per (base seed, purpose, repeat, ...)."""
    digest = hashlib.sha256(":".join(map(str, (base, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


# -- cells ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One training mix: real only, synthetic only, or real + k synthetic units."""

    kind: str                     # "real" | "synthetic" | "mix"
    synthetic: str | None = None  # synthetic set name (None for real)
    k: int = 0                    # synthetic units in the training data

    @property
    def id(self) -> str:
        """Directory-safe identifier."""
        if self.kind == "real":
            return "real"
        if self.kind == "synthetic":
            return f"synthetic-{self.synthetic}"
        return f"mix-{self.synthetic}-k{self.k:03d}"

    @property
    def label(self) -> str:
        """Human-readable name, as in the paper's tables."""
        if self.kind == "real":
            return "real only"
        if self.kind == "synthetic":
            return f"synthetic only ({self.synthetic})"
        return f"real + {self.k}× {self.synthetic}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"id": self.id, "kind": self.kind, "synthetic": self.synthetic, "k": self.k, "label": self.label}


def plan_cells(config: ExperimentConfig) -> list[Cell]:
    """Every training mix the config asks for, baselines first."""
    cells: list[Cell] = []
    if "real" in config.experiments:
        cells.append(Cell("real"))
    if "synthetic" in config.experiments:
        cells += [Cell("synthetic", s.name, 1) for s in config.synthetic]
    if "mix" in config.experiments:
        cells += [Cell("mix", s.name, k) for s in config.synthetic for k in sorted(config.k)]
    return cells


def units_needed(config: ExperimentConfig) -> int:
    """Synthetic units one repeat draws: max k for Exp 3, else 1 for Exp 2, else 0."""
    if "mix" in config.experiments:
        return max(config.k)
    return 1 if "synthetic" in config.experiments else 0


# -- events -----------------------------------------------------------------------------------------
@dataclass
class ExperimentEvent:
    """Progress: kind is generate | load | plan | start | done | skip | failed | report."""

    kind: str
    message: str
    index: int = 0
    total: int = 0
    cell: str | None = None
    repeat: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


EventCallback = Callable[[ExperimentEvent], None]


def _emit(callback: EventCallback | None, kind: str, message: str, **kwargs: Any) -> None:
    if callback is not None:
        callback(ExperimentEvent(kind, message, **kwargs))


# -- data -------------------------------------------------------------------------------------------
@dataclass
class ExperimentData:
    """Every dataset of a run in memory, gray at the CNN's input size, labels over the config's classes."""

    real: FaceArrays
    pools: dict[str, FaceArrays]        # synthetic set name -> its faces (sets sharing a path share one)
    cross_db: dict[str, FaceArrays]
    info: dict[str, Any] = field(default_factory=dict)


def _natural_key(text: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _synth_identities(path: str) -> int | None:
    """Identities of an existing `fertk synth` dataset, or None."""
    from fertk.data.shards import is_synth_dataset, read_options

    if not is_synth_dataset(path):
        return None
    return int(read_options(path)["plan"]["n"])


def generate_dataset(spec: DatasetSpec, n: int | None = None, *, on_event: EventCallback | None = None) -> Any:
    """Make (or finish) the dataset a [generate] table describes with fertk synth; returns the SynthResult."""
    from fertk.synth import SynthOptions, run_synth

    table = dict(spec.generate or {})
    count = int(table.pop("n", n or 0))
    if count < 1:
        raise InvalidInputError(f"{spec.name}: [generate] needs n (identities)")
    options = SynthOptions(out=spec.path, n=count, **table)
    _emit(on_event, "generate", f"fertk synth: {spec.name} ({count} identities, style {options.style}) -> {spec.path}")
    return run_synth(options)


def prepare_data(config: ExperimentConfig, *, groups: Sequence[str] = ("real", "cross_db", "synthetic"),
                 unit_identities: int | None = None, on_event: EventCallback | None = None) -> list[Any]:
    """Generate every dataset of `groups` that has a [generate] table (resumable: finished shards are kept).

    A synthetic set whose table gives no n gets `unit_identities × units` identities (the pool one
    repeat needs), or keeps the size it already has on disk.
    """
    results = []
    for group in ("real", "cross_db"):
        if group in groups:
            results += [generate_dataset(s, on_event=on_event) for s in getattr(config, group) if s.generate is not None]
    if "synthetic" not in groups:
        return results
    made: dict[str, dict[str, Any]] = {}
    for spec in config.synthetic:
        if spec.generate is None:
            continue
        if spec.path in made:
            if made[spec.path] != spec.generate:
                raise InvalidInputError(f"synthetic sets sharing {spec.path} have different [generate] tables")
            continue
        made[spec.path] = spec.generate
        n = spec.generate.get("n")
        if n is None:
            n = _synth_identities(spec.path)
        if n is None:
            if unit_identities is None:
                raise InvalidInputError(f"{spec.name}: [generate] has no n and the real split is not known yet")
            n = unit_identities * max(1, units_needed(config))
        results.append(generate_dataset(spec, int(n), on_event=on_event))
    return results


def prepare_all(config: ExperimentConfig, *, on_event: EventCallback | None = None,
                info: list[dict[str, Any]] | None = None) -> FaceArrays:
    """Generate what is missing, real data first (its split decides a synthetic unit's size); returns the real data."""
    from fertk.data.splits import subject_split

    prepare_data(config, groups=("real", "cross_db"), on_event=on_event)
    real = load_real(config, on_event=on_event, info=info)
    unit = sum(subject_split(real, config.split_sizes, seed=config.split_seed).sizes.values())
    prepare_data(config, groups=("synthetic",), unit_identities=unit, on_event=on_event)
    return real


def _load_spec(spec: DatasetSpec, config: ExperimentConfig) -> FaceArrays:
    from fertk.data.datasets import load_arrays
    from fertk.data.preprocess import PreprocessConfig
    from fertk.data.convert import concat_arrays

    if "size" in spec.preprocess:
        raise InvalidInputError(f"{spec.name}: [preprocess] size is set by [train] input_size")
    if not Path(spec.path).exists():
        raise DatasetError(f"{spec.name}: dataset path not found: {spec.path}",
                           hint="fix the path, or add a [generate] table to make a stand-in with fertk synth")
    preprocess = PreprocessConfig.from_dict({**spec.preprocess, "size": config.input_size})
    arrays = load_arrays(spec.path, layout=spec.layout, classes=config.classes, preprocess=preprocess,
                         strict=spec.strict, **spec.options)
    if len(arrays) == 0:
        raise DatasetError(f"{spec.name}: no face of classes {list(config.classes)} in {spec.path}")
    arrays.meta.setdefault("path", spec.path)
    return concat_arrays([arrays], config.classes, config.input_size)


def _describe(arrays: FaceArrays, spec: DatasetSpec | None = None) -> dict[str, Any]:
    from fertk.data.convert import summarize_arrays

    info = summarize_arrays(arrays)
    if spec is not None:
        info = {"name": spec.name, "path": spec.path, "layout": spec.layout, **info}
    return info


def load_real(config: ExperimentConfig, *, on_event: EventCallback | None = None,
              info: list[dict[str, Any]] | None = None) -> FaceArrays:
    """The real database(s) as one FaceArrays (subjects qualified by database when there are several)."""
    from fertk.data.convert import concat_arrays

    reals = []
    for spec in config.real:
        arrays = _load_spec(spec, config)
        if len(config.real) > 1:
            # Subjects are qualified by database so equal ids of two databases stay two people.
            arrays = FaceArrays(arrays.images, arrays.labels, arrays.classes, arrays.subjects,
                                np.char.add(f"{spec.name}:", np.asarray(arrays.sources, dtype=str)),
                                arrays.keys, arrays.meta)
        reals.append(arrays)
        described = _describe(arrays, spec)
        if info is not None:
            info.append(described)
        _emit(on_event, "load", f"real {spec.name}: {len(arrays)} faces, {described['subjects']} subjects")
    return reals[0] if len(reals) == 1 else concat_arrays(reals, config.classes, config.input_size)


def load_data(config: ExperimentConfig, *, real: FaceArrays | None = None,
              on_event: EventCallback | None = None) -> ExperimentData:
    """Read the real, synthetic and cross-database sets (already generated) into memory."""
    info: dict[str, Any] = {"real": [], "synthetic": [], "cross_db": []}
    if real is None:
        real = load_real(config, on_event=on_event, info=info["real"])
    else:
        info["real"] = [_describe(real)]
    pools: dict[str, FaceArrays] = {}
    by_path: dict[str, FaceArrays] = {}
    for spec in config.synthetic:
        if spec.path not in by_path:
            by_path[spec.path] = _load_spec(spec, config)
        pools[spec.name] = by_path[spec.path]
        info["synthetic"].append({**_describe(pools[spec.name], spec), "shuffle_labels": spec.shuffle_labels})
        _emit(on_event, "load", f"synthetic {spec.name}: {len(pools[spec.name])} faces, "
                                f"{info['synthetic'][-1]['subjects']} identities"
                                + (" (labels shuffled: the control)" if spec.shuffle_labels else ""))
    cross_db = {}
    for spec in config.cross_db:
        cross_db[spec.name] = _load_spec(spec, config)
        info["cross_db"].append(_describe(cross_db[spec.name], spec))
        _emit(on_event, "load", f"cross-db {spec.name}: {len(cross_db[spec.name])} faces")
    return ExperimentData(real, pools, cross_db, info)


# -- splits and synthetic units -----------------------------------------------------------------------
@dataclass
class RepeatPlan:
    """What repeat r trains on: the real split and each synthetic set's units (identity lists)."""

    repeat: int
    split: Any                                    # fertk.data.splits.Split of the real data
    units: dict[str, list[dict[str, list[str]]]]  # set name -> [unit -> {"train"|"val"|"test": identities}]
    units_seed: int
    shuffle_seeds: dict[str, int | None]


def draw_units(identities: Sequence[str], sizes: dict[str, int], count: int, seed: int) -> list[dict[str, list[str]]]:
    """`count` disjoint units of synthetic identities, each split into train/val/test of `sizes`."""
    per_unit = sum(sizes.values())
    need = per_unit * count
    if need > len(identities):
        raise DatasetError(f"{count} unit(s) of {per_unit} identities need {need} synthetic identities, "
                           f"the set has {len(identities)}",
                           hint=f"generate at least {need} identities (fertk synth --n {need}) or lower k")
    order = np.random.default_rng(seed).permutation(len(identities))
    chosen = [identities[i] for i in order[:need]]
    units = []
    for u in range(count):
        block = chosen[u * per_unit:(u + 1) * per_unit]
        start, unit = 0, {}
        for part in ("train", "val", "test"):
            unit[part] = sorted(block[start:start + sizes[part]], key=_natural_key)
            start += sizes[part]
        units.append(unit)
    return units


def plan_repeat(config: ExperimentConfig, data: ExperimentData, repeat: int) -> RepeatPlan:
    """The real split and the synthetic units of one repeat (pure function of config, data, repeat)."""
    from fertk.data.splits import subject_split

    split = subject_split(data.real, config.split_sizes, seed=config.split_seed + repeat)
    sizes = split.sizes
    if min(sizes.values()) < 1:
        raise DatasetError(f"the real split has an empty part ({sizes}); the real data has too few subjects",
                           hint="use more subjects or other [split] sizes")
    count = units_needed(config)
    units_seed = derive_seed(config.seed, "units", repeat)
    units: dict[str, list[dict[str, list[str]]]] = {}
    by_pool: dict[int, list[dict[str, list[str]]]] = {}
    for spec in config.synthetic:
        pool = data.pools[spec.name]
        if id(pool) not in by_pool:
            identities = sorted({str(s) for s in pool.subjects}, key=_natural_key)
            by_pool[id(pool)] = draw_units(identities, sizes, count, units_seed) if count else []
        units[spec.name] = by_pool[id(pool)]
    shuffle = {s.name: derive_seed(config.seed, "shuffle", s.name, repeat) if s.shuffle_labels else None
               for s in config.synthetic}
    return RepeatPlan(repeat, split, units, units_seed, shuffle)


def _units_manifest(spec: DatasetSpec, plan: RepeatPlan) -> dict[str, Any]:
    return {"format": UNITS_FORMAT, "version": 1, "synthetic": spec.name, "path": spec.path,
            "repeat": plan.repeat, "seed": plan.units_seed, "unit_sizes": plan.split.sizes,
            "shuffle_labels": spec.shuffle_labels, "shuffle_seed": plan.shuffle_seeds[spec.name],
            "units": plan.units[spec.name]}


# -- one cell -----------------------------------------------------------------------------------------
@dataclass
class CellTask:
    """Everything a worker needs to train and evaluate one cell (indices into the shared data)."""

    cell: Cell
    repeat: int
    run_dir: str
    train_config: dict[str, Any]
    real_index: dict[str, np.ndarray]    # part -> rows of ExperimentData.real
    synth_index: dict[str, np.ndarray]   # part -> rows of the cell's synthetic pool
    shuffle_seed: int | None
    fingerprint: str
    description: dict[str, Any]

    @property
    def dir(self) -> Path:
        """The cell's directory."""
        return Path(self.run_dir) / "cells" / self.cell.id / f"r{self.repeat}"


def _rows_of(arrays: FaceArrays, subjects: Sequence[str]) -> np.ndarray:
    return np.flatnonzero(np.isin(np.asarray(arrays.subjects, dtype=str), np.asarray(list(subjects), dtype=str)))


def make_task(config: ExperimentConfig, data: ExperimentData, plan: RepeatPlan, cell: Cell, run_dir: Path,
              threads: int | None) -> CellTask:
    """The task of (cell, repeat), with the fingerprint of everything its result depends on."""
    parts = ("train", "val", "test")
    empty = np.zeros(0, dtype=np.int64)
    real_index = {p: empty for p in parts}
    synth_index = {p: empty for p in parts}
    description: dict[str, Any] = {"cell": cell.to_dict(), "repeat": plan.repeat}
    if cell.kind in ("real", "mix"):
        real_index = {p: plan.split.indices(data.real, p, check_keys=False) for p in parts}
        description["real"] = {"split_seed": plan.split.seed, "subjects": {p: plan.split.subjects[p] for p in parts}}
    shuffle_seed = None
    if cell.kind in ("synthetic", "mix"):
        units = plan.units[cell.synthetic][:cell.k]
        identities = {p: [i for unit in units for i in unit[p]] for p in parts}
        pool = data.pools[cell.synthetic]
        synth_index = {p: _rows_of(pool, identities[p]) for p in parts}
        shuffle_seed = plan.shuffle_seeds[cell.synthetic]
        spec = next(s for s in config.synthetic if s.name == cell.synthetic)
        description["synthetic"] = {"name": spec.name, "path": spec.path, "units": cell.k,
                                    "units_seed": plan.units_seed, "shuffle_seed": shuffle_seed,
                                    "identities": identities}
    init_seed = derive_seed(config.seed, "init", plan.repeat)
    train = config.train_config(seed=init_seed, threads=threads).to_dict()
    description["train"] = {k: v for k, v in train.items() if k not in ("threads", "device")}
    description["counts"] = {p: int(len(real_index[p]) + len(synth_index[p])) for p in parts}
    description["datasets"] = {
        "real": [_spec_key(s) for s in config.real] if cell.kind != "synthetic" else [],
        "synthetic": [_spec_key(s) for s in config.synthetic if s.name == cell.synthetic],
        "cross_db": [_spec_key(s) for s in config.cross_db],
    }
    fingerprint = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()
    return CellTask(cell, plan.repeat, str(run_dir), train, real_index, synth_index, shuffle_seed, fingerprint,
                    description)


def _spec_key(spec: DatasetSpec) -> dict[str, Any]:
    return {"name": spec.name, "path": spec.path, "layout": spec.layout, "options": spec.options,
            "preprocess": spec.preprocess, "shuffle_labels": spec.shuffle_labels}


def shuffled_labels(arrays: FaceArrays, seed: int) -> FaceArrays:
    """The same faces with their labels permuted (the control: images no longer predict labels)."""
    labels = np.asarray(arrays.labels)[np.random.default_rng(seed).permutation(len(arrays))]
    return FaceArrays(arrays.images, labels, arrays.classes, arrays.subjects, arrays.sources, arrays.keys,
                      {**arrays.meta, "shuffled_labels_seed": seed})


def _cell_part(data: ExperimentData, task: CellTask, pool: FaceArrays | None, part: str, classes: Sequence[str],
               size: int, *, real_only: bool = False) -> FaceArrays:
    from fertk.data.convert import concat_arrays

    pieces = []
    if len(task.real_index[part]):
        pieces.append(data.real.subset(task.real_index[part]))
    if pool is not None and len(task.synth_index[part]) and not real_only:
        pieces.append(pool.subset(task.synth_index[part]))
    if not pieces:
        raise DatasetError(f"cell {task.cell.id} r{task.repeat}: its {part} part is empty")
    return concat_arrays(pieces, classes, size)


def execute_cell(task: CellTask, data: ExperimentData) -> dict[str, Any]:
    """Train one cell from scratch (or resume it), evaluate it, and write its metrics and done marker."""
    from fertk.evaluate import evaluate
    from fertk.models.fer_cnn import load_fer_model
    from fertk.train.fer import train_fer
    from fertk.train.fer_config import PLATEAU_FRACTION, FerTrainConfig

    started = time.perf_counter()
    (task.dir / "error.txt").unlink(missing_ok=True)  # from an earlier, failed attempt
    config = FerTrainConfig.from_dict(task.train_config)
    classes, size = tuple(config.classes or ()), config.input_size
    pool = None
    if task.cell.synthetic is not None:
        pool = data.pools[task.cell.synthetic]
        if task.shuffle_seed is not None:
            pool = shuffled_labels(pool, task.shuffle_seed)
    train = _cell_part(data, task, pool, "train", classes, size)
    val = _cell_part(data, task, pool, "val", classes, size)
    tests = {"test": _cell_part(data, task, pool, "test", classes, size)}
    if task.cell.kind == "mix":
        tests["test_real"] = _cell_part(data, task, pool, "test", classes, size, real_only=True)
    tests.update(data.cross_db)

    result = train_fer(train, val, config, task.dir / "train", resume=True,
                       data_info={"experiment_cell": task.cell.id, "repeat": task.repeat,
                                  "cell_fingerprint": task.fingerprint})
    model, _card = load_fer_model(result.model_path)
    reports = {name: evaluate(model, arrays, classes, name=name) for name, arrays in tests.items()}
    metrics = {
        "cell": task.cell.to_dict(), "repeat": task.repeat, "fingerprint": task.fingerprint,
        "counts": {"train": len(train), "val": len(val), **{name: len(a) for name, a in tests.items()}},
        "train": {"acc": result.best["acc"], "loss": result.best["loss"], "val_acc": result.best["val_acc"],
                  "val_loss": result.best["val_loss"], "best_epoch": result.best_epoch,
                  "epochs_run": result.epochs_run, "stop_reason": result.stop_reason},
        # A CNN that never left its starting plateau predicts the uniform distribution: its best
        # validation loss stays at ln K. Such a cell measures the optimiser, not the data; say so.
        "plateau": bool(result.best["val_loss"] >= PLATEAU_FRACTION * math.log(len(classes))),
        "restarts": result.restarts,
        "accuracy": {name: report.accuracy for name, report in reports.items()},
        "macro_f1": {name: report.macro_f1 for name, report in reports.items()},
        "reports": {name: report.to_dict() for name, report in reports.items()},
        "seconds": time.perf_counter() - started,
        "model": str(result.model_path),
    }
    atomic_write_text(task.dir / METRICS_FILE, json.dumps(metrics, indent=1, default=float) + "\n")
    atomic_write_text(task.dir / DONE_FILE, json.dumps(
        {"fingerprint": task.fingerprint, "finished": time.time(), "seconds": metrics["seconds"]}) + "\n")
    return metrics


def cell_state(task: CellTask) -> str:
    """'done' (finished with these settings), 'partial', 'new', or 'stale' (other settings)."""
    done, meta = task.dir / DONE_FILE, task.dir / CELL_FILE
    if done.is_file() and (task.dir / METRICS_FILE).is_file():
        try:
            same = json.loads(done.read_text()).get("fingerprint") == task.fingerprint
        except (OSError, ValueError):
            same = False
        return "done" if same else "stale"
    if meta.is_file():
        try:
            same = json.loads(meta.read_text()).get("fingerprint") == task.fingerprint
        except (OSError, ValueError):
            same = False
        return "partial" if same else "stale"
    return "partial" if task.dir.exists() and any(task.dir.iterdir()) else "new"


# -- worker processes -------------------------------------------------------------------------------
_WORKER_DATA: ExperimentData | None = None


def _init_worker(data: ExperimentData, threads: int | None) -> None:
    global _WORKER_DATA
    _WORKER_DATA = data
    if threads:
        import torch

        torch.set_num_threads(threads)


def _run_in_worker(task: CellTask) -> dict[str, Any]:
    """Worker entry: a status instead of an exception, so one failed cell does not stop the others."""
    assert _WORKER_DATA is not None, "worker not initialised"
    try:
        return {"status": "done", "metrics": execute_cell(task, _WORKER_DATA)}
    except Exception as exc:  # noqa: BLE001 - reported per cell by the parent
        return _failure(task, exc)


def _failure(task: CellTask, exc: BaseException) -> dict[str, Any]:
    """A failed cell's status; the traceback goes to error.txt in the cell (bugs stay debuggable)."""
    import traceback

    text = str(exc) if isinstance(exc, FertkError) else f"{type(exc).__name__}: {exc}"
    hint = getattr(exc, "hint", None)
    try:
        atomic_write_text(task.dir / "error.txt", "".join(traceback.format_exception(exc)))
    except OSError:
        pass
    return {"status": "failed", "error": text + (f" (hint: {hint})" if hint else "")}


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# -- the run ----------------------------------------------------------------------------------------
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
                   threads: int | None = None, force: bool = False,
                   on_event: EventCallback | None = None) -> ExperimentResult:
    """Run (or resume) every cell of the experiment and write the summary report.

    `jobs` > 1 trains cells in that many worker processes, each with `threads` torch threads
    (default: the cores divided among the workers). `force` redoes cells whose settings changed
    since they finished (otherwise such a run directory is refused).
    """
    from fertk.data.splits import save_manifest
    from fertk.experiment.report import write_report

    started = time.perf_counter()
    if jobs < 1:
        raise InvalidInputError(f"--jobs must be at least 1, got {jobs}")
    if threads is not None and threads < 1:
        raise InvalidInputError(f"--threads must be at least 1, got {threads}")
    if threads is None and jobs > 1:
        threads = max(1, available_cores() // jobs)
    run_dir = Path(out) if out is not None else default_run_dir(config)
    run_dir = run_dir.expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.source and Path(config.source).is_file():
        atomic_write_text(run_dir / "config.toml", Path(config.source).read_text(encoding="utf-8"))

    real_info: list[dict[str, Any]] = []
    real = prepare_all(config, on_event=on_event, info=real_info)
    data = load_data(config, real=real, on_event=on_event)
    data.info["real"] = real_info

    plans = [plan_repeat(config, data, r) for r in range(config.repeats)]
    for plan in plans:
        save_manifest(plan.split, run_dir / "splits" / f"real-r{plan.repeat}.json")
        for spec in config.synthetic:
            if plan.units[spec.name]:
                atomic_write_text(run_dir / "splits" / f"{spec.name}-r{plan.repeat}.json",
                                  json.dumps(_units_manifest(spec, plan), indent=1) + "\n")
    resolved = {"config": config.to_dict(), "data": data.info,
                "split_sizes": plans[0].split.sizes, "split_notes": list(plans[0].split.notes),
                "unit_identities": sum(plans[0].split.sizes.values()), "cells": [c.to_dict() for c in plan_cells(config)]}
    atomic_write_text(run_dir / "config.resolved.json", json.dumps(resolved, indent=1, default=str) + "\n")

    cells = plan_cells(config)
    tasks = [make_task(config, data, plan, cell, run_dir, threads) for plan in plans for cell in cells]
    _emit(on_event, "plan", f"{len(cells)} training mixes × {config.repeats} repeat(s) = {len(tasks)} cells"
                            f" (unit: {resolved['unit_identities']} identities; {jobs} job(s)"
                            + (f", {threads} torch thread(s) each)" if threads else ")"), total=len(tasks))

    rows: list[dict[str, Any]] = []
    metrics_by_key: dict[tuple[str, int], dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []
    todo: list[CellTask] = []
    states = [cell_state(task) for task in tasks]
    stale = [task for task, state in zip(tasks, states) if state == "stale"]
    if stale and not force:  # refused before anything in the run directory changes
        raise OutputExistsError(
            f"{stale[0].dir} holds cell {stale[0].cell.id} r{stale[0].repeat} made with other settings"
            + (f" (and {len(stale) - 1} more cell(s))" if len(stale) > 1 else ""),
            hint="use another --out, or --force to redo the cells whose settings changed")
    for i, (task, state) in enumerate(zip(tasks, states)):
        if state == "stale":
            shutil.rmtree(task.dir)
            state = "new"
        if state == "done":
            from fertk.experiment.report import read_run_json

            metrics = read_run_json(task.dir / METRICS_FILE)
            metrics_by_key[(task.cell.id, task.repeat)] = metrics
            rows.append(_row(task, "skipped", metrics))
            _emit(on_event, "skip", f"{task.cell.label} r{task.repeat}: finished earlier", index=i + 1,
                  total=len(tasks), cell=task.cell.id, repeat=task.repeat, data=rows[-1])
            continue
        task.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(task.dir / CELL_FILE, json.dumps(
            {"fingerprint": task.fingerprint, **task.description}, indent=1, default=str) + "\n")
        todo.append(task)

    position = {id(t): tasks.index(t) + 1 for t in todo}

    def finished(task: CellTask, outcome: dict[str, Any]) -> None:
        if outcome["status"] == "done":
            metrics_by_key[(task.cell.id, task.repeat)] = outcome["metrics"]
            rows.append(_row(task, "ran", outcome["metrics"]))
            _emit(on_event, "done", _done_message(task, outcome["metrics"]), index=position[id(task)],
                  total=len(tasks), cell=task.cell.id, repeat=task.repeat, data=rows[-1])
        else:
            failed.append({"cell": task.cell.id, "repeat": task.repeat, "error": outcome["error"]})
            rows.append({"cell": task.cell.id, "label": task.cell.label, "repeat": task.repeat, "status": "failed",
                         "error": outcome["error"]})
            _emit(on_event, "failed", f"{task.cell.label} r{task.repeat}: {outcome['error']}",
                  index=position[id(task)], total=len(tasks), cell=task.cell.id, repeat=task.repeat)

    if jobs == 1 or len(todo) <= 1:
        _run_sequential(todo, data, threads, finished, on_event, position, len(tasks))
    else:
        _run_parallel(todo, data, jobs, threads, finished, on_event, position, len(tasks))

    ordered = [metrics_by_key[(t.cell.id, t.repeat)] for t in tasks if (t.cell.id, t.repeat) in metrics_by_key]
    summary, files = write_report(run_dir, config, ordered, resolved, on_event=on_event)
    order = {(t.cell.id, t.repeat): i for i, t in enumerate(tasks)}
    rows.sort(key=lambda r: order[(r["cell"], r["repeat"])])
    return ExperimentResult(
        run_dir=str(run_dir), cells=rows, summary=summary, files=files,
        ran=sum(r["status"] == "ran" for r in rows), skipped=sum(r["status"] == "skipped" for r in rows),
        failed=failed, seconds=time.perf_counter() - started, jobs=jobs, threads=threads)


def _run_sequential(todo: list[CellTask], data: ExperimentData, threads: int | None,
                    finished: Callable[[CellTask, dict[str, Any]], None], on_event: EventCallback | None,
                    position: dict[int, int], total: int) -> None:
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for task in todo:
            _emit(on_event, "start", f"{task.cell.label} r{task.repeat}", index=position[id(task)], total=total,
                  cell=task.cell.id, repeat=task.repeat)
            try:
                outcome = {"status": "done", "metrics": execute_cell(task, data)}
            except Exception as exc:  # noqa: BLE001 - one failed cell must not lose the others' results
                outcome = _failure(task, exc)
            finished(task, outcome)
    finally:
        torch.set_num_threads(before)


def _run_parallel(todo: list[CellTask], data: ExperimentData, jobs: int, threads: int | None,
                  finished: Callable[[CellTask, dict[str, Any]], None], on_event: EventCallback | None,
                  position: dict[int, int], total: int) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # Spawned, not forked: a forked child inherits torch's (possibly busy) OpenMP pool and can hang.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=context, initializer=_init_worker,
                               initargs=(data, threads))
    futures = {}
    try:
        for task in todo:
            futures[pool.submit(_run_in_worker, task)] = task
            _emit(on_event, "start", f"{task.cell.label} r{task.repeat} (queued)", index=position[id(task)],
                  total=total, cell=task.cell.id, repeat=task.repeat)
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


__all__ = ["Cell", "CellTask", "ExperimentData", "ExperimentEvent", "ExperimentResult", "RepeatPlan",
           "derive_seed", "draw_units", "execute_cell", "generate_dataset", "load_data", "load_real", "make_task", "plan_cells",
           "plan_repeat", "prepare_all", "prepare_data", "run_experiment", "shuffled_labels", "units_needed"]
