"""`fertk info` and `fertk models` through Typer's runner: text, --json and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fertk.cli import app

runner = CliRunner()


def test_info_json_lists_backends_with_reasons() -> None:
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    names = {b["name"] for b in data["backends"]}
    assert {"torch-cpu", "ort-cpu"} <= names
    assert all(b["reason"] for b in data["backends"])
    assert data["packages"]["torch"]


def test_models_list_and_show() -> None:
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0
    names = [m["name"] for m in json.loads(result.stdout)]
    assert "fer-cnn" in names
    shown = runner.invoke(app, ["models", "show", "fer-cnn", "--json"])
    assert shown.exit_code == 0
    card = json.loads(shown.stdout)
    assert card["extra"]["parameters"] == 8_636_038


def test_unknown_model_is_one_line_error_with_exit_code() -> None:
    result = runner.invoke(app, ["models", "show", "nope"])
    assert result.exit_code == 2
    assert "unknown model 'nope'" in result.output
    assert "Traceback" not in result.output


def test_models_show_stargan_says_the_checkpoint_stores_no_size() -> None:
    weights = Path(__file__).resolve().parents[1] / "golden" / "stargan_small-G.ckpt"
    result = runner.invoke(app, ["models", "show", "stargan", "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    assert "image size: 128 px — not stored in stargan_small-G.ckpt" in result.stdout
    assert "--translator-size" in result.stdout
    data = json.loads(runner.invoke(app, ["models", "show", "stargan", "--weights", str(weights), "--json"]).stdout)
    assert data["extra"]["image_size"] == 128 and data["extra"]["image_size_source"].startswith("not stored")
