"""Artifacts: card contents, parity gate, atomic creation, cache reuse and keys, listing, loading errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from fertk.core.specs import TensorSpec
from fertk.core.errors import ArtifactError, InvalidInputError, OutputExistsError, ParityError
from fertk.export import ExportOptions, export_model, export_module, export_onnx_file, remove_artifact
from fertk.core.paths import cache_root
from fertk.export.artifacts import (
    CARD_FILE, artifacts_root, is_artifact_dir, list_artifacts, load_artifact,
)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_card_holds_what_the_artifact_is(tiny_net, tmp_path: Path) -> None:
    artifact = export_module(tiny_net, name="tiny", out=tmp_path / "tiny")
    card = json.loads((tmp_path / "tiny" / CARD_FILE).read_text())
    assert card["format"] == "fertk-artifact/1" and card["name"] == "tiny" and card["task"] == "classifier"
    assert card["architecture"] == "TinyConv" and len(card["key"]) == 64
    assert card["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 12, 12], "range": [0.0, 1.0]}]
    assert card["onnx"]["file"] == "model.onnx" and card["onnx"]["opset"] == 17
    assert card["onnx"]["sha256"] and card["versions"]["torch"] and card["versions"]["onnxruntime"]
    parity = card["parity"]
    assert parity["passed"] and parity["batch"] == 3 and parity["seeds"] == [0, 1]
    (logits,) = parity["outputs"]
    assert logits["name"] == "logits" and logits["max_abs"] < 1e-5 and logits["argmax_agreement"] == 1.0
    assert "torch" in parity["reference"] and "ort" in parity["candidate"]
    assert artifact.card.input_specs() == tiny_net.input_specs
    assert artifact.card.argmax_outputs() == ["logits"]


class TracesBatchAsConstant(nn.Module):
    """Uses a Python float of the batch size: tracing bakes in 2.0, so batch 3 disagrees."""

    input_specs = (TensorSpec("x", "float32", ("batch", 4)),)
    output_specs = (TensorSpec("y", "float32", ("batch", 4)),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.shape[0])


def test_parity_failure_is_loud_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ParityError, match="'y'"):
        export_module(TracesBatchAsConstant(), out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert _leftovers(tmp_path) == []  # the staging directory is gone too


def test_same_weights_reuse_the_cache_other_weights_do_not(tiny_net, tmp_path: Path, monkeypatch) -> None:
    # An empty cache of its own: other tests export the same tiny net under other names.
    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "cache"))
    first = export_module(tiny_net)
    assert first.path.parent == artifacts_root() and first.path.name.startswith("tinyconv-")
    stamp = (first.path / CARD_FILE).stat().st_mtime_ns
    again = export_module(tiny_net)
    assert again.path == first.path and (first.path / CARD_FILE).stat().st_mtime_ns == stamp
    with torch.no_grad():
        tiny_net.head.bias.add_(1.0)
    other = export_module(tiny_net)
    assert other.path != first.path and other.card.key != first.card.key
    assert export_module(tiny_net, options=ExportOptions(opset=18)).card.key != other.card.key


def test_out_dir_collisions_and_force(tiny_net, tmp_path: Path) -> None:
    out = tmp_path / "art"
    export_module(tiny_net, out=out)
    with torch.no_grad():
        tiny_net.conv.weight.mul_(2)
    with pytest.raises(OutputExistsError, match="other weights"):
        export_module(tiny_net, out=out)
    replaced = export_module(tiny_net, out=out, options=ExportOptions(force=True))
    assert replaced.path == out and load_artifact(out).card.key == replaced.card.key
    assert _leftovers(tmp_path) == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a fertk artifact"):
        export_module(tiny_net, out=tmp_path / "notes")


def test_fp16_variant_in_the_same_artifact(tiny_net, tmp_path: Path) -> None:
    artifact = export_module(tiny_net, out=tmp_path / "a", options=ExportOptions(precision="fp16"))
    variant = artifact.card.variants["fp16"]
    assert variant["file"] == "model.fp16.onnx" and variant["parity"]["passed"]
    assert artifact.onnx_path("fp16").is_file()
    graph = onnx.load(str(artifact.onnx_path("fp16")))
    assert graph.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # I/O kept fp32
    assert any(i.data_type == TensorProto.FLOAT16 for i in graph.graph.initializer)
    with pytest.raises(ArtifactError, match="no int8 graph") as info:
        artifact.onnx_path("int8")
    assert "--calib" in info.value.hint


def test_listing_and_removal(tiny_net, tmp_path: Path) -> None:
    export_module(tiny_net, name="one", out=tmp_path / "one")
    (tmp_path / ".half-built.partial-1234").mkdir()
    (tmp_path / "stray").mkdir()
    rows = list_artifacts(tmp_path)
    assert [r.name for r in rows] == ["one"]
    assert rows[0].parity == "pass" and rows[0].max_error is not None and rows[0].size_bytes > 4_000
    assert rows[0].variants == ["fp32"]
    remove_artifact(tmp_path / "one")
    assert list_artifacts(tmp_path) == []
    with pytest.raises(ArtifactError, match="not a fertk artifact"):
        remove_artifact(tmp_path / "stray")


def test_loading_broken_artifacts(tiny_net, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no card.json"):
        load_artifact(tmp_path / "empty")
    artifact = export_module(tiny_net, out=tmp_path / "ok")
    card_file = artifact.path / CARD_FILE
    card = json.loads(card_file.read_text())
    card_file.write_text("{ not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(artifact.path)
    card_file.write_text(json.dumps({**card, "format": "other/9"}))
    with pytest.raises(ArtifactError, match="format"):
        load_artifact(artifact.path)
    card_file.write_text(json.dumps(card))
    (artifact.path / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        load_artifact(artifact.path)
    assert is_artifact_dir(artifact.path)


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" and artifacts_root() == tmp_path / "c" / "artifacts"
    monkeypatch.delenv("FERTK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix":
        assert cache_root() == tmp_path / "xdg" / "fertk"


def test_foreign_onnx_file(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["inp"], ["out"])], "g",
        [helper.make_tensor_value_info("inp", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5])],
    )
    source = tmp_path / "relu.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    with pytest.warns(UserWarning, match="no fertk card"):
        artifact = export_model(source, out=tmp_path / "relu")
    assert artifact.card.parity is None and artifact.card.task == "unknown"
    assert artifact.card.input_specs() == (TensorSpec("inp", "float32", ("batch", 5)),)
    with pytest.warns(UserWarning):
        artifact16 = export_onnx_file(source, out=tmp_path / "relu", options=ExportOptions(precision="fp16"))
    assert artifact16.card.variants["fp16"]["parity"]["reference"].startswith("ort")  # no torch reference
    with pytest.raises(InvalidInputError, match="do not apply"):
        export_model(source, weights=tmp_path / "w.safetensors")


def test_unknown_registry_name() -> None:
    with pytest.raises(InvalidInputError, match="unknown model 'resnet'") as info:
        export_model("resnet")
    assert "fer-cnn" in info.value.hint


def test_registry_model_with_weights_file(tmp_path: Path) -> None:
    from fertk.models.fer_cnn import FerCNN, FerCNNConfig, save_fer_model

    model = FerCNN(FerCNNConfig(input_size=16)).eval()
    save_fer_model(model, tmp_path / "fer.safetensors")
    artifact = export_model("fer-cnn", weights=tmp_path / "fer.safetensors", out=tmp_path / "fer")
    assert artifact.card.weights_sha256 and artifact.card.config["input_size"] == 16
    assert artifact.card.parity["passed"] and artifact.card.task == "classifier"
    x = np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32)
    from fertk.export import open_engine

    with open_engine(artifact.path) as engine:
        np.testing.assert_allclose(engine.run({"image": x})["logits"],
                                   model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
