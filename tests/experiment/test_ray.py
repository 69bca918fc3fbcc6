"""`fertk experiment --distributor ray`: cells as Ray tasks on a local Ray (2 CPUs, started here).

The same cells give the same metrics as one process (one torch thread in both, so the float
arithmetic is identical); a rerun skips the finished cells; without Ray it is a one-line error
naming the extra, and `import fertk` never imports Ray.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import fertk
from fertk.cli import app
from fertk.core.errors import BackendUnavailableError
from fertk.experiment import load_config, run_experiment
from fertk.experiment.distribute import cell_resources

TOOLKIT = Path(fertk.__file__).resolve().parents[1]


@pytest.fixture
def local_ray() -> Iterator[object]:
    """A local Ray with 2 CPUs whose workers import this checkout's fertk; shut down after the test."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(TOOLKIT), "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def _metrics(run_dir: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(run_dir.glob("cells/*/r*/metrics.json")):
        data = json.loads(path.read_text())
        out[f"{data['cell']['id']}/r{data['repeat']}"] = {key: data[key] for key in ("accuracy", "macro_f1", "train",
                                                                                     "counts", "fingerprint")}
    return out


def test_ray_cells_match_one_process_and_resume(small_config, local_ray, tmp_path: Path) -> None:
    config = load_config(small_config(k="[1]", epochs=1))
    here = run_experiment(config, tmp_path / "local", threads=1)
    first = run_experiment(config, tmp_path / "ray", threads=1, distributor="ray")
    assert (first.ran, first.skipped, first.failed) == (3, 0, [])
    assert _metrics(tmp_path / "ray") == _metrics(tmp_path / "local") and len(_metrics(tmp_path / "local")) == 3
    assert [r["accuracy"] for r in first.cells] == [r["accuracy"] for r in here.cells]
    assert (tmp_path / "ray" / "report" / "summary.md").is_file()

    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("cells/*/r*/done.json")}
    (tmp_path / "ray" / "cells" / "real" / "r0" / "done.json").unlink()  # as if the driver died before it
    again = run_experiment(config, tmp_path / "ray", threads=1, distributor="ray")
    assert (again.ran, again.skipped) == (1, 2)
    assert [r["cell"] for r in again.cells if r["status"] == "ran"] == ["real"]
    assert {p: p.stat().st_mtime_ns for p in done if p.exists() and "real" not in str(p)} == \
        {p: t for p, t in done.items() if "real" not in str(p)}  # finished cells untouched
    assert _metrics(tmp_path / "ray") == _metrics(tmp_path / "local")


def test_a_cell_asks_ray_for_its_threads_and_a_gpu_when_it_trains_on_cuda() -> None:
    def task(device: str | None) -> SimpleNamespace:
        return SimpleNamespace(train_config={"device": device})

    assert cell_resources(task("cpu"), 3, cluster_gpus=8) == {"num_cpus": 3.0, "num_gpus": 0.0}
    assert cell_resources(task("cuda:1"), None, cluster_gpus=0) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert cell_resources(task("auto"), 2, cluster_gpus=0)["num_gpus"] == 0.0   # auto on a CPU cluster: cpu
    assert cell_resources(task("auto"), 2, cluster_gpus=4)["num_gpus"] == 1.0
    assert cell_resources(task(None), 1, cluster_gpus=1)["num_gpus"] == 1.0     # unset is auto


def test_without_ray_the_error_names_the_extra(small_config, monkeypatch: pytest.MonkeyPatch) -> None:
    path = small_config(k="[1]", epochs=1)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(BackendUnavailableError) as caught:
        run_experiment(load_config(path), distributor="ray")
    assert caught.value.hint == "pip install 'fertk[ray]'"
    result = CliRunner().invoke(app, ["experiment", str(path), "--distributor", "ray"])
    assert result.exit_code == 2, result.output
    assert "--distributor ray needs the Python package 'ray'" in result.output and "fertk[ray]" in result.output
    assert not (path.parent / "data").exists()  # refused before any dataset was made


def test_import_fertk_never_imports_ray() -> None:
    code = ("import sys, fertk, fertk.cli, fertk.experiment, fertk.experiment.distribute\n"
            "assert 'ray' not in sys.modules, 'ray imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(TOOLKIT), "PATH": "/usr/bin:/bin"})
