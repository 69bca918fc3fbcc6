"""The hardware limit, measured: large-GEMM throughput per precision, and copy bandwidth on GPU.

A row's achieved GFLOP/s is compared with the GEMM peak measured on the same device, with the
same thread count, in the same process. The peak is the best rate over a few repetitions of the
largest matrix size that fits the time budget: it is the ceiling, so rows are compared with the
best the hardware showed, not its average.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fertk.errors import InvalidInputError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}


@dataclass
class Peak:
    """Measured GEMM rate (GFLOP/s, or GOP/s for int8) on one device at one precision."""

    device: str
    precision: str
    gflops: float          # best repetition: the ceiling rows are compared with
    gflops_median: float   # median repetition at the same size (how steady the machine was)
    size: int              # square matrix side that gave `gflops`
    threads: int | None    # CPU threads (torch.set_num_threads) during the measurement
    repetitions: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


@dataclass
class Bandwidth:
    """Measured copy bandwidth (GB/s) of one kind: 'd2d', 'h2d' or 'd2h'."""

    device: str
    kind: str
    gbps: float
    megabytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with torch's intra-op thread count set to `threads` (None leaves it alone)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _matrices(n: int, precision: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    if precision == "int8":
        a = torch.randint(-64, 64, (n, n), generator=gen, dtype=torch.int8)
        b = torch.randint(-64, 64, (n, n), generator=gen, dtype=torch.int8)
    else:
        a = torch.randn(n, n, generator=gen).to(_DTYPES[precision])
        b = torch.randn(n, n, generator=gen).to(_DTYPES[precision])
    return a.to(device), b.to(device)


def _gemm(precision: str) -> Any:
    # int8 × int8 → int32 is torch's only exposed integer GEMM; it uses VNNI / IMMA where present.
    return torch._int_mm if precision == "int8" else torch.mm


def _time_once(fn: Any, a: torch.Tensor, b: torch.Tensor, device: str) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn(a, b)
    _synchronize(device)
    return time.perf_counter() - start


def measure_gemm_peak(device: str = "cpu", precision: str = "fp32", *, threads: int | None = None,
                      budget_s: float = 1.0, max_size: int | None = None) -> Peak:
    """Best GEMM rate on `device` at `precision`: sizes double from 256 while one product stays short."""
    if precision not in _DTYPES:
        raise InvalidInputError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(_DTYPES)}")
    on_gpu = device.startswith("cuda")
    max_size = max_size or (8192 if on_gpu else 4096)
    # A single product should take a small slice of the budget so several repetitions fit.
    target = budget_s / 8
    fn = _gemm(precision)
    tf32 = torch.backends.cuda.matmul.allow_tf32 if on_gpu else None
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # strict fp32: TF32 is a different precision
    try:
        with torch_threads(None if on_gpu else threads):
            deadline = time.perf_counter() + budget_s
            n, best = 256, None
            while True:
                a, b = _matrices(n, precision, device)
                _time_once(fn, a, b, device)  # warm-up: allocations, kernel selection
                size_deadline = min(deadline, time.perf_counter() + budget_s / 3)
                times: list[float] = []
                while len(times) < 3 or (len(times) < 20 and time.perf_counter() < size_deadline):
                    times.append(_time_once(fn, a, b, device))
                times.sort()
                rate = 2 * n**3 / times[0] / 1e9
                median = 2 * n**3 / times[len(times) // 2] / 1e9
                if best is None or rate > best.gflops:
                    best = Peak(device, precision, rate, median, n, None if on_gpu else torch.get_num_threads(),
                                len(times))
                # Sizes below 1024 rarely reach the peak (and a loaded machine makes small ones look
                # slow), so growth continues to 1024 whatever the timing says.
                if n * 2 > max_size or time.perf_counter() > deadline or (n >= 1024 and times[0] * 8 > target):
                    break
                n *= 2
    finally:
        if on_gpu:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    assert best is not None
    if precision == "int8":
        best.note = "int8 x int8 -> int32 (torch._int_mm); GOP/s"
    return best


def measure_copy_bandwidth(device: str = "cuda", *, megabytes: int = 256, repetitions: int = 10) -> list[Bandwidth]:
    """Device-to-device, host-to-device (pinned) and device-to-host copy bandwidth in GB/s."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise InvalidInputError(f"copy bandwidth is measured on a CUDA device, not {device!r}")
    n = megabytes * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    results = []
    for kind, copy in (("d2d", lambda: dst.copy_(src)), ("h2d", lambda: src.copy_(host, non_blocking=True)),
                       ("d2h", lambda: host.copy_(src, non_blocking=True))):
        copy()
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repetitions):
            copy()
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3 / repetitions
        # A device-to-device copy reads and writes every byte; count both, as bandwidth tests do.
        moved = 2 * n if kind == "d2d" else n
        results.append(Bandwidth(device, kind, moved / seconds / 1e9, megabytes))
    return results
