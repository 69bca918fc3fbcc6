"""Manifest rows and the per-shard records that mark a shard done; merging the manifest; removing
what a killed or replaced run leaves; and the one rule for when a synth dataset is finished."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.errors import DatasetError
from fertk.core.io import atomic_target
from fertk.data.shards.layout import (
    CARD_FILE, MANIFEST_FILE, OPTIONS_FILE, DatasetLayout, layout_of, sample_key, shard_name, write_error,
)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "key", "shard", "offset", "file", "identity", "seed", "emotion", "label", "intensity", "attempt", "score",
)
COLUMN = {name: i for i, name in enumerate(MANIFEST_COLUMNS)}
FINISH_HINT = "finish it: rerun the same `fertk synth` command (it resumes)"


@dataclass
class ShardRows:
    """Per-face metadata of (part of) a shard, in face order: identity-major, emotion-minor."""

    identity: np.ndarray    # int64 [F]
    seed: np.ndarray        # uint64 [F]
    emotion: list[str]      # [F]
    label: np.ndarray       # int64 [F]
    intensity: np.ndarray   # float32 [F]
    attempt: np.ndarray     # int64 [F]
    score: np.ndarray | None = None  # float32 [F] filter scores, None without a filter

    def __len__(self) -> int:
        return len(self.identity)

    def keys(self) -> list[str]:
        """Sample keys."""
        return [sample_key(int(i), e) for i, e in zip(self.identity, self.emotion)]


def manifest_lines(rows: ShardRows, shard: int, start_offset: int, files: Sequence[str]) -> list[str]:
    """The CSV lines (MANIFEST_COLUMNS, no header) of `rows`, written from offset `start_offset`."""
    identities, seeds, labels = rows.identity.tolist(), rows.seed.tolist(), rows.label.tolist()
    attempts = rows.attempt.tolist()
    intensities = [f"{v:.9g}" for v in rows.intensity.tolist()]
    scores = [""] * len(identities) if rows.score is None else [f"{v:.6f}" for v in rows.score.tolist()]
    return [
        f"id{identities[j]:09d}_{rows.emotion[j]},{shard},{start_offset + j},{files[j]},{identities[j]},"
        f"{seeds[j]},{rows.emotion[j]},{labels[j]},{intensities[j]},{attempts[j]},{scores[j]}\n"
        for j in range(len(identities))
    ]


def read_manifest_part(layout: DatasetLayout, shard: int) -> list[list[str]]:
    """A shard's manifest rows, split into fields (index them with COLUMN)."""
    path = layout.manifest_part_path(shard)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    return [line.split(",") for line in text.splitlines() if line]


# -- done markers ----------------------------------------------------------------------------

def shard_done(layout: DatasetLayout, shard: int, fingerprint: str | None = None,
               execution: dict[str, Any] | None = None) -> bool:
    """A shard is finished when its record exists (made under `fingerprint` and, when the record
    holds them, the byte-affecting `execution` choices, when given) and its files have the recorded
    sizes. Records from before execution choices were recorded count as made under any."""
    path = layout.record_path(shard)
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if fingerprint is not None and record.get("fingerprint") != fingerprint:
        return False
    if execution is not None and "execution" in record and record["execution"] != execution:
        return False
    if layout.fmt == "folder":  # per-file sizes are checked by verify; stat-ing 6 000 files here is waste
        return layout.manifest_part_path(shard).is_file()
    for rel, info in record.get("files", {}).items():
        target = layout.root / rel
        if not target.is_file() or target.stat().st_size != info["bytes"]:
            return False
    return layout.manifest_part_path(shard).is_file()


def unfinished_shards(layout: DatasetLayout, num_shards: int) -> list[int]:
    """The shards of a dataset that are not done."""
    return [s for s in range(num_shards) if not shard_done(layout, s)]


def unfinished_reason(root: str | Path) -> str | None:
    """Why a synth dataset directory is not finished (None once it is): a run writes options.json
    first, then the shards (each done by its record), then manifest.csv, then dataset_card.json."""
    layout, options = layout_of(root)
    num_shards = int(options["num_shards"])
    missing = unfinished_shards(layout, num_shards)
    if missing:
        return f"{len(missing)} of {num_shards} shards unfinished"
    if not layout.manifest_path.is_file():
        return f"no {MANIFEST_FILE} yet"
    if not layout.card_path.is_file():
        return f"no {CARD_FILE} yet"
    return None


