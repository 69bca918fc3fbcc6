"""Execution choices that change bytes (backend, compile, device, batch) are recorded, followed on
resume, refused when they conflict and checked by verify; stale temp files; the --preview path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fertk.data.shards import DatasetLayout, verify_dataset
from fertk.core.errors import DatasetError, InvalidInputError, OutputExistsError
from fertk.synth import SynthOptions, run_synth

SMALL = dict(n=9, shard_size=4, batch=3)   # shards of 4, 4 and 1 identities
EAGER_CPU = {"backend": "torch", "provider": None, "compile": False, "device": "cpu", "batch": None}


def _opts(out: Path, **kw) -> SynthOptions:
    return SynthOptions(out=str(out), **{**SMALL, **kw})


def _record(out: Path, shard: int) -> dict:
    return json.loads(DatasetLayout(out, "wds").record_path(shard).read_text())


def _unfinish(out: Path, shard: int) -> None:
    """What a run killed before `shard` committed leaves: no record, no merged manifest."""
    DatasetLayout(out, "wds").record_path(shard).unlink()
    (out / "manifest.csv").unlink(missing_ok=True)


def test_execution_is_recorded_and_a_resume_follows_it(tmp_path, hashes):
    out = tmp_path / "d"
    run_synth(_opts(out))
    options = json.loads((out / ".fertk" / "options.json").read_text())
    assert options["execution"] == EAGER_CPU
    assert all(_record(out, s)["execution"] == EAGER_CPU for s in range(3))
    _unfinish(out, 2)
    # Automatic choices (backend, device, compile, batch unset) follow the dataset.
    resumed = run_synth(SynthOptions(out=str(out), n=9, shard_size=4))
    assert (resumed.shards_written, resumed.shards_skipped) == (1, 2)
    assert resumed.engine["backend"] == "torch" and resumed.engine["compile"] is False
    reference = tmp_path / "ref"
    run_synth(_opts(reference))
    assert hashes(out) == hashes(reference)
    assert verify_dataset(out).ok


def test_conflicting_execution_choices_are_refused_before_any_work(tmp_path):
    out = tmp_path / "d"
    run_synth(_opts(out))
    _unfinish(out, 1)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match=r"backend 'torch'.*'ort' \(--backend\)"):
        run_synth(_opts(out, backend="ort"))
    with pytest.raises(OutputExistsError, match=r"--compile/--no-compile"):
        run_synth(_opts(out, compile=True))
    with pytest.raises(OutputExistsError, match=r"device 'cpu'.*'cuda' \(--device\)"):
        run_synth(_opts(out, device="cuda"))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    # Explicitly the recorded values, or a choice that does not change bytes (eager: batch, workers): accepted.
    done = run_synth(_opts(out, backend="torch", device="cpu", compile=False, batch=5, workers=2))
    assert (done.shards_written, done.complete) == (1, True)
    assert verify_dataset(out).ok


def test_verify_reports_shards_made_under_other_execution_choices(tmp_path):
    out = tmp_path / "d"
    run_synth(_opts(out))
    # Shard 1 as an older fertk's resume made it: eager shards beside compiled ones (issue #10).
    layout = DatasetLayout(out, "wds")
    record = _record(out, 1)
    record["execution"] = {**EAGER_CPU, "compile": True, "batch": 3}
    layout.record_path(1).write_text(json.dumps(record))
    report = verify_dataset(out)
    assert not report.ok
    assert len(report.problems) == 1
    assert report.problems[0].startswith("shard-000001: made with backend torch, compile on, device cpu, batch 3")
    assert "the dataset with backend torch, compile off, device cpu" in report.problems[0]
    # A resume never counts such a shard as done: it is redone the dataset's way.
    _unfinish(out, 2)
    resumed = run_synth(_opts(out))
    assert resumed.shards_written == 2 and verify_dataset(out).ok


def test_a_dataset_from_before_recorded_execution_resumes(tmp_path, hashes):
    out = tmp_path / "old"
    run_synth(_opts(out))
    layout = DatasetLayout(out, "wds")
    options = json.loads(layout.options_path.read_text())
    del options["execution"]
    layout.options_path.write_text(json.dumps(options))
    for s in range(3):
        record = _record(out, s)
        del record["execution"]
        layout.record_path(s).write_text(json.dumps(record))
    report = verify_dataset(out)
    assert report.ok and "3 shard(s) predate recorded execution choices" in report.notes[0]
    _unfinish(out, 2)
    # The choices a new run of these options makes (what the uninterrupted old run made) are taken
    # and recorded from now on.
    resumed = run_synth(_opts(out))
    assert resumed.shards_written == 1
    assert json.loads(layout.options_path.read_text())["execution"] == EAGER_CPU
    assert _record(out, 2)["execution"] == EAGER_CPU
    reference = tmp_path / "ref"
    run_synth(_opts(reference))
    assert {k: v for k, v in hashes(out).items() if k != ".fertk/options.json"} == \
        {k: v for k, v in hashes(reference).items() if k != ".fertk/options.json"}
    report = verify_dataset(out)
    assert report.ok and "2 shard(s) predate" in report.notes[0]


def test_force_rebuilds_a_dataset_made_under_other_execution_choices(tmp_path):
    out = tmp_path / "d"
    run_synth(_opts(out, n=4, shard_size=2))
    layout = DatasetLayout(out, "wds")
    options = json.loads(layout.options_path.read_text())
    options["execution"] = {**EAGER_CPU, "compile": True, "batch": 2}   # as if made compiled
    layout.options_path.write_text(json.dumps(options))
    with pytest.raises(OutputExistsError, match="--compile/--no-compile"):
        run_synth(_opts(out, n=4, shard_size=2, compile=False))
    rebuilt = run_synth(_opts(out, n=4, shard_size=2, compile=False, force=True))
    assert (rebuilt.shards_written, rebuilt.shards_skipped) == (2, 0)
    assert json.loads(layout.options_path.read_text())["execution"] == EAGER_CPU
    assert verify_dataset(out).ok


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_resume_removes_stale_temp_files_it_owns(tmp_path, monkeypatch, hashes):
    """Temp files a SIGKILL leaves (named by the dead writer's pid) go on resume; another rank's stay."""
    out = tmp_path / "d"
    run_synth(_opts(out))
    reference = hashes(out)
    for s in (0, 1, 2):
        _unfinish(out, s)
    dead, live = _dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        meta = out / ".fertk"
        stale = [meta / "records" / f".shard-000000.json.{dead}.tmp", meta / "manifest" / f".shard-000000.csv.{dead}.tmp",
                 meta / "records" / f".shard-000002.json.{dead}.tmp", out / "shards" / "shard-000002.tar.tmp",
                 out / f".manifest.csv.{dead}.tmp", meta / f".options.json.{dead}.tmp"]
        kept = [meta / "records" / f".shard-000001.json.{live.pid}.tmp",   # rank 1's shard, its writer alive
                out / f".dataset_card.json.{live.pid}.tmp"]                # a live process's card
        for path in stale + kept:
            path.write_bytes(b"torn")
        # Rank 0 of two: shards 0 and 2 are its own, shard 1 belongs to rank 1.
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", "0")
        run_synth(_opts(out))
        assert not any(p.exists() for p in stale[:4])
        assert all(p.exists() for p in kept)
        # Under torchrun the dataset-level temp files of dead processes wait until they are old
        # (another host's merge could be in flight); a single process removes them at once.
        assert all(p.exists() for p in stale[4:])
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("LOCAL_RANK", "1")
        kept[0].unlink()   # rank 1's own writer is gone now: its shard's leftover is planted dead
        (meta / "records" / f".shard-000001.json.{dead}.tmp").write_bytes(b"torn")
        run_synth(_opts(out))
        monkeypatch.setenv("WORLD_SIZE", "1")
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")
        run_synth(_opts(out))
        left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tmp"))
        assert left == [f".dataset_card.json.{live.pid}.tmp"]
    finally:
        live.kill()
        live.wait()
    kept[1].unlink()
    assert hashes(out) == reference


def test_bad_preview_paths_fail_before_any_work(tmp_path):
    out = tmp_path / "never"
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(DatasetError, match=r"cannot write --preview .*file.txt/sub/grid.png: .*file.txt is not a directory"):
        run_synth(_opts(out, preview=str(tmp_path / "file.txt" / "sub" / "grid.png")))
    with pytest.raises(InvalidInputError, match="must name a .png"):
        run_synth(_opts(out, preview=str(tmp_path / "grid.jpg")))
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InvalidInputError, match="is a directory"):
        run_synth(_opts(out, preview=str(tmp_path / "dir.png")))
    assert not out.exists()
    # A preview folder that does not exist yet is made.
    result = run_synth(_opts(tmp_path / "ok", n=2, preview=str(tmp_path / "new" / "grid.png")))
    assert result.preview == str(tmp_path / "new" / "grid.png") and Path(result.preview).is_file()


def test_a_preview_that_fails_late_keeps_the_manifest_and_card(tmp_path):
    folder = tmp_path / "previews"
    folder.mkdir()
    preview = folder / "grid.png"

    def pull_the_folder(event) -> None:   # the folder goes away while the dataset is being made
        if folder.is_dir():
            folder.rmdir()
            folder.write_text("now a file")

    result = run_synth(_opts(tmp_path / "d", preview=str(preview)), progress=pull_the_folder)
    assert result.complete and result.preview is None
    assert result.preview_error and "cannot write" in result.preview_error and "grid.png" in result.preview_error
    assert (tmp_path / "d" / "manifest.csv").is_file() and (tmp_path / "d" / "dataset_card.json").is_file()
    assert verify_dataset(tmp_path / "d").ok


def test_cuda_graphs_are_recorded_and_a_resume_replays_them(tmp_path):
    from fertk.synth.execution import Execution, Placement, resolve_execution

    gpu = Execution("torch", None, "cuda", True, 64, "auto", 64, True, cuda_graphs=True)
    assert gpu.record()["cuda_graphs"] is True and gpu.static_shapes
    assert gpu.engine_options() == {"compile": True, "cuda_graphs": True}
    eager = Execution("torch", None, "cpu", False, 128, "auto", 3, False)
    assert eager.record() == EAGER_CPU and eager.engine_options() == {}   # CPU records keep their bytes
    # A resume reads the choice back from the dataset's record (the device kind is this machine's).
    recorded = {**EAGER_CPU, "cuda_graphs": True}
    options = SynthOptions(out=str(tmp_path), n=6, shard_size=3)
    again = resolve_execution(options, options.plan(), recorded, tmp_path, Placement())
    assert again.cuda_graphs and again.engine_options()["cuda_graphs"] is True and again.record() == recorded
