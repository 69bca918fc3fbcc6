"""Subject-disjoint, seeded train/val/test splits, saved as JSON manifests that reload exactly.

The unit of a split is the subject, qualified by its dataset (``"rafd/01"``, ``"oulu/P001"``),
so one person's faces never sit on both sides and equal ids from two datasets stay distinct.
Sizes are subject counts (the paper: 109 / 10 / 25 of 144 subjects) or fractions. With fewer
subjects than the counts ask for, the counts are scaled down proportionally and the split's
`notes` say so; with more, the extra subjects are left out of every part (also noted).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.errors import DatasetError, InvalidInputError
from fertk.core.io import atomic_write_text
from fertk.data.records import FaceArrays, FaceRecord, sample_key

PAPER_SIZES = (109, 10, 25)
MANIFEST_FORMAT = "fertk-split"
MANIFEST_VERSION = 1


def subject_ids(data: FaceArrays | Sequence[FaceRecord]) -> np.ndarray:
    """Per-sample "source/subject" strings: the unit a split keeps together."""
    if isinstance(data, FaceArrays):
        return np.array([f"{src}/{sub}" for src, sub in zip(data.sources, data.subjects)], dtype=str)
    return np.array([f"{r.source}/{r.subject}" for r in data], dtype=str)


def _sample_keys(data: FaceArrays | Sequence[FaceRecord]) -> list[str]:
    if isinstance(data, FaceArrays):
        return list(data.keys)
    return [sample_key(r) for r in data]


@dataclass
class Split:
    """Which subjects (and sample keys) belong to each part, and how the split was drawn."""

    seed: int
    sizes_requested: tuple[float, ...]
    parts: tuple[str, ...]
    subjects: dict[str, list[str]]
    keys: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # subjects in no part (sizes asked for fewer)

    @property
    def sizes(self) -> dict[str, int]:
        """Subjects per part."""
        return {part: len(self.subjects[part]) for part in self.parts}

    def indices(self, data: FaceArrays | Sequence[FaceRecord], part: str, *, check_keys: bool = True) -> np.ndarray:
        """Row indices of `data` in `part` (by subject); DatasetError if the data changed."""
        if part not in self.parts:
            raise InvalidInputError(f"unknown split part {part!r}", hint="one of " + ", ".join(self.parts))
        if check_keys:
            self.check(data)
        members = set(self.subjects[part])
        return np.array([i for i, s in enumerate(subject_ids(data)) if s in members], dtype=np.int64)

    def apply(self, data: FaceArrays, *, check_keys: bool = True) -> dict[str, FaceArrays]:
        """The parts of `data` as FaceArrays: {"train": ..., "val": ..., "test": ...}."""
        if check_keys:
            self.check(data)
        out = {}
        for part in self.parts:
            subset = data.subset(self.indices(data, part, check_keys=False))
            subset.meta["split"] = {"part": part, "seed": self.seed}
            out[part] = subset
        return out

    def check(self, data: FaceArrays | Sequence[FaceRecord]) -> None:
        """Raise DatasetError when `data` holds other samples than the split was drawn on."""
        if not any(self.keys.values()):
            return
        keys = _sample_keys(data)
        if not keys:
            return
        # Samples of subjects the split left out (see `unused`) are not the split's business.
        members = {s for part in self.parts for s in self.subjects[part]}
        have = {k for k, s in zip(keys, subject_ids(data).tolist()) if s in members}
        want = {k for part in self.parts for k in self.keys.get(part, [])}
        if have != want:
            missing, extra = len(want - have), len(have - want)
            raise DatasetError(
                f"the data differs from the split's samples ({missing} missing, {extra} not in the split)",
                hint="re-split (leave out --split-manifest), or in Python pass check_keys=False to split by "
                     "subject only",
            )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON content."""
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "seed": self.seed,
            "sizes_requested": list(self.sizes_requested),
            "parts": list(self.parts),
            "sizes": self.sizes,
            "subjects": {p: list(self.subjects[p]) for p in self.parts},
            "keys": {p: list(self.keys.get(p, [])) for p in self.parts},
            "unused": list(self.unused),
            "notes": list(self.notes),
        }


def _part_names(count: int) -> tuple[str, ...]:
    if count == 3:
        return ("train", "val", "test")
    if count == 2:
        return ("train", "test")
    raise InvalidInputError(f"a split has 2 (train, test) or 3 (train, val, test) parts, got {count} sizes")


