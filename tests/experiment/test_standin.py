"""The proof without licensed data: the procedural stand-in, end to end through the CLI.

Two rendering styles of the procedural face model play two databases. The "real" training
database is small and in the studio style; the cross-database test set is in the natural style.
Synthetic units in the natural style must lift the cross-database accuracy above real-only, and
the same synthetic faces with shuffled labels must not. If the runner mixed up cells, units,
labels, test sets or the aggregation, one of these assertions fails.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fertk.cli import app

from tests.tools.limits import broken_limits


def _run_standin(seed: int, workdir: Path) -> tuple[dict, Path]:
    """`fertk experiment init --procedural --preset tiny` then `fertk experiment` on it, with the
    experiment's and the split's seed set to `seed` (the data stay the preset's): (JSON, config)."""
    runner = CliRunner()
    init = runner.invoke(app, ["experiment", "init", "--procedural", str(workdir), "--preset", "tiny", "--json"])
    assert init.exit_code == 0, init.output
    config = Path(json.loads(init.stdout)["config"])
    if seed:
        text = config.read_text()
        assert text.count("\nseed = 0\n") == 2, "the preset's [experiment] and [split] seeds"
        config.write_text(text.replace("\nseed = 0\n", f"\nseed = {seed}\n"))
    result = runner.invoke(app, ["experiment", str(config), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), config


def standin_statistics(seed: int, workdir: Path, data: dict | None = None) -> dict[str, float]:
    """What the stand-in test checks, for the tiny preset run with experiment and split seed
    `seed` (or for its JSON `data`): cross-style accuracies and their gaps. Also run by
    tests/tools/threshold_sweep.py over several seeds."""
    if data is None:
        data, _ = _run_standin(seed, workdir)
    rows = {row["cell"]: row for row in data["summary"]["rows"]}

    def cross(cell: str) -> float:
        return rows[cell]["accuracy"]["natural"]["mean"]

    def per_repeat(cell: str) -> list[float]:
        return rows[cell]["values"]["natural"]

    real, helped, control = cross("real"), cross("mix-natural-k002"), cross("mix-shuffled-k002")
    return {
        "in_db": rows["real"]["accuracy"]["test"]["mean"],
        "gain": helped - real,
        "worst_repeat_gain": min(m - r for m, r in zip(per_repeat("mix-natural-k002"), per_repeat("real"))),
        "control_gain": control - real,
        "true_vs_shuffled": helped - control,
        "plateaus": float(rows["real"]["plateau"] + rows["mix-natural-k002"]["plateau"]),
    }


# Bounds from a sweep over 8 seeds (tests/tools/threshold_sweep.py standin-tiny --seeds 0-7; the
# values are in tests/tools/sweeps/standin-tiny-xeon-avx512-2026-12-02.json, 2-core Intel Xeon with
# AVX-512). The sweep's rule: a bound clears the worst seed by a quarter of the seeds' range. Chance
# is 1/2 (two emotions, anger and sadness: the tiny preset's world). Worst seed (of 8) -> bound:
STANDIN_LIMITS: tuple[tuple[str, str, float], ...] = (
    # The baseline learned its own (studio) database: 0.75 (seed 7) -> > 0.65.
    ("in_db", ">", 0.65),
    # Natural-style synthetic units lift the cross-style test (mean over repeats): 0.0375 (seed 5)
    # -> > 0. Mean 0.12 over the seeds; this one clears its bound by slightly less than the rule's
    # margin (0.04): the claim is the sign, and the shuffled control below is what it is weighed by.
    ("gain", ">", 0.0),
    # No repeat gets worse by more than 6 of its 120 test faces: -0.008 (seed 1) -> > -0.05.
    ("worst_repeat_gain", ">", -0.05),
    # The same faces with shuffled labels do not help: -0.05 (seed 0) -> < 0.
    ("control_gain", "<", 0.0),
    # ... and stay well below the true labels: 0.142 (seed 5) -> > 0.08.
    ("true_vs_shuffled", ">", 0.08),
    # Runs of the verdict's cells (real only, real + 2 natural; 2 repeats each) that ended on the
    # CNN's initial plateau: 2 (seed 7; the tiny preset's restart cannot fire in time, see its
    # comment in fertk.experiment.standin) -> < 3: never three of the four.
    ("plateaus", "<", 3.0),
)


def test_procedural_standin_synthetic_units_help_and_shuffled_labels_do_not(tmp_path: Path) -> None:
    data, config = _run_standin(0, tmp_path)
    assert data["ran"] == 10 and not data["failed"]  # 5 mixes x 2 repeats
    rows = {row["cell"]: row for row in data["summary"]["rows"]}
    assert set(rows) == {"real", "synthetic-natural", "synthetic-shuffled", "mix-natural-k002", "mix-shuffled-k002"}
    stats = standin_statistics(0, tmp_path, data)
    print("stand-in statistics:", stats)
    assert not broken_limits(stats, STANDIN_LIMITS), (broken_limits(stats, STANDIN_LIMITS), stats)
    # Two repeats give an interval (t with 1 degree of freedom) around each mean.
    assert rows["real"]["accuracy"]["natural"]["half_width"] is not None
    gain = rows["mix-natural-k002"]["gain_vs_real"]["natural"]
    assert abs(gain["mean"] - stats["gain"]) < 1e-9

    run_dir = Path(data["run_dir"])
    summary = (run_dir / "report" / "summary.md").read_text()
    assert "real + 2× natural" in summary and "Best mix: **real + 2× natural**" in summary
    for name in ("accuracy_vs_k.png", "in_db_accuracy_vs_k.png", "confusion_natural.png", "per_class_natural.png",
                 "results.csv", "results.json"):
        assert (run_dir / "report" / name).stat().st_size > 0, name

    # Rerunning finds every cell finished and trains nothing.
    again = CliRunner().invoke(app, ["experiment", str(config), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["skipped"] == 10


# ---------------------------------------------------------------------------------------------
# The plateau restart of the shipped presets can fire (it could not: 400 steps needed epoch 100,
# and a stuck run of the smallest cells had early-stopped at ~80-86).

# Steps a healthy run may sit on the initial plateau before leaving it (fertk.train.fer's note).
HEALTHY_PLATEAU_STEPS = 250


def test_the_readme_preset_can_restart_its_smallest_cells_in_time() -> None:
    from fertk.experiment.standin import PRESETS, restart_epoch, smallest_cell_steps

    for name in ("default",):  # the README's run (the tiny smoke test's cells are checked instead)
        preset = PRESETS[name]
        steps = smallest_cell_steps(preset)
        epoch = restart_epoch(preset)
        assert epoch is not None, (name, steps, preset.plateau_steps, preset.min_epochs)
        assert epoch * steps >= preset.plateau_steps and epoch <= preset.min_epochs, name
        # Never before a healthy run has had its chance, and the restarted run gets as long again.
        assert preset.plateau_steps > HEALTHY_PLATEAU_STEPS, name
        assert (preset.epochs - epoch) * steps > HEALTHY_PLATEAU_STEPS, name


def test_the_default_preset_restarts_a_stuck_smallest_cell_before_early_stopping_ends_it(tmp_path: Path) -> None:
    """The README demo's [train] settings on a stuck run of its smallest cell size (identical
    faces under balanced labels: nothing beats uniform predictions, so the run stays on the
    plateau), for as many epochs as such a run can last before early stopping ends it
    (min_epochs + patience): the restart must have fired. (With plateau_steps 400 it stopped at
    epoch 80 without one.)"""
    import numpy as np

    from fertk.data.records import FaceArrays
    from fertk.experiment.standin import PRESETS
    from fertk.train.fer import train_fer
    from fertk.train.fer_config import FerTrainConfig

    p = PRESETS["default"]

    def noise(identities: int, source: str) -> FaceArrays:
        n = identities * len(p.classes)
        return FaceArrays(np.full((n, p.face_size, p.face_size), 128, np.uint8),
                          np.tile(np.arange(len(p.classes)), identities), p.classes,
                          np.repeat([f"{source}{i}" for i in range(identities)], len(p.classes)),
                          np.array([source] * n))

    config = FerTrainConfig(variant="paper", input_size=p.face_size, epochs=p.min_epochs + p.patience,
                            batch_size=p.batch_size, lr=p.lr, patience=p.patience, min_epochs=p.min_epochs,
                            plateau_restarts=p.plateau_restarts, plateau_steps=p.plateau_steps, augment=False,
                            seed=0, threads=1, device="cpu")
    result = train_fer(noise(p.split_sizes[0], "tr"), noise(p.split_sizes[1], "va"), config, tmp_path / "run")
    assert result.restarts >= 1, (result.restarts, result.epochs_run, result.stop_reason)
