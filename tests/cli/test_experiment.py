"""`fertk experiment`: CONFIG runs (the shorthand for `run`), `init --procedural`, `report`, errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fertk.cli import app
from fertk.experiment import procedural_config_text

REPO = Path(__file__).resolve().parents[2]
SMALL = """
[experiment]
name = "cli"
out = "run"
k = [1]
classes = ["happiness", "surprise"]

[split]
sizes = [3, 1, 1]

[[real]]
name = "studio"
path = "data/real"
[real.generate]
n = 5
seed = 1
style = "studio"
format = "npy"
output_size = 16

[[cross_db]]
name = "natural"
path = "data/cross"
[cross_db.generate]
n = 2
seed = 2
style = "natural"
format = "npy"
output_size = 16

[[synthetic]]
name = "natural"
path = "data/pool"
[synthetic.generate]
seed = 3
style = "natural"
format = "npy"
output_size = 16

[train]
input_size = 16
epochs = 1
batch_size = 8
device = "cpu"
"""


def test_the_readme_example_is_the_default_stand_in() -> None:
    # The example config the README runs is exactly what `init --procedural` writes.
    example = REPO / "examples" / "experiment_procedural.toml"
    assert example.read_text(encoding="utf-8") == procedural_config_text("default")


def test_config_argument_runs_and_report_rebuilds(tmp_path: Path) -> None:
    config = tmp_path / "small.toml"
    config.write_text(SMALL)
    runner = CliRunner()
    result = runner.invoke(app, ["experiment", str(config), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ran"] == 3 and data["skipped"] == 0 and not data["failed"]
    assert [row["cell"] for row in data["summary"]["rows"]] == ["real", "synthetic-natural", "mix-natural-k001"]
    run_dir = Path(data["run_dir"])
    assert run_dir == tmp_path / "run" and (run_dir / "report" / "summary.md").is_file()

    # The explicit subcommand and a --out elsewhere; --k / --repeats override the file.
    # Options before the subcommand or CONFIG work as well as after it.
    other = runner.invoke(app, ["experiment", "--repeats", "1", "-o", str(tmp_path / "other"), "run", str(config),
                                "--k", "1"])
    assert other.exit_code == 0, other.output
    assert "real + 1× natural" in other.stdout and "3 cell(s) trained" in other.stdout
    before = runner.invoke(app, ["experiment", "--out", str(tmp_path / "other"), "--repeats", "1", "--k", "1",
                                 str(config), "--json"])
    assert before.exit_code == 0, before.output
    assert json.loads(before.stdout)["skipped"] == 3 and json.loads(before.stdout)["ran"] == 0

    rebuilt = runner.invoke(app, ["experiment", "report", str(run_dir), "--json"])
    assert rebuilt.exit_code == 0, rebuilt.output
    summary = json.loads(rebuilt.stdout)["summary"]
    assert [r["accuracy"] for r in summary["rows"]] == [r["accuracy"] for r in data["summary"]["rows"]]


def test_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["experiment", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2
    assert "experiment config not found" in missing.output and "Traceback" not in missing.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[experiment]\nrepeats = "three"\n[[real]]\npath = "r"\n[[synthetic]]\npath = "s"\n')
    refused = runner.invoke(app, ["experiment", str(bad)])
    assert refused.exit_code == 2 and "repeats must be a positive integer" in refused.output
    preset = runner.invoke(app, ["experiment", "init", "--procedural", str(tmp_path / "d"), "--preset", "huge"])
    assert preset.exit_code == 2 and "unknown stand-in preset" in preset.output
    not_a_run = runner.invoke(app, ["experiment", "report", str(tmp_path)])
    assert not_a_run.exit_code == 2 and "not an experiment run directory" in not_a_run.output
    good = tmp_path / "good.toml"
    good.write_text(SMALL)
    jobs = runner.invoke(app, ["experiment", str(good), "--jobs", "0"])
    assert jobs.exit_code == 2 and "--jobs must be at least 1" in jobs.output
    # The same with the options before CONFIG (`fertk experiment [OPTIONS] CONFIG`).
    jobs = runner.invoke(app, ["experiment", "--jobs", "0", "--repeats", "1", str(good)])
    assert jobs.exit_code == 2 and "--jobs must be at least 1" in jobs.output, jobs.output
    first = runner.invoke(app, ["experiment", "--repeats", "1", str(tmp_path / "nope.toml")])
    assert first.exit_code == 2 and "experiment config not found" in first.output, first.output
    no_config = runner.invoke(app, ["experiment", "--repeats", "1"])
    assert no_config.exit_code == 2 and "Missing argument 'config'" in no_config.output, no_config.output
    report = runner.invoke(app, ["experiment", "--json", "report", str(tmp_path)])
    assert report.exit_code == 2 and "not an experiment run directory" in report.output, report.output


def test_init_refuses_to_overwrite_a_different_config(tmp_path: Path) -> None:
    (tmp_path / "experiment.toml").write_text("# mine\n")
    result = CliRunner().invoke(app, ["experiment", "init", "--procedural", str(tmp_path)])
    assert result.exit_code == 2 and "exists and differs" in result.output
    assert (tmp_path / "experiment.toml").read_text() == "# mine\n"


def test_a_damaged_run_file_is_a_one_line_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.resolved.json").write_text('{"config": ')
    result = CliRunner().invoke(app, ["experiment", "report", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert str(run_dir / "config.resolved.json") in result.output and "Traceback" not in result.output
    assert "FERTK_DEBUG" not in result.output
