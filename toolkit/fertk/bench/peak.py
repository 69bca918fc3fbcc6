"""The hardware limit, measured: large-GEMM throughput per precision, and copy bandwidth on GPU.

A row's achieved GFLOP/s is compared with the GEMM peak measured on the same device, with the
same thread count, in the same process. The peak is the best rate over a few repetitions of the
largest matrix size that fits the time budget: it is the ceiling, so rows are compared with the
best the hardware showed, not its average.

On CPU the GEMM of every library a CPU backend runs on is measured (torch's BLAS, and ONNX
Runtime's MLAS when installed) and the best is the peak: BLAS builds differ by vendor (MKL takes a
256-bit path on AMD cores that MLAS runs at 512 bits, a 2x gap measured here), and a peak that one
backend's convolutions beat would make % peak meaningless.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fertk.core.devices import torch_threads
from fertk.core.errors import InvalidInputError

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
    library: str = "torch"  # whose GEMM gave `gflops`
    by_library: dict[str, float] | None = None  # each measured library's best rate

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


def _ort_gemm(n: int, precision: str, threads: int | None) -> Any:
    """A callable timing one n×n ONNX Runtime GEMM (MatMul, or MatMulInteger for int8), or None."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    rng = np.random.default_rng(n)
    if precision == "fp32":
        node, elem = helper.make_node("MatMul", ["A", "B"], ["C"]), (TensorProto.FLOAT, TensorProto.FLOAT)
        out_type = TensorProto.FLOAT
        feeds = {"A": rng.standard_normal((n, n), dtype=np.float32), "B": rng.standard_normal((n, n), dtype=np.float32)}
    elif precision == "int8":
        # u8 activations × s8 weights: the pairing ORT's QDQ convolutions run on (VNNI where present).
        node, elem = helper.make_node("MatMulInteger", ["A", "B"], ["C"]), (TensorProto.UINT8, TensorProto.INT8)
        out_type = TensorProto.INT32
        feeds = {"A": rng.integers(0, 128, (n, n), dtype=np.uint8), "B": rng.integers(-64, 64, (n, n), dtype=np.int8)}
    else:
        return None  # fp16/bf16 CPU GEMMs are not what ORT's CPU provider runs fast
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", elem[0], [n, n]),
                                               helper.make_tensor_value_info("B", elem[1], [n, n])],
                              [helper.make_tensor_value_info("C", out_type, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


def _sweep(make_call: Any, device: str, budget_s: float, max_size: int) -> tuple[float, float, int, int] | None:
    """Best and median rate over doubling sizes from 256; (best, median, size, repetitions)."""
    target = budget_s / 8  # one product should take a small slice of the budget
    deadline = time.perf_counter() + budget_s
    n, best = 256, None
    while True:
        call = make_call(n)
        if call is None:
            return best
        _synchronize(device)
        call()  # warm-up: allocations, kernel selection
        size_deadline = min(deadline, time.perf_counter() + budget_s / 3)
        times: list[float] = []
        while len(times) < 3 or (len(times) < 20 and time.perf_counter() < size_deadline):
            _synchronize(device)
            start = time.perf_counter()
            call()
            _synchronize(device)
            times.append(time.perf_counter() - start)
        times.sort()
        rate, median = 2 * n**3 / times[0] / 1e9, 2 * n**3 / times[len(times) // 2] / 1e9
        if best is None or rate > best[0]:
            best = (rate, median, n, len(times))
        # Sizes below 1024 rarely reach the peak (and a loaded machine makes small ones look
        # slow), so growth continues to 1024 whatever the timing says.
        if n * 2 > max_size or time.perf_counter() > deadline or (n >= 1024 and times[0] * 8 > target):
            return best
        n *= 2


def measure_gemm_peak(device: str = "cpu", precision: str = "fp32", *, threads: int | None = None,
                      budget_s: float = 1.0, max_size: int | None = None,
                      libraries: tuple[str, ...] | None = None) -> Peak:
    """Best GEMM rate on `device` at `precision` over the GEMM libraries its backends use."""
    if precision not in _DTYPES:
        raise InvalidInputError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(_DTYPES)}")
    on_gpu = device.startswith("cuda")
    max_size = max_size or (8192 if on_gpu else 4096)
    libraries = libraries or (("torch",) if on_gpu else ("torch", "onnxruntime"))
    fn = _gemm(precision)

    def torch_call(n: int) -> Any:
        a, b = _matrices(n, precision, device)
        return lambda: fn(a, b)

    tf32 = torch.backends.cuda.matmul.allow_tf32 if on_gpu else None
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # strict fp32: TF32 is a different precision
    found: dict[str, tuple[float, float, int, int]] = {}
    try:
        with torch_threads(None if on_gpu else threads):
            for library in libraries:
                make = torch_call if library == "torch" else (lambda n: _ort_gemm(n, precision, threads))
                result = _sweep(make, device, budget_s / len(libraries), max_size)
                if result is not None:
                    found[library] = result
            used_threads = None if on_gpu else torch.get_num_threads()
    finally:
        if on_gpu:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    library = max(found, key=lambda k: found[k][0])
    rate, median, size, reps = found[library]
    note = "int8 x int8 -> int32 (torch._int_mm); GOP/s" if precision == "int8" else ""
    if precision == "int8" and library == "onnxruntime":
        note = "u8 x s8 -> int32 (ONNX Runtime MatMulInteger); GOP/s"
    return Peak(device, precision, rate, median, size, used_threads, reps, note, library,
                {k: round(v[0], 2) for k, v in found.items()})


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
