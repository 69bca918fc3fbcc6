"""`--backend auto` for the generation graph: the decision and the batch estimate (pure, CPU)."""

from __future__ import annotations

import pytest

from fertk.engines.choice import (
    BATCH_MULTIPLE, DEFAULT_BATCH, MAX_AUTO_BATCH, MEMORY_FRACTION, auto_batch, choose_generation,
)
from fertk.core.errors import InvalidInputError

GAN = ("fp32", "fp16", "bf16")
MIB, GIB = 2**20, 2**30


def test_cuda_without_tensorrt_is_compiled_cuda_graphs_in_fp16() -> None:
    choice = choose_generation(device="cuda", tensorrt=False, precisions=GAN, precision="auto", batch=None,
                               free_bytes=100 * GIB, bytes_per_identity=100 * MIB)
    assert choice.backend == "torch"
    assert choice.precision == "fp16"
    assert choice.options == {"compile": True, "cuda_graphs": True}
    assert choice.batch == auto_batch(100 * GIB, 100 * MIB) == 512
    assert "free" in choice.batch_reason


def test_bf16_when_the_model_has_no_fp16_and_fp32_when_float32_only() -> None:
    bf16 = choose_generation(device="cuda:1", tensorrt=False, precisions=("fp32", "bf16"), precision="auto")
    assert (bf16.backend, bf16.precision) == ("torch", "bf16")
    procedural = choose_generation(device="cuda", tensorrt=False, precisions=("fp32",), precision="auto")
    assert (procedural.backend, procedural.precision) == ("torch", "fp32")
    assert procedural.options["cuda_graphs"] and procedural.options["compile"]
    assert "float32 only" in procedural.reason


def test_explicit_precision_batch_and_no_compile_win_on_cuda() -> None:
    choice = choose_generation(device="cuda", tensorrt=False, precisions=GAN, precision="fp32", batch=48,
                               free_bytes=100 * GIB, bytes_per_identity=MIB, compile=False)
    assert (choice.precision, choice.batch, choice.batch_reason) == ("fp32", 48, "given")
    assert choice.options == {"cuda_graphs": True}


def test_unknown_free_memory_falls_back_to_the_default_batch_and_the_job_caps_it() -> None:
    choice = choose_generation(device="cuda", tensorrt=False, precisions=GAN, precision="auto")
    assert choice.batch == DEFAULT_BATCH
    capped = choose_generation(device="cuda", tensorrt=False, precisions=GAN, precision="auto",
                               free_bytes=100 * GIB, bytes_per_identity=MIB, max_batch=256)
    assert capped.batch == 256 and "capped at 256" in capped.batch_reason


@pytest.mark.parametrize("device, tensorrt", [("cpu", False), ("cpu", True), ("cuda", True), ("cuda:0", True)])
def test_cpu_and_tensorrt_keep_open_engines_auto_order_in_fp32(device: str, tensorrt: bool) -> None:
    choice = choose_generation(device=device, tensorrt=tensorrt, precisions=GAN, precision="auto", batch=None,
                               free_bytes=100 * GIB, bytes_per_identity=MIB)
    assert (choice.backend, choice.precision, choice.options, choice.batch) == ("auto", "fp32", {}, DEFAULT_BATCH)
    asked = choose_generation(device=device, tensorrt=tensorrt, precisions=GAN, precision="fp16", batch=7)
    assert (asked.precision, asked.batch) == ("fp16", 7)


def test_auto_batch_fits_the_memory_fraction_in_multiples() -> None:
    per = 37 * MIB
    for free in (1 * GIB, 3 * GIB, 10 * GIB, 80 * GIB):
        batch = auto_batch(free, per)
        assert batch * per <= free * MEMORY_FRACTION
        assert batch % BATCH_MULTIPLE == 0 or batch < BATCH_MULTIPLE
        assert batch == MAX_AUTO_BATCH or (batch + BATCH_MULTIPLE) * per > free * MEMORY_FRACTION
    assert auto_batch(100 * GIB, MIB) == MAX_AUTO_BATCH
    assert auto_batch(10 * MIB, 100 * MIB) == 1          # nothing fits: still one identity per call
    assert auto_batch(6 * 10 * MIB, 10 * MIB) == 3       # under a multiple: not rounded to zero


def test_bad_arguments_are_typed_errors() -> None:
    with pytest.raises(InvalidInputError):
        auto_batch(GIB, 0)
    with pytest.raises(InvalidInputError):
        choose_generation(device="cuda", tensorrt=False, precisions=GAN, precision="fp8")
    with pytest.raises(InvalidInputError):
        choose_generation(device="cuda", tensorrt=False, precisions=GAN, batch=0)


def test_synth_plan_on_cpu_keeps_what_was_asked() -> None:
    """synth's wiring: on CPU, auto stays open_engine's auto in fp32; other backends keep their options."""
    from fertk.models.pipeline import PipelineConfig, build_pipeline
    from fertk.synth.engines import plan_generation

    pipeline = build_pipeline(PipelineConfig(generator="procedural"))
    auto = plan_generation(pipeline, backend="auto", device="cpu", precision="auto", batch=None, compile=None,
                           max_batch=1000)
    assert (auto.backend, auto.precision, auto.batch, auto.options) == ("auto", "fp32", DEFAULT_BATCH, {})
    torch_run = plan_generation(pipeline, backend="torch", device="cpu", precision="auto", batch=None,
                                compile=None, max_batch=10)
    assert (torch_run.backend, torch_run.precision, torch_run.batch) == ("torch", "fp32", DEFAULT_BATCH)
    asked = plan_generation(pipeline, backend="ort", device="cpu", precision="fp16", batch=3, compile=None,
                            max_batch=10)
    assert (asked.backend, asked.precision, asked.batch) == ("ort", "fp16", 3)


def test_parity_vs_fp32_counts_grey_levels(tmp_path) -> None:
    """The card's parity record (computed on the GPU for auto's engine): zero for the same engine,
    measured grey levels for a reduced-precision one; run here on CPU with a small GAN graph."""
    from fertk.bench.models import BuildContext, gan_weight_files
    from fertk.engines import open_engine
    from fertk.models.pipeline import PipelineConfig, build_pipeline
    from fertk.synth.engines import parity_vs_fp32

    g_path, t_path = gan_weight_files(BuildContext(tmp_path, scale="small"))
    pipeline = build_pipeline(PipelineConfig(generator="stylegan2", generator_weights=str(g_path),
                                             translator="stargan", translator_weights=str(t_path)))
    specs = {"input_specs": pipeline.input_specs, "output_specs": pipeline.output_specs}
    with open_engine(pipeline, backend="torch", device="cpu", precision="fp32", **specs) as same:
        report = parity_vs_fp32(pipeline, same, "cpu", batch=6)
    assert report["identities"] == 4 and report["reference"] == "torch eager fp32 on cpu"
    assert report["max_abs_grey_levels"] == 0 and report["share_off_by_more_than_1"] == 0.0
    with open_engine(pipeline, backend="torch", device="cpu", precision="bf16", **specs) as reduced:
        low = parity_vs_fp32(pipeline, reduced, "cpu", batch=6)
    assert 0 <= low["mean_abs_grey_levels"] <= low["max_abs_grey_levels"] <= 255
    assert low["max_abs_grey_levels"] > 0   # bf16 keeps 8 mantissa bits: some pixel moves
