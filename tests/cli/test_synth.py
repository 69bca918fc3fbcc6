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


def test_json_before_verify_applies_to_verify(tmp_path):
    out = tmp_path / "d"
    assert runner.invoke(app, ["synth", "-n", "2", "--out", str(out)]).exit_code == 0
    checked = runner.invoke(app, ["synth", "--json", "verify", str(out)])
    assert checked.exit_code == 0, checked.output
    data = json.loads(checked.stdout)
    assert data["ok"] is True and data["shards"] == 1 and data["notes"] == []


def test_help_usage_does_not_demand_a_subcommand():
    result = runner.invoke(app, ["synth", "--help"])
    assert result.exit_code == 0
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "fertk synth [OPTIONS] [COMMAND [ARGS]...]" in usage, usage


def test_resume_with_another_backend_is_one_line_error(tmp_path):
    out = tmp_path / "d"
    assert runner.invoke(app, ["synth", "-n", "4", "--shard-size", "2", "--out", str(out)]).exit_code == 0
    (out / ".fertk" / "records" / "shard-000001.json").unlink()
    refused = runner.invoke(app, ["synth", "-n", "4", "--shard-size", "2", "--out", str(out), "--backend", "ort"])
    assert refused.exit_code == 2, refused.output
    assert "error: " in refused.stderr and "(--backend)" in refused.stderr and "Traceback" not in refused.output
    assert "--force" in refused.stderr
    resumed = runner.invoke(app, ["synth", "-n", "4", "--shard-size", "2", "--out", str(out), "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["engine"]["execution"]["backend"] == "torch"


def test_preview_that_fails_after_the_run_exits_1_with_the_dataset_kept(tmp_path):
    import threading
    import time

    out, folder = tmp_path / "d", tmp_path / "previews"
    folder.mkdir()
    records = out / ".fertk" / "records"
    stop = threading.Event()

    def pull_the_folder() -> None:  # once the first shard is committed, the preview's folder goes
        while not stop.is_set():
            if records.is_dir() and any(records.glob("*.json")):
                folder.rmdir()
                folder.write_text("now a file")
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=pull_the_folder, daemon=True)
    watcher.start()
    try:
        result = runner.invoke(app, ["synth", "-n", "30", "--shard-size", "3", "--batch", "3", "--out", str(out),
                                     "--preview", str(folder / "grid.png")])
    finally:
        stop.set()
        watcher.join()
    assert folder.is_file(), "the watcher did not act before the run ended"
    assert result.exit_code == 1, result.output
    assert "preview not written" in result.stderr and "Traceback" not in result.output
    assert "manifest:" in result.stdout and (out / "manifest.csv").is_file() and (out / "dataset_card.json").is_file()


def test_every_synth_option_has_a_flag_and_one_builder():
    from dataclasses import fields

    import typer.main

    from fertk.cli.synth import FIELD_OF, synth_app
    from fertk.synth import SynthOptions

    command = typer.main.get_command(synth_app)
    reachable = {FIELD_OF.get(p.name, p.name) for p in command.params}
    assert {f.name for f in fields(SynthOptions)} <= reachable


def test_the_ray_distributor_without_ray_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    out = tmp_path / "d"
    result = runner.invoke(app, ["synth", "-n", "2", "--out", str(out), "--distributor", "ray"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: --distributor ray needs the Python package 'ray'")
    assert "pip install 'fertk[ray]'" in result.stderr and "Traceback" not in result.output
    assert not out.exists()  # refused before the output directory was touched


def test_import_fertk_and_a_local_synth_never_import_ray(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nimport fertk, fertk.cli, fertk.synth.run, fertk.synth.ray_runner\n"
            "from fertk.cli import main\n"
            f"sys.argv = ['fertk', 'synth', '-n', '1', '--out', {str(tmp_path / 'd')!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('RAY', 'ray' in sys.modules)\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == "RAY False"
