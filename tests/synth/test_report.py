"""`synth_report`: the numbers on hand-made judge scores, and the same report on every synth format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fertk.data.shards import read_arrays
from fertk.core.io import sha256_file
from fertk.synth import SynthOptions, run_synth
from fertk.synth.report import JudgeScores, build_report, synth_report
from tests.models.keras_fixtures import write_judge_h5


def _scores(probs, features=None, classes=("happiness", "anger", "sadness")):
    return JudgeScores(tuple(classes), np.asarray(probs, float), features, {"name": "hand"})


def test_report_numbers_from_known_scores():
    # 4 identities × (anger, happiness, neutral); the judge lacks neutral and orders its classes its way.
    classes = ("anger", "happiness", "neutral")
    labels = np.tile([0, 1, 2], 4)
    identity = np.repeat(np.arange(4), 3)
    intensity = np.array([0.2, 0.5, 0.0, 0.4, 0.6, 0.0, 0.8, 0.7, 0.0, 1.0, 0.9, 0.0])
    happy, angry, sad = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7]
    probs = [happy, happy, sad,    # identity 0: anger read as happiness (p(anger) = 0.1)
             angry, happy, happy,
             angry, happy, sad,
             [0.05, 0.9, 0.05], happy, sad]
    feats = np.repeat(np.eye(4), 3, axis=0)  # orthogonal identities
    images = np.zeros((12, 8, 8), np.uint8)
    keys = [f"k{i}" for i in range(12)]
    report = build_report(images, labels, classes, identity, intensity, keys, _scores(probs, feats), montage=2)
    data = report.data
    assert data["agreement"] == pytest.approx(7 / 8) and data["agreement_scored_faces"] == 8
    assert data["per_emotion"]["anger"]["agreement"] == pytest.approx(0.75)
    assert data["per_emotion"]["anger"]["mean_probability"] == pytest.approx((0.1 + 0.8 + 0.8 + 0.9) / 4)
    assert data["per_emotion"]["happiness"]["agreement"] == 1.0
    assert data["per_emotion"]["neutral"]["agreement"] is None and not data["per_emotion"]["neutral"]["judged"]
    assert data["per_emotion"]["neutral"]["judge_calls_most"] == "sadness"
    assert data["confusion"]["counts"] == [[1, 3, 0], [4, 0, 0], [1, 0, 3]]
    assert data["class_balance"]["predicted"] == {"happiness": 6, "anger": 3, "sadness": 3}
    assert data["class_balance"]["intended_max_over_min"] == 1.0
    assert [w["key"] for w in data["worst_faces"]] == ["k0", "k1"]  # p(intended) 0.1, then 0.8 (ties: order)
    bins = data["agreement_vs_intensity"]["bins"]
    assert data["agreement_vs_intensity"]["varies"] and bins[0]["agreement"] == 0.0  # the 0.2 anger face
    assert sum(b["faces"] for b in bins) == 8  # neutral faces are not in the intensity table
    diversity = data["identity_diversity"]
    assert diversity["value"] == pytest.approx(1.0) and diversity["faces_used"] == "neutral"
    same = build_report(images, labels, classes, identity, intensity, keys, _scores(probs, np.ones((12, 5))))
    assert same.data["identity_diversity"]["value"] == pytest.approx(0.0, abs=1e-9)
    flat = build_report(images, labels, classes, identity, np.ones(12), keys, _scores(probs, feats))
    assert not flat.data["agreement_vs_intensity"]["varies"]


@pytest.fixture(scope="module")
def judge_h5(tmp_path_factory):
    return write_judge_h5(tmp_path_factory.mktemp("judge"), seed=4)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    made = {}
    for fmt in ("wds", "folder", "npy"):
        made[fmt] = root / fmt
        run_synth(SynthOptions(n=3, out=str(made[fmt]), format=fmt, shard_size=2, intensity="0.3:1", neutral=True))
    return made


def test_report_is_the_same_on_every_format(datasets, judge_h5, tmp_path):
    reports = {}
    for fmt, root in datasets.items():
        out = tmp_path / fmt if fmt != "wds" else None
        reports[fmt] = synth_report(root, judge_h5, out=out, montage=5)
        target = out or root / "report"
        for name in ("report.json", "confusion.json", "confusion.csv", "confusion.png", "class_balance.csv",
                     "agreement_vs_intensity.png", "worst_faces.png"):
            assert (target / name).is_file(), (fmt, name)
        saved = json.loads((target / "report.json").read_text())
        assert saved["faces"] == 21 and saved["identities"] == 3 and saved["dataset_format"] == fmt
        assert sum(map(sum, saved["confusion"]["counts"])) == 21 and len(saved["worst_faces"]) == 5
        assert saved["judge"]["sha256"] == sha256_file(judge_h5)
        assert saved["identity_diversity"]["features"] == "judge penultimate features"
        assert saved["identity_diversity"]["feature_dim"] == 128
        csv_rows = (target / "confusion.csv").read_text().splitlines()
        assert csv_rows[0].split(",")[1:] == saved["confusion"]["columns"] and len(csv_rows) == 8

    def numbers(report):
        return {k: v for k, v in report.data.items() if k != "dataset_format"}

    assert numbers(reports["wds"]) == numbers(reports["folder"]) == numbers(reports["npy"])
    # Agreement by hand from the judge's probabilities.
    from fertk.synth.engines import FaceScorer

    arrays = read_arrays(datasets["npy"])
    scorer = FaceScorer(judge_h5, backend="torch", device="cpu", precision="fp32")
    try:
        pred = scorer.probabilities(arrays.images).argmax(1)
    finally:
        scorer.close()
    intended = np.array([scorer.classes.index(arrays.classes[i]) for i in arrays.labels])
    assert reports["npy"].data["agreement"] == pytest.approx(float((pred == intended).mean()))


def test_filter_with_a_judge_records_retries_per_emotion(tmp_path, judge_h5):
    from fertk.synth.engines import FaceScorer

    base = dict(n=6, shard_size=3, emotions=("anger", "happiness", "surprise"))
    plain = tmp_path / "plain"
    run_synth(SynthOptions(out=str(plain), format="npy", **base))
    arrays = read_arrays(plain)
    scorer = FaceScorer(judge_h5, backend="torch", device="cpu", precision="fp32")
    try:
        probs = scorer.probabilities(arrays.images)
    finally:
        scorer.close()
    p_intended = probs[np.arange(len(probs)), [scorer.classes.index(arrays.classes[i]) for i in arrays.labels]]
    worst = p_intended.reshape(6, 3).min(axis=1)  # identities in order, emotions in order
    threshold = float(np.median(worst))
    out = tmp_path / "filtered"
    result = run_synth(SynthOptions(out=str(out), format="npy", filter=str(judge_h5), filter_threshold=threshold,
                                    filter_max_attempts=3, judge=str(judge_h5), **base))
    card = json.loads((out / "dataset_card.json").read_text())
    filt = card["filter"]
    retries = filt["attempts"] - 6
    assert 0 < retries and filt["sha256"] == sha256_file(judge_h5)
    per_emotion = filt["retries_per_emotion"]
    assert sorted(per_emotion) == ["anger", "happiness", "surprise"]
    # Each retry is caused by at least one emotion under the threshold, and at most once per emotion.
    assert sum(per_emotion.values()) >= retries and max(per_emotion.values()) <= retries
    first_fail = (p_intended.reshape(6, 3) < threshold).sum(axis=0)  # the first round's causes
    assert all(per_emotion[e] >= first_fail[i] for i, e in enumerate(base["emotions"]))
    assert result.filter["retries_per_emotion"] == per_emotion
    # --judge: the card's judge block is the report of the finished dataset.
    assert card["judge"]["agreement"] == pytest.approx(synth_report(out, judge_h5, out=tmp_path / "r").data["agreement"])
    assert (out / "report" / "report.json").is_file()
