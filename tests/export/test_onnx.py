"""PyTorch → ONNX: declared names/dtypes, dynamic batch, checker, optimiser, external data, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from fertk.core.specs import TensorSpec
from fertk.core.errors import ArtifactError, InvalidInputError
from fertk.core.io import sha256_file
from fertk.export.onnx import export_onnx, read_onnx_specs


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_export_declares_specs_and_runs_at_any_batch(tiny_net, tmp_path: Path) -> None:
    info = export_onnx(tiny_net, tiny_net.input_specs, tiny_net.output_specs, tmp_path / "m.onnx",
                       ranges=tiny_net.input_ranges)
    assert info.opset == 17 and info.exporter == "torchscript" and not info.external_data
    assert info.optimizer and info.optimizer.startswith("onnxscript")
    assert info.sha256 == sha256_file(tmp_path / "m.onnx")
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    inputs, outputs = read_onnx_specs(tmp_path / "m.onnx")
    assert inputs == tiny_net.input_specs and outputs == tiny_net.output_specs
    for batch in (1, 5):  # traced at batch 2
        x = np.random.default_rng(batch).random((batch, 1, 12, 12), dtype=np.float32)
        (got,) = _run(tmp_path / "m.onnx", {"image": x})
        np.testing.assert_allclose(got, tiny_net(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


class MultiIO(nn.Module):
    """Two inputs (one integer), dict outputs in a different order than declared, a uint8 output."""

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> dict[str, torch.Tensor]:
        scaled = x * k.unsqueeze(1).float()
        return {"img": (scaled.clamp(0, 1) * 255).round().to(torch.uint8), "total": scaled.sum(1)}


def test_multi_io_dict_outputs_and_integer_dtypes(tmp_path: Path) -> None:
    ins = [TensorSpec("x", "float32", ("batch", 4)), TensorSpec("k", "int64", ("batch",))]
    outs = [TensorSpec("total", "float32", ("batch",)), TensorSpec("img", "uint8", ("batch", 4))]
    export_onnx(MultiIO(), ins, outs, tmp_path / "multi.onnx", ranges={"x": (0, 1), "k": (0, 3)})
    assert read_onnx_specs(tmp_path / "multi.onnx") == (tuple(ins), tuple(outs))
    x = np.array([[0.1, 0.2, 0.3, 0.4]] * 3, np.float32)
    k = np.array([0, 1, 2], np.int64)
    total, img = _run(tmp_path / "multi.onnx", {"x": x, "k": k})
    np.testing.assert_allclose(total, [0.0, 1.0, 2.0], atol=1e-6)
    assert img.dtype == np.uint8 and img[2].tolist() == [51, 102, 153, 204]


def test_external_data_above_threshold(tiny_net, tmp_path: Path) -> None:
    info = export_onnx(tiny_net, tiny_net.input_specs, tiny_net.output_specs, tmp_path / "big.onnx",
                       max_inline_bytes=1024)
    assert info.external_data
    assert (tmp_path / "big.onnx.data").is_file() and info.size_bytes > (tmp_path / "big.onnx").stat().st_size
    x = np.zeros((2, 1, 12, 12), np.float32)
    (got,) = _run(tmp_path / "big.onnx", {"image": x})
    np.testing.assert_allclose(got, tiny_net(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


class IgnoresSecond(nn.Module):
    def forward(self, x: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
        return x + 1


def test_declaration_mismatches_are_errors(tiny_net, tmp_path: Path) -> None:
    spec_x = TensorSpec("x", "float32", ("batch", 3))
    with pytest.raises(ArtifactError, match="never uses|inputs are"):
        export_onnx(IgnoresSecond(), [spec_x, TensorSpec("unused", "float32", ("batch", 3))], [spec_x.__class__(
            "y", "float32", ("batch", 3))], tmp_path / "a.onnx")
    with pytest.raises(ArtifactError, match="declared float16"):
        export_onnx(tiny_net, tiny_net.input_specs, [TensorSpec("logits", "float16", ("batch", 4))], tmp_path / "b.onnx")
    with pytest.raises(ArtifactError, match="declared float32\\[batch, 5\\]"):
        export_onnx(tiny_net, tiny_net.input_specs, [TensorSpec("logits", "float32", ("batch", 5))], tmp_path / "c.onnx")
    with pytest.raises(InvalidInputError, match="exporter"):
        export_onnx(tiny_net, tiny_net.input_specs, tiny_net.output_specs, tmp_path / "d.onnx", exporter="jit")
    with pytest.raises(InvalidInputError, match="opset"):
        export_onnx(tiny_net, tiny_net.input_specs, tiny_net.output_specs, tmp_path / "e.onnx", opset=9)


def test_read_specs_of_foreign_graphs(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["in"], ["out"])], "g",
        [helper.make_tensor_value_info("in", TensorProto.FLOAT16, ["N", 3, None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT16, ["N", 3, None])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    (spec_in,), (spec_out,) = read_onnx_specs(path)
    assert spec_in.shape == ("batch", 3, "in_dim2") and spec_in.dtype == "float16"
    assert spec_out.shape[0] == "batch"
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(ArtifactError, match="not a readable ONNX file"):
        read_onnx_specs(tmp_path / "junk.onnx")


@pytest.mark.slow
def test_dynamo_exporter_matches(tiny_net, tmp_path: Path) -> None:
    info = export_onnx(tiny_net, tiny_net.input_specs, tiny_net.output_specs, tmp_path / "d.onnx", exporter="dynamo")
    assert info.exporter == "dynamo" and info.opset == 17
    x = np.random.default_rng(0).random((3, 1, 12, 12), dtype=np.float32)
    (got,) = _run(tmp_path / "d.onnx", {"image": x})
    np.testing.assert_allclose(got, tiny_net(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
