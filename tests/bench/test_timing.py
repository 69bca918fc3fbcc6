"""The timing loop's statistics and bookkeeping, and the per-row memory watch (no timed assertions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fertk.bench.timing import MemoryWatch, TimingPolicy, percentile, summarize, time_calls
from fertk.core.errors import InvalidInputError


def test_percentile_matches_numpy() -> None:
    values = sorted(np.random.default_rng(0).exponential(size=101).tolist())
    for q in (0, 12.5, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(InvalidInputError):
        percentile([], 50)


def test_summary_is_ordered_and_consistent() -> None:
    latencies = np.random.default_rng(1).lognormal(mean=-4, sigma=0.5, size=200).tolist()
    stats = summarize(latencies, batch=16, warmup_iterations=3, first_call_s=0.5)
    assert stats.min_ms <= stats.p50_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
    assert stats.iterations == 200 and stats.warmup_iterations == 3 and stats.first_call_s == 0.5
    assert stats.items_per_s == pytest.approx(16 / (stats.p50_ms / 1e3))
    assert stats.items_per_s_mean == pytest.approx(16 * 200 / sum(latencies))
    assert stats.mean_ms == pytest.approx(np.mean(latencies) * 1e3)


def test_time_calls_on_a_tiny_model_rotates_inputs_and_excludes_warmup() -> None:
    model = torch.nn.Linear(16, 4).eval()
    batches = [torch.full((8, 16), float(i)) for i in range(3)]
    seen: list[float] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        seen.append(float(x[0, 0]))
        with torch.inference_mode():
            return model(x)

    policy = TimingPolicy(budget_s=0.05, warmup_s=0.0, warmup_iterations=2, min_iterations=4)
    stats = time_calls(run, batches, batch=8, policy=policy)
    # Every call is accounted for: the first call, the warm-up and the timed ones.
    assert len(seen) == 1 + stats.warmup_iterations + stats.iterations
    assert stats.warmup_iterations >= 2 and stats.iterations >= 4
    assert seen[:6] == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]  # rotated in order
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
    assert stats.items_per_s == pytest.approx(8 / (stats.p50_ms / 1e3))
    assert stats.timed_s == pytest.approx(stats.mean_ms * stats.iterations / 1e3)


def test_time_calls_respects_max_iterations() -> None:
    policy = TimingPolicy(budget_s=10.0, warmup_s=0.0, warmup_iterations=1, min_iterations=2, max_iterations=5)
    stats = time_calls(lambda x: x, [1], batch=1, policy=policy)
    assert stats.iterations == 5


def test_bad_policies_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        TimingPolicy(budget_s=0)
    with pytest.raises(InvalidInputError):
        TimingPolicy(min_iterations=10, max_iterations=5)
    with pytest.raises(InvalidInputError):
        time_calls(lambda x: x, [], batch=1)


def test_memory_watch_sees_a_peak_freed_inside_the_block() -> None:
    size = 96 * 2**20
    with MemoryWatch() as watch:
        block = np.ones(size, dtype=np.uint8)  # touched pages: resident
        del block
    use = watch.result
    assert use is not None
    assert use.method in ("vmhwm-reset", "sampled")
    # The block is gone, but the row's peak saw it (allow for allocator/page-size slack).
    assert use.host_rss_delta_mib >= 0.8 * size / 2**20
    assert use.host_rss_peak_mib >= use.host_rss_delta_mib
    assert use.gpu_torch_peak_mib is None


def test_memory_watch_of_a_small_block_is_small() -> None:
    with MemoryWatch() as watch:
        total = sum(range(1000))
    assert total == 499500
    assert watch.result is not None and watch.result.host_rss_delta_mib < 50
