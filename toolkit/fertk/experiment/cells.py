"""Cells: one training mix × one repeat, planned as pure functions of (config, data, repeat).

A cell's task carries everything its result depends on (row indices into the shared data, the
training config) and the fingerprint of it; `cell_state` reads its directory for resume.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fertk.core.errors import DatasetError
from fertk.data.records import FaceArrays
from fertk.data.splits import Split, subject_split
from fertk.experiment.config import DatasetSpec, ExperimentConfig, units_needed
from fertk.experiment.data import ExperimentData

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


def _natural_key(text: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


# -- splits and synthetic units -----------------------------------------------------------------------
@dataclass
class RepeatPlan:
    """What repeat r trains on: the real split and each synthetic set's units (identity lists)."""
    repeat: int
    split: Split                                  # the subject split of the real data
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


def units_manifest(spec: DatasetSpec, plan: RepeatPlan) -> dict[str, Any]:
    """The JSON a run keeps of one synthetic set's units in one repeat (splits/<set>-r<R>.json)."""
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
