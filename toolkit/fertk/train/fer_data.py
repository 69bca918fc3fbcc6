"""From dataset paths to a FER run's training and validation sets: read every dataset with one
set of options, combine them, check every class is present, and take the validation set from
`--val` datasets or a subject-disjoint split (saved as the run's split.json)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fertk.core.errors import DatasetError, InvalidInputError, OutputExistsError
from fertk.core.io import sha256_file
from fertk.core.progress import Progress, say
from fertk.data.convert import concat_arrays, summarize_arrays
from fertk.data.options import DatasetOptions, dataset_info
from fertk.data.records import FaceArrays
from fertk.data.splits import PAPER_SIZES, Split, load_manifest, save_manifest, subject_split
from fertk.train.fer import absent_classes
from fertk.train.fer_config import FerTrainConfig

# The paper's 109 / 10 / 25 subjects as fractions, so any number of subjects splits in those
# proportions (subject counts would leave extra subjects out, or be scaled down).
PAPER_SPLIT_FRACTIONS: tuple[float, ...] = tuple(n / sum(PAPER_SIZES) for n in PAPER_SIZES)
SPLIT_FILE = "split.json"


@dataclass
class SplitChoice:
    """Where the validation set comes from: exactly one of `val` datasets, a saved split, a
    validation fraction (no test part) or split sizes; none of them = the paper's proportions."""

    val: Sequence[str | Path] = ()
    split: Sequence[float] | None = None
    split_manifest: str | Path | None = None
    split_seed: int = 0
    val_fraction: float | None = None

    def check(self) -> None:
        """One source of the validation set, and a fraction inside (0, 1)."""
        chosen = [name for name, given in (("--val", bool(self.val)),
                                           ("--split-manifest", self.split_manifest is not None),
                                           ("--val-fraction", self.val_fraction is not None),
                                           ("--split", self.split is not None)) if given]
        if len(chosen) > 1:
            raise InvalidInputError(f"{' and '.join(chosen)} both choose the validation set; give one of them")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise InvalidInputError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")

    def make_split(self, everything: FaceArrays) -> Split:
        """The saved split, or a subject split of `everything` in the chosen sizes."""
        if self.split_manifest is not None:
            return load_manifest(self.split_manifest)
        sizes = ((1 - self.val_fraction, self.val_fraction, 0.0) if self.val_fraction is not None
                 else tuple(self.split or PAPER_SPLIT_FRACTIONS))
        return subject_split(everything, sizes, seed=self.split_seed)


@dataclass
class FerData:
    """A run's data: training and validation sets, the split's test part, and what the card says."""

    config: FerTrainConfig                 # with the classes fixed
    read: DatasetOptions                   # with the classes fixed
    train: FaceArrays
    val: FaceArrays
    tests: dict[str, FaceArrays]           # the split's test part ("test"), when it has one
    datasets: list[dict[str, Any]]         # per training dataset: path, what reading dropped, counts
    split: dict[str, Any] | None           # the split manifest's path, sha256, seed, sizes, notes
    data_info: dict[str, Any] = field(default_factory=dict)  # for the model card


def read_training_sets(datasets: Sequence[str | Path], read: DatasetOptions, size: int,
                       progress: Progress | None) -> list[FaceArrays]:
    """Every training dataset, read with `read` at `size`, each announced with its counts."""
    loaded = []
    for path in datasets:
        arrays = read.load(path, size=size, progress=progress)
        say(progress, f"read {path}: {len(arrays)} faces, {summarize_arrays(arrays)['subjects']} subjects"
            + "".join(f", {k} {v}" for k, v in dataset_info(arrays).items() if k in ("unreadable", "no_face") and v))
        loaded.append(arrays)
    return loaded


def check_classes_present(everything: FaceArrays, classes: tuple[str, ...], datasets: Sequence[str | Path],
                          allow_missing_classes: bool) -> None:
    """Training data without a sample of some class is a DatasetError unless allowed."""
    missing = absent_classes(torch.from_numpy(np.asarray(everything.labels, np.int64)), classes)
    if missing and not allow_missing_classes:
        present = [c for c in classes if c not in missing]
        raise DatasetError(
            f"{', '.join(map(str, datasets))}: no sample of {', '.join(missing)} "
            f"({len(present)} of the {len(classes)} classes present: {', '.join(present) or 'none'})",
            hint="train on the classes present (--classes " + ",".join(present or ["..."]) + "; Python: classes=...), "
                 "or pass --allow-missing-classes (Python: allow_missing_classes=True)")


