"""`fertk synth --translator-size`: the StarGAN input side is a content option, recorded in the
dataset card with where it came from, and a rerun with another size is refused."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fertk.cli import app

runner = CliRunner()


def _args(golden: Path, out: Path, *extra: str) -> list[str]:
    return ["synth", "-n", "2", "--out", str(out), "--generator", "stylegan2",
            "--generator-weights", str(golden / "stylegan2_small-G.pt"),
            "--translator-weights", str(golden / "stargan_small-G.ckpt"), "--emotions", "anger,happiness",
            "--batch", "2", "--format", "npy", *extra]


def test_translator_size_flag_reaches_the_pipeline_and_card(golden_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    result = runner.invoke(app, _args(golden_dir, out, "--translator-size", "64", "--json"))
    assert result.exit_code == 0, result.output
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["pipeline"]["translator_size"] == 64
    assert card["pipeline"]["translator_size_source"] == "translator_size option"
    assert card["translator"]["card"]["config"]["image_size"] == 64
    assert card["pipeline"]["fp16_layers"] == "fp32 (num_fp16_res 0)"
    assert json.loads(result.stdout)["engine"]["fp16_layers"] == "fp32 (num_fp16_res 0)"
    assert card["options"]["translator_size"] == 64
    refused = runner.invoke(app, _args(golden_dir, out, "--translator-size", "128"))
    assert refused.exit_code == 2 and "--translator-size was 64, now 128" in refused.stderr


def test_default_translator_size_is_the_cards_and_says_why(golden_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    result = runner.invoke(app, _args(golden_dir, out, "--json"))
    assert result.exit_code == 0, result.output
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["pipeline"]["translator_size"] == 128
    assert card["pipeline"]["translator_size_source"].startswith("not stored in stargan_small-G.ckpt")
    bad = runner.invoke(app, ["synth", "-n", "2", "--out", str(tmp_path / "p"), "--translator-size", "64"])
    assert bad.exit_code == 2 and "--translator-size needs --generator stylegan2" in bad.stderr
