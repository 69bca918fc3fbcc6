"""The fused generation graph against an independent step-by-step path, and its ONNX export.

Tolerance: the fused graph and the reference differ only in float rounding order (AU scaling,
shared identity work, matmul resize vs cv2.resize), so uint8 outputs may differ by 1 grey level
where a value sits on a rounding boundary; never by more.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from fertk.core.emotions import EKMAN
from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.models.pipeline import PipelineConfig, build_pipeline, crop_pixels, resample_matrix
from fertk.models.procedural import ProceduralConfig, ProceduralFaces, expression_aus


def _reference_postprocess(rgb01: np.ndarray, crop, size: int) -> np.ndarray:
    """One image [H, W, 3] RGB in [0, 255] float → crop → BT.601 gray (cv2) → cv2.resize → uint8."""
    height = rgb01.shape[0]
    top, left, h, w = crop_pixels(height, crop)
    roi = np.ascontiguousarray(rgb01[top:top + h, left:left + w])
    gray = cv2.cvtColor(roi, cv2.COLOR_RGB2GRAY) if roi.ndim == 3 else roi
    interp = cv2.INTER_AREA if size <= min(h, w) else cv2.INTER_LINEAR
    small = cv2.resize(gray, (size, size), interpolation=interp)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def _reference_procedural(latent: np.ndarray, intensity: np.ndarray, emotions, crop, size: int,
                          color: bool, resolution: int, framing: str) -> np.ndarray:
    """generate each (identity, emotion) with the plain forward → postprocess, one image at a time."""
    model = ProceduralFaces(ProceduralConfig(resolution=resolution, color=color, framing=framing)).eval()
    out = np.zeros((len(latent), len(emotions), size, size), dtype=np.uint8)
    with torch.no_grad():
        for i in range(len(latent)):
            for e, emotion in enumerate(emotions):
                au = expression_aus([emotion], float(intensity[i, e]))
                image = model(torch.from_numpy(latent[i:i + 1]), au)[0]          # [C, H, W] in [-1, 1]
                pixels = ((image.permute(1, 2, 0).numpy().astype(np.float32) + 1.0) * 127.5)
                out[i, e] = _reference_postprocess(pixels.squeeze(-1) if not color else pixels, crop, size)
    return out


@pytest.mark.parametrize("color, crop, size, resolution, framing", [
    (True, None, 64, 64, "face"),                       # default box, same size: crop/gray only
    (False, (0.1, 0.2, 0.7, 0.6), 32, 64, "portrait"),  # luma render, off-centre box, area shrink
    (True, (0.0, 0.0, 0.5, 0.5), 48, 64, "face"),       # 32 px box enlarged to 48 (bilinear)
])
def test_procedural_pipeline_matches_step_by_step(color, crop, size, resolution, framing):
    emotions = ("anger", "happiness", "surprise", "neutral")
    config = PipelineConfig(emotions=emotions, crop=crop, output_size=size, color=color, resolution=resolution,
                            framing=framing)
    pipeline = build_pipeline(config)
    rng = np.random.default_rng(0)
    latent = rng.random((3, pipeline.latent_dim), dtype=np.float32)
    intensity = rng.uniform(0.3, 1.0, (3, len(emotions))).astype(np.float32)
    with torch.no_grad():
        fused = pipeline(torch.from_numpy(latent), torch.from_numpy(intensity)).numpy()
    assert fused.dtype == np.uint8 and fused.shape == (3, len(emotions), size, size)
    reference = _reference_procedural(latent, intensity, emotions, config.crop, size, color, resolution, framing)
    diff = np.abs(fused.astype(int) - reference.astype(int))
    assert diff.max() <= 1, f"max diff {diff.max()}"
    assert (diff > 0).mean() < 0.01
    # Expressions differ from each other (the AU prototypes reach the pixels).
    assert np.abs(fused[:, 0].astype(int) - fused[:, 1].astype(int)).mean() > 0.5


def test_intensity_zero_is_the_neutral_face():
    pipeline = build_pipeline(PipelineConfig(emotions=EKMAN + ("neutral",)))
    latent = torch.rand(2, pipeline.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        faces = pipeline(latent, torch.zeros(2, 7)).numpy()
    for e in range(6):
        assert np.array_equal(faces[:, e], faces[:, 6])


def test_specs_card_and_latent_kind():
    pipeline = build_pipeline()
    assert pipeline.latent_kind == "uniform"
    assert [s.describe() for s in pipeline.input_specs] == [
        f"float32[batch, {pipeline.latent_dim}]", "float32[batch, 6]"]
    assert pipeline.output_specs[0].describe() == "uint8[batch, 6, 64, 64]"
    card = pipeline.card()
    assert card["emotions"] == list(EKMAN) and card["config"]["generator"] == "procedural"
    assert PipelineConfig.from_dict(card["config"]) == pipeline.config


def test_resample_matrix_rows_sum_to_one():
    for n_in, n_out in [(100, 64), (64, 64), (37, 64), (256, 64)]:
        weights = resample_matrix(n_in, n_out)
        assert torch.allclose(weights.sum(dim=1), torch.ones(n_out), atol=1e-5)


def test_bad_configs_are_rejected():
    with pytest.raises(InvalidInputError):
        PipelineConfig(generator="biggan")
    with pytest.raises(InvalidInputError):
        PipelineConfig(crop=(0.5, 0.5, 0.8, 0.2))
    with pytest.raises(InvalidInputError):
        PipelineConfig(translator="stargan")          # procedural makes its own expressions
    with pytest.raises(CheckpointError, match="required"):
        build_pipeline(PipelineConfig(generator="stylegan2"))


def test_onnx_export_dynamic_batch_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from fertk.export.onnx import export_onnx

    pipeline = build_pipeline(PipelineConfig(emotions=("anger", "happiness", "sadness")))
    path = tmp_path / "pipeline.onnx"
    export_onnx(pipeline, pipeline.input_specs, pipeline.output_specs, path,
                ranges={"latent": (0.0, 1.0), "intensity": (0.0, 1.0)})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for batch in (1, 5):
        latent = rng.random((batch, pipeline.latent_dim), dtype=np.float32)
        intensity = rng.random((batch, 3), dtype=np.float32)
        (onnx_faces,) = session.run(None, {"latent": latent, "intensity": intensity})
        with torch.no_grad():
            torch_faces = pipeline(torch.from_numpy(latent), torch.from_numpy(intensity)).numpy()
        assert onnx_faces.dtype == np.uint8 and onnx_faces.shape == (batch, 3, 64, 64)
        assert np.abs(onnx_faces.astype(int) - torch_faces.astype(int)).max() <= 1


@pytest.fixture
def gan_weights(tmp_path):
    """A tiny random StyleGAN2 (32 px) and StarGAN (authors' 7 labels, 16 px), saved as safetensors."""
    from fertk.models.stargan import StarGANGenerator, save_stargan
    from fertk.models.stylegan2 import build_stylegan2, save_stylegan2

    generator, _ = build_stylegan2(seed=3)
    g_path = tmp_path / "g.safetensors"
    save_stylegan2(generator, g_path)
    torch.manual_seed(4)
    translator = StarGANGenerator(conv_dim=8, c_dim=7, repeat_num=1, image_size=16)
    t_path = tmp_path / "t.safetensors"
    save_stargan(translator, t_path)
    return g_path, t_path


def test_gan_pipeline_matches_step_by_step(gan_weights):
    from fertk.models.stargan import load_stargan_generator
    from fertk.models.stylegan2 import load_stylegan2

    g_path, t_path = gan_weights
    emotions = ("anger", "happiness", "neutral")
    config = PipelineConfig(generator="stylegan2", generator_weights=str(g_path), translator_weights=str(t_path),
                            emotions=emotions, output_size=12, truncation=0.6)
    pipeline = build_pipeline(config)
    assert pipeline.latent_kind == "normal" and pipeline.image_size == 32 and pipeline.translator_size == 16
    rng = np.random.default_rng(5)
    z = rng.standard_normal((2, pipeline.latent_dim)).astype(np.float32)
    alpha = rng.uniform(0.2, 1.0, (2, 3)).astype(np.float32)
    with torch.no_grad():
        fused = pipeline(torch.from_numpy(z), torch.from_numpy(alpha)).numpy()
    # Independent path: StyleGAN2 → cv2 area resize per channel → StarGAN.translate per emotion → postprocess.
    generator, _ = load_stylegan2(g_path)
    translator, _ = load_stargan_generator(t_path)
    with torch.no_grad():
        faces = generator(torch.from_numpy(z), None, truncation_psi=0.6, noise_mode="const").clamp(-1, 1).numpy()
    reference = np.zeros_like(fused)
    for i in range(2):
        small = np.stack([cv2.resize(ch, (16, 16), interpolation=cv2.INTER_AREA) for ch in faces[i]])
        for e, emotion in enumerate(emotions):
            y = translator.translate(torch.from_numpy(small)[None], emotion, alpha=float(alpha[i, e]))[0]
            rgb = (y.permute(1, 2, 0).numpy() + 1.0) * 127.5
            reference[i, e] = _reference_postprocess(rgb.astype(np.float32), config.crop, 12)
    diff = np.abs(fused.astype(int) - reference.astype(int))
    assert diff.max() <= 1, f"max diff {diff.max()}"


def test_gan_weights_are_checked_up_front(gan_weights, tmp_path):
    g_path, t_path = gan_weights
    with pytest.raises(CheckpointError):  # a StarGAN file is not a StyleGAN2 generator
        build_pipeline(PipelineConfig(generator="stylegan2", generator_weights=str(t_path),
                                      translator_weights=str(t_path)))
    with pytest.raises(CheckpointError, match="not found"):
        build_pipeline(PipelineConfig(generator="stylegan2", generator_weights=str(g_path),
                                      translator_weights=str(tmp_path / "missing.ckpt")))
    with pytest.raises(InvalidInputError, match="no label for contempt"):
        build_pipeline(PipelineConfig(generator="stylegan2", generator_weights=str(g_path),
                                      translator_weights=str(t_path), emotions=("anger", "contempt")))


@pytest.mark.slow
def test_gan_pipeline_onnx_export_dynamic_batch(gan_weights, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from fertk.export.onnx import export_onnx

    g_path, t_path = gan_weights
    pipeline = build_pipeline(PipelineConfig(generator="stylegan2", generator_weights=str(g_path),
                                             translator_weights=str(t_path), output_size=32))
    path = tmp_path / "gan.onnx"
    export_onnx(pipeline, pipeline.input_specs, pipeline.output_specs, path, ranges={"intensity": (0.0, 1.0)})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(8)
    for batch in (1, 3):
        z = rng.standard_normal((batch, pipeline.latent_dim)).astype(np.float32)
        alpha = rng.random((batch, 6), dtype=np.float32)
        (onnx_faces,) = session.run(None, {"latent": z, "intensity": alpha})
        with torch.no_grad():
            torch_faces = pipeline(torch.from_numpy(z), torch.from_numpy(alpha)).numpy()
        assert onnx_faces.shape == (batch, 6, 32, 32)
        assert np.abs(onnx_faces.astype(int) - torch_faces.astype(int)).max() <= 1


@pytest.mark.parametrize("size", [64, 128])
def test_translator_size_runs_the_golden_stargan_at_that_size(golden_dir, size):
    """translator_size (synth/export `--translator-size`): StarGAN gets size×size faces, its output is
    the golden model's at that size, and the card records the size and where it came from."""
    from fertk.models.stargan import load_stargan_generator

    t_path = golden_dir / "stargan_small-G.ckpt"
    config = PipelineConfig(generator="stylegan2", generator_weights=str(golden_dir / "stylegan2_small-G.pt"),
                            translator_weights=str(t_path), translator_size=size, output_size=32)
    pipeline = build_pipeline(config)
    card = pipeline.card()
    assert pipeline.translator_size == size and pipeline.post.image_size == size
    assert card["translator_size"] == size and card["translator_size_source"] == "translator_size option"
    assert card["translator"]["config"]["image_size"] == size
    assert card["translator"]["extra"]["image_size_source"] == "given (translator_size option)"
    assert card["fp16_layers"] == "fp32 (num_fp16_res 0)"
    seen = {}
    shared = pipeline.translator.forward_shared

    def spy(x, c, box=None):  # the pipeline runs StarGAN through forward_shared (one face, E labels)
        seen.update(x=x, c=c)
        return shared(x, c, box)

    pipeline.translator.forward_shared = spy
    rng = np.random.default_rng(11)
    z = torch.from_numpy(rng.standard_normal((2, pipeline.latent_dim)).astype(np.float32))
    with torch.no_grad():
        faces = pipeline(z, torch.ones(2, len(EKMAN)))
    assert faces.shape == (2, 6, 32, 32)
    assert seen["x"].shape == (2, 3, size, size) and seen["c"].shape[:2] == (2, len(EKMAN))
    golden, _ = load_stargan_generator(t_path)  # a fresh copy of the golden weights
    x, c = seen["x"], seen["c"]
    with torch.no_grad():
        expected = golden(x.repeat_interleave(c.shape[1], 0), c.reshape(-1, c.shape[2]))
        got = shared(x, c)
    assert got.shape == (12, 3, size, size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_translator_size_default_and_bad_values(golden_dir):
    config = PipelineConfig(generator="stylegan2", generator_weights=str(golden_dir / "stylegan2_small-G.pt"),
                            translator_weights=str(golden_dir / "stargan_small-G.ckpt"))
    card = build_pipeline(config).card()
    assert card["translator_size"] == 128
    assert card["translator_size_source"].startswith("not stored in stargan_small-G.ckpt")
    for bad in (0, 30, 2.5):
        with pytest.raises(InvalidInputError, match="multiple of 4"):
            PipelineConfig(generator="stylegan2", translator_size=bad)
    with pytest.raises(InvalidInputError, match="stylegan2"):
        PipelineConfig(translator_size=64)


def test_as_trained_generator_in_the_pipeline_follows_the_fp16_rule(tmp_path):
    from fertk.models.stargan import StarGANGenerator, save_stargan
    from fertk.models.stylegan2 import build_stylegan2, save_stylegan2

    generator, _ = build_stylegan2(seed=3, synthesis_kwargs={"num_fp16_res": 2, "conv_clamp": 256})
    save_stylegan2(generator, tmp_path / "g.safetensors")
    save_stargan(StarGANGenerator(conv_dim=8, c_dim=7, repeat_num=1, image_size=16), tmp_path / "t.safetensors")
    pipeline = build_pipeline(PipelineConfig(generator="stylegan2", generator_weights=str(tmp_path / "g.safetensors"),
                                             translator_weights=str(tmp_path / "t.safetensors")))
    assert pipeline.card()["fp16_layers"] == "fp32 (cpu)" and not pipeline.generator.synthesis.half_enabled
    assert pipeline.set_fp16_layers(device="cuda", precision="fp16") == "fp16 (cuda, precision fp16)"
    assert pipeline.generator.synthesis.half_enabled
    assert pipeline.card()["generator"]["extra"]["fp16_layers"] == "fp16 (cuda, precision fp16)"
    assert pipeline.set_fp16_layers(device="cpu", precision="fp16") == "fp32 (cpu)"
    assert not pipeline.generator.synthesis.half_enabled


def test_auto_backend_on_cpu_runs_the_procedural_graph_on_torch(tmp_path, monkeypatch):
    """Eager torch runs the procedural graph ~2x faster than onnxruntime (benchmarks/synth)."""
    from fertk.synth.engines import auto_cpu_backend, open_generation_engine

    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "cache"))
    pipeline = build_pipeline(PipelineConfig(emotions=("anger", "happiness")))
    engine = open_generation_engine(pipeline, backend="auto", device="cpu", precision="fp32")
    try:
        assert engine.backend == "torch"
    finally:
        engine.close()
    assert auto_cpu_backend("procedural") == "torch" and auto_cpu_backend("stylegan2") == "ort"
    assert not (tmp_path / "cache").exists()  # nothing was exported


@pytest.mark.slow
def test_auto_backend_on_cpu_runs_the_gan_graph_on_ort(gan_weights, tmp_path, monkeypatch):
    """onnxruntime runs the conv-bound GAN graph faster than eager torch (benchmarks/official)."""
    pytest.importorskip("onnxruntime")
    from fertk.synth.engines import open_generation_engine

    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "cache"))
    g_path, t_path = gan_weights
    pipeline = build_pipeline(PipelineConfig(generator="stylegan2", generator_weights=str(g_path),
                                             translator_weights=str(t_path), output_size=16))
    engine = open_generation_engine(pipeline, backend="auto", device="cpu", precision="fp32")
    try:
        assert engine.backend == "ort"
        rng = np.random.default_rng(9)
        z = rng.standard_normal((2, pipeline.latent_dim)).astype(np.float32)
        alpha = rng.random((2, 6), dtype=np.float32)
        faces = engine.run({"latent": z, "intensity": alpha})["faces"]
    finally:
        engine.close()
    with torch.no_grad():
        expected = pipeline(torch.from_numpy(z), torch.from_numpy(alpha)).numpy()
    assert np.abs(faces.astype(int) - expected.astype(int)).max() <= 1
