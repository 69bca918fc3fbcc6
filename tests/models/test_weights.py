"""The shared weight-file pieces every model uses (fertk.models.weights): atomic writers, the fertk
config in a safetensors header, provenance for cards, one-line messages."""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fertk.core.errors import CheckpointError
from fertk.core.io import sha256_file
from fertk.models.stargan import StarGANGenerator, load_stargan_generator, save_stargan
from fertk.models.weights import (
    cpu_state, first_line, provenance, read_header_config, read_state_dict, write_state_dict,
)


def _module(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))


def test_safetensors_round_trip_keeps_tensors_config_and_the_umask_mode(tmp_path):
    module = _module()
    state = cpu_state(module)
    assert all(v.is_contiguous() and v.device.type == "cpu" for v in state.values())
    path = write_state_dict(tmp_path / "m.safetensors", state, config={"width": 3, "classes": ["anger", "fear"]})
    back = read_state_dict(path)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    assert read_header_config(path) == {"width": 3, "classes": ["anger", "fear"]}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # safetensors alone writes 0600
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left


def test_a_ckpt_is_a_plain_state_dict_that_loads_weights_only(tmp_path):
    state = cpu_state(_module(1), torch.float64)
    path = write_state_dict(tmp_path / "m.ckpt", state, config={"ignored": True})
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(loaded, dict) and all(v.dtype == torch.float64 for v in loaded.values())
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert read_header_config(path) is None  # only safetensors headers carry a config


def test_a_header_config_that_is_not_an_object_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "g.safetensors"
    save_stargan(StarGANGenerator(conv_dim=4, c_dim=6, repeat_num=1, image_size=8), path)
    assert read_header_config(path)["c_dim"] == 6
    state = read_state_dict(path)
    save_file(state, str(path), metadata={"fertk": json.dumps([1, 2])})
    with pytest.raises(CheckpointError, match="g.safetensors: the fertk config in its header is not a JSON object"):
        read_header_config(path)
    with pytest.raises(CheckpointError, match="g.safetensors"):  # used to escape as an AttributeError
        load_stargan_generator(path)
    save_file(state, str(path))  # no fertk key: the architecture is inferred from the shapes
    assert read_header_config(path) is None
    model, card = load_stargan_generator(path)
    assert model.config.c_dim == 6 and card.weights_sha256 == sha256_file(path)


def test_provenance_of_a_file_and_of_a_random_init(tmp_path):
    path = write_state_dict(tmp_path / "m.safetensors", cpu_state(_module()))
    assert provenance(path) == {"weights_sha256": sha256_file(path), "source": str(path)}
    assert provenance(None) == {"weights_sha256": None, "source": "random-init"}


def test_first_line_keeps_one_short_sentence():
    assert first_line(RuntimeError("Weights only load failed. Re-running with weights_only=False\nmore")) \
        == "Weights only load failed"
    assert first_line(ValueError("")) == "ValueError"
    long = first_line(OSError("x" * 500), limit=40)
    assert len(long) == 40 and long.endswith("...")


@pytest.mark.parametrize("package", ["fertk.models.stylegan2", "fertk.models.stargan", "fertk.models.keras_h5"])
def test_split_packages_re_export_every_public_name(package):
    """`from fertk.models.<package> import X` works for every public def, class and constant of its modules."""
    module = importlib.import_module(package)
    assert len(set(module.__all__)) == len(module.__all__)
    defined: set[str] = set()
    for info in pkgutil.iter_modules(module.__path__):
        source = Path(module.__path__[0], f"{info.name}.py").read_text(encoding="utf-8")
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined.update(t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper())
    public = {name for name in defined if not name.startswith("_")}
    assert public == set(module.__all__)
    assert all(getattr(module, name, None) is not None for name in module.__all__)
