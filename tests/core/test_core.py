"""The core layer: one atomic-write rule, one digest, one cache root, one device reading, one spec check."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from fertk.core.devices import resolve_device, torch_threads
from fertk.core.errors import ArtifactError, BackendUnavailableError, DeviceUnavailableError, InvalidInputError
from fertk.core.io import (atomic_target, atomic_write_bytes, atomic_write_json, create_json_exclusive,
                           sha256_bytes, sha256_file, temp_path_for)
from fertk.core.optional import require
from fertk.core.paths import cache_dir, cache_root
from fertk.core.progress import ProgressEvent, emit, say
from fertk.core.specs import TensorSpec, argmax_outputs, match_specs
from fertk.core.versions import __version__


def test_atomic_write_leaves_the_old_file_and_no_temp_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_target(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]
    assert temp_path_for(target).name == f".a.bin.{os.getpid()}.tmp"


def test_atomic_target_gives_the_umask_mode_not_mkstemp_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_target(tmp_path / "w.safetensors") as tmp:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # what safetensors / mkstemp do
            os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644


def test_json_exclusive_has_one_winner_and_json_is_sorted(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    assert create_json_exclusive(path, {"b": 1, "a": 2}) is True
    assert create_json_exclusive(path, {"c": 3}) is False
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    atomic_write_json(path, {"z": 0})
    assert path.read_text() == '{\n  "z": 0\n}\n'


def test_one_digest_for_bytes_and_files(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=4096) == sha256_bytes(data) == sha256_file(tmp_path / "f")


def test_every_cache_follows_one_root_under_either_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fertk.data.datasets import default_cache_dir
    from fertk.export.artifacts import artifacts_root

    monkeypatch.delenv("FERTK_CACHE_DIR", raising=False)
    monkeypatch.setenv("FERTK_CACHE", str(tmp_path / "old-name"))   # the earlier name: every cache follows it
    assert cache_root() == tmp_path / "old-name"
    assert default_cache_dir() == tmp_path / "old-name" / "preprocess"
    assert artifacts_root() == tmp_path / "old-name" / "artifacts"
    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "new"))   # the variable wins over the old name
    assert cache_dir("judges") == tmp_path / "new" / "judges" and default_cache_dir() == tmp_path / "new" / "preprocess"


def test_device_names_read_one_way() -> None:
    import torch

    assert resolve_device("cpu") == resolve_device(None) == resolve_device(" CPU ") == "cpu"
    with pytest.raises(InvalidInputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").startswith("cuda")
        return
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceUnavailableError, match="no CUDA device") as info:
        resolve_device("cuda:0", local_rank=1, world_size=2)
    # Callers catching either family (a bad option, a backend that cannot run) both see it.
    assert isinstance(info.value, InvalidInputError) and isinstance(info.value, BackendUnavailableError)


def test_torch_threads_restores_the_count_even_on_error() -> None:
    import torch

    before = torch.get_num_threads()
    with pytest.raises(KeyError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise KeyError
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_declared_specs_must_match_what_a_graph_has() -> None:
    graph = (TensorSpec("x", "float32", ("n", 1, 64, 64)), TensorSpec("y", "float32", ("n", 7)))
    declared = [TensorSpec("x", "float32", ("batch", 1, 64, 64)), TensorSpec("y", "float32", ("batch", 7))]
    assert match_specs("input", None, graph, "m.onnx") == graph
    assert match_specs("input", declared, graph, "m.onnx") == tuple(declared)   # the card's axis names win
    with pytest.raises(ArtifactError, match=r"m.onnx has inputs \['x', 'y'\], the card declares \['x'\]"):
        match_specs("input", declared[:1], graph, "m.onnx")
    wrong = [TensorSpec("x", "float32", ("batch", 3, 64, 64)), declared[1]]
    with pytest.raises(ArtifactError, match=r"input 'x' is float32\[n, 1, 64, 64\] in the graph"):
        match_specs("input", wrong, graph, "m.onnx")
    assert match_specs("input", wrong, graph, "m.plan", found_in="engine", check_shapes=False) == tuple(wrong)
    half = [TensorSpec("x", "float16", ("batch", 1, 64, 64)), declared[1]]
    with pytest.raises(ArtifactError, match="is float32 in the engine"):
        match_specs("input", half, graph, "m.plan", found_in="engine", check_shapes=False)


def test_argmax_is_meaningful_for_classifier_logits_only() -> None:
    outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", 7]},
               {"name": "features", "dtype": "float32", "shape": ["batch", 64, 4, 4]}]
    assert argmax_outputs("classifier", outputs) == ["logits"]
    assert argmax_outputs("generator", outputs) == []


def test_progress_events_reach_the_callback_only_when_there_is_one() -> None:
    seen: list[ProgressEvent] = []
    emit(None, "advance", done=1)
    emit(seen.append, "advance", "shard 3", done=3, total=9, unit="shards", retries=1)
    say(seen.append, "opened the engine")
    assert seen == [ProgressEvent("advance", "shard 3", 3, 9, "shards", {"retries": 1}),
                    ProgressEvent("message", "opened the engine")]


def test_a_missing_optional_package_names_its_extra() -> None:
    assert require("json", extra="none", purpose="x").dumps([1]) == "[1]"
    with pytest.raises(BackendUnavailableError, match="needs the Python package 'fertk_no_such_pkg'") as info:
        require("fertk_no_such_pkg", extra="ray", purpose="--distributor ray")
    assert info.value.hint == "pip install 'fertk[ray]'"


def test_the_package_version_is_the_one_pyproject_declares() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    import fertk

    assert fertk.__version__ == __version__ == pyproject["project"]["version"]
