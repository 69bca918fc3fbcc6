"""Train and evaluate one cell (from scratch, or resuming its training run) and write its metrics
and done marker last; a failed cell becomes a status with its error, not an exception."""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Sequence
from typing import Any
from fertk.core.errors import DatasetError, FertkError
from fertk.core.io import atomic_write_text
from fertk.data.records import FaceArrays
from fertk.evaluate import evaluate
from fertk.experiment.cells import DONE_FILE, METRICS_FILE, CellTask, shuffled_labels
from fertk.experiment.data import ExperimentData
from fertk.models.fer_cnn import load_fer_model
from fertk.data.convert import concat_arrays
from fertk.train.fer import train_fer
from fertk.train.fer_config import PLATEAU_FRACTION, FerTrainConfig


def _cell_part(data: ExperimentData, task: CellTask, pool: FaceArrays | None, part: str, classes: Sequence[str],
               size: int, *, real_only: bool = False) -> FaceArrays:

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


def cell_failure(task: CellTask, exc: BaseException) -> dict[str, Any]:
    """A failed cell's status; the traceback goes to error.txt in the cell (bugs stay debuggable)."""
    text = str(exc) if isinstance(exc, FertkError) else f"{type(exc).__name__}: {exc}"
    hint = getattr(exc, "hint", None)
    try:
        atomic_write_text(task.dir / "error.txt", "".join(traceback.format_exception(exc)))
    except OSError:
        pass
    return {"status": "failed", "error": text + (f" (hint: {hint})" if hint else "")}
