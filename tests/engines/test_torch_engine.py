"""The torch backend: precisions, memory format, output mapping, device checks, CUDA paths (gpu)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fertk.core.specs import TensorSpec
from fertk.engines.compare import compare_outputs, make_inputs
from fertk.engines.torch_engine import TorchEngine
from fertk.core.errors import BackendUnavailableError, InvalidInputError


def _engine(module: nn.Module, **kwargs) -> TorchEngine:
    return TorchEngine(module, module.input_specs, module.output_specs, **kwargs)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_keeps_declared_dtypes_and_the_callers_module(tiny_net, precision: str) -> None:
    weight = tiny_net.conv.weight.detach().clone()
    x = make_inputs(tiny_net.input_specs, 4, 0, tiny_net.input_ranges)
    with _engine(tiny_net) as ref, _engine(tiny_net, precision=precision) as low:
        expected, got = ref.run(x), low.run(x)
        assert got["logits"].dtype == np.float32  # cast back to the declared dtype
        assert low.module.conv.weight.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        (err,) = compare_outputs(expected, got, tiny_net.output_specs, precision=precision)
        assert err.passed and err.max_abs > 0
        assert low.describe()["precision"] == precision
    # the engine worked on a copy
    assert tiny_net.conv.weight.dtype == torch.float32
    assert torch.equal(tiny_net.conv.weight, weight)


class PinsFp32(nn.Module):
    """Does part of its math in fp32 on purpose, as StyleGAN2's mapping network does."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).float()
        return self.b(h * h.square().mean(1, keepdim=True).rsqrt())


def test_autocast_runs_modules_that_a_cast_breaks() -> None:
    specs = ([TensorSpec("x", "float32", ("batch", 4))], [TensorSpec("y", "float32", ("batch", 2))])
    x = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    module = PinsFp32().eval()
    with pytest.raises(RuntimeError):
        TorchEngine(module, *specs, precision="bf16").run(x)
    with TorchEngine(module, *specs) as ref, TorchEngine(module, *specs, precision="bf16", autocast=True) as amp:
        assert amp.describe()["autocast"] and amp.module.a.weight.dtype == torch.float32
        (err,) = compare_outputs(ref.run(x), amp.run(x), specs[1], precision="bf16")
        assert err.passed


def test_channels_last_matches_contiguous(tiny_net) -> None:
    x = make_inputs(tiny_net.input_specs, 3, 1, tiny_net.input_ranges)
    with _engine(tiny_net) as ref, _engine(tiny_net, channels_last=True) as nhwc:
        assert nhwc.module.conv.weight.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_allclose(nhwc.run(x)["logits"], ref.run(x)["logits"], atol=1e-5)


def test_eval_mode_and_no_grad(tiny_net) -> None:
    tiny_net.train()
    engine = TorchEngine(tiny_net, tiny_net.input_specs, tiny_net.output_specs)
    assert not engine.module.training  # BatchNorm uses running stats
    out = engine.run({"image": torch.rand(2, 1, 12, 12)})["logits"]
    assert not out.requires_grad


class TwoHeads(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"double": x * 2, "sum": x.sum(1)}


def test_dict_outputs_are_mapped_by_name_and_count_is_checked() -> None:
    specs_in = [TensorSpec("x", "float32", ("batch", 3))]
    specs_out = [TensorSpec("sum", "float32", ("batch",)), TensorSpec("double", "float32", ("batch", 3))]
    engine = TorchEngine(TwoHeads(), specs_in, specs_out)
    out = engine.run({"x": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(out["sum"], [3.0, 3.0])
    np.testing.assert_array_equal(out["double"], np.full((2, 3), 2.0))
    bad = TorchEngine(TwoHeads(), specs_in, [TensorSpec("other", "float32", ("batch",))])
    with pytest.raises(InvalidInputError, match="missing declared outputs"):
        bad.run({"x": np.ones((2, 3), np.float32)})


def test_integer_output_cast_to_declared_dtype() -> None:
    class Quantize(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * 255).round().clamp(0, 255)  # float, declared uint8

    engine = TorchEngine(Quantize(), [TensorSpec("x", "float32", ("batch", 2))],
                         [TensorSpec("y", "uint8", ("batch", 2))])
    out = engine.run({"x": np.array([[0.0, 1.0]], np.float32)})["y"]
    assert out.dtype == np.uint8 and out.tolist() == [[0, 255]]


def test_bad_options_are_one_line_errors(tiny_net) -> None:
    with pytest.raises(InvalidInputError, match="int8"):
        _engine(tiny_net, precision="int8")
    with pytest.raises(InvalidInputError, match="unknown device"):
        _engine(tiny_net, device="tpu")
    with pytest.raises(InvalidInputError, match="cuda_graphs"):
        _engine(tiny_net, cuda_graphs=True)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="no CUDA device"):
            _engine(tiny_net, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("options", [{}, {"precision": "fp16"}, {"cuda_graphs": True}, {"channels_last": True}])
def test_cuda_matches_cpu(tiny_net, options) -> None:
    x = make_inputs(tiny_net.input_specs, 4, 0, tiny_net.input_ranges)
    with _engine(tiny_net) as cpu, _engine(tiny_net, device="cuda", **options) as gpu:
        expected = cpu.run(x)
        for _ in range(2):  # a CUDA graph is captured on the first call and replayed on the second
            got = gpu.run(x)
            (err,) = compare_outputs(expected, got, tiny_net.output_specs,
                                     precision=options.get("precision", "fp16"))
            assert err.passed, err.to_dict()
        tensors = gpu.run({"image": torch.from_numpy(x["image"]).cuda()})
        assert tensors["logits"].is_cuda


def test_fp32_only_modules_refuse_other_precisions_by_name() -> None:
    from fertk.core.errors import UnsupportedPrecisionError
    from fertk.models.procedural import ProceduralConfig, ProceduralFaces

    model = ProceduralFaces(ProceduralConfig(resolution=16, color=False))
    specs = ([TensorSpec("identity", "float32", ("batch", model.identity_dim)),
              TensorSpec("au", "float32", ("batch", model.au_dim))],
             [TensorSpec("image", "float32", ("batch", 1, 16, 16))])
    with pytest.raises(UnsupportedPrecisionError, match="float32 only"):
        TorchEngine(model, *specs, precision="bf16")
    with TorchEngine(model, *specs) as engine:
        x = {"identity": np.full((1, model.identity_dim), 0.5, np.float32), "au": np.zeros((1, model.au_dim), np.float32)}
        assert engine.run(x)["image"].shape == (1, 1, 16, 16)
