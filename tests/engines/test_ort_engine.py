"""The ONNX Runtime backend on hand-built graphs: providers really used, I/O binding, spec checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from fertk.core.specs import TensorSpec
from fertk.engines.ort_engine import OrtEngine, ort_available_providers
from fertk.core.errors import ArtifactError, BackendUnavailableError, InvalidInputError


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def affine(tmp_path: Path) -> Path:
    """y = 2x + 1 and s = ReduceSum(x, axis 1): float32[N, 3] → float32[N, 3], float32[N]."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"]),
         helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0)],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
         helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    return _save(graph, tmp_path / "affine.onnx")


def test_specs_from_graph_batch_axis_named_batch(affine: Path) -> None:
    with OrtEngine(affine) as engine:
        assert engine.input_specs == (TensorSpec("x", "float32", ("batch", 3)),)
        assert [s.describe() for s in engine.output_specs] == ["float32[batch, 3]", "float32[batch]"]
        assert engine.describe()["providers"] == ["CPUExecutionProvider"]


def test_numpy_and_torch_io_without_aliasing(affine: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with OrtEngine(affine, intra_op_threads=1, graph_optimization_level="basic") as engine:
        first = engine.run({"x": x})
        np.testing.assert_array_equal(first["y"], 2 * x + 1)
        np.testing.assert_array_equal(first["s"], x.sum(1))
        second = engine.run({"x": x + 1})
        np.testing.assert_array_equal(first["y"], 2 * x + 1)  # the first result was not overwritten
        assert not np.shares_memory(first["y"], second["y"])
        out = engine.run({"x": torch.from_numpy(x.T.copy().T)})  # torch in (non-contiguous view) → torch out
        assert isinstance(out["y"], torch.Tensor)
        torch.testing.assert_close(out["y"], torch.from_numpy(2 * x + 1))
        strided = np.asfortranarray(x)
        np.testing.assert_array_equal(engine.run({"x": strided})["y"], 2 * x + 1)
        assert engine.describe()["intra_op_threads"] == 1


def test_outputs_with_data_dependent_shapes(tmp_path: Path) -> None:
    """An output with a non-batch dynamic axis is read back from ORT's own buffers."""
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["idx"])], "nz",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["batch", 4])],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [2, "count"])],
    )
    with OrtEngine(_save(graph, tmp_path / "nz.onnx")) as engine:
        out = engine.run({"x": np.array([[0, 3, 0, 1]], np.uint8)})["idx"]
        np.testing.assert_array_equal(out, [[0, 0], [1, 3]])


def test_declared_specs_must_match_the_graph(affine: Path) -> None:
    outs = [TensorSpec("y", "float32", ("batch", 3)), TensorSpec("s", "float32", ("batch",))]
    with pytest.raises(ArtifactError, match="inputs"):
        OrtEngine(affine, [TensorSpec("image", "float32", ("batch", 3))], outs)
    with pytest.raises(ArtifactError, match="float32"):
        OrtEngine(affine, [TensorSpec("x", "float16", ("batch", 3))], outs)
    with pytest.raises(ArtifactError, match="declares"):
        OrtEngine(affine, [TensorSpec("x", "float32", ("batch", 4))], outs)


def test_gpu_providers_that_cannot_run_are_errors(affine: Path) -> None:
    if "CUDAExecutionProvider" not in ort_available_providers():
        with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
            OrtEngine(affine, device="cuda")
    elif not torch.cuda.is_available():
        # onnxruntime-gpu without a GPU: listed, silently falls back; the engine refuses that...
        with pytest.raises(BackendUnavailableError, match="fall"):
            OrtEngine(affine, device="cuda")
        # ...unless told to accept it, and then it says so.
        with pytest.warns(RuntimeWarning), OrtEngine(affine, device="cuda", allow_fallback=True) as engine:
            assert engine.describe()["providers"] == ["CPUExecutionProvider"]


def test_bad_arguments(affine: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        OrtEngine(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ArtifactError, match="cannot load"):
        OrtEngine(corrupt)
    with pytest.raises(InvalidInputError, match="provider"):
        OrtEngine(affine, provider="openvino")
    with pytest.raises(InvalidInputError, match="optimisation level"):
        OrtEngine(affine, graph_optimization_level="max")
    with pytest.raises(InvalidInputError, match="does not match"):
        OrtEngine(affine, provider="cuda", device="cpu")


@pytest.mark.gpu
def test_cuda_provider_binds_torch_cuda_tensors(affine: Path) -> None:
    x = torch.arange(6, dtype=torch.float32, device="cuda").reshape(2, 3)
    with OrtEngine(affine, device="cuda") as engine:
        assert engine.describe()["providers"][0] == "CUDAExecutionProvider"
        out = engine.run({"x": x})
        assert out["y"].is_cuda
        torch.testing.assert_close(out["y"], 2 * x + 1)
        np.testing.assert_array_equal(engine.run({"x": x.cpu().numpy()})["s"], x.sum(1).cpu().numpy())


def test_unknown_session_options_are_one_line_errors(affine: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown ort options \\['intra_threads'\\]") as info:
        OrtEngine(affine, intra_threads=2)
    assert "intra_op_threads" in (info.value.hint or "")
    with OrtEngine(affine, intra_op_threads=1, provider_options=None) as engine:
        assert engine.describe()["intra_op_threads"] == 1
