"""Rendering bench results: the rich table, the PNG chart and the comparison table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fertk.bench.results import BenchResults, BenchRow, Comparison, Recommendation


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def machine_summary(results: BenchResults) -> list[str]:
    """A few lines: CPU, threads, GPUs, key versions, peaks, run time."""
    machine = results.machine
    cpu = machine.get("cpu", {})
    lines = [f"CPU: {cpu.get('model', '?')} ({cpu.get('cores', '?')} logical cores), "
             f"bench threads {machine.get('bench_threads', '?')}"]
    gpus = machine.get("gpus") or []
    lines.append("GPU: " + (", ".join(f"{g.get('name')} ({g.get('memory_gib')} GiB)" for g in gpus) or "none")
                 + (f", CUDA {machine.get('cuda_driver')}" if machine.get("cuda_driver") else ""))
    packages = machine.get("packages", {})
    versions = ", ".join(f"{k} {v}" for k, v in packages.items() if v and k in ("torch", "onnxruntime",
                                                                                "onnxruntime-gpu", "tensorrt"))
    lines.append(f"versions: fertk {machine.get('fertk', '?')}, python {machine.get('python', '?')}, {versions}")
    for peak in results.peaks:
        if "error" in peak:
            lines.append(f"peak {peak['device']} {peak['precision']}: not measured ({peak['error']})")
        else:
            unit = "GOP/s" if peak["precision"] == "int8" else "GFLOP/s"
            others = ", ".join(f"{lib} {rate:.1f}" for lib, rate in (peak.get("by_library") or {}).items())
            lines.append(f"peak {peak['device']} {peak['precision']} GEMM: {peak['gflops']:.1f} {unit} "
                         f"({peak.get('library', 'torch')}, n={peak['size']}, median {peak['gflops_median']:.1f}"
                         + (f"; by library: {others}" if others and len(peak.get("by_library") or {}) > 1 else "")
                         + ")")
    for bw in results.bandwidth:
        lines.append(f"copy bandwidth {bw['device']} {bw['kind']}: {bw['gbps']:.1f} GB/s")
    for model, count in results.flops.items():
        if "gflop_per_item" in count:
            lines.append(f"FLOPs {model}: {count['gflop_per_item']:.4g} GFLOP per sample (dense), "
                         f"{count['other_gflop_per_item']:.3g} other")
    for build in results.builds:
        checks = build.get("checks") or {}
        if build.get("step", "").startswith("int8") and checks:
            text = f"INT8 {build['model']} vs fp32 on {checks.get('samples', '?')} " \
                   f"{'held-out ' if checks.get('held_out') else ''}samples:"
            if checks.get("argmax_agreement") is not None:
                text += f" argmax agreement {checks['argmax_agreement']:.1%}"
            if checks.get("fp32_accuracy") is not None:
                text += (f", accuracy {checks['fp32_accuracy']:.1%} -> {checks['int8_accuracy']:.1%}"
                         " (labelled procedural faces; meaningful with trained --weights)")
            lines.append(text)
    lines.append(f"run time: {results.seconds:.1f} s")
    lines.extend(f"warning: {w}" for w in results_warnings(results))
    return lines


def render_table(results: BenchResults, console: Any) -> None:
    """Print the machine summary, the measured rows and the skipped/failed rows to a rich console."""
    from rich.markup import escape
    from rich.table import Table

    console = _wide(console, 160)
    width = None
    for line in machine_summary(results):
        console.print(escape(line), highlight=False, width=width)
    table = Table(title="fertk bench (items/s: images, or faces for pipelines and synth)")
    for name, justify in (("model", "left"), ("backend", "left"), ("prec", "left"), ("batch", "right"),
                          ("items/s", "right"), ("p50 ms", "right"), ("p95 ms", "right"), ("p99 ms", "right"),
                          ("GFLOP/s", "right"), ("%peak", "right"), ("x eager", "right"), ("x loop", "right"),
                          ("RSS MiB", "right"), ("parity", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "parity")  # type: ignore[arg-type]
    for row in results.ok_rows():
        table.add_row(row.model, row.backend, row.precision, str(row.batch), _num(row.items_per_s),
                      _num(row.p50_ms, "{:.2f}"), _num(row.p95_ms, "{:.2f}"), _num(row.p99_ms, "{:.2f}"),
                      _num(row.gflops), _num(row.pct_of_peak), _ratio(row.speedup_vs_eager),
                      _ratio(row.speedup_vs_hand_loop), _num(row.host_rss_peak_mib, "{:.0f}"), parity_text(row))
    console.print(table, width=width)
    others = [r for r in results.rows if not r.ok]
    if others:
        skipped = Table(title="not measured here")
        for name in ("model", "backend", "prec", "batch", "status", "reason"):
            skipped.add_column(name, no_wrap=name != "reason")
        for row in others:
            skipped.add_row(row.model, row.backend, row.precision, "-" if row.batch is None else str(row.batch),
                            row.status, escape(row.reason))
        console.print(skipped, width=width)
    console.print(escape("\n".join(recommendation_lines(results))), highlight=False, width=width)


def recommendation_lines(results: BenchResults) -> list[str]:
    """The closing block: which backend + precision to run each model with here, and its speed-up."""
    lines = ["Recommended here (fastest backend + precision that passed parity, vs torch eager fp32):"]
    for data in results.recommendations:
        rec = Recommendation(**data)
        lines.append("  " + rec.line())
        lines.extend(f"    not chosen: {why}" for why in rec.excluded)
    if len(lines) == 1:
        lines.append("  nothing measured: no recommendation")
    return lines


def _wide(console: Any, width: int) -> Any:
    """Piped output gets rich's default 80 columns, too narrow for these tables: a wider console
    on the same stream there (a terminal keeps its own width)."""
    from rich.console import Console

    if console.is_terminal or console.width >= width:
        return console
    return Console(file=console.file, width=width, soft_wrap=False, highlight=False)


def parity_text(row: BenchRow) -> str:
    """'ok 3e-06' / 'FAIL 0.2' / 'argmax 100%' summary of a row's parity."""
    if row.parity_max_abs is None:
        return "n/a" if row.backend.startswith("hand-loop") or row.model.startswith("synth:") else "-"
    text = ("ok " if row.parity_passed else "off ") + f"{row.parity_max_abs:.2g}"
    if row.parity_argmax_agreement is not None:
        text += f", argmax {row.parity_argmax_agreement:.0%}"
    return text


