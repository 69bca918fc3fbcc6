"""Real processes: SIGKILL at several points then resume, a full disk, torchrun with two ranks."""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fertk.data.shards import verify_dataset
from fertk.synth import SynthOptions, run_synth

ARGS = ["--n", "24", "--shard-size", "3", "--batch", "3"]   # 8 shards of 18 faces


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("FERTK_DEBUG", None)
    return env


def _reference(tmp_path: Path, **kw) -> Path:
    out = tmp_path / "reference"
    run_synth(SynthOptions(out=str(out), n=24, shard_size=3, batch=3, **kw))
    return out


def _records(out: Path) -> int:
    folder = out / ".fertk" / "records"
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def _mid_shard(out: Path) -> bool:
    return any((out / "shards").glob("*.tmp")) if (out / "shards").is_dir() else False


def test_sigkill_at_several_points_then_resume_gives_the_same_bytes(tmp_path, cli_script, hashes):
    reference = _reference(tmp_path)
    out = tmp_path / "killed"
    command = [sys.executable, str(cli_script), "synth", *ARGS, "--out", str(out)]
    killed_states = []
    for after_records in (0, 2, 5):
        proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _records(out) >= after_records and _mid_shard(out):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            killed_states.append(_records(out))
            assert not (out / "manifest.csv").exists()
    # At least two of the kills landed mid-run (the run is fast; a kill may come too late).
    assert len(killed_states) >= 2, killed_states
    finish = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert hashes(out) == hashes(reference)
    assert verify_dataset(out).ok
    assert not list(out.rglob("*.tmp"))


def _has_cxx() -> bool:
    return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


@pytest.mark.slow
@pytest.mark.skipif(not _has_cxx(), reason="torch.compile's CPU code needs a C++ compiler")
def test_a_killed_compiled_run_resumes_compiled(tmp_path, cli_script, hashes):
    """Issue #10.1: a run that compiles, killed, then resumed where the old rule (faces left < 30,000)
    would run eager: the resume must compile too, or refuse; never mix compiled and eager shards."""
    args = ["--n", "12", "--shard-size", "3", "--batch", "3"]          # 4 shards of 18 faces
    reference = tmp_path / "reference"
    run_synth(SynthOptions(out=str(reference), n=12, shard_size=3, batch=3, compile=True))
    out = tmp_path / "killed"
    command = [sys.executable, str(cli_script), "synth", *args, "--out", str(out)]
    proc = subprocess.Popen([*command, "--compile"], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        if _records(out) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 2 <= _records(out) < 4
    # An explicit conflicting choice is refused, naming the flag; nothing is touched.
    refused = subprocess.run([*command, "--no-compile"], env=_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--compile/--no-compile" in refused.stderr, refused.stderr
    # Without a C++ compiler the recorded choice cannot be honoured: refused, not made eager.
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    no_cxx = {**_env(), "PATH": str(bare)}
    refused = subprocess.run(command, env=no_cxx, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "no C++ compiler" in refused.stderr, refused.stderr
    # Left automatic (the old rule: 72 faces left -> eager), the resume compiles as the first run did.
    finish = subprocess.run([*command, "--json"], env=_env(), capture_output=True, text=True, timeout=900)
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert json.loads(finish.stdout)["engine"]["compile"] is True
    records = [json.loads((out / ".fertk" / "records" / f"shard-{s:06d}.json").read_text()) for s in range(4)]
    assert {r["execution"]["compile"] for r in records} == {True}
    assert {r["execution"]["batch"] for r in records} == {3}
    assert hashes(out) == hashes(reference)
    assert verify_dataset(out).ok


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_is_a_clear_error_and_counts_nothing(tmp_path, cli_script, hashes):
    out = tmp_path / "full"
    # Every file is capped at 40 kB (RLIMIT_FSIZE: writes past it fail with EFBIG, like a full disk);
    # a shard's tar is ~100 kB, so the first shard cannot be completed.
    proc = subprocess.run([sys.executable, str(cli_script), "synth", *ARGS, "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(40_000))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert lines[0].startswith("error: cannot write ") and "File too large" in lines[0]
    assert "Traceback" not in proc.stderr
    assert _records(out) == 0 and not (out / "manifest.csv").exists()
    assert not list((out / "shards").glob("*.tar"))
    report = verify_dataset(out)
    assert not report.ok and all("unfinished" in p for p in report.problems[:-1])
    # With room again, the same command completes the identical dataset.
    done = subprocess.run([sys.executable, str(cli_script), "synth", *ARGS, "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert hashes(out) == hashes(_reference(tmp_path))


def _unwritable_parent(tmp_path: Path) -> Path | None:
    """A directory this process cannot create entries in: a 0555 folder, or sysfs for root."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
        return parent
    probe = Path("/sys/fertk-probe")
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys")
    probe.rmdir()
    return None


def test_unwritable_output_is_a_clear_error(tmp_path):
    from fertk.core.errors import DatasetError

    parent = _unwritable_parent(tmp_path)
    if parent is None:
        pytest.skip("no unwritable directory available to this user")
    try:
        with pytest.raises(DatasetError, match="cannot create"):
            run_synth(SynthOptions(out=str(parent / "fertk-synth-test"), n=2, shard_size=1))
    finally:
        if parent != Path("/sys"):
            parent.chmod(0o755)


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_torchrun_command() -> str:
    """The multi-process command exactly as the README gives it (the backticked torchrun line)."""
    text = " ".join(README.read_text().split())   # the README wraps lines; backticked text never breaks a word
    commands = re.findall(r"`(torchrun [^`]*fertk synth[^`]*)`", text)
    assert len(commands) == 1, commands
    return commands[0]


def _bin_dir() -> Path:
    """The folder holding this interpreter's console scripts (torchrun, fertk)."""
    return Path(sys.executable).parent


@pytest.mark.skipif(not (_bin_dir() / "torchrun").exists() and shutil.which("torchrun") is None,
                    reason="torchrun not installed")
def test_the_readme_torchrun_command_runs_two_ranks_that_match_one_process(tmp_path, hashes):
    command = _readme_torchrun_command()
    out = tmp_path / "ranks"
    words = shlex.split(command.replace("K", "2").replace(" N ", " 10 ").replace("DIR", str(out)))
    assert words[:1] == ["torchrun"] and "-n" in words and "10" in words, words
    # Small shards so that both ranks have work (5 shards: rank 0 writes 0, 2, 4; rank 1 writes 1, 3).
    words += ["--shard-size", "2", "--batch", "2", "--format", "npy", "--json"]
    env = _env()
    env["PATH"] = os.pathsep.join([str(_bin_dir()), env.get("PATH", "")])
    proc = subprocess.run(words, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
    ranks = {json.loads((out / ".fertk" / "records" / f"shard-{s:06d}.json").read_text())["rank"] for s in range(5)}
    assert ranks == {0, 1}
    single = tmp_path / "single"
    run_synth(SynthOptions(out=str(single), n=10, shard_size=2, batch=2, format="npy"))
    assert hashes(out) == hashes(single)
    assert verify_dataset(out).ok
