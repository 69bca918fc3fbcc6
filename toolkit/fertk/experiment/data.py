"""The datasets of an experiment: made with fertk synth where a [generate] table asks, then read
into memory once (gray, at the CNN's input size, labels over the config's classes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fertk.core.errors import DatasetError, InvalidInputError
from fertk.core.progress import Progress, emit
from fertk.data.datasets import load_arrays
from fertk.data.preprocess import PreprocessConfig
from fertk.data.records import FaceArrays
from fertk.data.shards import is_synth_dataset, read_options
from fertk.data.splits import subject_split
from fertk.experiment.config import DatasetSpec, ExperimentConfig, units_needed
from fertk.synth import SynthOptions, run_synth
from fertk.data.convert import concat_arrays, summarize_arrays


@dataclass
class ExperimentData:
    """Every dataset of a run in memory, gray at the CNN's input size, labels over the config's classes."""
    real: FaceArrays
    pools: dict[str, FaceArrays]        # synthetic set name -> its faces (sets sharing a path share one)
    cross_db: dict[str, FaceArrays]
    info: dict[str, Any] = field(default_factory=dict)


def _synth_identities(path: str) -> int | None:
    """Identities of an existing `fertk synth` dataset, or None."""
    if not is_synth_dataset(path):
        return None
    return int(read_options(path)["plan"]["n"])


def generate_dataset(spec: DatasetSpec, n: int | None = None, *, progress: Progress | None = None) -> Any:
    """Make (or finish) the dataset a [generate] table describes with fertk synth; returns the SynthResult."""
    table = dict(spec.generate or {})
    count = int(table.pop("n", n or 0))
    if count < 1:
        raise InvalidInputError(f"{spec.name}: [generate] needs n (identities)")
    options = SynthOptions(out=spec.path, n=count, **table)
    emit(progress, "generate", f"fertk synth: {spec.name} ({count} identities, style {options.style}) -> {spec.path}")
    return run_synth(options)


def prepare_data(config: ExperimentConfig, *, groups: Sequence[str] = ("real", "cross_db", "synthetic"),
                 unit_identities: int | None = None, progress: Progress | None = None) -> list[Any]:
    """Generate every dataset of `groups` that has a [generate] table (resumable: finished shards are kept).

    A synthetic set whose table gives no n gets `unit_identities × units` identities (the pool one
    repeat needs), or keeps the size it already has on disk.
    """
    results = []
    for group in ("real", "cross_db"):
        if group in groups:
            results += [generate_dataset(s, progress=progress) for s in getattr(config, group) if s.generate is not None]
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
        results.append(generate_dataset(spec, int(n), progress=progress))
    return results


def prepare_all(config: ExperimentConfig, *, progress: Progress | None = None,
                info: list[dict[str, Any]] | None = None) -> FaceArrays:
    """Generate what is missing, real data first (its split decides a synthetic unit's size); returns the real data."""
    prepare_data(config, groups=("real", "cross_db"), progress=progress)
    real = load_real(config, progress=progress, info=info)
    unit = sum(subject_split(real, config.split_sizes, seed=config.split_seed).sizes.values())
    prepare_data(config, groups=("synthetic",), unit_identities=unit, progress=progress)
    return real


def _load_spec(spec: DatasetSpec, config: ExperimentConfig) -> FaceArrays:

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

    info = summarize_arrays(arrays)
    if spec is not None:
        info = {"name": spec.name, "path": spec.path, "layout": spec.layout, **info}
    return info


def load_real(config: ExperimentConfig, *, progress: Progress | None = None,
              info: list[dict[str, Any]] | None = None) -> FaceArrays:
    """The real database(s) as one FaceArrays (subjects qualified by database when there are several)."""
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
        emit(progress, "load", f"real {spec.name}: {len(arrays)} faces, {described['subjects']} subjects")
    return reals[0] if len(reals) == 1 else concat_arrays(reals, config.classes, config.input_size)


def load_data(config: ExperimentConfig, *, real: FaceArrays | None = None,
              progress: Progress | None = None) -> ExperimentData:
    """Read the real, synthetic and cross-database sets (already generated) into memory."""
    info: dict[str, Any] = {"real": [], "synthetic": [], "cross_db": []}
    if real is None:
        real = load_real(config, progress=progress, info=info["real"])
    else:
        info["real"] = [_describe(real)]
    pools: dict[str, FaceArrays] = {}
    by_path: dict[str, FaceArrays] = {}
    for spec in config.synthetic:
        if spec.path not in by_path:
            by_path[spec.path] = _load_spec(spec, config)
        pools[spec.name] = by_path[spec.path]
        info["synthetic"].append({**_describe(pools[spec.name], spec), "shuffle_labels": spec.shuffle_labels})
        emit(progress, "load", f"synthetic {spec.name}: {len(pools[spec.name])} faces, "
                                f"{info['synthetic'][-1]['subjects']} identities"
                                + (" (labels shuffled: the control)" if spec.shuffle_labels else ""))
    cross_db = {}
    for spec in config.cross_db:
        cross_db[spec.name] = _load_spec(spec, config)
        info["cross_db"].append(_describe(cross_db[spec.name], spec))
        emit(progress, "load", f"cross-db {spec.name}: {len(cross_db[spec.name])} faces")
    return ExperimentData(real, pools, cross_db, info)
