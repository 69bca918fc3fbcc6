"""StarGAN in bf16 with StyleGAN2 in fp32 (`--translator-precision bf16`): the two stages chain to
the fused graph, the staged engine (StyleGAN2 on onnxruntime, StarGAN on torch) stays within the
bf16 tolerance of fp32, and the choice is a content option recorded in the dataset card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fertk.cli import app
from fertk.core.errors import InvalidInputError
from fertk.core.specs import TensorSpec
from fertk.engines.compare import INTEGER_TOLERANCES
from fertk.engines.staged import StagedEngine
from fertk.engines.torch_engine import TorchEngine
from fertk.models.pipeline import PipelineConfig, build_pipeline
from fertk.synth.engines import open_generation_engine

runner = CliRunner()
BF16 = INTEGER_TOLERANCES["bf16"]


def _pipeline(golden: Path, **extra) -> torch.nn.Module:
    return build_pipeline(PipelineConfig(generator="stylegan2", generator_weights=str(golden / "stylegan2_small-G.pt"),
                                         translator_weights=str(golden / "stargan_small-G.ckpt"), **extra))


def _inputs(count: int = 6, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"latent": rng.standard_normal((count, 64), dtype=np.float32),
            "intensity": rng.uniform(0.5, 1.0, (count, 6)).astype(np.float32)}


def _within_bf16(got: np.ndarray, want: np.ndarray) -> tuple[int, float]:
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    bad = float((diff > BF16.atol).mean())
    assert bad <= BF16.max_bad_fraction, (int(diff.max()), bad)
    return int(diff.max()), float(diff.mean())


def test_stages_chain_to_the_fused_graph_and_bf16_moves_pixels_within_tolerance(golden_dir: Path) -> None:
    fp32 = _pipeline(golden_dir)
    bf16 = _pipeline(golden_dir, translator_precision="bf16")
    x = {k: torch.from_numpy(v) for k, v in _inputs().items()}
    with torch.no_grad():
        want = fp32(x["latent"], x["intensity"]).numpy()
        got = bf16(x["latent"], x["intensity"]).numpy()
        identities, translation = bf16.stages()
        chained = translation(identities(x["latent"]), x["intensity"]).numpy()
        with bf16.fp32_translator():
            back = bf16(x["latent"], x["intensity"]).numpy()
    assert np.array_equal(chained, got)
    assert np.array_equal(back, want)              # the parity reference really is fp32
    worst, mean = _within_bf16(got, want)
    assert worst > 0 and mean > 0                  # StarGAN really ran in bf16


def test_staged_engine_runs_stylegan2_on_ort_and_stargan_on_torch(golden_dir: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "cache"))
    pipeline = _pipeline(golden_dir, translator_precision="bf16")
    inputs = _inputs()
    with open_generation_engine(pipeline, backend="ort", device="cpu", precision="fp32") as engine:
        assert isinstance(engine, StagedEngine) and engine.backend == "ort+torch"
        stages = engine.describe()["stages"]
        assert [s["stage"] for s in stages] == ["stylegan2", "stargan"]
        got = np.asarray(engine.run(inputs)["faces"])
    with torch.no_grad():
        want_bf16 = pipeline(*(torch.from_numpy(inputs[k]) for k in ("latent", "intensity"))).numpy()
        with pipeline.fp32_translator():
            want_fp32 = pipeline(*(torch.from_numpy(inputs[k]) for k in ("latent", "intensity"))).numpy()
    assert got.shape == want_fp32.shape and got.dtype == np.uint8
    _within_bf16(got, want_bf16)
    _within_bf16(got, want_fp32)
    with pytest.raises(InvalidInputError, match="cannot be combined with --precision fp16"):
        open_generation_engine(pipeline, backend="ort", device="cpu", precision="fp16")


def test_a_stage_without_its_inputs_is_refused() -> None:
    spec = TensorSpec("x", "float32", ("batch", 2))
    lonely = TorchEngine(torch.nn.Identity(), (TensorSpec("y", "float32", ("batch", 2)),), (spec,))
    with pytest.raises(InvalidInputError, match="stage 'only' needs y"):
        StagedEngine([("only", lonely)], (spec,), (spec,))


def _args(golden: Path, out: Path, *extra: str) -> list[str]:
    return ["synth", "-n", "3", "--out", str(out), "--generator", "stylegan2",
            "--generator-weights", str(golden / "stylegan2_small-G.pt"),
            "--translator-weights", str(golden / "stargan_small-G.ckpt"), "--emotions", "anger,happiness",
            "--batch", "2", "--format", "npy", *extra]


def test_cli_records_the_translator_precision_and_its_parity(golden_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "d"
    result = runner.invoke(app, _args(golden_dir, out, "--translator-precision", "bf16", "--backend", "ort", "--json"))
    assert result.exit_code == 0, result.output
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["options"]["translator_precision"] == "bf16"
    assert card["pipeline"]["config"]["translator_precision"] == "bf16"
    engine = json.loads(result.stdout)["engine"]
    assert engine["backend"] == "ort+torch"
    parity = engine["parity_vs_fp32"]
    assert parity["reference"] == "torch eager fp32 on cpu"
    assert parity["max_abs_grey_levels"] <= 255 and parity["share_off_by_more_than_1"] <= BF16.max_bad_fraction
    resumed = runner.invoke(app, _args(golden_dir, out))     # precision left to the dataset: follows it
    assert resumed.exit_code == 0, resumed.output
    refused = runner.invoke(app, _args(golden_dir, out, "--precision", "fp32"))
    assert refused.exit_code == 2 and "--translator-precision was 'bf16', now None" in refused.stderr


def test_bad_translator_precisions_are_one_line_errors(golden_dir: Path, tmp_path: Path) -> None:
    bad = runner.invoke(app, _args(golden_dir, tmp_path / "a", "--translator-precision", "fp16"))
    assert bad.exit_code == 2 and "unknown translator precision 'fp16'" in bad.stderr
    procedural = runner.invoke(app, ["synth", "-n", "2", "--out", str(tmp_path / "p"), "--translator-precision", "bf16"])
    assert procedural.exit_code == 2 and "--translator-precision needs --generator stylegan2" in procedural.stderr


def test_export_refuses_a_bf16_translator(golden_dir: Path) -> None:
    from fertk.export.api import _pipeline_source

    with pytest.raises(InvalidInputError, match="cannot carry"):
        _pipeline_source(_pipeline(golden_dir, translator_precision="bf16"))


@pytest.mark.parametrize("amx", [True, False])
def test_backend_auto_runs_stargan_in_bf16_only_on_amx_cpus(golden_dir: Path, tmp_path: Path, monkeypatch,
                                                            amx: bool) -> None:
    """`--backend auto` picks the staged bf16 path where it was measured to pay (AMX), records it,
    and a resume follows the record; an explicit --precision fp32 keeps the graph in fp32."""
    import fertk.synth.execution as execution

    monkeypatch.setenv("FERTK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(execution, "cpu_has_amx", lambda: amx)
    out = tmp_path / "d"
    args = _args(golden_dir, out, "--backend", "auto", "--shard-size", "2", "--device", "cpu")
    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    card = json.loads((out / "dataset_card.json").read_text())
    engine = json.loads(first.stdout)["engine"]
    if amx:
        assert card["options"]["translator_precision"] == "bf16" and engine["backend"] == "ort+torch"
        assert "StarGAN in bf16 (this CPU has AMX)" in engine["choice"]["reason"]
        assert engine["parity_vs_fp32"]["share_off_by_more_than_1"] <= BF16.max_bad_fraction
    else:
        assert card["options"]["translator_precision"] is None and engine["backend"] == "ort"
    (out / "manifest.csv").unlink()          # a resume after a lost manifest: shards are kept, merged again
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "dataset_card.json").read_text())["options"] == card["options"]
    explicit = runner.invoke(app, _args(golden_dir, tmp_path / "e", "--backend", "auto", "--precision", "fp32",
                                        "--device", "cpu", "--json"))
    assert explicit.exit_code == 0, explicit.output
    assert json.loads(explicit.stdout)["engine"]["backend"] == "ort"
