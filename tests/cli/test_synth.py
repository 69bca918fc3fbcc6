"""`fertk synth` and `fertk synth verify` through Typer's test runner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fertk.cli import app

runner = CliRunner()


def test_synth_json_then_verify(tmp_path):
    out = tmp_path / "faces"
    preview = tmp_path / "grid.png"
    result = runner.invoke(app, ["synth", "--n", "4", "--out", str(out), "--shard-size", "3", "--emotions",
                                 "anger,happy", "--neutral", "--intensity", "0.5:1", "--format", "folder",
                                 "--preview", str(preview), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["faces"] == 12 and data["emotions"] == ["anger", "happiness", "neutral"]
    assert data["complete"] and data["shards_total"] == 2 and preview.is_file()
    checked = runner.invoke(app, ["synth", "verify", str(out), "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["ok"] is True
    # Human summary of a resumed (already finished) run.
    again = runner.invoke(app, ["synth", "--n", "4", "--out", str(out), "--shard-size", "3", "--emotions",
                                "anger,happy", "--neutral", "--intensity", "0.5:1", "--format", "folder"])
    assert again.exit_code == 0, again.output
    assert "already finished" in again.stdout and "manifest:" in again.stdout


def test_verify_fails_on_damage(tmp_path):
    out = tmp_path / "d"
    assert runner.invoke(app, ["synth", "-n", "2", "--out", str(out), "--format", "npy"]).exit_code == 0
    target = out / "shards" / "shard-000000.images.npy"
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    checked = runner.invoke(app, ["synth", "verify", str(out)])
    assert checked.exit_code == 1
    assert "sha256 mismatch" in checked.stdout


def test_errors_are_one_line(tmp_path):
    out = tmp_path / "d"
    assert runner.invoke(app, ["synth", "-n", "2", "--out", str(out)]).exit_code == 0
    refused = runner.invoke(app, ["synth", "-n", "3", "--out", str(out)])
    assert refused.exit_code == 2
    assert "error: " in refused.stderr and "--n was 2, now 3" in refused.stderr
    assert "Traceback" not in refused.output
    bad = runner.invoke(app, ["synth", "-n", "2", "--out", str(tmp_path / "x"), "--intensity", "2:1"])
    assert bad.exit_code == 2 and "--intensity" in bad.stderr
    missing = runner.invoke(app, ["synth", "--out", str(tmp_path / "y")])
    assert missing.exit_code != 0 and "--n and --out are required" in missing.output
    weights = runner.invoke(app, ["synth", "-n", "2", "--out", str(tmp_path / "z"), "--generator", "stylegan2",
                                  "--generator-weights", str(tmp_path / "none.pkl"),
                                  "--translator-weights", str(tmp_path / "none.ckpt")])
    assert weights.exit_code == 2 and "weights not found" in weights.stderr
    assert not (tmp_path / "z").exists()


def test_help_lists_the_options():
    result = runner.invoke(app, ["synth", "--help"])
    assert result.exit_code == 0
    for flag in ("--n", "--out", "--format", "--filter", "--preview", "--backend", "verify"):
        assert flag in result.output
