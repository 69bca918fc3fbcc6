"""`verify_dataset`: every shard's files against its record (size, sha256), the manifest against
the seed plan, the execution choices shards were made under, and leftovers in the image tree."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.io import sha256_file
from fertk.data.shards.layout import MANIFEST_FILE, DatasetLayout, layout_of, options_fingerprint, read_json, \
    sample_key, shard_name
from fertk.data.shards.manifest import COLUMN, read_manifest_part
from fertk.data.shards.reading import iter_tar


@dataclass
class VerifyReport:
    """Outcome of `verify_dataset`: shards and faces checked, and every problem found."""

    root: str
    format: str
    shards: int
    faces: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # facts that are not problems (e.g. unchecked old shards)

    @property
    def ok(self) -> bool:
        """No problems."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"root": self.root, "format": self.format, "shards": self.shards, "faces": self.faces,
                "ok": self.ok, "problems": list(self.problems), "notes": list(self.notes)}


def describe_execution(execution: dict[str, Any]) -> str:
    """'backend torch, compile on, device cpu, batch 128' (batch only where it changes bytes)."""
    parts = [f"backend {execution.get('backend')}"
             + (f" ({execution['provider']})" if execution.get("provider") else ""),
             f"compile {'on' if execution.get('compile') else 'off'}", f"device {execution.get('device')}"]
    if execution.get("batch") is not None:
        parts.append(f"batch {execution['batch']}")
    return ", ".join(parts)


