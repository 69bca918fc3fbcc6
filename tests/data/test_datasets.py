"""`load_arrays`: path → FaceArrays through readers + preprocessing, or a synth output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fertk.data.datasets import default_cache_dir, load_arrays
from fertk.data.preprocess import PreprocessConfig
from fertk.data.splits import subject_split
from fertk.core.emotions import EKMAN, label_set
from fertk.core.errors import DatasetError
from tests.data.fixtures import blank_image, make_fer2013_csv, make_folder_dataset, make_rafd_dataset, write_image


def test_folder_to_arrays_with_cache_and_reports(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", EKMAN + ("neutral",), per_class=2, subjects=2, size=96)
    write_image(root / "sad" / "s01_blank.png", blank_image((96, 96)))
    cache = tmp_path / "cache"
    arrays = load_arrays(root, cache_dir=cache, subject_pattern=r"^(s\d+)_")
    assert arrays.classes == EKMAN and arrays.images.shape == (12, 64, 64) and arrays.images.dtype == np.uint8
    assert arrays.class_counts() == {c: 2 for c in EKMAN}
    assert set(arrays.subjects.tolist()) == {"s00", "s01"} and set(arrays.sources.tolist()) == {"folder"}
    assert arrays.meta["layout"] == "folder"
    assert arrays.meta["read_report"]["dropped"] == {"class not kept: neutral": 2}
    assert arrays.meta["preprocess_report"]["no_face_keys"] == [str(root / "sad" / "s01_blank.png")]
    again = load_arrays(root, cache_dir=cache, subject_pattern=r"^(s\d+)_")
    assert again.meta["preprocess_report"]["cache_hits"] == 13
    np.testing.assert_array_equal(again.images, arrays.images)

    with_neutral = load_arrays(root, classes=label_set(neutral=True), cache_dir=cache,
                               preprocess=PreprocessConfig(size=48))
    assert with_neutral.classes == EKMAN + ("neutral",) and with_neutral.images.shape == (14, 48, 48)


def test_rafd_arrays_split_by_subject(tmp_path: Path) -> None:
    root = make_rafd_dataset(tmp_path / "rafd", subjects=(1, 2, 3, 4, 5), emotions=EKMAN, size=(160, 120))
    arrays = load_arrays(root, layout="rafd", cache_dir=tmp_path / "cache")
    assert len(arrays) == 30 and arrays.meta["preprocess_report"]["modes"] == {"haar": 30}
    split = subject_split(arrays, (3, 1, 1), seed=0)
    parts = split.apply(arrays)
    assert {len(p) for p in parts.values()} == {18, 6} and sum(len(p) for p in parts.values()) == 30


def test_fer2013_csv_path(tmp_path: Path) -> None:
    csv_path = make_fer2013_csv(tmp_path / "fer", per_class=1)
    arrays = load_arrays(csv_path, keep=("neutral",), cache_dir=tmp_path / "cache")
    assert arrays.classes == EKMAN + ("neutral",) and arrays.images.shape == (7, 64, 64)


def test_default_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "preprocess"
    root = make_folder_dataset(tmp_path / "d", ("anger",), per_class=1, subjects=1, size=96)
    load_arrays(root)
    assert len(list((tmp_path / "c" / "preprocess").glob("*.npz"))) == 1
    monkeypatch.delenv("FERTK_CACHE_DIR")
    assert default_cache_dir().parts[-2:] == ("fertk", "preprocess")


def test_missing_path_and_all_faces_lost(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_arrays(tmp_path / "nope")
    write_image(tmp_path / "blanks" / "angry" / "a.png", blank_image((96, 96)))
    with pytest.raises(DatasetError, match="no face survived preprocessing"):
        load_arrays(tmp_path / "blanks", cache_dir=tmp_path / "cache")


def test_synth_output_is_read_by_the_shard_reader(tmp_path: Path) -> None:
    from fertk.synth.run import SynthOptions, run_synth

    out = tmp_path / "synth"
    run_synth(SynthOptions(n=2, out=str(out), format="npy", shard_size=2, batch=2))
    arrays = load_arrays(out)
    assert len(arrays) == 12 and arrays.classes == EKMAN and arrays.images.shape[1:] == (64, 64)
    picked = load_arrays(out, classes=("happiness", "anger"))
    assert picked.classes == ("happiness", "anger") and len(picked) == 4
    with pytest.raises(DatasetError, match="do not apply"):
        load_arrays(out, peak_frames=2)


def test_progress_events_count_the_images_computed(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", ("anger", "happiness"), per_class=2, subjects=2, size=96)
    events = []
    arrays = load_arrays(root, classes=("anger", "happiness"), cache_dir=tmp_path / "cache", progress=events.append)
    counted = [e for e in events if e.kind == "advance"]
    assert [e.done for e in counted] == [1, 2, 3, 4] and {e.total for e in counted} == {4}
    assert {e.unit for e in events} == {"images"} and events[-1].kind == "done" and len(arrays) == 4
    events.clear()
    load_arrays(root, classes=("anger", "happiness"), cache_dir=tmp_path / "cache", progress=events.append)
    assert events == []   # everything came from the cache: nothing computed, nothing to count
