"""Dataset readers on fixture trees that mimic each dataset's documented layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fertk.data.layouts import (
    detect_layout,
    read_affectnet,
    read_ckplus,
    read_fer2013,
    read_folder,
    read_mmi,
    read_oulu,
    read_rafd,
    read_records,
    resolve_classes,
)
from fertk.core.emotions import EKMAN, label_set
from fertk.core.errors import DatasetError, InvalidInputError
from tests.data.fixtures import (
    make_affectnet_dataset,
    make_ckplus_dataset,
    make_fer2013_csv,
    make_folder_dataset,
    make_mmi_dataset,
    make_oulu_dataset,
    make_rafd_dataset,
    write_image,
    draw_face,
)


def labels(records) -> list[str]:
    return [r.label for r in records]


# -- folder --------------------------------------------------------------------------------------

def test_folder_reads_keras_spellings_and_drops_extras_unless_kept(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "fer", EKMAN + ("neutral",), per_class=2, subjects=2, size=48)
    records, report = read_folder(root, subject_pattern=r"^(s\d+)_")
    assert sorted(set(labels(records))) == sorted(EKMAN)
    assert len(records) == 12 and report.kept == 12
    assert report.dropped == {"class not kept: neutral": 2}
    assert {r.subject for r in records} == {"s00", "s01"} and report.subjects == 2
    assert (tmp_path / "fer" / "angry").is_dir() and records[0].label == "anger"
    assert report.class_counts == {c: 2 for c in EKMAN}

    kept, report = read_folder(root, keep=("neutral",))
    assert report.classes == EKMAN + ("neutral",) and len(kept) == 14 and not report.dropped
    same, _ = read_folder(root, classes=label_set(neutral=True))
    assert [r.path for r in same] == [r.path for r in kept]
    # Without a pattern every image is its own subject.
    assert len({r.subject for r in kept}) == 14


def test_folder_with_split_level_and_odd_spellings(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", ("anger", "happiness"), per_class=2, subjects=1, size=48,
                               splits=("train", "test"), words={"anger": "angery", "happiness": "Happy"})
    records, _ = read_folder(root)
    assert sorted({r.meta["split"] for r in records}) == ["test", "train"]
    assert sorted(set(labels(records))) == ["anger", "happiness"]
    train, report = read_folder(root, splits="train")
    assert {r.meta["split"] for r in train} == {"train"} and report.dropped == {"split not selected: test": 4}


def test_folder_rejects_a_non_emotion_folder_by_name(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", ("anger",), per_class=1, subjects=1, size=48)
    write_image(root / "others" / "x.png", draw_face(canvas=(48, 48), face=30))
    with pytest.raises(DatasetError, match=r"others.*not an emotion"):
        read_folder(root)


def test_folder_subject_pattern_must_match(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", ("anger",), per_class=1, subjects=1, size=48)
    with pytest.raises(DatasetError, match="subject_pattern"):
        read_folder(root, subject_pattern=r"^person(\d+)")


# -- RaFD ----------------------------------------------------------------------------------------

def test_rafd_parses_names_and_keeps_frontal_only_by_default(tmp_path: Path) -> None:
    root = make_rafd_dataset(tmp_path / "rafd", subjects=(1, 2, 3), angles=("090", "045"),
                             gazes=("frontal", "left"), size=(48, 40))
    records, report = read_rafd(root)
    assert len(records) == 3 * 6
    assert {r.meta["pose"] for r in records} == {"frontal"} and {r.subject for r in records} == {"01", "02", "03"}
    assert report.dropped["camera angle not selected: 045"] == 3 * 8 * 2
    assert report.dropped["gaze not selected: left"] == 3 * 8
    assert report.dropped["class not kept: contempt"] == 3 and report.dropped["class not kept: neutral"] == 3
    first = next(r for r in records if r.subject == "01" and r.label == "anger")
    assert first.path.name == "Rafd090_01_Caucasian_female_angry_frontal.jpg"
    assert first.meta["gender"] == "female" and first.meta["ethnicity"] == "Caucasian"
    everything, _ = read_rafd(root, angles=None, gazes=None, keep="neutral,contempt")
    assert len(everything) == 3 * 8 * 2 * 2


def test_rafd_unknown_emotion_word_names_the_file(tmp_path: Path) -> None:
    write_image(tmp_path / "Rafd090_01_Caucasian_female_bored_frontal.jpg", draw_face(canvas=(48, 40), face=30))
    with pytest.raises(DatasetError, match=r"Rafd090_01_Caucasian_female_bored_frontal\.jpg.*'bored'"):
        read_rafd(tmp_path)


# -- CK+ -----------------------------------------------------------------------------------------

def test_ckplus_labels_only_sequences_with_an_emotion_file(tmp_path: Path) -> None:
    root = make_ckplus_dataset(tmp_path / "ck", frames=4, size=(40, 48))
    records, report = read_ckplus(root)
    assert sorted(labels(records)) == ["disgust", "happiness", "surprise"]
    assert all(r.meta["frame"] == 3 and r.path.name.endswith("00000004.png") for r in records)
    assert report.dropped == {"sequences without an emotion file": 1, "class not kept: contempt": 1}
    assert {r.subject for r in records} == {"S005", "S010", "S011"}

    peaks, _ = read_ckplus(root, peak_frames=2, neutral_first=True)
    assert sorted(r.meta["frame"] for r in peaks if r.label == "disgust") == [2, 3]
    onsets = [r for r in peaks if r.label == "neutral"]
    # Every labelled sequence (the contempt one too) starts neutral.
    assert len(onsets) == 4 and all(r.meta["frame"] == 0 for r in onsets)


def test_ckplus_bad_code_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    root = make_ckplus_dataset(tmp_path / "ck", sequences=(("S005", "001", "anger"),), frames=2, size=(40, 48))
    label = next((root / "Emotion").rglob("*_emotion.txt"))
    label.write_text("   9.0000000e+00\n")
    with pytest.raises(DatasetError, match=r"S005_001_00000002_emotion\.txt.*unknown CK\+ emotion code") as info:
        read_ckplus(root)
    assert "\n" not in str(info.value)


# -- Oulu-CASIA ----------------------------------------------------------------------------------

def test_oulu_last_frames_with_sensor_and_lighting_filters(tmp_path: Path) -> None:
    root = make_oulu_dataset(tmp_path / "oulu", subjects=("P001", "P002"), sensors=("VL", "NI"),
                             lightings=("Strong", "Dark"), frames=3, size=(40, 48))
    records, report = read_oulu(root)
    assert len(records) == 2 * 6
    assert {(r.meta["sensor"], r.meta["lighting"]) for r in records} == {("VL", "Strong")}
    assert all(r.path.name == "002.jpeg" for r in records)
    assert report.dropped == {"sensor not selected: NI": 24, "lighting not selected: Dark": 12}
    all_of_it, report = read_oulu(root, sensors=None, lightings=None, peak_frames=2)
    assert len(all_of_it) == 2 * 2 * 2 * 6 * 2 and report.subjects == 2
    # The root may be any folder on the documented path.
    inner, _ = read_oulu(root / "OriginalImg" / "VL" / "Strong")
    assert [r.path for r in inner] == [r.path for r in records]


# -- MMI -----------------------------------------------------------------------------------------

def test_mmi_frames_middle_frame_subject_from_session_xml(tmp_path: Path) -> None:
    root = make_mmi_dataset(tmp_path / "mmi", frames=5, size=(40, 48))
    records, report = read_mmi(root)
    assert sorted(labels(records)) == ["anger", "happiness", "sadness", "surprise"]
    assert all(r.meta["frame"] == 2 for r in records)
    assert {r.subject for r in records} == {"1", "2", "3"}
    assert report.dropped == {"sessions without an emotion label": 1}
    three, _ = read_mmi(root, peak_frames=3)
    assert sorted(r.meta["frame"] for r in three if r.label == "anger") == [1, 2, 3]


def test_mmi_video_sessions_and_view_filter(tmp_path: Path) -> None:
    root = make_mmi_dataset(tmp_path / "mmi", sessions=(("7", 4, "fear"),), frames=5, video=True, size=(48, 64))
    records, _ = read_mmi(root)
    assert len(records) == 1 and records[0].path.suffix == ".avi"
    assert records[0].meta["frame"] == 2 and records[0].meta["frame_count"] == 5
    side = make_mmi_dataset(tmp_path / "side", sessions=(("8", 4, "fear"),), frames=3, view="1", size=(40, 48))
    with pytest.raises(DatasetError, match="no emotion-labelled MMI sessions left"):
        read_mmi(side)
    assert len(read_mmi(side, views=None)[0]) == 1


# -- AffectNet -----------------------------------------------------------------------------------

def test_affectnet_codes_boxes_and_non_emotions(tmp_path: Path) -> None:
    root = make_affectnet_dataset(tmp_path / "an", rows=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1), size=(60, 80))
    records, report = read_affectnet(root, landmarks=True)
    assert sorted(labels(records)) == sorted(EKMAN + ("happiness",))
    assert report.dropped == {"not an emotion: None": 1, "not an emotion: Uncertain": 1,
                              "not an emotion: No-Face": 1, "class not kept: neutral": 1,
                              "class not kept: contempt": 1}
    first = records[0]
    assert len(first.meta["face_box"]) == 4 and first.meta["landmarks"].shape == (68, 2)
    assert first.path.is_file() and first.subject == first.path.relative_to(root / "Manually_Annotated_Images").as_posix()
    assert any("no subject ids" in n for n in report.notes)


def test_affectnet_unknown_code_names_csv_line(tmp_path: Path) -> None:
    root = make_affectnet_dataset(tmp_path / "an", rows=(1, 2), size=(60, 80))
    csv_path = root / "training.csv"
    lines = csv_path.read_text().splitlines()
    lines[2] = lines[2].replace(",2,", ",12,")
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"training\.csv:3.*unknown AffectNet emotion code"):
        read_affectnet(root)


# -- FER2013 -------------------------------------------------------------------------------------

def test_fer2013_inline_pixels_usage_and_filters(tmp_path: Path) -> None:
    path = make_fer2013_csv(tmp_path, per_class=2)
    records, report = read_fer2013(path)
    assert len(records) == 12 and report.dropped == {"class not kept: neutral": 2}
    assert all(r.pixels.shape == (48, 48) and r.pixels.dtype == np.uint8 and r.path is None for r in records)
    assert records[0].meta["split"] == "Training" and records[0].subject == "0"
    public, _ = read_fer2013(tmp_path, usages=("PublicTest",))
    assert {r.meta["split"] for r in public} == {"PublicTest"}


def test_fer2013_bad_pixels_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n0,1 2 3,Training\n")
    with pytest.raises(DatasetError, match=r"fer2013\.csv:2: 3 pixel values"):
        read_fer2013(tmp_path)


# -- detection, dispatch, errors -----------------------------------------------------------------

def test_detect_layout_and_read_records_dispatch(tmp_path: Path) -> None:
    roots = {
        "folder": make_folder_dataset(tmp_path / "folder", ("anger",), per_class=1, subjects=1, size=48),
        "rafd": make_rafd_dataset(tmp_path / "rafd", subjects=(1,), emotions=("anger",), size=(48, 40)),
        "ckplus": make_ckplus_dataset(tmp_path / "ck", sequences=(("S005", "001", "anger"),), frames=2, size=(40, 48)),
        "oulu": make_oulu_dataset(tmp_path / "oulu", subjects=("P001",), emotions=("anger",), sensors=("VL",),
                                  frames=2, size=(40, 48)),
        "mmi": make_mmi_dataset(tmp_path / "mmi", sessions=(("1", 1, "anger"),), frames=3, size=(40, 48)),
        "affectnet": make_affectnet_dataset(tmp_path / "an", rows=(6,), size=(60, 80)),
        "fer2013": make_fer2013_csv(tmp_path / "fer", per_class=1, classes=("anger",)).parent,
    }
    for layout, root in roots.items():
        assert detect_layout(root) == layout, layout
        records, report = read_records(root)
        assert report.layout == layout and labels(records) == ["anger"], layout
    assert detect_layout(roots["fer2013"] / "fer2013.csv") == "fer2013"
    assert detect_layout(roots["affectnet"] / "training.csv") == "affectnet"
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "dataset_card.json").write_text("{}")
    assert detect_layout(tmp_path / "synth") == "synth"


def test_read_records_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset root not found"):
        read_records(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the dataset layout"):
        read_records(tmp_path / "empty")
    bad = tmp_path / "photos"
    for name in ("holiday", "work"):
        (bad / name).mkdir(parents=True)
        (bad / name / "a.jpg").write_bytes(b"x")
    (bad / "notes.txt").write_text("x")
    with pytest.raises(DatasetError) as caught:
        read_records(bad)
    message, hint = str(caught.value), caught.value.hint or ""
    assert "\n" not in message
    # What was looked for, what was found, and the flag (and keyword) that settles it.
    assert "Looked for:" in message and "cohn-kanade-images" in message and "session.xml" in message
    assert "Found: 2 sub-folder(s) (holiday/, work/) and 1 file(s) (1 .txt)" in message
    assert "'holiday' is not an emotion" in message or "expected emotion folders" in message
    assert "--layout folder|rafd|ckplus|oulu|mmi|affectnet|fer2013" in hint and "layout=" in hint
    with pytest.raises(InvalidInputError) as unknown:
        read_records(bad, layout="imagenet")
    assert "--layout" in (unknown.value.hint or "")
    root = make_folder_dataset(tmp_path / "only_neutral", ("neutral",), per_class=1, subjects=1, size=48)
    with pytest.raises(DatasetError, match=r"no images left to read.*class not kept: neutral: 1"):
        read_records(root)
    with pytest.raises(InvalidInputError, match="no option"):
        read_records(root, layout="folder", peak_frames=2)
    with pytest.raises(InvalidInputError, match="unknown layout"):
        read_records(root, layout="imagenet")


def test_resolve_classes_order_and_spellings() -> None:
    assert resolve_classes() == EKMAN
    assert resolve_classes(EKMAN, keep=("Neutral",)) == EKMAN + ("neutral",)
    assert resolve_classes("happy,angry") == ("happiness", "anger")
    with pytest.raises(InvalidInputError):
        resolve_classes(("bored",))
