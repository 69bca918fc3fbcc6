"""Shard writers, readers and verification, on images made by the test (no generator involved)."""

from __future__ import annotations

import json
import os
import tarfile

import cv2
import numpy as np
import pandas as pd
import pytest

from fertk.data.shards import (
    MANIFEST_COLUMNS, DatasetLayout, ShardRows, merge_manifest, open_shard_writer, read_arrays,
    remove_stale_temps, sample_key, shard_done, verify_dataset, write_json_atomic,
)
from fertk.core.errors import DatasetError

EMOTIONS = ("anger", "happiness", "surprise")
SHARD_SIZE = 3   # identities per shard
N = 7            # identities → shards of 3, 3, 1


def _faces(identity: int) -> np.ndarray:
    """[E, 16, 16] uint8: a different, recognisable pattern per (identity, emotion)."""
    rng = np.random.default_rng(identity)
    base = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    return np.stack([np.roll(base, e, axis=1) for e in range(len(EMOTIONS))])


def _rows(ids: np.ndarray) -> ShardRows:
    count = len(EMOTIONS)
    return ShardRows(
        identity=np.repeat(ids, count), seed=np.repeat(ids.astype(np.uint64) * np.uint64(2**62), count),
        emotion=list(EMOTIONS) * len(ids), label=np.tile(np.arange(count), len(ids)),
        intensity=np.full(len(ids) * count, 0.75, np.float32), attempt=np.zeros(len(ids) * count, np.int64),
    )


def _write_dataset(root, fmt: str) -> DatasetLayout:
    layout = DatasetLayout(root, fmt)
    shards = -(-N // SHARD_SIZE)
    write_json_atomic(layout.options_path, {
        "options": {"format": fmt}, "num_shards": shards,
        "plan": {"n": N, "emotions": list(EMOTIONS), "shard_size": SHARD_SIZE},
    })
    for s in range(shards):
        ids = np.arange(s * SHARD_SIZE, min((s + 1) * SHARD_SIZE, N))
        writer = open_shard_writer(layout, s, len(ids) * len(EMOTIONS), (16, 16))
        for part in np.array_split(ids, 2):          # two batches per shard, like the runner
            if len(part):
                writer.add(np.concatenate([_faces(int(i)) for i in part]), _rows(part))
        writer.commit({"seconds": 0.0})
    assert merge_manifest(layout, shards)
    return layout


@pytest.mark.parametrize("fmt", ["wds", "npy", "folder"])
def test_round_trip_and_verify(tmp_path, fmt):
    layout = _write_dataset(tmp_path / fmt, fmt)
    arrays = read_arrays(layout.root)
    expected = np.concatenate([_faces(i) for i in range(N)])
    assert np.array_equal(arrays.images, expected)
    assert arrays.labels.tolist() == list(range(3)) * N
    assert arrays.classes == EMOTIONS
    assert arrays.keys[:2] == [sample_key(0, "anger"), sample_key(0, "happiness")]
    assert len(set(arrays.subjects)) == N
    report = verify_dataset(layout.root)
    assert report.ok, report.problems
    assert report.faces == N * len(EMOTIONS)
    manifest = pd.read_csv(layout.manifest_path)
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert len(manifest) == N * len(EMOTIONS)
    assert manifest["offset"].tolist()[:4] == [0, 1, 2, 3]
    assert (manifest.groupby("shard").size().tolist()) == [9, 9, 3]


def test_read_arrays_selects_and_orders_classes(tmp_path):
    layout = _write_dataset(tmp_path / "d", "npy")
    arrays = read_arrays(layout.root, classes=("surprise", "anger", "fear"))
    assert arrays.classes == ("surprise", "anger", "fear")
    assert len(arrays) == 2 * N
    assert arrays.class_counts() == {"surprise": N, "anger": N, "fear": 0}


def test_wds_shards_read_by_webdataset_and_tarfile(tmp_path):
    wds = pytest.importorskip("webdataset")
    layout = _write_dataset(tmp_path / "w", "wds")
    urls = [str(layout.root / layout.shard_file(s)) for s in range(3)]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [sample_key(i, e) for i in range(N) for e in EMOTIONS]
    first = samples[4]  # identity 1, happiness
    image = cv2.imdecode(np.frombuffer(first["png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(image, _faces(1)[1])
    assert int(first["cls"]) == 1
    assert json.loads(first["json"])["emotion"] == "happiness"
    with tarfile.open(urls[0]) as tar:
        member = tar.getmembers()[0]
        assert (member.mtime, member.uid, member.mode) == (0, 0, 0o644)
    assert (layout.root / layout.shard_file(0)).stat().st_size % 10240 == 0


def test_writes_are_byte_reproducible(tmp_path):
    for fmt in ("wds", "npy"):
        a = _write_dataset(tmp_path / f"a-{fmt}", fmt)
        b = _write_dataset(tmp_path / f"b-{fmt}", fmt)
        for s in range(3):
            assert (a.root / a.shard_file(s)).read_bytes() == (b.root / b.shard_file(s)).read_bytes()
        assert a.manifest_path.read_bytes() == b.manifest_path.read_bytes()


@pytest.mark.parametrize("fmt", ["wds", "npy", "folder"])
def test_verify_finds_damage(tmp_path, fmt):
    layout = _write_dataset(tmp_path / fmt, fmt)
    target = layout.root / (layout.image_file(4, "anger") if fmt == "folder" else layout.shard_file(1))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    report = verify_dataset(layout.root)
    assert not report.ok
    assert any("sha256" in p for p in report.problems)
    layout.record_path(2).unlink()
    report = verify_dataset(layout.root)
    assert any("shard-000002: unfinished" in p for p in report.problems)
    assert not shard_done(layout, 2)
    with pytest.raises(DatasetError, match="incomplete"):
        read_arrays(layout.root)


def test_verify_reports_stray_folder_files(tmp_path):
    layout = _write_dataset(tmp_path / "f", "folder")
    (layout.root / "images" / "anger" / "id999999999.png").write_bytes(b"x")
    report = verify_dataset(layout.root)
    assert any("belong to no shard" in p for p in report.problems)


def test_unfinished_shard_is_not_done_and_leaves_no_visible_file(tmp_path):
    layout = DatasetLayout(tmp_path / "p", "wds")
    writer = open_shard_writer(layout, 0, 6, (16, 16))
    writer.add(np.concatenate([_faces(0)]), _rows(np.array([0])))
    assert not (layout.root / layout.shard_file(0)).exists()
    assert not shard_done(layout, 0)
    with pytest.raises(DatasetError, match="3 faces written, 6 planned"):
        writer.commit()
    writer.abort()
    assert not list((layout.root / "shards").iterdir())


def test_killed_writer_leaves_only_a_pid_named_temp_that_resume_removes(tmp_path):
    for fmt in ("wds", "npy"):
        layout = DatasetLayout(tmp_path / fmt, fmt)
        writer = open_shard_writer(layout, 0, 6, (16, 16))
        writer.add(np.concatenate([_faces(0)]), _rows(np.array([0])))
        writer.out.fh.flush()   # the process dies here: no commit, no abort
        final = layout.root / layout.shard_file(0)
        assert [p.name for p in final.parent.iterdir()] == [f".{final.name}.{os.getpid()}.tmp"]
        assert remove_stale_temps(layout, 0) == 1
        assert not list(final.parent.iterdir())
        writer.out.fh.close()


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a fertk synth dataset"):
        read_arrays(tmp_path)
