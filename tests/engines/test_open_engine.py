"""open_engine: sources, backend choice (auto), errors that say what is available, backend_report."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from fertk.engines import AUTO_ORDER, BACKENDS, backend_report, choose_backend
from fertk.export import open_engine
from fertk.core.specs import TensorSpec
from fertk.engines.compare import make_inputs
from fertk.core.errors import BackendUnavailableError, InvalidInputError


def test_backend_report_has_one_line_per_backend_with_reasons() -> None:
    rows = {r.name: r for r in backend_report()}
    assert set(rows) == {"torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-tensorrt", "trt"}
    assert rows["torch-cpu"].available and rows["ort-cpu"].available
    assert all(r.reason for r in rows.values())
    assert rows["torch-cuda"].available == torch.cuda.is_available()
    if importlib.util.find_spec("tensorrt") is None:
        assert not rows["trt"].available and "tensorrt is not installed" in rows["trt"].reason
    assert {row for row, *_ in AUTO_ORDER} == set(rows)


def test_auto_prefers_ort_on_cpu_and_torch_for_bf16() -> None:
    if torch.cuda.is_available():
        pytest.skip("the CPU preference order is tested on CPU-only machines")
    assert choose_backend("module")[:2] == ("ort", "cpu")
    assert choose_backend("artifact")[:2] == ("ort", "cpu")
    assert choose_backend("module", precision="bf16")[:2] == ("torch", "cpu")
    with pytest.raises(BackendUnavailableError, match="no backend"):
        choose_backend("engine")  # a .engine file needs TensorRT


def test_module_sources(tiny_net) -> None:
    x = make_inputs(tiny_net.input_specs, 2, 0, tiny_net.input_ranges)
    expected = tiny_net(torch.from_numpy(x["image"])).detach().numpy()
    with open_engine(tiny_net, backend="torch") as engine:  # specs from the module's attributes
        np.testing.assert_allclose(engine.run(x)["logits"], expected, atol=1e-6)
    with open_engine(tiny_net, backend="auto") as engine:  # ort-cpu here: exported into the cache
        assert engine.backend == ("ort" if not torch.cuda.is_available() else engine.backend)
        np.testing.assert_allclose(engine.run(x)["logits"], expected, atol=1e-5)
        first_model = engine.describe().get("model")
    with open_engine(tiny_net, backend="ort") as engine:  # same weights: the cached artifact again
        assert engine.describe()["model"] == first_model
        assert Path(first_model).parent.joinpath("card.json").is_file()

    plain = torch.nn.Linear(3, 2)
    with pytest.raises(InvalidInputError, match="no input/output specs"):
        open_engine(plain, backend="torch")
    specs = dict(input_specs=[TensorSpec("x", "float32", ("batch", 3))],
                 output_specs=[TensorSpec("y", "float32", ("batch", 2))])
    with open_engine(plain, backend="torch", **specs) as engine:
        assert engine.run({"x": np.ones((4, 3), np.float32)})["y"].shape == (4, 2)


def test_artifact_and_onnx_file_sources(tiny_net, tmp_path: Path) -> None:
    from fertk.export import export_module

    artifact = export_module(tiny_net, out=tmp_path / "tiny")
    x = make_inputs(tiny_net.input_specs, 3, 1, tiny_net.input_ranges)
    with open_engine(tmp_path / "tiny", backend="ort") as engine:
        assert engine.input_specs == tiny_net.input_specs
        reference = engine.run(x)["logits"]
    with open_engine(artifact, precision="fp16") as engine:  # fp16 graph made on demand
        assert engine.describe()["model"].endswith("model.fp16.onnx")
        np.testing.assert_allclose(engine.run(x)["logits"], reference, atol=2e-2)
    with pytest.warns(UserWarning, match="no fertk card"):
        engine = open_engine(tmp_path / "tiny" / "model.onnx", backend="ort")
    assert [s.name for s in engine.input_specs] == ["image"]
    with pytest.raises(InvalidInputError, match="torch backend needs the nn.Module"):
        open_engine(tmp_path / "tiny", backend="torch")
    with pytest.raises(InvalidInputError, match="bf16"):
        open_engine(tmp_path / "tiny", backend="ort", precision="bf16")


def test_unknown_backend_and_missing_dependencies_list_what_is_available(tiny_net, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown backend 'onnx'") as info:
        open_engine(tiny_net, backend="onnx")
    assert "ort-cpu: yes" in info.value.hint and "torch-cpu: yes" in info.value.hint
    assert BACKENDS == ("torch", "ort", "trt")
    with pytest.raises(InvalidInputError, match="precision"):
        open_engine(tiny_net, backend="torch", precision="fp8")
    with pytest.raises(InvalidInputError, match="does not exist"):
        open_engine(tmp_path / "nothing.bin")
    with pytest.raises(InvalidInputError, match="cannot open an engine"):
        open_engine(42)
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(BackendUnavailableError, match="tensorrt is not installed") as info:
            open_engine(tiny_net, backend="trt")
        assert "trt: no" in info.value.hint


def test_the_engine_layer_opens_built_graphs_only(tiny_net, tmp_path: Path) -> None:
    """fertk.engines.open_engine never exports: a module runs on torch, a graph file on its backend;
    a module on ort/trt and an artifact directory are refused with the export layer's opener named."""
    from fertk.engines import open_engine as open_built
    from fertk.export import export_module

    x = make_inputs(tiny_net.input_specs, 2, 0, tiny_net.input_ranges)
    with open_built(tiny_net, backend="auto") as engine:  # auto among what it can open: torch
        assert engine.backend == "torch"
        expected = engine.run(x)["logits"]
    for backend in ("ort", "trt"):
        with pytest.raises(InvalidInputError, match="only after an export") as info:
            open_built(tiny_net, backend=backend)
        assert "fertk.export.open_engine" in (info.value.hint or "")
    artifact = export_module(tiny_net, out=tmp_path / "tiny")
    with pytest.raises(InvalidInputError, match="only after an export"):
        open_built(artifact.path, backend="ort")
    with pytest.raises(BackendUnavailableError, match="no backend can run a artifact"):
        open_built(artifact.path)  # auto: nothing in this layer opens an artifact directory
    with open_built(artifact.onnx_path(), backend="ort", input_specs=artifact.card.input_specs(),
                    output_specs=artifact.card.output_specs()) as engine:
        np.testing.assert_allclose(engine.run(x)["logits"], expected, atol=1e-5)


def test_module_specs_come_from_arguments_attributes_or_the_card(tiny_net) -> None:
    from fertk.engines import module_specs

    assert module_specs(tiny_net) == (tuple(tiny_net.input_specs), tuple(tiny_net.output_specs))
    plain = torch.nn.Linear(3, 2)
    card = {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3], "range": [0, 1]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}]}
    inputs, outputs = module_specs(plain, card=card)
    assert inputs == (TensorSpec("x", "float32", ("batch", 3)),) and outputs[0].name == "y"
    given = [TensorSpec("z", "float32", ("batch", 3))]
    assert module_specs(plain, given, card=card)[0] == tuple(given)  # given specs win over the card
    with pytest.raises(InvalidInputError, match="no input/output specs for Linear"):
        module_specs(plain, given)
