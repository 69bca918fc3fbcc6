"""`load_arrays`: one call from a dataset path to preprocessed `FaceArrays`.

A `fertk synth` output folder (it holds ``.fertk/options.json``: `fertk.data.shards.is_synth_dataset`)
is read by `fertk.data.shards.read_arrays` once its run has finished, and refused before that,
whatever the layout asked for; anything else goes through a layout reader (`fertk.data.layouts`)
and the face preprocessing (`fertk.data.preprocess`), cached on disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fertk.core.emotions import EKMAN
from fertk.core.errors import DatasetError
from fertk.core.paths import cache_dir
from fertk.core.progress import Progress
from fertk.data.layouts import read_records, resolve_classes
from fertk.data.preprocess import PreprocessConfig, preprocess_records
from fertk.data.records import FaceArrays
from fertk.data.shards import check_finished, is_synth_dataset, read_arrays


def default_cache_dir() -> Path:
    """Where preprocessed faces are cached: `<cache root>/preprocess` (see `fertk.core.paths`)."""
    return cache_dir("preprocess")


def load_arrays(
    path: str | Path,
    layout: str = "auto",
    classes: Iterable[str] | str | None = EKMAN,
    preprocess: PreprocessConfig | None = None,
    cache_dir: str | Path | None = None,
    strict: bool = False,
    progress: Progress | None = None,
    **reader_options: Any,
) -> FaceArrays:
    """Read and preprocess a dataset (any layout, or a finished synth output) into FaceArrays.

    `reader_options` go to the layout's reader (e.g. keep=("neutral",), peak_frames=3,
    subject_pattern=...). The read and preprocess reports land in ``arrays.meta``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path not found: {path}")
    if not callable(progress):
        progress = None  # callers from before the progress protocol pass a bool: no display from here
    if is_synth_dataset(path):
        # Partial data read by another layout would leak identities across a subject split.
        check_finished(path)
        if layout in ("auto", "synth"):
            return _load_synth(path, classes, reader_options)
    records, read_report = read_records(path, layout=layout, classes=classes, **reader_options)
    config = preprocess if preprocess is not None else PreprocessConfig()
    arrays, pre_report = preprocess_records(
        records, config,
        cache_dir=default_cache_dir() if cache_dir is None else cache_dir,
        strict=strict, progress=progress, classes=read_report.classes,
    )
    if len(arrays) == 0:
        raise DatasetError(f"{path}: no face survived preprocessing ({pre_report.summary()})",
                           hint="for pre-cropped faces use --detect none (Python: detect='none'); in Python, "
                                "fallback_center=True keeps a centred square when no face is found")
    arrays.meta.update({
        "path": str(path),
        "layout": read_report.layout,
        "read_report": read_report.to_dict(),
        "preprocess_report": pre_report.to_dict(),
    })
    return arrays


def _load_synth(path: Path, classes: Iterable[str] | str | None, options: dict[str, Any]) -> FaceArrays:
    keep = options.pop("keep", ())
    if options:
        raise DatasetError(f"{path} is a `fertk synth` output; reader options {', '.join(sorted(options))} do not apply")
    return read_arrays(path, classes=resolve_classes(classes, keep))


__all__ = ["default_cache_dir", "load_arrays"]