def render_comparison(comparisons: Sequence[Comparison], console: Any) -> None:
    """Print new/old ratios of matched rows."""
    from rich.table import Table

    console = _wide(console, 130)
    width = None
    table = Table(title="compared with the previous run (ratio > 1: more items/s now)")
    for name in ("model", "backend", "prec", "batch", "old items/s", "new items/s", "ratio", "p50 ratio", "status"):
        table.add_column(name)
    for c in comparisons:
        table.add_row(c.model, c.backend, c.precision, "-" if c.batch is None else str(c.batch),
                      _num(c.old_items_per_s), _num(c.new_items_per_s), _ratio(c.throughput_ratio),
                      _ratio(c.latency_ratio), c.status)
    console.print(table, width=width)


def plot_results(results: BenchResults, path: str | Path) -> Path | None:
    """PNG chart: items/s per backend (and precision) against batch, one panel per model; None if nothing ran."""
    cpu = results.machine.get("cpu", {}).get("model", "")
    gpus = ", ".join(g.get("name", "") for g in results.machine.get("gpus") or [])
    title = (f"fertk bench — {cpu}{' / ' + gpus if gpus else ''}, "
             f"{results.machine.get('bench_threads', '?')} threads, {results.created}")
    return plot_rows(results.rows, path, title)


def plot_rows(rows: Sequence[BenchRow], path: str | Path, title: str) -> Path | None:
    """The throughput chart of `rows` (measured ones): one panel per model, a line per backend and
    precision against batch; None if no row was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in rows if row.ok]
    by_model: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in measured:
        if row.items_per_s and row.batch is not None:
            by_model[row.model][f"{row.backend} {row.precision}"].append((row.batch, row.items_per_s))
    if not by_model:
        return None
    models = list(by_model)
    # One colour per backend/precision across every panel.
    labels = sorted({label for series in by_model.values() for label in series})
    palette = plt.get_cmap("tab20")
    colours = {label: palette(i % 20) for i, label in enumerate(labels)}
    cols = min(3, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        for label, points in sorted(by_model[model].items()):
            points.sort()
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=label, color=colours[label])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        unit = next((r.unit for r in measured if r.model == model), "item")
        ax.set_title(model)
        ax.set_xlabel("batch")
        ax.set_ylabel(f"{unit}s / s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def results_stem(results: BenchResults) -> str:
    """File stem for a run's outputs: '<cpu|gpu-name>-<YYYY-MM-DD>' (the GPU's name when GPU rows ran)."""
    import re

    gpu_rows = any(r.ok and r.device == "cuda" for r in results.rows)
    gpus = results.machine.get("gpus") or []
    tag = "cpu"
    if gpu_rows and gpus:
        tag = re.sub(r"[^a-z0-9]+", "-", str(gpus[0].get("name", "gpu")).lower()).strip("-") or "gpu"
    date = (results.created or "")[:10] or "undated"
    return f"{tag}-{date}"


def write_outputs(results: BenchResults, out_dir: str | Path) -> tuple[Path, Path | None]:
    """Write `<stem>.json` and `<stem>.png` into `out_dir`; return their paths (PNG None if nothing ran)."""
    out_dir = Path(out_dir)
    stem = results_stem(results)
    json_path = results.save(out_dir / f"{stem}.json")
    png_path = plot_results(results, out_dir / f"{stem}.png")
    return json_path, png_path


def results_warnings(results: BenchResults) -> list[str]:
    """Signs that a run's numbers are not trustworthy (e.g. the peak was measured on a busy machine)."""
    warnings = []
    over = [r for r in results.ok_rows() if r.pct_of_peak is not None and r.pct_of_peak > 100 and r.precision == "fp32"]
    if over:
        worst = max(over, key=lambda r: r.pct_of_peak or 0)
        warnings.append(f"{len(over)} fp32 rows exceed the measured peak (up to {worst.pct_of_peak:.0f} %, "
                        f"{worst.model} {worst.backend} batch {worst.batch}): the machine was busy while the "
                        "peak was measured, so % peak and the timings are not representative")
    return warnings
