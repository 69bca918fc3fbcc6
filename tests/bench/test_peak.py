"""The measured limit: GEMM peaks per precision and GPU copy bandwidth (values are machine facts;
only their shape and sanity are checked)."""

from __future__ import annotations

import math

import pytest
import torch

from fertk.bench.peak import measure_copy_bandwidth, measure_gemm_peak
from fertk.core.devices import torch_threads
from fertk.core.errors import InvalidInputError


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_cpu_gemm_peak_is_measured_with_the_thread_count_asked(precision: str) -> None:
    before = torch.get_num_threads()
    peak = measure_gemm_peak("cpu", precision, threads=1, budget_s=0.1, max_size=512)
    assert torch.get_num_threads() == before      # restored
    assert peak.threads == 1 and peak.device == "cpu" and peak.precision == precision
    assert math.isfinite(peak.gflops) and peak.gflops > 0
    assert peak.gflops >= peak.gflops_median > 0  # best repetition vs median repetition at that size
    assert peak.size in (256, 512) and peak.repetitions >= 3
    assert peak.to_dict()["gflops"] == peak.gflops
    # Every CPU GEMM library the backends run on was measured; the peak is the best of them.
    assert set(peak.by_library) == {"torch", "onnxruntime"} and peak.library in peak.by_library
    assert peak.gflops == pytest.approx(max(peak.by_library.values()), rel=1e-3)


def test_the_peak_can_be_limited_to_one_library() -> None:
    peak = measure_gemm_peak("cpu", "fp32", threads=1, budget_s=0.05, max_size=256, libraries=("onnxruntime",))
    assert peak.library == "onnxruntime" and set(peak.by_library) == {"onnxruntime"} and peak.size == 256


def test_unknown_precision_and_cpu_bandwidth_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        measure_gemm_peak("cpu", "fp8")
    with pytest.raises(InvalidInputError):
        measure_copy_bandwidth("cpu")


def test_torch_threads_restores_the_count() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.gpu
def test_gpu_peaks_and_bandwidth() -> None:
    for precision in ("fp32", "fp16", "bf16"):
        peak = measure_gemm_peak("cuda", precision, budget_s=0.5)
        assert peak.gflops > 0 and peak.threads is None
    kinds = {b.kind: b.gbps for b in measure_copy_bandwidth("cuda", megabytes=64, repetitions=3)}
    assert set(kinds) == {"d2d", "h2d", "d2h"} and all(v > 0 for v in kinds.values())