def check_finished(root: str | Path) -> None:
    """Raise a one-line DatasetError naming `root` unless its synth run has finished."""
    reason = unfinished_reason(root)
    if reason is not None:
        raise DatasetError(f"{root} is an unfinished `fertk synth` dataset ({reason})", hint=FINISH_HINT)


def _record_fingerprint(layout: DatasetLayout, shard: int) -> str | None:
    try:
        return json.loads(layout.record_path(shard).read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def merge_manifest(layout: DatasetLayout, num_shards: int, fingerprint: str | None = None) -> bool:
    """Write manifest.csv from every shard's part, in shard order, if all are done; idempotent."""
    if not all(layout.record_path(s).is_file() for s in range(num_shards)):
        return False
    if fingerprint is not None and any(_record_fingerprint(layout, s) != fingerprint for s in range(num_shards)):
        return False
    try:
        with atomic_target(layout.manifest_path, fsync=True) as tmp, open(tmp, "wb") as out:
            out.write((",".join(MANIFEST_COLUMNS) + "\n").encode())
            for s in range(num_shards):
                with open(layout.manifest_part_path(s), "rb") as part:
                    while block := part.read(1 << 20):
                        out.write(block)
    except OSError as exc:
        raise write_error(layout.manifest_path, exc) from None
    return True


# -- leftovers -------------------------------------------------------------------------------

def remove_stale_temps(layout: DatasetLayout, shard: int) -> int:
    """Delete the temporary files a killed writer of `shard` can leave (record, manifest part and
    data files, any process id); only the shard's owner may call this. Returns how many went."""
    name = shard_name(shard)
    patterns = [(layout.meta / "records", f".{name}.json.*.tmp"), (layout.meta / "manifest", f".{name}.csv.*.tmp")]
    if layout.fmt != "folder":
        patterns.append((layout.root / "shards", f".{name}.*.tmp"))      # streamed tar / npy, labels.npy
        patterns.append((layout.root / "shards", f"{name}.*.tmp"))       # the same, as older fertk named them
    removed = 0
    for folder, pattern in patterns:
        if not folder.is_dir():
            continue
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    """Whether `pid` may still be writing (this host's process table)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_dataset_temps(layout: DatasetLayout, *, min_age_s: float = 0.0,
                               live: Callable[[int], bool] | None = None) -> int:
    """Delete dataset-level temporary files (options, manifest, card) whose writer process is gone
    and that were last written at least `min_age_s` ago.

    `live(pid) -> bool` says whether a process id may still be writing; the default asks this
    host's process table, which knows nothing of other hosts: where another host may write into
    the same directory, pass a `min_age_s` no live write lasts."""
    live = live or _process_alive
    removed = 0
    for folder, stem in ((layout.root, MANIFEST_FILE), (layout.root, CARD_FILE), (layout.meta, OPTIONS_FILE)):
        if not folder.is_dir():
            continue
        for path in folder.glob(f".{stem}.*.tmp"):
            pid = path.name[len(stem) + 2:-len(".tmp")]   # .<stem>.<pid>.tmp (fertk.core.io.temp_path_for)
            try:
                age = time.time() - path.stat().st_mtime
            except OSError:
                continue
            if pid.isdigit() and not live(int(pid)) and age >= min_age_s:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def remove_shard(layout: DatasetLayout, shard: int, *, identities: range | None = None,
                 emotions: Sequence[str] = ()) -> None:
    """Delete a shard's record, manifest part, data files and leftovers (used by --force)."""
    layout.record_path(shard).unlink(missing_ok=True)
    layout.manifest_part_path(shard).unlink(missing_ok=True)
    remove_stale_temps(layout, shard)
    if layout.fmt == "folder":
        for identity in identities or ():
            for emotion in emotions:
                path = layout.root / layout.image_file(identity, emotion)
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".tmp").unlink(missing_ok=True)   # FolderShardWriter's temp name
        return
    for rel in (layout.shard_file(shard), layout.labels_file(shard) if layout.fmt == "npy" else None):
        if rel:
            (layout.root / rel).unlink(missing_ok=True)
