"""The experiment config: TOML in, every knob resolved, typos and contradictions refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fertk.core.errors import InvalidInputError
from fertk.experiment.cells import Cell, plan_cells
from fertk.experiment.config import DEFAULT_K, ExperimentConfig, config_from_toml_text, load_config, parse_k_list, units_needed

MINIMAL = """
[[real]]
path = "data/rafd"
layout = "rafd"
[real.options]
keep = []

[[synthetic]]
name = "stylegan"
path = "/data/synth"

[[cross_db]]
name = "mmi"
path = "data/mmi"
layout = "mmi"
"""


def test_defaults_follow_the_paper(tmp_path: Path) -> None:
    config = config_from_toml_text(MINIMAL, base_dir=tmp_path, source=str(tmp_path / "paper.toml"))
    assert config.name == "paper"
    assert config.split_sizes == (109, 10, 25)
    assert config.k == DEFAULT_K == (1, 2, 3, 4, 5, 6, 10, 15, 20)
    assert config.classes == ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
    assert config.repeats == 1 and config.experiments == ("real", "synthetic", "mix")
    # Relative paths are relative to the config file; absolute ones stay.
    assert config.real[0].path == str((tmp_path / "data/rafd").resolve())
    assert config.real[0].name == "rafd" and config.real[0].layout == "rafd"
    assert config.synthetic[0].path == "/data/synth"
    train = config.train_config(seed=7)
    assert (train.variant, train.input_size, train.lr, train.batch_size, train.patience) == ("paper", 64, 1e-4, 64, 5)
    assert train.seed == 7 and train.classes == config.classes
    # The resolved config is JSON and reloads to the same thing.
    again = ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_cells_and_units_follow_the_experiments(tmp_path: Path) -> None:
    config = config_from_toml_text(MINIMAL + '\n[experiment]\nk = [5, 1]\n', base_dir=tmp_path)
    cells = plan_cells(config)
    assert [c.id for c in cells] == ["real", "synthetic-stylegan", "mix-stylegan-k001", "mix-stylegan-k005"]
    assert cells[-1] == Cell("mix", "stylegan", 5) and cells[-1].label == "real + 5× stylegan"
    assert units_needed(config) == 5
    only_real = config_from_toml_text(MINIMAL + '\n[experiment]\nexperiments = ["real"]\n', base_dir=tmp_path)
    assert [c.id for c in plan_cells(only_real)] == ["real"] and units_needed(only_real) == 0
    assert config.with_overrides(repeats=3, k=(2,)).repeats == 3
    assert config.with_overrides(repeats=3, k=(2,)).k == (2,)


@pytest.mark.parametrize("snippet,message", [
    ("[experiment]\nrepeat = 3\n", "unknown key"),
    ("[experiment]\nrepeats = 0\n", "repeats"),
    ("[experiment]\nk = [1, 1]\n", "distinct"),
    ("[experiment]\nexperiments = [\"exp4\"]\n", "unknown experiment"),
    ("[experiment]\nclasses = [\"happy\", \"bored\"]\n", "unknown emotion"),
    ("[split]\nsizes = [0.8, 0.2]\n", "three values"),
    ("[train]\nseed = 3\n", "set by the experiment runner"),
    ("[train]\nvariant = \"vgg\"\n", "variant"),
    ("[train]\nlearning_rate = 0.1\n", "unknown FER training option"),
    ("[[cross_db]]\nname = \"test\"\npath = \"x\"\n", "reserved"),
    ("[[synthetic]]\nname = \"stylegan\"\npath = \"y\"\n", "used twice"),
    ("[[cross_db]]\nname = \"ck\"\npath = \"x\"\nshuffle_labels = true\n", "synthetic"),
    ("[[cross_db]]\nname = \"ck\"\npath = \"x\"\n[cross_db.generate]\nstyle = \"natural\"\n", "needs n"),
    ("[[cross_db]]\nname = \"ck\"\npath = \"x\"\n[cross_db.generate]\nn = 3\ncolour = 1\n", "unknown fertk synth option"),
    ("[[cross_db]]\nname = \"ck\"\npath = \"x\"\n[cross_db.generate]\nn = 3\nstyle = \"cartoon\"\n", "style"),
    ("[[cross_db]]\nname = \"ck\"\n", "has no path"),
    ("[extra]\n", "unknown key"),
    ("[experiment\n", "not valid TOML"),
])
def test_bad_configs_are_refused_with_the_reason(tmp_path: Path, snippet: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        config_from_toml_text(MINIMAL + "\n" + snippet, base_dir=tmp_path)


def test_missing_parts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no \\[\\[real\\]\\]"):
        config_from_toml_text('[[synthetic]]\npath = "s"\n', base_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="need a \\[\\[synthetic\\]\\] set"):
        config_from_toml_text('[[real]]\npath = "r"\n', base_dir=tmp_path)
    assert config_from_toml_text('[experiment]\nexperiments = ["real"]\n[[real]]\npath = "r"\n', base_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="config not found"):
        load_config(tmp_path / "nope.toml")


def test_k_list_parsing() -> None:
    assert parse_k_list("1,2, 5") == (1, 2, 5)
    with pytest.raises(InvalidInputError):
        parse_k_list("1,two")
    with pytest.raises(InvalidInputError):
        parse_k_list(",")
