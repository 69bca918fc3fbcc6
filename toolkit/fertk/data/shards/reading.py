"""Reading a synth dataset back (any format) as `FaceArrays`: one shard at a time or all at once."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fertk.core.errors import DatasetError
from fertk.data.records import FaceArrays
from fertk.data.shards.layout import DatasetLayout, layout_of
from fertk.data.shards.manifest import COLUMN, FINISH_HINT, read_manifest_part, unfinished_shards
from fertk.data.shards.png import decode_png

SOURCE_NAME = "fertk-synth"


def iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every file in a tar archive, in archive order."""
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isfile():
                fh = tar.extractfile(member)
                assert fh is not None
                yield member.name, fh.read()


def _shard_images(layout: DatasetLayout, shard: int, rows: list[list[str]]) -> np.ndarray:
    if layout.fmt == "npy":
        return np.load(layout.root / layout.shard_file(shard), mmap_mode="r")
    if layout.fmt == "wds":
        pngs = {name[:-4]: data for name, data in iter_tar(layout.root / layout.shard_file(shard))
                if name.endswith(".png")}
        try:
            return np.stack([decode_png(pngs[r[COLUMN["key"]]]) for r in rows]) if rows else np.zeros((0, 0, 0), np.uint8)
        except KeyError as exc:
            raise DatasetError(f"{layout.shard_file(shard)} lacks sample {exc.args[0]} listed in the manifest") from None
    images = []
    for r in rows:
        path = layout.root / r[COLUMN["file"]]
        try:
            images.append(decode_png(path.read_bytes()))
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    return np.stack(images) if images else np.zeros((0, 0, 0), np.uint8)


def iter_shard_arrays(path: str | Path, classes: Sequence[str] | None = None) -> Iterator[FaceArrays]:
    """One FaceArrays per finished shard, in shard order (memory: one shard at a time)."""
    layout, options = layout_of(path)
    emotions = tuple(options["plan"]["emotions"])
    classes = tuple(classes) if classes is not None else emotions
    index = {c: i for i, c in enumerate(classes)}
    num_shards = int(options["num_shards"])
    missing = unfinished_shards(layout, num_shards)
    if missing:
        raise DatasetError(f"{path} is incomplete: {len(missing)} of {num_shards} shards unfinished",
                           hint=FINISH_HINT)
    for s in range(num_shards):
        rows = read_manifest_part(layout, s)
        images = _shard_images(layout, s, rows)
        keep = np.array([r[COLUMN["emotion"]] in index for r in rows], dtype=bool)
        kept = [r for r, k in zip(rows, keep) if k]
        yield FaceArrays(
            images=np.asarray(images[keep]) if len(rows) else images,
            labels=np.array([index[r[COLUMN["emotion"]]] for r in kept], dtype=np.int64),
            classes=classes,
            subjects=np.array([f"synth-{r[COLUMN['identity']]}" for r in kept], dtype=object),
            sources=np.array([SOURCE_NAME] * len(kept), dtype=object),
            keys=[r[COLUMN["key"]] for r in kept],
            meta={"shard": s},
        )


def read_arrays(path: str | Path, classes: Sequence[str] | None = None) -> FaceArrays:
    """A whole synth dataset (any format) in memory; `classes` selects and orders the labels."""
    parts = list(iter_shard_arrays(path, classes))
    layout, options = layout_of(path)
    if not parts:
        raise DatasetError(f"{path} holds no shards")
    total = sum(len(p) for p in parts)
    shape = next((p.images.shape[1:] for p in parts if len(p)), (0, 0))
    images = np.empty((total, *shape), dtype=np.uint8)
    pos = 0
    for p in parts:
        images[pos:pos + len(p)] = p.images
        pos += len(p)
    return FaceArrays(
        images=images,
        labels=np.concatenate([p.labels for p in parts]),
        classes=parts[0].classes,
        subjects=np.concatenate([p.subjects for p in parts]),
        sources=np.concatenate([p.sources for p in parts]),
        keys=[k for p in parts for k in p.keys],
        meta={"root": str(path), "format": layout.fmt, "synth": options.get("options", {})},
    )
