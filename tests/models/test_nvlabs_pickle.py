"""Restricted reader for NVlabs .pkl snapshots: reads real-shaped snapshots, refuses code.

The NVlabs modules (torch_utils, dnnlib) do not exist here. To write a file in the snapshot
shape, the tests put stand-in modules into sys.modules only while pickling, so the pickle names
the same globals an upstream snapshot does; the stand-ins are gone again before reading.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fertk.core.errors import CheckpointError, UnsafeFileError
from fertk.models.nvlabs_pickle import ALLOWED_GLOBALS, read_nvlabs_pickle, restricted_loads
from fertk.models.stylegan2 import StyleGAN2Config, StyleGAN2Generator, load_stylegan2

FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "dnnlib.tflib",
                "dnnlib.tflib.network")


def _named(obj: Any, module: str, name: str) -> Any:
    obj.__module__ = module
    obj.__qualname__ = name
    obj.__name__ = name
    return obj


def _upstream_reconstruct(meta: dict) -> Any:  # never called: it only gives the pickle its global name
    raise AssertionError("the reader must not call the upstream reconstruct function")


class EasyDict(dict):
    """Stand-in with the name of dnnlib.util.EasyDict."""


class Network:
    """Stand-in with the name of the TensorFlow-era dnnlib.tflib.network.Network."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.variables = {"G_synthesis/4x4/Const/const": np.zeros((1, 4, 4, 4), np.float32)}


_named(_upstream_reconstruct, "torch_utils.persistence", "_reconstruct_persistent_obj")
_named(EasyDict, "dnnlib.util", "EasyDict")
_named(Network, "dnnlib.tflib.network", "Network")


@contextlib.contextmanager
def nvlabs_names_for_writing() -> Iterator[None]:
    """Make the NVlabs global names resolvable for pickle.dump, then remove them again."""
    added = []
    for name in FAKE_MODULES:
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
    sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj = _upstream_reconstruct
    sys.modules["dnnlib.util"].EasyDict = EasyDict
    sys.modules["dnnlib.tflib.network"].Network = Network
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


class Persistent:
    """Pickles as the upstream persistent_class does: reconstruct(meta) with the module source."""

    def __init__(self, meta: dict) -> None:
        self.meta = meta

    def __reduce__(self) -> tuple:
        return (_upstream_reconstruct, (self.meta,))


GENERATOR_SRC = "# training/networks.py\nclass Generator(torch.nn.Module): ...\n"


