"""`fertk synth report`, `fertk synth --judge/--filter J` and `fertk eval --judge` through Typer's runner;
bad judges are one-line errors naming the file (exit 2)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fertk.cli import app
from tests.models.keras_fixtures import random_weights, table1_config, write_judge_h5, write_keras_h5

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "faces"
    result = runner.invoke(app, ["synth", "--n", "3", "--out", str(out), "--emotions", "anger,happy,surprise",
                                 "--intensity", "0.4:1", "--format", "folder"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    return write_judge_h5(tmp_path_factory.mktemp("judge"), seed=5)


def test_report_json_and_eval_with_the_same_judge_agree(dataset, judge, tmp_path):
    result = runner.invoke(app, ["synth", "report", str(dataset), "--judge", str(judge), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["faces"] == 9 and set(data["per_emotion"]) == {"anger", "happiness", "surprise"}
    assert (dataset / "report" / "report.json").is_file() and (dataset / "report" / "worst_faces.png").is_file()
    human = runner.invoke(app, ["synth", "report", str(dataset), "--judge", str(judge), "--out", str(tmp_path / "r")])
    assert human.exit_code == 0, human.output
    assert "identity diversity" in human.stdout and "judge agrees" in human.stdout
    evaluated = runner.invoke(app, ["eval", "--judge", str(judge), str(dataset), "--out", str(tmp_path / "ev"),
                                    "--no-progress", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)["results"][0]
    assert report["n"] == 9 and report["accuracy"] == pytest.approx(data["agreement"])


def test_synth_with_judge_and_filter_writes_the_card_block(tmp_path, judge):
    out = tmp_path / "judged"
    result = runner.invoke(app, ["synth", "--n", "2", "--out", str(out), "--format", "npy", "--emotions",
                                 "anger,happy", "--judge", str(judge), "--filter", str(judge),
                                 "--filter-threshold", "0.0", "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["judge"]["judge"]["path"] == str(judge) and "identity_diversity" in card["judge"]
    assert card["filter"]["retries_per_emotion"] == {"anger": 0, "happiness": 0}  # threshold 0: no retries


def _expect_exit_2(args, *needles):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    message = result.stderr if hasattr(result, "stderr") else result.output
    lines = [line for line in message.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, message
    for needle in needles:
        assert needle in lines[0], message
    return lines[0]


def test_bad_judges_are_one_line_errors(dataset, tmp_path):
    base = ["synth", "report", str(dataset), "--judge"]
    # A card naming six classes for a seven-output network.
    wrong_size = write_judge_h5(tmp_path / "a", "six.h5", card={"classes": ["angry", "disgust", "fear", "happy",
                                                                           "sad", "surprise"],
                                                               "mean": 0.5, "std": 0.5})
    _expect_exit_2([*base, str(wrong_size)], "six.h5", "outputs 7 scores but its card names 6 classes")
    # Class names fertk cannot map.
    unmappable = write_judge_h5(tmp_path / "b", "odd.h5", classes=["angry", "disgust", "fear", "happy", "sad",
                                                                     "surprise", "bored"])
    _expect_exit_2([*base, str(unmappable)], "odd.h5.judge.json", "cannot map: 'bored'")
    # An architecture the importer does not know: the layers found are listed.
    config = table1_config("valid", input_size=32)
    config["config"].insert(2, {"class_name": "LSTM", "config": {"name": "lstm_1", "units": 4}})
    unknown = write_keras_h5(tmp_path / "rnn.h5", config, random_weights(table1_config("valid", input_size=32)))
    _expect_exit_2([*base, str(unknown)], "rnn.h5", "LSTM", "layers found: InputLayer×1, Conv2D×4")
    # Corrupt / truncated HDF5.
    good = write_judge_h5(tmp_path / "c", "cut.h5")
    good.write_bytes(good.read_bytes()[:5000])
    _expect_exit_2([*base, str(good)], "cut.h5", "truncated or corrupt")
    # Same errors through --filter and eval.
    _expect_exit_2(["synth", "--n", "1", "--out", str(tmp_path / "never"), "--filter", str(good)], "cut.h5")
    assert not (tmp_path / "never").exists()
    _expect_exit_2(["eval", "--judge", str(unknown), str(dataset), "--no-progress"], "rnn.h5", "LSTM")
    _expect_exit_2([*base, str(tmp_path / "missing.onnx")], "missing.onnx", "judge not found")
