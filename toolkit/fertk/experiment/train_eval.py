"""What `fertk train fer` runs: from dataset paths to a trained FER CNN tested on the split's
test part and on every extra test dataset (training from `fertk.train`, scoring from
`fertk.evaluate`; this layer sits above both). Reports go to `<run_dir>/eval/`, the test
summaries into the model's card."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fertk.core.io import atomic_write_text
from fertk.core.progress import Progress
from fertk.data.options import DatasetOptions, dataset_name, unique_names
from fertk.data.records import FaceArrays
from fertk.evaluate import EvalReport, evaluate_sets, write_reports
from fertk.models.fer_cnn import card_path_for, load_fer_model
from fertk.models.weights import read_json_object
from fertk.train.fer import train_fer
from fertk.train.fer_config import FerTrainConfig, TrainResult
from fertk.train.fer_data import SplitChoice, prepare_fer_data

EVAL_DIR = "eval"


@dataclass
class FerRun:
    """A `fertk train fer` run: the training result, how the data was split, and test metrics."""

    training: TrainResult
    datasets: list[dict[str, Any]]
    split: dict[str, Any] | None
    tests: list[EvalReport]
    files: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (history left out: it is in history.csv)."""
        training = self.training.to_dict()
        training.pop("history")
        training.pop("data", None)
        return {"training": training, "datasets": self.datasets, "split": self.split,
                "tests": [r.summary() for r in self.tests],
                "files": json.loads(json.dumps(self.files, default=str))}


def read_test_sets(paths: Sequence[str | Path], read: DatasetOptions, size: int, taken: set[str],
                   progress: Progress | None) -> dict[str, FaceArrays]:
    """Extra test datasets by name (folder or file stem, made unique against `taken`)."""
    names = unique_names([dataset_name(p) for p in paths], taken=taken)
    return {name: read.load(path, size=size, progress=progress) for name, path in zip(names, paths)}


def record_test_metrics(model_path: Path, reports: Sequence[EvalReport]) -> None:
    """Add the test-set summaries to the model's JSON card (weights untouched)."""
    card_file = card_path_for(model_path)
    card = read_json_object(card_file, "FER CNN card")
    card.setdefault("extra", {}).setdefault("metrics", {})["test"] = [r.summary() for r in reports]
    atomic_write_text(card_file, json.dumps(card, indent=2, default=str) + "\n")


def score_test_sets(training: TrainResult, test_sets: dict[str, FaceArrays], run_dir: Path,
                 split: dict[str, Any] | None) -> tuple[list[EvalReport], dict[str, Any]]:
    """Score the best checkpoint on every test set, write the reports; the run's file list."""
    files: dict[str, Any] = {"run_dir": str(run_dir), "model": str(training.model_path),
                             "history": str(run_dir / "history.csv"), "curves": str(run_dir / "curves.png")}
    if split:
        files["split"] = split["manifest"]
    if not test_sets:
        return [], files
    model, _card = load_fer_model(training.model_path)
    reports = evaluate_sets(model, test_sets)
    files["eval"] = write_reports(reports, run_dir / EVAL_DIR)
    record_test_metrics(training.model_path, reports)
    return reports, files


def train_fer_from_paths(
    datasets: Sequence[str | Path],
    *,
    config: FerTrainConfig | None = None,
    run_dir: str | Path = "runs/fer",
    read: DatasetOptions | None = None,
    val: Sequence[str | Path] = (),
    test: Sequence[str | Path] = (),
    split: Sequence[float] | None = None,
    split_manifest: str | Path | None = None,
    split_seed: int = 0,
    val_fraction: float | None = None,
    progress: Progress | None = None,
    resume: bool = True,
    allow_missing_classes: bool = False,
) -> FerRun:
    """Read datasets, split them by subject (or use `val`), train, and evaluate on the test part
    and on every extra `test` dataset; reports go to `<run_dir>/eval/`.

    The validation set comes from exactly one of: `val` datasets; `split_manifest` (a saved
    split); `val_fraction` (train/val only, no test part); `split` sizes (subject counts or
    fractions, three parts); or, when none is given, the paper's 109:10:25 proportions.

    Training data without a sample of some class is an error unless `allow_missing_classes`
    (see `train_fer`); test reports list the classes a test set lacks (`absent_classes`).
    """
    run_dir = Path(run_dir)
    choice = SplitChoice(val=val, split=split, split_manifest=split_manifest, split_seed=split_seed,
                         val_fraction=val_fraction)
    data = prepare_fer_data(datasets, config=config or FerTrainConfig(), read=read or DatasetOptions(),
                            choice=choice, run_dir=run_dir, resume=resume,
                            allow_missing_classes=allow_missing_classes, progress=progress)
    # Test sets are read before training so that a bad path fails before hours of work.
    test_sets = {**data.tests, **read_test_sets(test, data.read, data.config.input_size, set(data.tests), progress)}
    training = train_fer(data.train, data.val, data.config, run_dir, progress=progress, resume=resume,
                         data_info=data.data_info, allow_missing_classes=allow_missing_classes)
    reports, files = score_test_sets(training, test_sets, run_dir, data.split)
    return FerRun(training, data.datasets, data.split, reports, files)
