"""The runner: synthetic units, resumable cells, refusal of stale cells, worker processes.

Training here is 1-2 epochs on 16-px faces: these tests check bookkeeping, not learning (the
stand-in test in test_standin.py checks that the experiment measures what it should).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fertk.core.errors import DatasetError, OutputExistsError
from fertk.experiment import load_config, run_experiment
from fertk.experiment.cells import derive_seed, draw_units, plan_repeat, shuffled_labels
from fertk.experiment.data import load_data, prepare_all


def test_units_are_disjoint_nested_and_seeded() -> None:
    identities = [f"synth-{i}" for i in range(40)]
    sizes = {"train": 5, "val": 1, "test": 2}
    units = draw_units(identities, sizes, 4, seed=11)
    assert len(units) == 4
    flat = [i for unit in units for part in ("train", "val", "test") for i in unit[part]]
    assert len(flat) == len(set(flat)) == 32  # no identity twice, in any part of any unit
    assert all(len(u["train"]) == 5 and len(u["val"]) == 1 and len(u["test"]) == 2 for u in units)
    # Fewer units of the same seed are a prefix (k = 2 holds k = 1's identities); another seed differs.
    assert draw_units(identities, sizes, 2, seed=11) == units[:2]
    assert draw_units(identities, sizes, 2, seed=12) != units[:2]
    with pytest.raises(DatasetError, match="need 48 synthetic identities"):
        draw_units(identities, sizes, 6, seed=11)
    assert derive_seed(0, "units", 0) != derive_seed(0, "units", 1) != derive_seed(1, "units", 0)


def test_repeat_plans_and_the_control(small_config) -> None:
    config = load_config(small_config(k="[2]", repeats=2, shuffled=True))
    real = prepare_all(config)
    data = load_data(config, real=real)
    # The pool was made just big enough: 2 units of 8 identities (4 + 2 + 2 per unit).
    assert len(set(data.pools["natural"].subjects)) == 16
    assert data.pools["natural"] is data.pools["shuffled"]
    first, second = plan_repeat(config, data, 0), plan_repeat(config, data, 1)
    assert first.split.sizes == {"train": 4, "val": 2, "test": 2}
    assert first.split.subjects != second.split.subjects  # repeats re-split the real data
    assert first.units["natural"] != second.units["natural"]  # ... and redraw the synthetic identities
    assert first.units["shuffled"] == first.units["natural"]  # the control sees the same faces
    assert first.shuffle_seeds["natural"] is None and first.shuffle_seeds["shuffled"] is not None
    pool = data.pools["natural"]
    control = shuffled_labels(pool, first.shuffle_seeds["shuffled"])
    assert np.array_equal(control.images, pool.images)
    assert np.array_equal(np.bincount(control.labels), np.bincount(pool.labels))  # still balanced
    assert (control.labels != pool.labels).mean() > 0.4  # but the labels no longer follow the faces


def _done_times(run_dir: Path) -> dict[str, float]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in sorted(run_dir.glob("cells/*/r*/done.json"))}


def test_rerun_skips_finished_cells_and_resumes_the_rest(small_config, tmp_path: Path) -> None:
    path = small_config(k="[1]", epochs=1)
    config = load_config(path)
    first = run_experiment(config)
    run_dir = Path(first.run_dir)
    assert run_dir == tmp_path / "run"
    assert (first.ran, first.skipped, first.failed) == (3, 0, [])
    for name in ("config.toml", "config.resolved.json", "splits/real-r0.json", "splits/natural-r0.json",
                 "report/summary.md", "report/results.json", "report/results.csv", "report/accuracy_vs_k.png",
                 "report/confusion_natural.png", "report/per_class_natural.png", "report/per_class_natural.csv",
                 "report/details/real/natural.json", "report/details/mix-natural-k001/natural.json"):
        assert (run_dir / name).is_file(), name
    times = _done_times(run_dir)
    assert len(times) == 3

    again = run_experiment(config)
    assert (again.ran, again.skipped) == (0, 3)
    assert _done_times(run_dir) == times  # nothing was rewritten
    assert [r["accuracy"] for r in again.cells] == [r["accuracy"] for r in first.cells]

    # A cell killed before its marker: only it runs again (its training had finished, so no epoch reruns).
    (run_dir / "cells/real/r0/done.json").unlink()
    third = run_experiment(config)
    assert (third.ran, third.skipped) == (1, 2)
    assert [r["cell"] for r in third.cells if r["status"] == "ran"] == ["real"]
    assert third.cells[0]["accuracy"] == first.cells[0]["accuracy"]

    # More repeats: only the new repeat's cells are trained.
    more = run_experiment(config.with_overrides(repeats=2))
    assert (more.ran, more.skipped) == (3, 3)
    assert {r["repeat"] for r in more.cells if r["status"] == "ran"} == {1}
    summary_rows = {r["cell"]: r for r in more.summary["rows"]}
    assert summary_rows["real"]["n"] == 2 and summary_rows["real"]["accuracy"]["natural"]["half_width"] is not None


def test_changed_settings_are_refused_unless_forced(small_config) -> None:
    config = load_config(small_config(k="[1]", epochs=1, experiments='["real"]'))
    run_experiment(config)
    changed = load_config(small_config(k="[1]", epochs=2, experiments='["real"]'))
    with pytest.raises(OutputExistsError, match="other settings"):
        run_experiment(changed)
    redone = run_experiment(changed, force=True)
    assert redone.ran == 1
    metrics = json.loads((Path(redone.run_dir) / "cells/real/r0/metrics.json").read_text())
    assert metrics["train"]["epochs_run"] == 2


def test_worker_processes_give_the_same_results_as_one_process(small_config, tmp_path: Path) -> None:
    config = load_config(small_config(k="[1]", epochs=2))
    # One torch thread in both: then the float arithmetic, hence every result, is identical.
    sequential = run_experiment(config, tmp_path / "seq", jobs=1, threads=1)
    parallel = run_experiment(config, tmp_path / "par", jobs=2, threads=1)
    assert (parallel.ran, parallel.failed, parallel.jobs) == (3, [], 2)
    seq_rows = {r["cell"]: r for r in sequential.cells}
    par_rows = {r["cell"]: r for r in parallel.cells}
    assert list(par_rows) == list(seq_rows)  # reported in plan order, whatever finished first
    for cell, row in seq_rows.items():
        assert par_rows[cell]["accuracy"] == row["accuracy"], cell
        assert par_rows[cell]["train_acc"] == row["train_acc"], cell
        seq_model = tmp_path / "seq" / "cells" / cell / "r0" / "train" / "model.safetensors"
        par_model = tmp_path / "par" / "cells" / cell / "r0" / "train" / "model.safetensors"
        assert seq_model.read_bytes() == par_model.read_bytes(), cell
