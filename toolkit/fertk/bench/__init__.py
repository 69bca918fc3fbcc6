"""`fertk bench`: throughput, latency, memory and parity of every model on every backend, against
the measured hardware limit.

    from fertk.bench import BenchConfig, run_bench, quick_config
    results = run_bench(quick_config())
    results.save("bench.json")

Pieces: `flops` (FLOPs per sample from the architecture), `peak` (measured GEMM peak, GPU copy
bandwidth), `timing` (the timing loop and per-row memory watch), `models` (what is benched, the
plain PyTorch loop), `backends` (bench backend table), `config` (what a run measures), `runner` (the run), `results` (rows, JSON,
compare), `report` (table, chart).
"""

from fertk.bench.backends import BACKENDS, BenchBackend
from fertk.bench.flops import FlopCount, count_flops, fer_cnn_hand_count
from fertk.bench.models import MODELS, BenchModel
from fertk.bench.peak import Bandwidth, Peak, measure_copy_bandwidth, measure_gemm_peak
from fertk.bench.report import plot_results, plot_rows, render_comparison, render_table, results_stem, write_outputs
from fertk.bench.results import (
    SCHEMA, BenchResults, BenchRow, Comparison, compare_results, fill_speedups, load_results,
)
from fertk.bench.config import BenchConfig, quick_config
from fertk.bench.runner import run_bench
from fertk.bench.timing import MemoryUse, MemoryWatch, TimingPolicy, TimingStats, percentile, summarize, time_calls

__all__ = [
    "BACKENDS", "MODELS", "SCHEMA", "Bandwidth", "BenchBackend", "BenchConfig", "BenchModel", "BenchResults",
    "BenchRow", "Comparison", "FlopCount", "MemoryUse", "MemoryWatch", "Peak", "TimingPolicy", "TimingStats",
    "compare_results", "count_flops", "fer_cnn_hand_count", "fill_speedups", "load_results",
    "measure_copy_bandwidth", "measure_gemm_peak", "percentile", "plot_results", "plot_rows", "quick_config",
    "render_comparison", "render_table", "results_stem", "run_bench", "summarize", "time_calls", "write_outputs",
]
