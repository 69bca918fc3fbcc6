"""`--distributor ray` on a local Ray (2 CPUs, started here): the same bytes as one process; a
worker SIGKILLed mid-shard is retried; a killed driver's rerun resumes; a shard that fails every
time is reported failed with its error, not marked done, and the command exits non-zero."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fertk
from fertk.cli import app
from fertk.data.shards import verify_dataset
from fertk.synth import SynthOptions, run_synth

ray = pytest.importorskip("ray", reason="Ray is in the dev extra (pip install 'fertk[ray]')")

TOOLKIT = str(Path(fertk.__file__).resolve().parents[1])  # the tree under test, for Ray's workers
SMALL = {"n": 12, "shard_size": 3, "batch": 3}
KILLABLE = {"n": 64, "shard_size": 32, "batch": 2}           # a shard spans 16 engine calls: time to kill
FOUR = {"n": 48, "shard_size": 12, "batch": 2}               # four shards, two at a time


def _warm(_: int) -> int:
    import fertk.synth.worker  # noqa: F401 - torch and the synth stack, imported once per worker process

    return os.getpid()


def _flaky(unit: int, marker: str) -> int:
    """Fails the first time unit 2 runs, every time unit 4 runs; returns the unit otherwise."""
    if unit == 4 or (unit == 2 and not os.path.exists(marker)):
        Path(marker).touch()
        raise RuntimeError(f"unit {unit} broke")
    return unit * 10


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs for this module (its workers import this tree), torn down after."""
    path = os.pathsep.join(p for p in (TOOLKIT, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    warm = ray.remote(num_cpus=1)(_warm)
    ray.get([warm.remote(i) for i in range(2)])
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The local distributor's datasets, to compare bytes with."""
    root = tmp_path_factory.mktemp("local")
    run_synth(SynthOptions(out=str(root / "small"), **SMALL))
    run_synth(SynthOptions(out=str(root / "killable"), **KILLABLE))
    run_synth(SynthOptions(out=str(root / "four"), **FOUR))
    return root


def _ray_workers() -> list[int]:
    """Pids of Ray worker processes on this machine (their title starts with "ray::")."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _holders(folder: Path, pids: list[int]) -> set[int]:
    """Those of `pids` holding a temporary file under `folder` open."""
    found = set()
    for pid in pids:
        try:
            targets = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        if any(t.startswith(str(folder)) and t.endswith(".tmp") for t in targets):
            found.add(pid)
    return found


def _kill_a_writer(folder: Path, runner: threading.Thread) -> int | None:
    """SIGKILL the first Ray worker seen holding a shard's temporary file open; its pid (None if
    the run ended first)."""
    workers, listed = [], 0.0
    deadline = time.monotonic() + 120
    while runner.is_alive() and time.monotonic() < deadline:
        if time.monotonic() - listed > 0.5:
            workers, listed = _ray_workers(), time.monotonic()
        pids = _holders(folder, workers)
        if pids:
            os.kill(min(pids), signal.SIGKILL)
            return min(pids)
        time.sleep(0.002)
    return None


def test_the_retry_loop_runs_every_unit_within_its_capacity_and_keeps_each_error(cluster, tmp_path):
    from fertk.synth.ray_runner import run_with_retries

    task = ray.remote(num_cpus=1, max_retries=0)(_flaky)
    marker = str(tmp_path / "unit2-failed-once")
    retried = []
    summary = run_with_retries(ray, lambda unit: task.remote(unit, marker), range(6), max_retries=1, capacity=1,
                               on_retry=lambda unit, error: retried.append(unit))
    assert summary.results == {0: 0, 1: 10, 2: 20, 3: 30, 5: 50}
    assert summary.failed == [4] and summary.retried == {2, 4} and sorted(retried) == [2, 4]
    assert len(summary.errors[4]) == 2 and all("unit 4 broke" in e for e in summary.errors[4])
    assert summary.errors[2] == [summary.errors[2][0]] and "RuntimeError" in summary.errors[2][0]


def test_ray_writes_the_same_bytes_as_local(cluster, reference, tmp_path, hashes):
    out = tmp_path / "ray"
    result = run_synth(SynthOptions(out=str(out), distributor="ray", **SMALL))
    assert result.complete and result.shards_written == 4 and not result.failures and result.shards_retried == 0
    assert result.distributor == "ray" and result.engine["backend"] == "torch"
    assert hashes(out) == hashes(reference / "small")
    assert verify_dataset(out).ok


def test_a_worker_killed_mid_shard_is_retried_and_the_bytes_match(cluster, reference, tmp_path, hashes):
    out = tmp_path / "killed"
    box: dict = {}
    runner = threading.Thread(target=lambda: box.update(result=run_synth(
        SynthOptions(out=str(out), distributor="ray", **KILLABLE))))
    runner.start()
    killed = _kill_a_writer(out / "shards", runner)
    runner.join(timeout=300)
    assert killed is not None, "no worker was caught mid-shard"
    result = box["result"]
    assert result.complete and not result.failures and result.shards_retried >= 1
    assert hashes(out) == hashes(reference / "killable")
    assert verify_dataset(out).ok


def test_a_killed_driver_is_resumed_by_a_rerun(cluster, reference, tmp_path, hashes):
    out = tmp_path / "driver"
    command = [sys.executable, "-c", "from fertk.cli import main; main()", "synth", "--out", str(out),
               "--distributor", "ray", "--ray-address", cluster,
               *(f"--{k.replace('_', '-')}={v}" for k, v in FOUR.items())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (TOOLKIT, os.environ.get("PYTHONPATH")) if p)}
    log = tmp_path / "driver.log"
    with open(log, "wb") as stderr:
        driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    records = out / ".fertk" / "records"
    deadline = time.monotonic() + 240
    while driver.poll() is None and time.monotonic() < deadline:
        if records.is_dir() and any(records.glob("*.json")):
            break
        time.sleep(0.01)
    assert driver.poll() is None, log.read_text()[-2000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done_before = len(list(records.glob("*.json")))
    assert 1 <= done_before < 4 and not (out / "manifest.csv").exists()
    deadline = time.monotonic() + 60  # Ray ends the dead driver's workers; wait until none writes here
    while _holders(out, _ray_workers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    result = run_synth(SynthOptions(out=str(out), distributor="ray", **FOUR))
    assert result.complete and result.shards_skipped >= done_before
    assert hashes(out) == hashes(reference / "four")
    assert verify_dataset(out).ok


def test_a_shard_that_always_fails_is_reported_and_not_marked_done(cluster, tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "failing"
    run_synth(SynthOptions(out=str(out), **SMALL))
    # Shard 1 never finished, and something that is no file sits where it must go (every attempt fails).
    for name in (".fertk/records/shard-000001.json", "manifest.csv", "dataset_card.json", "shards/shard-000001.tar"):
        (out / name).unlink()
    (out / "shards" / "shard-000001.tar").mkdir()
    args = ["synth", "--out", str(out), "--distributor", "ray", "--max-shard-retries", "2",
            *(f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items())]
    ran = CliRunner().invoke(app, args)
    assert ran.exit_code == 1, ran.output
    assert "shard 1 failed after 3 attempt(s)" in ran.stderr and "IsADirectoryError" in ran.stderr
    assert not (out / ".fertk" / "records" / "shard-000001.json").exists()
    assert not (out / "manifest.csv").exists() and not (out / "dataset_card.json").exists()
    result = run_synth(SynthOptions(out=str(out), distributor="ray", max_shard_retries=0, **SMALL))
    assert not result.complete and result.shards_skipped == 3
    assert [(f["shard"], f["attempts"]) for f in result.failures] == [(1, 1)]
    assert "IsADirectoryError" in result.failures[0]["error"]


@pytest.mark.slow
def test_the_actor_pool_takes_shards_as_it_frees_up_and_replaces_a_killed_actor(cluster, reference, tmp_path, hashes):
    # The GPU path's pool, run on CPUs here (this machine has no GPU): two actors, one SIGKILLed mid-shard.
    from fertk.data.shards import merge_manifest, options_fingerprint
    from fertk.synth.distribute import placement_for
    from fertk.synth.ray_runner import actor_pool, run_on_ray
    from fertk.synth.run import prepare_job, select_shards

    out = tmp_path / "actors"
    job = prepare_job(SynthOptions(out=str(out), **FOUR), placement_for("local"))
    todo, _ = select_shards(job)
    box: dict = {}
    runner = threading.Thread(target=lambda: box.update(done=run_on_ray(
        ray, job.setup, todo, progress=None, started=time.perf_counter(), max_retries=3,
        how=actor_pool(ray, job.setup, actors=2, num_gpus=0, device=None))))
    runner.start()
    killed = _kill_a_writer(out / "shards", runner)
    runner.join(timeout=300)
    done = box["done"]
    assert killed is not None and done.retried >= 1 and not done.failures and done.stats.shards == 4
    assert merge_manifest(job.layout, job.plan.num_shards, options_fingerprint(job.record))
    assert hashes(out) == {k: v for k, v in hashes(reference / "four").items() if k != "dataset_card.json"}
