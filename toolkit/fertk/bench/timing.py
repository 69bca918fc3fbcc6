"""The timing loop and memory watch behind every bench row.

Rules the loop keeps: the first call (lazy compilation, allocation, engine build on first use)
is timed on its own and reported, never mixed into the statistics; warm-up iterations follow and
are excluded; timed iterations run until a time budget is spent (between a minimum and a
maximum count); inputs rotate among several pre-generated batches so caches do not flatter;
CUDA work is bracketed by synchronisation (and events) so the host clock sees the GPU finish.

Memory is measured in-process, per row: the kernel's peak-RSS counter (VmHWM) is reset before
the row (Linux `/proc/self/clear_refs` "5") and read after it, so a row's peak is its own even
though the process has run other rows before; where that reset is not allowed a sampling
thread polls RSS every few milliseconds instead. Both the absolute peak and the rise over the
RSS at the row's start are reported; memory an earlier row freed back to the allocator but not
to the OS is re-used without showing in the rise, which is why the absolute figure is kept too.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fertk.core.errors import InvalidInputError


@dataclass
class TimingPolicy:
    """How long and how often to time one row."""

    budget_s: float = 2.0          # timed iterations run until this much time is spent
    warmup_s: float = 0.3          # warm-up runs until this much time is spent ...
    warmup_iterations: int = 2     # ... and at least this many
    min_iterations: int = 5
    max_iterations: int = 100_000

    def __post_init__(self) -> None:
        if self.budget_s <= 0 or self.min_iterations < 1 or self.max_iterations < self.min_iterations:
            raise InvalidInputError(f"bad timing policy {self}", hint="budget_s > 0, 1 <= min_iterations <= max_iterations")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


@dataclass
class TimingStats:
    """Latency statistics of one row (per batch) and the throughput they imply."""

    batch: int
    iterations: int
    warmup_iterations: int
    first_call_s: float            # the first run alone: lazy compile / allocation / engine build on use
    timed_s: float                 # sum of the timed latencies
    mean_ms: float
    min_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    items_per_s: float             # batch / median latency (robust to stray slow iterations)
    items_per_s_mean: float        # batch × iterations / timed_s
    gpu_p50_ms: float | None = None  # CUDA-event time of the median iteration, where timed on GPU

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of already sorted values (numpy's default)."""
    if not sorted_values:
        raise InvalidInputError("percentile of no values")
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize(latencies_s: Sequence[float], *, batch: int, warmup_iterations: int, first_call_s: float,
              gpu_latencies_s: Sequence[float] | None = None) -> TimingStats:
    """Statistics of per-iteration latencies (seconds) for batches of `batch` items."""
    values = sorted(latencies_s)
    total = float(sum(values))
    p50 = percentile(values, 50)
    gpu_p50 = None
    if gpu_latencies_s:
        gpu_p50 = percentile(sorted(gpu_latencies_s), 50) * 1e3
    return TimingStats(
        batch=batch,
        iterations=len(values),
        warmup_iterations=warmup_iterations,
        first_call_s=first_call_s,
        timed_s=total,
        mean_ms=total / len(values) * 1e3,
        min_ms=values[0] * 1e3,
        p50_ms=p50 * 1e3,
        p95_ms=percentile(values, 95) * 1e3,
        p99_ms=percentile(values, 99) * 1e3,
        max_ms=values[-1] * 1e3,
        items_per_s=batch / p50 if p50 > 0 else float("inf"),
        items_per_s_mean=batch * len(values) / total if total > 0 else float("inf"),
        gpu_p50_ms=gpu_p50,
    )


def time_calls(run: Callable[[Any], Any], batches: Sequence[Any], *, batch: int,
               policy: TimingPolicy | None = None, cuda: bool = False) -> TimingStats:
    """Time `run(b)` over `batches` in rotation: first call, warm-up, then the timed loop."""
    policy = policy or TimingPolicy()
    if not batches:
        raise InvalidInputError("time_calls needs at least one input batch")
    sync: Callable[[], None] = (lambda: None)
    events = None
    if cuda:
        import torch

        sync = torch.cuda.synchronize

        def events() -> tuple[Any, Any]:
            return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def once(index: int, gpu_times: list[float] | None = None) -> float:
        data = batches[index % len(batches)]
        sync()
        if events is not None:
            start_event, end_event = events()
            start_event.record()
        start = time.perf_counter()
        run(data)
        if events is not None:
            end_event.record()
        sync()
        elapsed = time.perf_counter() - start
        if events is not None and gpu_times is not None:
            gpu_times.append(start_event.elapsed_time(end_event) / 1e3)
        return elapsed

    first_call_s = once(0)
    index = 1
    warmup_done = 0
    warmup_end = time.perf_counter() + policy.warmup_s
    while warmup_done < policy.warmup_iterations or time.perf_counter() < warmup_end:
        once(index)
        index += 1
        warmup_done += 1
    latencies: list[float] = []
    gpu_times: list[float] = []
    deadline = time.perf_counter() + policy.budget_s
    while len(latencies) < policy.max_iterations and (
        len(latencies) < policy.min_iterations or time.perf_counter() < deadline
    ):
        latencies.append(once(index, gpu_times))
        index += 1
    return summarize(latencies, batch=batch, warmup_iterations=warmup_done, first_call_s=first_call_s,
                     gpu_latencies_s=gpu_times or None)


# -- memory ------------------------------------------------------------------------------------

def _status_kib(field_name: str) -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter for this process; False where not allowed (non-Linux)."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


@dataclass
class MemoryUse:
    """Peak memory of one row: host RSS (absolute and rise) and GPU (torch allocator, device-wide)."""

    method: str                              # "vmhwm-reset" or "sampled"
    host_rss_peak_mib: float
    host_rss_delta_mib: float
    gpu_torch_peak_mib: float | None = None  # torch.cuda.max_memory_allocated during the row
    gpu_used_delta_mib: float | None = None  # device-wide used memory (all allocators) rise, at row end

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


class MemoryWatch:
    """Context manager measuring the peak memory of the block it wraps (see the module docstring)."""

    def __init__(self, *, cuda: bool = False, sample_interval_s: float = 0.005) -> None:
        self.cuda = cuda
        self.sample_interval_s = sample_interval_s
        self.result: MemoryUse | None = None
        self._stop = threading.Event()
        self._sampled_peak = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MemoryWatch":
        self._start_rss = current_rss_bytes()
        self._hwm = _reset_peak_rss()
        if not self._hwm:
            self._sampled_peak = self._start_rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._torch_start = torch.cuda.memory_allocated()
            free, total = torch.cuda.mem_get_info()
            self._used_start = total - free
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_interval_s):
            self._sampled_peak = max(self._sampled_peak, current_rss_bytes())

    def snapshot_gpu(self) -> None:
        """Record device-wide GPU use now (call at the row's busiest point, before closing the engine)."""
        if self.cuda:
            import torch

            free, total = torch.cuda.mem_get_info()
            self._used_peak = max(getattr(self, "_used_peak", 0), total - free)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._sampled_peak, current_rss_bytes())
            method = "sampled"
        else:
            peak = (_status_kib("VmHWM") or 0) * 1024
            method = "vmhwm-reset"
        gpu_torch = gpu_used = None
        if self.cuda:
            import torch

            self.snapshot_gpu()
            gpu_torch = (torch.cuda.max_memory_allocated() - self._torch_start) / 2**20
            gpu_used = (self._used_peak - self._used_start) / 2**20
        self.result = MemoryUse(method, peak / 2**20, (peak - self._start_rss) / 2**20, gpu_torch, gpu_used)