def persistent_meta(module: torch.nn.Module, class_name: str, init_kwargs: dict | None = None,
                    module_src: str = GENERATOR_SRC) -> Persistent:
    """A module as an upstream snapshot stores it: meta with the module's __dict__ as 'state'."""
    state: dict[str, Any] = {
        "training": False,
        "_parameters": OrderedDict((n, torch.nn.Parameter(p.detach().clone(), requires_grad=False))
                                   for n, p in module._parameters.items()),
        "_buffers": OrderedDict((n, b.detach().clone()) for n, b in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": OrderedDict(),
        "_forward_hooks": OrderedDict(),
        "_modules": OrderedDict((n, persistent_meta(child, type(child).__name__, module_src=module_src))
                                for n, child in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": _easy(init_kwargs or {}),
    }
    if hasattr(module, "weight_gain"):
        state["weight_gain"] = np.float64(module.weight_gain)  # upstream stores numpy scalars too
    return Persistent(dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state))


def _easy(value: Any) -> Any:
    if isinstance(value, dict):
        return EasyDict({k: _easy(v) for k, v in value.items()})
    return value


def write_snapshot(path: Path, snapshot: dict, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    with nvlabs_names_for_writing():
        path.write_bytes(pickle.dumps(snapshot, protocol=protocol))
    assert not any(name in sys.modules for name in FAKE_MODULES if name.startswith(("torch_utils", "dnnlib")))
    return path


@pytest.fixture(scope="module")
def golden_generators(golden_dir: Path) -> tuple[dict, StyleGAN2Generator, StyleGAN2Generator]:
    kwargs = json.loads((golden_dir / "stylegan2_small-config.json").read_text())
    plain, _ = load_stylegan2(golden_dir / "stylegan2_small-G.pt")
    perturbed, _ = load_stylegan2(golden_dir / "stylegan2_small_perturbed-G.pt", kwargs)
    return kwargs, plain, perturbed


def make_snapshot(golden_generators: tuple, *, module_src: str = GENERATOR_SRC) -> dict:
    kwargs, plain, perturbed = golden_generators
    critic = torch.nn.Linear(4, 1)
    return {
        "training_set_kwargs": {"path": "faces.zip", "resolution": 32, "use_labels": False},
        "G": persistent_meta(plain, "Generator", kwargs, module_src),
        "D": persistent_meta(critic, "Discriminator", {"c_dim": 0}),
        "G_ema": persistent_meta(perturbed, "Generator", kwargs, module_src),
        "augment_pipe": None,
    }


def test_snapshot_shaped_pickle_loads_and_matches_golden(golden_generators: tuple, golden_dir: Path,
                                                         tmp_path: Path) -> None:
    path = write_snapshot(tmp_path / "network-snapshot-000000.pkl", make_snapshot(golden_generators))
    kwargs, plain, perturbed = golden_generators
    snap = read_nvlabs_pickle(path)
    assert snap.network == "G_ema" and snap.class_name == "Generator"
    assert snap.snapshot_keys == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"]
    assert snap.init_kwargs == kwargs and type(snap.init_kwargs["mapping_kwargs"]) is dict
    expected = perturbed.state_dict()
    assert list(snap.state_dict) == list(expected)
    assert all(torch.equal(snap.state_dict[k], expected[k]) for k in expected)
    from_g = read_nvlabs_pickle(path, network="G").state_dict
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in from_g.items())

    model, card = load_stylegan2(path)
    io = load_file(str(golden_dir / "stylegan2_small_perturbed-io.safetensors"))
    with torch.no_grad():
        error = (model(io["z"], truncation_psi=0.7) - io["img_psi07"]).abs().max().item()
    assert error < 1e-4
    assert card.extra["pickle_network"] == "G_ema" and card.weights_sha256 and card.source == str(path)


def test_protocol_3_snapshot_with_builtin_sets_loads(golden_generators: tuple, tmp_path: Path) -> None:
    # Python 3.7 (upstream's recommendation) defaults to protocol 3, which spells sets as builtins.set.
    path = write_snapshot(tmp_path / "old.pkl", make_snapshot(golden_generators), protocol=3)
    assert b"cbuiltins\nset\n" in path.read_bytes()
    assert len(read_nvlabs_pickle(path).state_dict) == 75


def test_embedded_module_source_is_never_run(golden_generators: tuple, tmp_path: Path) -> None:
    sentinel = tmp_path / "source-ran"
    src = f"open({str(sentinel)!r}, 'w').write('pwned')\n" + GENERATOR_SRC
    path = write_snapshot(tmp_path / "snap.pkl", make_snapshot(golden_generators, module_src=src))
    load_stylegan2(path)
    assert not sentinel.exists()


class SystemCall:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class ExecCall:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple:
        return (builtins.exec, (self.code,))


@pytest.mark.parametrize("payload_kind,global_name", [("system", os.system.__module__ + ".system"),
                                                      ("exec", "builtins.exec")])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_code_execution_payloads_are_refused(golden_generators: tuple, tmp_path: Path, payload_kind: str,
                                             global_name: str, where: str) -> None:
    sentinel = tmp_path / "payload-ran"
    payload = (SystemCall(f"touch {sentinel}") if payload_kind == "system"
               else ExecCall(f"open({str(sentinel)!r}, 'w').write('pwned')"))
    if where == "top":
        snapshot: dict = {"G_ema": payload}
    else:
        # Deep inside an otherwise well-formed snapshot, after many tensors were read.
        snapshot = make_snapshot(golden_generators)
        snapshot["G_ema"].meta["state"]["_init_kwargs"]["synthesis_kwargs"]["architecture"] = payload
    path = write_snapshot(tmp_path / "evil.pkl", snapshot)
    with pytest.raises(UnsafeFileError, match=f"global {global_name}") as info:
        load_stylegan2(path)
    assert "\n" not in str(info.value)
    assert not sentinel.exists()


def test_build_on_a_reader_stand_in_is_refused() -> None:
    # GLOBAL collections.OrderedDict, EMPTY_DICT, BUILD: would set attributes on the stand-in.
    data = b"\x80\x04ccollections\nOrderedDict\n}b."
    with pytest.raises(UnsafeFileError, match="modify"):
        restricted_loads(data)
    assert ("collections", "OrderedDict") in ALLOWED_GLOBALS


def test_numpy_object_dtype_is_refused() -> None:
    with pytest.raises(UnsafeFileError, match="Python objects"):
        restricted_loads(pickle.dumps(np.dtype(object), protocol=4))
    assert restricted_loads(pickle.dumps(np.float64(0.125), protocol=4)) == 0.125


class OversizedTensor:
    """A tensor record claiming more elements than its storage holds."""

    def __reduce__(self) -> tuple:
        data = torch.arange(6.0)
        storage = torch.storage.TypedStorage(wrap_storage=data.untyped_storage(), dtype=data.dtype, _internal=True)
        return (torch._utils._rebuild_tensor_v2, (storage, 0, (1000,), (1,), False, OrderedDict()))


def test_tensor_record_larger_than_its_storage_is_refused() -> None:
    # torch itself would grow the storage with uninitialised memory instead of failing.
    with pytest.raises(CheckpointError, match="needs 1000 elements, but its storage holds 6"):
        restricted_loads(pickle.dumps(OversizedTensor(), protocol=4))


def test_tensorflow_era_pickle_is_refused_with_what_is_supported(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path / "stylegan2-ffhq-config-f.pkl",
                          (Network("G"), Network("D"), Network("Gs")))  # TF pickles are (G, D, Gs)
    with pytest.raises(CheckpointError, match="TensorFlow-era") as info:
        load_stylegan2(path)
    message = str(info.value)
    assert "dnnlib.tflib.network.Network" in message and "supported: NVlabs stylegan2-ada-pytorch" in message
    assert not isinstance(info.value, UnsafeFileError) and "\n" not in message


def test_stylegan3_generator_is_refused(golden_generators: tuple, tmp_path: Path) -> None:
    src = "# training/networks_stylegan3.py\nclass SynthesisInput(torch.nn.Module): ...\n" + GENERATOR_SRC
    path = write_snapshot(tmp_path / "stylegan3-t.pkl", make_snapshot(golden_generators, module_src=src))
    with pytest.raises(CheckpointError, match="StyleGAN3.*supported: NVlabs stylegan2-ada-pytorch"):
        load_stylegan2(path)


def test_snapshot_without_generator_and_truncated_snapshot(golden_generators: tuple, tmp_path: Path) -> None:
    snapshot = make_snapshot(golden_generators)
    only_d = write_snapshot(tmp_path / "d.pkl", {"D": snapshot["D"], "augment_pipe": None})
    with pytest.raises(CheckpointError, match=r"no 'G_ema' or 'G' network \(keys: D, augment_pipe\)"):
        load_stylegan2(only_d)
    wrong_class = write_snapshot(tmp_path / "dd.pkl", {"G_ema": snapshot["D"]})
    with pytest.raises(CheckpointError, match="'Discriminator', not a StyleGAN2 Generator"):
        load_stylegan2(wrong_class)
    data = write_snapshot(tmp_path / "full.pkl", snapshot).read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt pickle, stopped near byte \d+") as info:
        load_stylegan2(cut)
    assert "\n" not in str(info.value)


def test_pickle_config_override_and_mismatch(golden_generators: tuple, tmp_path: Path) -> None:
    kwargs = golden_generators[0]
    path = write_snapshot(tmp_path / "snap.pkl", make_snapshot(golden_generators))
    wrong = kwargs | {"w_dim": 32}
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_stylegan2(path, wrong)
    model, _ = load_stylegan2(path, StyleGAN2Config.from_kwargs(kwargs))
    assert model.num_ws == 8
