"""Subject-disjoint seeded splits: disjointness, sizes, scaling, repeatability, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fertk.data.records import FaceArrays, FaceRecord
from fertk.data.splits import PAPER_SIZES, load_manifest, save_manifest, subject_ids, subject_split
from fertk.core.errors import DatasetError, InvalidInputError


def arrays_with_subjects(per_source: dict[str, int], faces_per_subject: int = 3) -> FaceArrays:
    """Tiny FaceArrays: `per_source[src]` subjects per source, numbered 1..n (ids collide across sources)."""
    subjects, sources = [], []
    for source, count in per_source.items():
        for s in range(1, count + 1):
            subjects += [f"{s:02d}"] * faces_per_subject
            sources += [source] * faces_per_subject
    n = len(subjects)
    return FaceArrays(images=np.zeros((n, 4, 4), np.uint8), labels=np.arange(n) % 6,
                      classes=("anger", "disgust", "fear", "happiness", "sadness", "surprise"),
                      subjects=np.array(subjects), sources=np.array(sources),
                      keys=[f"{src}/{sub}/{i}" for i, (src, sub) in enumerate(zip(sources, subjects))])


def test_paper_sizes_are_subject_disjoint_and_exact() -> None:
    data = arrays_with_subjects({"rafd": 67, "oulu": 80})
    split = subject_split(data, PAPER_SIZES, seed=3)
    assert split.sizes == {"train": 109, "val": 10, "test": 25}
    parts = [set(split.subjects[p]) for p in split.parts]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    # Same number from two datasets is two people.
    assert len(set(subject_ids(data))) == 147
    assert any("3 of 147 subjects are in no part" in n for n in split.notes) and len(split.unused) == 3
    pieces = split.apply(data)
    ids = {p: set(subject_ids(pieces[p])) for p in split.parts}
    assert ids["train"].isdisjoint(ids["test"]) and ids["train"].isdisjoint(ids["val"])
    assert sum(len(pieces[p]) for p in split.parts) == 144 * 3
    assert len(pieces["val"]) == 30 and pieces["test"].meta["split"] == {"part": "test", "seed": 3}


def test_seed_repeats_and_differs() -> None:
    data = arrays_with_subjects({"rafd": 40})
    a, b = subject_split(data, (30, 5, 5), seed=1), subject_split(data, (30, 5, 5), seed=1)
    c = subject_split(data, (30, 5, 5), seed=2)
    assert a.subjects == b.subjects and a.keys == b.keys
    assert a.subjects != c.subjects


def test_fewer_subjects_than_asked_scales_proportionally_and_says_so() -> None:
    data = arrays_with_subjects({"oulu": 20})
    split = subject_split(data, PAPER_SIZES, seed=0)
    assert split.sizes == {"train": 15, "val": 1, "test": 4}
    assert any("scaled proportionally to 15/1/4" in n for n in split.notes)
    tiny = subject_split(arrays_with_subjects({"x": 3}), PAPER_SIZES, seed=0)
    assert tiny.sizes == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(DatasetError, match="cannot fill 3 disjoint parts"):
        subject_split(arrays_with_subjects({"x": 2}), PAPER_SIZES)


def test_fractions_and_two_part_splits() -> None:
    data = arrays_with_subjects({"a": 50})
    split = subject_split(data, (0.7, 0.1, 0.2), seed=5)
    assert split.sizes == {"train": 35, "val": 5, "test": 10} and not split.notes
    two = subject_split(data, (0.8, 0.2), seed=5)
    assert two.parts == ("train", "test") and two.sizes == {"train": 40, "test": 10}
    with pytest.raises(InvalidInputError):
        subject_split(data, (0.8, 0.4, 0.1))
    with pytest.raises(InvalidInputError):
        subject_split(data, (1, 2, 3, 4))


def test_records_can_be_split_too() -> None:
    records = [FaceRecord(label="anger", subject=f"S{i // 2:03d}", source="ckplus", path=Path(f"/x/{i}.png"))
               for i in range(20)]
    split = subject_split(records, (6, 2, 2), seed=0)
    train = split.indices(records, "train")
    assert len(train) == 12 and {records[i].subject for i in train}.isdisjoint(
        {records[i].subject for i in split.indices(records, "test")})
    assert split.keys["train"] == [str(records[i].path) for i in train]


def test_manifest_round_trip_gives_the_same_split(tmp_path: Path) -> None:
    data = arrays_with_subjects({"rafd": 30, "oulu": 30})
    split = subject_split(data, PAPER_SIZES, seed=11)
    path = save_manifest(split, tmp_path / "splits" / "exp1.json")
    again = load_manifest(path)
    assert again.to_dict() == split.to_dict()
    for part in split.parts:
        np.testing.assert_array_equal(again.indices(data, part), split.indices(data, part))
    stored = json.loads(path.read_text())
    assert stored["seed"] == 11 and stored["sizes"] == split.sizes and stored["sizes_requested"] == [109, 10, 25]
    assert sorted(p.name for p in path.parent.iterdir()) == ["exp1.json"]


def test_manifest_detects_changed_data_and_bad_files(tmp_path: Path) -> None:
    data = arrays_with_subjects({"rafd": 12})
    split = subject_split(data, (8, 2, 2), seed=0)
    fewer = data.subset(np.arange(len(data) - 1))
    with pytest.raises(DatasetError, match="1 missing"):
        split.apply(fewer)
    assert sum(len(v) for v in split.apply(fewer, check_keys=False).values()) == len(data) - 1

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="not a readable JSON"):
        load_manifest(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="not a fertk split manifest"):
        load_manifest(bad)
    overlapping = split.to_dict()
    overlapping["subjects"]["test"].append(overlapping["subjects"]["train"][0])
    bad.write_text(json.dumps(overlapping))
    with pytest.raises(DatasetError, match="more than one part"):
        load_manifest(bad)
    with pytest.raises(DatasetError, match="not found"):
        load_manifest(tmp_path / "nope.json")


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_manifest_file_honours_the_umask(tmp_path: Path, umask: int) -> None:
    # mkstemp alone gives 0600 whatever the umask; a manifest is meant to be shared beside a run.
    import os

    split = subject_split(arrays_with_subjects({"rafd": 6}), (4, 1, 1), seed=0)
    before = os.umask(umask)
    try:
        path = save_manifest(split, tmp_path / "split.json")
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
