"""One contract, every backend that can run here, every registered model (small configs).

The model list is read from the registry at collection time, so a model is covered the moment it
is registered (the fused generation pipeline included); a tiny conv net is added by hand. GPU backends
are in the matrix with their markers and skip with a reason on machines without CUDA/TensorRT.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fertk.engines import Engine
from fertk.engines.compare import compare_outputs, make_inputs
from fertk.core.errors import InvalidInputError
from fertk.export import ExportOptions, ModelSource, export_source, module_source, open_engine, resolve_model
from fertk.models.registry import list_models

# Configs that keep each model small enough for the default suite; a model registered without an
# entry here runs at its registry default config.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "fer-cnn": {"input_size": 32},
    "stargan": {"conv_dim": 8, "repeat_num": 1, "image_size": 16},
    "stargan-d": {"conv_dim": 8, "repeat_num": 3, "image_size": 32},
    "stylegan2": {},
    "procedural": {"resolution": 32},
    "pipeline": {"resolution": 32},
}
MODELS = ["tiny-conv", *list_models()]
BACKENDS = [
    "torch",
    pytest.param("torch-compile", marks=pytest.mark.slow),
    "ort",
    pytest.param("torch-cuda", marks=pytest.mark.gpu),
    pytest.param("ort-cuda", marks=pytest.mark.gpu),
    pytest.param("trt", marks=[pytest.mark.gpu, pytest.mark.trt]),
]
_SOURCES: dict[str, ModelSource] = {}
_ARTIFACTS: dict[str, Any] = {}


def _source(name: str, request: pytest.FixtureRequest) -> ModelSource:
    if name not in _SOURCES:
        if name == "tiny-conv":
            _SOURCES[name] = module_source(request.getfixturevalue("tiny_net"), name="tiny-conv")
        else:
            _SOURCES[name] = resolve_model(name, config=SMALL_CONFIGS.get(name, {}))
    return _SOURCES[name]


def _open(backend: str, source: ModelSource) -> Engine:
    specs = {"input_specs": source.input_specs, "output_specs": source.output_specs}
    if backend == "torch":
        return open_engine(source.module, backend="torch", **specs)
    if backend == "torch-compile":
        return open_engine(source.module, backend="torch", compile=True, **specs)
    if backend == "torch-cuda":
        return open_engine(source.module, backend="torch", device="cuda", **specs)
    if source.name not in _ARTIFACTS:
        # Export with the card's value ranges (the pipeline's latent is uniform), then open the artifact.
        _ARTIFACTS[source.name] = export_source(source, options=ExportOptions(parity_seeds=(0,)))
    artifact = _ARTIFACTS[source.name]
    if backend == "ort":
        return open_engine(artifact.path, backend="ort", intra_op_threads=2)
    if backend == "ort-cuda":
        return open_engine(artifact.path, backend="ort", device="cuda")
    return open_engine(artifact.path, backend="trt", batch_profile="1:2:4")


def _tolerance_precision(backend: str) -> str:
    # TensorRT picks tactics with TF32 on Ampere+; treat it like fp16 for the value check.
    return "fp16" if backend == "trt" else "fp32"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", MODELS)
def test_engine_contract(model: str, backend: str, request: pytest.FixtureRequest) -> None:
    source = _source(model, request)
    with _open(backend, source) as engine:
        assert [s.name for s in engine.input_specs] == [s.name for s in source.input_specs]
        assert [s.dtype for s in engine.output_specs] == [s.dtype for s in source.output_specs]
        info = engine.describe()
        assert info["backend"] == backend.split("-")[0] and "device" in info and info["precision"] == "fp32"

        reference = open_engine(source.module, backend="torch", input_specs=source.input_specs,
                                output_specs=source.output_specs)
        for batch, seed in ((1, 7), (3, 8)):
            inputs = make_inputs(source.input_specs, batch, seed, source.ranges)
            got = engine.run(inputs)
            assert sorted(got) == sorted(s.name for s in source.output_specs)
            for spec in source.output_specs:
                assert isinstance(got[spec.name], np.ndarray)
                assert got[spec.name].dtype == np.dtype(spec.dtype)
                assert got[spec.name].shape == spec.concrete_shape(batch)
            errors = compare_outputs(reference.run(inputs), got, source.output_specs,
                                     precision=_tolerance_precision(backend))
            assert all(e.passed for e in errors), [e.to_dict() for e in errors if not e.passed]

        # torch in → torch out
        torch_inputs = {k: torch.from_numpy(v) for k, v in make_inputs(source.input_specs, 2, 9, source.ranges).items()}
        out = engine.run(torch_inputs)
        assert all(isinstance(v, torch.Tensor) for v in out.values())

        # Bad input is refused before the backend sees it, naming the expected spec.
        first = source.input_specs[0]
        good = make_inputs(source.input_specs, 2, 0, source.ranges)
        with pytest.raises(InvalidInputError, match=first.describe().replace("[", r"\[")):
            engine.run({**good, first.name: good[first.name].astype(np.float64)})
        with pytest.raises(InvalidInputError, match="expected"):
            engine.run({**good, first.name: good[first.name][..., :1]})
        with pytest.raises(InvalidInputError, match=first.name):
            engine.run({k: v for k, v in good.items() if k != first.name} or {"wrong": good[first.name]})
        assert engine.stats.calls >= 3

    with pytest.raises(InvalidInputError, match="closed"):
        engine.run(good)
    engine.close()  # idempotent