def _largest_remainder(weights: Sequence[float], total: int) -> list[int]:
    """Integers proportional to `weights` that sum to `total`; each nonzero weight gets >= 1 if it can."""
    weights = np.asarray(weights, dtype=float)
    raw = weights / weights.sum() * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    # Lift empty nonzero parts by taking from the largest part (a val/test part of 0 is useless).
    for i in np.flatnonzero((counts == 0) & (weights > 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return [int(c) for c in counts]


def _resolve_sizes(sizes: Sequence[float], n_subjects: int, notes: list[str]) -> list[int]:
    if any(s < 0 for s in sizes):
        raise InvalidInputError(f"split sizes must be non-negative, got {tuple(sizes)}")
    if all(float(s).is_integer() and s >= 1 or s == 0 for s in sizes) and sum(sizes) > 1:
        counts = [int(s) for s in sizes]
        asked = sum(counts)
        if asked > n_subjects:
            counts = _largest_remainder(counts, n_subjects)
            notes.append(f"asked for {asked} subjects ({'/'.join(str(int(s)) for s in sizes)}) but the data has "
                         f"{n_subjects}: scaled proportionally to {'/'.join(map(str, counts))}")
        elif asked < n_subjects:
            notes.append(f"{n_subjects - asked} of {n_subjects} subjects are in no part (sizes ask for {asked})")
        return counts
    total = float(sum(sizes))
    if total <= 0 or total > 1 + 1e-9:
        raise InvalidInputError(f"split fractions must sum to (0, 1], got {tuple(sizes)} (sum {total:g})",
                                hint="or give subject counts, e.g. (109, 10, 25)")
    used = int(round(total * n_subjects))
    counts = _largest_remainder(sizes, used)
    if used < n_subjects:
        notes.append(f"{n_subjects - used} of {n_subjects} subjects are in no part (fractions sum to {total:g})")
    return counts


def subject_split(
    data: FaceArrays | Sequence[FaceRecord],
    sizes: Sequence[float] = PAPER_SIZES,
    seed: int = 0,
) -> Split:
    """Seeded subject-disjoint split; `sizes` are subject counts (109, 10, 25) or fractions (0.7, 0.1, 0.2)."""
    parts = _part_names(len(sizes))
    ids = subject_ids(data)
    unique = sorted(set(ids.tolist()))
    if len(unique) < len(parts):
        raise DatasetError(f"{len(unique)} subject(s) cannot fill {len(parts)} disjoint parts",
                           hint="use a dataset with more subjects, or fewer parts")
    notes: list[str] = []
    counts = _resolve_sizes(list(sizes), len(unique), notes)
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    bounds = np.cumsum([0, *counts])
    subjects = {part: sorted(shuffled[bounds[k]:bounds[k + 1]]) for k, part in enumerate(parts)}
    keys_all = _sample_keys(data)
    keys: dict[str, list[str]] = {part: [] for part in parts}
    if keys_all:
        where = {s: part for part, members in subjects.items() for s in members}
        for key, sid in zip(keys_all, ids.tolist()):
            if sid in where:
                keys[where[sid]].append(key)
    return Split(seed=int(seed), sizes_requested=tuple(sizes), parts=parts, subjects=subjects,
                 keys=keys, notes=notes, unused=sorted(shuffled[bounds[-1]:]))


def save_manifest(split: Split, path: str | Path) -> Path:
    """Write the split as JSON (seed, sizes, subjects and sample keys per part), atomically."""
    path = Path(path).expanduser()
    return atomic_write_text(path, json.dumps(split.to_dict(), indent=1) + "\n", fsync=False)


def load_manifest(path: str | Path) -> Split:
    """Read a manifest written by `save_manifest` back into the identical Split."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"split manifest not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable JSON split manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"{path}: not a fertk split manifest (format {MANIFEST_FORMAT!r} expected)")
    if data.get("version") != MANIFEST_VERSION:
        raise DatasetError(f"{path}: split manifest version {data.get('version')!r}; this fertk reads {MANIFEST_VERSION}")
    try:
        parts = tuple(data["parts"])
        split = Split(
            seed=int(data["seed"]),
            sizes_requested=tuple(data["sizes_requested"]),
            parts=parts,
            subjects={p: [str(s) for s in data["subjects"][p]] for p in parts},
            keys={p: [str(k) for k in data.get("keys", {}).get(p, [])] for p in parts},
            notes=[str(n) for n in data.get("notes", [])],
            unused=[str(s) for s in data.get("unused", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: split manifest is missing or mangles a field ({exc})") from None
    seen: set[str] = set()
    for part in parts:
        overlap = seen & set(split.subjects[part])
        if overlap:
            raise DatasetError(f"{path}: subject {sorted(overlap)[0]!r} is in more than one part")
        seen |= set(split.subjects[part])
    return split


__all__ = ["PAPER_SIZES", "Split", "load_manifest", "save_manifest", "subject_ids", "subject_split"]
