"""`fertk bench`: throughput, latency, memory and parity per model × backend × precision × batch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fertk.cli.options import JsonOutput, err, out, out_option, print_json
from fertk.cli.progress import progress_display


def _split(text: str | None) -> tuple[str, ...] | None:
    if text is None or text.strip() in ("", "all"):
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _weights(pairs: list[str] | None) -> dict[str, str]:
    from fertk.core.errors import InvalidInputError

    result = {}
    for pair in pairs or []:
        key, sep, path = pair.partition("=")
        if not sep or not key or not path:
            raise InvalidInputError(f"--weights takes MODEL=PATH, got {pair!r}", hint="e.g. --weights fer-cnn:paper=fer.safetensors")
        result[key.strip()] = path.strip()
    return result


def bench(
    models: str = typer.Option(None, "--models", help="Comma-separated bench models (see --list); default all."),
    backends: str = typer.Option(None, "--backends", help="Comma-separated bench backends, named as in `fertk info` (ort-trt = ort-tensorrt); default all (unavailable ones say why)."),
    batches: str = typer.Option(None, "--batches", help="Comma-separated batch sizes; default 1,8,32,128,256."),
    precisions: str = typer.Option(None, "--precisions", help="Comma-separated: fp32, fp16, bf16, int8; default all each backend offers."),
    threads: int = typer.Option(None, "--threads", help="CPU threads for torch and onnxruntime alike; default torch's."),
    budget_s: float = typer.Option(None, "--budget-s", help="Timed seconds per row (default 2; --quick 1)."),
    max_call_s: float = typer.Option(None, "--max-call-s", help="Skip rows whose single call is estimated longer (default 10 s)."),
    scale: str = typer.Option(None, "--scale", help="Generator sizes: paper (default) or small (golden-vector sizes)."),
    calibration_samples: int = typer.Option(
        None, "--calibration-samples", min=8,
        help="INT8 calibration + held-out inputs (default 256; a quarter is held out for the accuracy check)."),
    weights: list[str] = typer.Option(None, "--weights", help="MODEL=PATH: bench these weights instead of random ones (repeatable)."),
    int8_generators: bool = typer.Option(
        False, "--int8-generators",
        help="Also run INT8 rows for generator graphs (off by default: QDQ calibration of paper-scale GANs needs > 24 GiB)."),
    no_parity: bool = typer.Option(False, "--no-parity", help="Skip the per-row parity check against PyTorch fp32."),
    out_dir: Annotated[Optional[Path], out_option("Write <cpu|gpu>-<date>.json and .png into this folder.")] = None,
    compare: Path = typer.Option(None, "--compare", help="A previous results JSON: print new/old ratios."),
    quick: bool = typer.Option(False, "--quick", help="About a minute idle: FER CNN + procedural pipeline on CPU backends, ending with the backend to run."),
    list_only: bool = typer.Option(False, "--list", help="List bench models and backends, then exit."),
    json_output: JsonOutput = False,
) -> None:
    """Benchmark models across backends, precisions and batch sizes against the measured hardware peak."""
    from fertk.bench import BACKENDS, MODELS, BenchConfig, load_results, quick_config

    if list_only:
        _list(MODELS, BACKENDS, json_output)
        return
    previous = load_results(compare) if compare is not None else None  # fail before the run, not after it
    options = {
        "models": _split(models), "backends": _split(backends),
        "batches": tuple(int(b) for b in _split(batches)) if _split(batches) else None,
        "precisions": _split(precisions), "threads": threads, "budget_s": budget_s, "max_call_s": max_call_s,
        "scale": scale, "weights": _weights(weights) or None, "parity": False if no_parity else None,
        "calibration_samples": calibration_samples, "int8_generators": True if int8_generators else None,
    }
    given = {k: v for k, v in options.items() if v is not None}
    config = quick_config(**given) if quick else BenchConfig(**given)
    results = _run(config, out_dir)
    _show(results, previous, json_output)


def _run(config: Any, out_dir: Path | None) -> Any:
    """The run with its progress on stderr; with --out, the JSON + figure (and a partial file meanwhile)."""
    from fertk.bench import results_stem, run_bench, write_outputs

    def partial_path(so_far: Any) -> Path:
        return Path(out_dir) / f"{results_stem(so_far)}.partial.json"

    # With --out, the rows so far are saved after every model and survive a crash of a later one.
    checkpoint = (lambda so_far: so_far.save(partial_path(so_far))) if out_dir is not None else None
    with progress_display("bench") as progress:
        results = run_bench(config, progress=progress, checkpoint=checkpoint)
    if out_dir is not None:
        written = write_outputs(results, out_dir)
        partial_path(results).unlink(missing_ok=True)  # the complete results replace it
        err.print(f"wrote {written[0]}" + (f" and {written[1]}" if written[1] else ""), highlight=False)
    return results


def _show(results: Any, previous: Any, json_output: bool) -> None:
    from fertk.bench import compare_results, render_comparison, render_table

    comparisons = compare_results(results, previous) if previous is not None else None
    if json_output:
        data = results.to_dict()
        if comparisons is not None:
            data["comparison"] = [c.to_dict() for c in comparisons]
        print_json(data)
        return
    render_table(results, out)
    if comparisons is not None:
        render_comparison(comparisons, out)


def _list(models: dict, backends: dict, json_output: bool) -> None:
    if json_output:
        print_json({"models": {k: m.description for k, m in models.items()},
                    "backends": {k: b.description for k, b in backends.items()}})
        return
    from rich.table import Table

    table = Table("model", "what")
    for key, model in models.items():
        table.add_row(key, model.description)
    out.print(table)
    table = Table("backend", "device", "precisions", "what")
    for key, backend in backends.items():
        table.add_row(key, backend.device, ",".join(backend.precisions), backend.description)
    out.print(table)
