"""TensorRT: the GPU-free parts for real (profiles, engine keys, cache invalidation, calibration
batching and caches); building and running engines under the `trt` marker."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fertk.core.specs import TensorSpec
from fertk.core.errors import ArtifactError, BackendUnavailableError, InvalidInputError
from fertk.engines.trt_files import BatchProfile, EngineKey, engine_paths, inspect_engine, metadata_path, require_tensorrt
from fertk.export.trt_build import CalibrationBatcher, CalibrationCache, profile_shapes, timing_cache_path, write_engine

IMAGE = TensorSpec("image", "float32", ("batch", 1, 8, 8))
LABEL = TensorSpec("label", "float32", ("batch", 6))
OUT = TensorSpec("logits", "float32", ("batch", 6))
H100 = dict(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", trt_version="10.3.0")


def _key(**changes) -> EngineKey:
    fields = {**H100, "precision": "fp16", "profile": BatchProfile(1, 64, 256), "onnx_sha256": "ab" * 32}
    fields.update(changes)
    return EngineKey(**fields)


def test_batch_profile_parsing_and_validation() -> None:
    assert BatchProfile.parse("1:64:256") == BatchProfile(1, 64, 256)
    assert BatchProfile.parse("32") == BatchProfile(32, 32, 32)
    assert str(BatchProfile(2, 4, 8)) == "2:4:8"
    assert BatchProfile(2, 4, 8).contains(8) and not BatchProfile(2, 4, 8).contains(1)
    for bad in ("64:1:256", "0:1:2", "1:2", "a:b:c", "1:2:3:4"):
        with pytest.raises(InvalidInputError):
            BatchProfile.parse(bad)


def test_profile_shapes_fill_the_batch_axis_only() -> None:
    shapes = profile_shapes([IMAGE, LABEL], BatchProfile(1, 16, 64))
    assert shapes["image"] == ((1, 1, 8, 8), (16, 1, 8, 8), (64, 1, 8, 8))
    assert shapes["label"] == ((1, 6), (16, 6), (64, 6))
    with pytest.raises(InvalidInputError, match="time"):
        profile_shapes([TensorSpec("seq", "float32", ("batch", "time"))], BatchProfile(1, 1, 1))


def test_engine_key_names_every_dimension_and_roundtrips() -> None:
    base = _key()
    variants = [_key(precision="int8"), _key(profile=BatchProfile(1, 32, 256)), _key(gpu_name="NVIDIA A100-SXM4-40GB"),
                _key(compute_capability="8.0"), _key(trt_version="10.4.0"), _key(onnx_sha256="cd" * 32)]
    names = {base.name, *(v.name for v in variants)}
    assert len(names) == 7  # each field changes the file name
    assert base.name == "fp16-b1-64-256-nvidia-h100-80gb-hbm3-sm90-trt10.3.0-abababababab"
    assert EngineKey.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    engine, meta = engine_paths("/a/engines", base)
    assert engine.name == base.name + ".engine" and meta == metadata_path(engine)
    with pytest.raises(InvalidInputError):
        _key(precision="bf16")


def test_engine_files_are_checked_before_use(tmp_path: Path) -> None:
    key = _key()
    engine, _ = engine_paths(tmp_path, key)
    assert inspect_engine(engine).status == "missing"
    write_engine(engine, b"\x00serialized-plan" * 64, key, inputs=[IMAGE], outputs=[OUT], extra={"build_seconds": 1.0})
    here = dict(gpu_name=key.gpu_name, compute_capability="9.0", trt_version="10.3.0", onnx_sha256=key.onnx_sha256)
    ok = inspect_engine(engine, **here)
    assert ok.ok and ok.metadata["inputs"][0]["name"] == "image" and ok.metadata["size_bytes"] == 16 * 64

    foreign_gpu = inspect_engine(engine, **{**here, "gpu_name": "NVIDIA L4", "compute_capability": "8.9"})
    assert foreign_gpu.status == "foreign" and "NVIDIA L4" in foreign_gpu.reason and "8.9" in foreign_gpu.reason
    foreign_trt = inspect_engine(engine, **{**here, "trt_version": "10.5.0"})
    assert foreign_trt.status == "foreign" and "TensorRT 10.3.0 (installed: 10.5.0)" in foreign_trt.reason
    stale = inspect_engine(engine, **{**here, "onnx_sha256": "ff" * 32})
    assert stale.status == "stale"

    data = bytearray(engine.read_bytes())
    data[5] ^= 0xFF
    engine.write_bytes(bytes(data))
    assert inspect_engine(engine, **here).status == "corrupt"
    engine.write_bytes(bytes(data[:100]))  # truncated
    assert "truncated" in inspect_engine(engine, **here).reason

    orphan = tmp_path / "downloaded.engine"
    orphan.write_bytes(b"plan")
    assert inspect_engine(orphan).status == "corrupt" and "origin unknown" in inspect_engine(orphan).reason
    metadata_path(orphan).write_text("{broken")
    assert inspect_engine(orphan).status == "corrupt"


def test_calibration_batcher_cuts_fixed_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.random((5, 1, 8, 8)), "label": rng.random((5, 6)).astype(np.float32)},
             {"image": rng.random((6, 1, 8, 8)), "label": rng.random((6, 6)).astype(np.float32)}]
    batcher = CalibrationBatcher(feeds, [IMAGE, LABEL], batch_size=4)
    batches = list(batcher)
    assert len(batcher) == 2 and len(batches) == 2 and batcher.dropped == 3
    assert all(b["image"].shape == (4, 1, 8, 8) and b["image"].dtype == np.float32 for b in batches)
    assert all(b["image"].flags.c_contiguous for b in batches)
    np.testing.assert_allclose(batches[1]["image"][0], feeds[0]["image"][4])  # rows continue across feeds
    np.testing.assert_array_equal(batches[1]["label"][1], feeds[1]["label"][0])
    assert len(CalibrationBatcher(feeds, [IMAGE, LABEL], 2, max_batches=3)) == 3
    assert batcher.fingerprint() == CalibrationBatcher(feeds, [IMAGE, LABEL], 4).fingerprint()
    assert batcher.fingerprint() != CalibrationBatcher(feeds, [IMAGE, LABEL], 2).fingerprint()
    with pytest.raises(InvalidInputError, match="fewer than one batch"):
        CalibrationBatcher(feeds, [IMAGE, LABEL], 64)
    with pytest.raises(InvalidInputError, match="lacks input 'label'"):
        CalibrationBatcher([{"image": feeds[0]["image"]}], [IMAGE, LABEL], 2)
    with pytest.raises(InvalidInputError, match="expected"):
        CalibrationBatcher({"image": rng.random((4, 3, 8, 8))}, [IMAGE], 2)

    cache = CalibrationCache(tmp_path, "ab" * 32, batcher.fingerprint())
    assert cache.read() is None
    cache.write(memoryview(b"TRT-8601-EntropyCalibration2\nimage: 3c010a14\n"))
    assert cache.read().startswith(b"TRT-")
    other_data = CalibrationCache(tmp_path, "ab" * 32, CalibrationBatcher(feeds, [IMAGE, LABEL], 2).fingerprint())
    assert other_data.path != cache.path and other_data.read() is None  # new data: calibrate again


def test_timing_cache_is_per_gpu_and_version(tmp_path: Path) -> None:
    a = timing_cache_path("NVIDIA H100 80GB HBM3", "9.0", "10.3.0", root=tmp_path)
    assert a.parent == tmp_path and a.name == "timing-nvidia-h100-80gb-hbm3-sm90-trt10.3.0.cache"
    assert a != timing_cache_path("NVIDIA H100 80GB HBM3", "9.0", "10.4.0", root=tmp_path)
    assert a != timing_cache_path("NVIDIA A100", "8.0", "10.3.0", root=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_missing_tensorrt_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="tensorrt is not installed"):
        require_tensorrt()
    from fertk.engines.trt_engine import TrtEngine

    with pytest.raises(BackendUnavailableError):
        TrtEngine(tmp_path / "x.engine")


# -- on a machine with TensorRT and a GPU --------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_reuse_and_run_engines(tiny_net, tmp_path: Path, precision: str) -> None:
    import torch

    from fertk.export import open_engine
    from fertk.engines.compare import compare_engines, make_inputs
    from fertk.engines.trt_engine import TrtEngine
    from fertk.export import export_module
    from fertk.export.trt_build import BuildOptions, ensure_engine

    artifact = export_module(tiny_net, out=tmp_path / "tiny")
    calibration = make_inputs(tiny_net.input_specs, 64, 0, tiny_net.input_ranges)["image"]
    options = BuildOptions(precision=precision, profile="1:4:8", calibration_batch=8, calibration_batches=4)
    engine_file = ensure_engine(artifact, options, calibration=calibration if precision == "int8" else None)
    assert inspect_engine(engine_file).ok
    stamp = engine_file.stat().st_mtime_ns
    assert ensure_engine(artifact, options, calibration=calibration) == engine_file
    assert engine_file.stat().st_mtime_ns == stamp  # reused, not rebuilt
    if precision == "int8":
        assert list(engine_file.parent.glob("calib-*.cache"))

    reference = open_engine(tiny_net, backend="torch")
    with TrtEngine(engine_file, device="cuda") as engine:
        (report,) = compare_engines(reference, [engine], batch=4, seeds=(0, 1), ranges=tiny_net.input_ranges,
                                    precisions=["fp16" if precision != "int8" else "int8"],
                                    argmax_outputs=["logits"])
        assert report.passed, report.summary()
        out = engine.run({"image": torch.rand(2, 1, 12, 12, device="cuda")})
        assert out["logits"].is_cuda
        with pytest.raises(InvalidInputError, match="profile"):
            engine.run({"image": np.zeros((9, 1, 12, 12), np.float32)})

    data = bytearray(engine_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        TrtEngine(engine_file)
    rebuilt = ensure_engine(artifact, options, calibration=calibration)  # corrupt → rebuilt, never run
    assert inspect_engine(rebuilt).ok