def write_split(run_dir: Path, split: Split, resume: bool) -> tuple[Path, str]:
    """Save the split manifest in the run dir; refuse to replace a different one when resuming."""
    path = run_dir / SPLIT_FILE
    new = json.dumps(split.to_dict(), sort_keys=True)
    if resume and path.is_file():
        try:
            old = json.dumps(json.loads(path.read_text()), sort_keys=True)
        except (OSError, ValueError):
            old = None
        if old is not None and old != new and ((run_dir / "result.json").is_file() or (run_dir / "last.pt").is_file()):
            raise OutputExistsError(f"{path} holds a different split than this run asks for",
                                    hint="pass --split-manifest " + str(path) + " to reuse it, --no-resume, or another --out")
    save_manifest(split, path)
    return path, sha256_file(path)


def split_by_subject(everything: FaceArrays, choice: SplitChoice, run_dir: Path, resume: bool,
                     progress: Progress | None) -> tuple[dict[str, FaceArrays], dict[str, Any]]:
    """Train / val (/ test) parts of `everything` and the split's record (manifest written to run_dir)."""
    the_split = choice.make_split(everything)
    if "val" not in the_split.parts:
        raise InvalidInputError(f"the split has parts {list(the_split.parts)}, but training needs a val part",
                                hint="give three sizes (train, val, test), e.g. --split 109,10,25")
    parts = the_split.apply(everything)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest, sha = write_split(run_dir, the_split, resume)
    info = {"manifest": str(manifest), "sha256": sha, "seed": the_split.seed,
            "sizes": the_split.sizes, "notes": list(the_split.notes),
            "from": str(choice.split_manifest) if choice.split_manifest is not None else "subject_split"}
    say(progress, "split by subject: " + ", ".join(f"{k} {v} subjects ({len(parts[k])} faces)"
                                                 for k, v in the_split.sizes.items()))
    for note in the_split.notes:
        say(progress, f"split note: {note}")
    return parts, info


def prepare_fer_data(datasets: Sequence[str | Path], *, config: FerTrainConfig, read: DatasetOptions,
                     choice: SplitChoice, run_dir: Path, resume: bool = True, allow_missing_classes: bool = False,
                     progress: Progress | None = None) -> FerData:
    """Read the training datasets, check their classes, and split off the validation set."""
    if not datasets:
        raise InvalidInputError("no training dataset given", hint="fertk train fer DATASET [--dataset ...]")
    choice.check()
    classes = tuple(config.classes or read.classes)
    read = read.with_classes(classes)
    config = FerTrainConfig.from_dict({**config.to_dict(), "classes": classes})
    loaded = read_training_sets(datasets, read, config.input_size, progress)
    infos = [{"path": str(p), **dataset_info(a), **summarize_arrays(a)} for p, a in zip(datasets, loaded)]
    everything = concat_arrays(loaded, classes, config.input_size)
    check_classes_present(everything, classes, datasets, allow_missing_classes)
    split_info: dict[str, Any] | None = None
    tests: dict[str, FaceArrays] = {}
    if choice.val:
        train_part = everything
        val_part = concat_arrays([read.load(p, size=config.input_size, progress=progress) for p in choice.val],
                                 classes, config.input_size)
    else:
        parts, split_info = split_by_subject(everything, choice, run_dir, resume, progress)
        train_part, val_part = parts["train"], parts["val"]
        if len(parts.get("test", ())) > 0:
            tests["test"] = parts["test"]
    data_info = {"datasets": [str(p) for p in datasets], "val_datasets": [str(p) for p in choice.val],
                 "read_options": read.to_dict(),
                 "split_manifest": ({"path": split_info["manifest"], "sha256": split_info["sha256"]}
                                    if split_info else None)}
    return FerData(config, read, train_part, val_part, tests, infos, split_info, data_info)
