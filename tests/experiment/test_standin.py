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


def test_procedural_standin_synthetic_units_help_and_shuffled_labels_do_not(tmp_path: Path) -> None:
    runner = CliRunner()
    init = runner.invoke(app, ["experiment", "init", "--procedural", str(tmp_path), "--preset", "tiny", "--json"])
    assert init.exit_code == 0, init.output
    config = Path(json.loads(init.stdout)["config"])

    result = runner.invoke(app, ["experiment", str(config), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ran"] == 10 and not data["failed"]  # 5 mixes x 2 repeats
    rows = {row["cell"]: row for row in data["summary"]["rows"]}
    assert set(rows) == {"real", "synthetic-natural", "synthetic-shuffled", "mix-natural-k002", "mix-shuffled-k002"}

    def cross(cell: str) -> float:
        return rows[cell]["accuracy"]["natural"]["mean"]

    def per_repeat(cell: str) -> list[float]:
        return rows[cell]["values"]["natural"]

    real, helped, control = cross("real"), cross("mix-natural-k002"), cross("mix-shuffled-k002")
    print(f"cross-style accuracy: real only {real:.3f}, + 2 natural units {helped:.3f}, "
          f"+ 2 shuffled units {control:.3f}; per repeat {per_repeat('real')}, {per_repeat('mix-natural-k002')}, "
          f"{per_repeat('mix-shuffled-k002')}")
    chance = 1 / 2  # two emotions (anger, sadness): the tiny preset's world
    # Measured (AVX2 EPYC, one run of the 2 repeats, 2026-12-01): in-db test 0.875; cross-style real
    # only 0.708 / 0.604, + 2 natural units 0.792 / 0.750, + 2 shuffled 0.708 / 0.542. The margins
    # below are half of those gaps: they rest on that one run, not yet on a sweep over seeds.
    # The baseline learned its own (studio) database: well above chance on the held-out subjects.
    assert rows["real"]["accuracy"]["test"]["mean"] > chance + 0.2
    # Synthetic units in the target style help the cross-database test, in every repeat.
    assert helped > real + 0.05
    assert all(m > r for m, r in zip(per_repeat("mix-natural-k002"), per_repeat("real")))
    # The same faces with shuffled labels do not: no better than real only, below the true labels.
    assert control < real + 0.05
    assert control < helped - 0.07
    # The cells the verdict rests on trained (left the CNN's initial plateau of uniform predictions).
    assert rows["real"]["plateau"] == 0 and rows["mix-natural-k002"]["plateau"] == 0
    # Two repeats give an interval (t with 1 degree of freedom) around each mean.
    assert rows["real"]["accuracy"]["natural"]["half_width"] is not None
    gain = rows["mix-natural-k002"]["gain_vs_real"]["natural"]
    assert abs(gain["mean"] - (helped - real)) < 1e-9

    run_dir = Path(data["run_dir"])
    summary = (run_dir / "report" / "summary.md").read_text()
    assert "real + 2× natural" in summary and "Best mix: **real + 2× natural**" in summary
    for name in ("accuracy_vs_k.png", "in_db_accuracy_vs_k.png", "confusion_natural.png", "per_class_natural.png",
                 "results.csv", "results.json"):
        assert (run_dir / "report" / name).stat().st_size > 0, name

    # Rerunning finds every cell finished and trains nothing.
    again = runner.invoke(app, ["experiment", str(config), "--json"])
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