def _execution_problems(options: dict[str, Any], records: dict[int, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Shards made under byte-affecting execution choices other than the dataset's (or each other's)."""
    expected = options.get("execution")
    recorded = {s: r["execution"] for s, r in records.items() if "execution" in r}
    problems, notes = [], []
    if expected is None and recorded:
        expected = recorded[min(recorded)]  # options.json predates the record: shards must agree among themselves
    for s, execution in sorted(recorded.items()):
        if execution != expected:
            problems.append(f"{shard_name(s)}: made with {describe_execution(execution)}, the dataset with "
                            f"{describe_execution(expected)} (shards made both ways differ in bytes; "
                            "`fertk synth ... --force` rebuilds)")
    legacy = len(records) - len(recorded)
    if legacy:
        notes.append(f"{legacy} shard(s) predate recorded execution choices (backend, compile, device): "
                     "whether they were made the same way cannot be checked")
    return problems, notes


def verify_dataset(path: str | Path, *, max_problems: int = 50) -> VerifyReport:
    """Check every shard's files against its record (size, sha256) and the manifest (keys, order)."""
    layout, options = layout_of(path)
    num_shards = int(options["num_shards"])
    report = VerifyReport(str(path), layout.fmt, num_shards, 0)
    fingerprint = options_fingerprint(options)
    problems = report.problems
    records: dict[int, dict[str, Any]] = {}
    for s in range(num_shards):
        if len(problems) >= max_problems:
            problems.append("... (stopped after too many problems)")
            break
        record = _checked_record(layout, s, fingerprint, problems)
        if record is None:
            continue
        records[s] = record
        report.faces += _verify_shard(layout, s, record, options["plan"], problems)
    mixed, report.notes = _execution_problems(options, records)
    problems.extend(mixed)
    if layout.fmt == "folder" and not problems:
        problems.extend(_stray_images(layout, num_shards))
    problems.extend(_merged_manifest_problems(layout, options["plan"]))
    return report


def _checked_record(layout: DatasetLayout, shard: int, fingerprint: str, problems: list[str]) -> dict[str, Any] | None:
    """The shard's record, or None (with the problem noted) when it is missing or from other options."""
    record_path = layout.record_path(shard)
    if not record_path.is_file():
        problems.append(f"{shard_name(shard)}: unfinished (no record)")
        return None
    record = read_json(record_path)
    if "fingerprint" in record and record["fingerprint"] != fingerprint:
        problems.append(f"{shard_name(shard)}: made with other options (fingerprint {record['fingerprint']})")
        return None
    return record


def _verify_shard(layout: DatasetLayout, shard: int, record: dict[str, Any], plan: dict[str, Any],
                  problems: list[str]) -> int:
    """Check one recorded shard's files and manifest part; returns the faces it holds (0 if broken)."""
    name = shard_name(shard)
    for rel, info in record["files"].items():
        target = layout.root / rel
        if not target.is_file():
            problems.append(f"{name}: missing {rel}")
        elif target.stat().st_size != info["bytes"]:
            problems.append(f"{name}: {rel} has {target.stat().st_size} bytes, record says {info['bytes']}")
        elif sha256_file(target) != info["sha256"]:
            problems.append(f"{name}: {rel} sha256 mismatch")
    part = layout.manifest_part_path(shard)
    if not part.is_file() or sha256_file(part) != record["manifest"]["sha256"]:
        problems.append(f"{name}: manifest part missing or altered")
        return 0
    rows = read_manifest_part(layout, shard)
    n, shard_size = int(plan["n"]), int(plan["shard_size"])
    start, stop = shard * shard_size, min((shard + 1) * shard_size, n)
    expected = [sample_key(i, e) for i in range(start, stop) for e in plan["emotions"]]
    keys = [r[COLUMN["key"]] for r in rows]
    if keys != expected:
        problems.append(f"{name}: manifest keys differ from the plan ({len(keys)} rows, {len(expected)} expected)")
        return 0
    if [int(r[COLUMN["offset"]]) for r in rows] != list(range(len(rows))):
        problems.append(f"{name}: manifest offsets are not 0..{len(rows) - 1}")
    problems.extend(_verify_contents(layout, shard, rows, record))
    return len(rows)


def _merged_manifest_problems(layout: DatasetLayout, plan: dict[str, Any]) -> list[str]:
    """manifest.csv exists and has a row per planned face."""
    if not layout.manifest_path.is_file():
        return [f"{MANIFEST_FILE} missing (the run has not finished)"]
    with open(layout.manifest_path, "rb") as fh:
        lines = sum(1 for _ in fh) - 1
    faces = int(plan["n"]) * len(plan["emotions"])
    return [] if lines == faces else [f"{MANIFEST_FILE} has {lines} rows, expected {faces}"]


def _stray_images(layout: DatasetLayout, num_shards: int) -> list[str]:
    """Files in the ImageFolder tree that no shard record lists (leftovers of other options)."""
    recorded: set[str] = set()
    for s in range(num_shards):
        recorded.update(read_json(layout.record_path(s))["files"])
    stray = []
    images = layout.root / "images"
    for dirpath, _dirs, files in os.walk(images):
        for fname in files:
            rel = (Path(dirpath) / fname).relative_to(layout.root).as_posix()
            if rel not in recorded:
                stray.append(rel)
    return [f"{len(stray)} file(s) under images/ belong to no shard, e.g. {stray[0]}"] if stray else []


def _verify_contents(layout: DatasetLayout, shard: int, rows: list[list[str]], record: dict[str, Any]) -> list[str]:
    """Format-specific check that the shard holds exactly the manifest's samples, in order."""
    name = shard_name(shard)
    if layout.fmt == "wds":
        target = layout.root / layout.shard_file(shard)
        if not target.is_file():
            return []
        try:
            names = [m for m, _ in iter_tar(target)]
        except (tarfile.TarError, OSError) as exc:
            return [f"{name}: unreadable tar ({exc})"]
        expected = [f"{r[COLUMN['key']]}.{ext}" for r in rows for ext in ("png", "cls", "json")]
        return [] if names == expected else [f"{name}: tar members differ from the manifest"]
    if layout.fmt == "npy":
        target = layout.root / layout.shard_file(shard)
        if not target.is_file():
            return []
        images = np.load(target, mmap_mode="r")
        labels = np.load(layout.root / layout.labels_file(shard))
        problems = []
        if images.shape[0] != len(rows):
            problems.append(f"{name}: {images.shape[0]} images, manifest lists {len(rows)}")
        if labels.tolist() != [int(r[COLUMN["label"]]) for r in rows]:
            problems.append(f"{name}: labels.npy differs from the manifest")
        return problems
    listed = {r[COLUMN["file"]] for r in rows}
    recorded = set(record["files"])
    return [] if listed == recorded else [f"{name}: manifest files differ from the record"]
