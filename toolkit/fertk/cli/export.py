"""`fertk export`: a model (registry name, `pipeline`, or an .onnx file) → artifact (+ TensorRT engine)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import typer

from fertk.cli.options import JSON_OPTION, err, out, print_json
from fertk.core.errors import DatasetError, InvalidInputError
from fertk.core.progress import Progress, ProgressEvent


def _parse_config(text: str | None) -> dict[str, Any]:
    """--config: inline JSON object or a path to a .json file."""
    if not text:
        return {}
    source, where = text, "--config"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise InvalidInputError(f"--config {text!r} is neither a JSON object nor a JSON file")
        where = f"--config {path}"
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{where}: cannot read it ({exc})") from None
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError("--config must be a JSON object")
    return data


def _load_calibration(path: str | None) -> Any:
    """--calib: a dataset folder (any layout fertk reads), an .npy array or an .npz of named arrays."""
    if path is None:
        return None
    import numpy as np

    source = Path(path)
    if not source.exists():
        raise DatasetError(f"calibration data {source} does not exist")
    if source.suffix in (".npy", ".npz"):
        import zipfile

        try:
            if source.suffix == ".npy":
                return np.load(source, allow_pickle=False)
            with np.load(source, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"calibration data {source} is not a readable {source.suffix} file "
                               f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                               hint="save plain numeric arrays with numpy.save / numpy.savez") from None
        return next(iter(arrays.values())) if len(arrays) == 1 else arrays
    if source.is_dir():
        from fertk.data.datasets import load_arrays

        return load_arrays(source, progress=True)
    raise DatasetError(f"calibration data {source} is not a dataset folder, .npy or .npz file")


def _human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _list(root: str | None, json_output: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from fertk.export.artifacts import artifacts_root, list_artifacts

    rows = list_artifacts(root)
    if json_output:
        print_json([r.to_dict() for r in rows])
        return
    where = root or str(artifacts_root())
    if not rows:
        err.print(f"no artifacts under {escape(where)}")
        return
    table = Table("name", "size", "parity", "max abs err", "variants", "created", "path", title=escape(where))
    for r in rows:
        error = "-" if r.max_error is None else f"{r.max_error:.2e}"
        parity = {"pass": "[green]pass[/]", "FAIL": "[red]FAIL[/]"}.get(r.parity, "[dim]none[/]")
        table.add_row(escape(r.name), _human_size(r.size_bytes), parity, error, ",".join(r.variants),
                      r.created, escape(r.path))
    out.print(table)


def export(
    model: str = typer.Argument(None, help="Registry name (fer-cnn, stargan, stylegan2, procedural, pipeline) "
                                           "or a path to an .onnx file."),
    weights: Path = typer.Option(None, "--weights", help="Weights file (safetensors, checkpoint, NVlabs .pkl)."),
    config: str = typer.Option(None, "--config", help="Architecture/pipeline config: JSON object or .json file."),
    out_dir: Path = typer.Option(None, "--out", help="Artifact directory (default: the fertk cache)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    precision: str = typer.Option("fp32", "--precision",
                                  help="fp32, or also build an fp16 / int8 graph (and TensorRT engine with --trt)."),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT engine for this GPU."),
    batch_profile: str = typer.Option("1:64:256", "--batch-profile", help="TensorRT batch profile MIN:OPT:MAX."),
    calib: str = typer.Option(None, "--calib", help="Calibration data for int8: dataset folder, .npy or .npz."),
    exporter: str = typer.Option("torchscript", "--exporter", help="torchscript (default) or dynamo."),
    truncation: float = typer.Option(None, "--truncation",
                                     help="stylegan2: truncation ψ written into the graph (default 1)."),
    truncation_cutoff: int = typer.Option(None, "--truncation-cutoff",
                                          help="stylegan2: truncate only the first N ws (default all)."),
    noise: str = typer.Option(None, "--noise", help="stylegan2: noise mode const (the stored buffers, default) "
                                                    "or none; random is not exportable."),
    ws_output: bool = typer.Option(False, "--ws-output", help="stylegan2: also output ws (batch × num_ws × w_dim)."),
    translator_size: int = typer.Option(None, "--translator-size",
                                        help="stargan / pipeline: StarGAN input side in px (a checkpoint stores "
                                             "none; default 128, the authors trained at 256)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
    list_only: bool = typer.Option(False, "--list", help="List cached artifacts (or those under --out)."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Export a model to an artifact: ONNX + card with a parity report (+ fp16/int8 graphs, TensorRT engine)."""
    if list_only:
        _list(str(out_dir) if out_dir else None, json_output)
        return
    if model is None:
        raise InvalidInputError("give a MODEL to export, or --list", hint="fertk models lists the registry names")
    from fertk.export import ExportOptions

    options = ExportOptions(opset=opset, exporter=exporter, precision=precision, force=force)
    model_config = _parse_config(config)
    sampling = _sampling(model, truncation, truncation_cutoff, noise, ws_output)
    if translator_size is not None:
        key = {"stargan": "image_size", "pipeline": "translator_size"}.get(model)
        if key is None:
            raise InvalidInputError(f"--translator-size applies to stargan and pipeline exports, not {model}")
        model_config[key] = translator_size
    build = _trt_build_options(precision, batch_profile) if trt else None
    calibration = _load_calibration(calib)
    if precision == "int8" and calibration is None:
        raise InvalidInputError("--precision int8 needs --calib DATASET (calibration data)")
    artifact, engine_path = _run_export(model, weights, model_config, out_dir, options, calibration, sampling, build,
                                        show_progress=not json_output)
    if json_output:
        print_json({"artifact": str(artifact.path), "engine": str(engine_path) if engine_path else None,
                    "card": artifact.card.to_dict()})
        return
    _render(artifact, engine_path)


def _trt_build_options(precision: str, batch_profile: str) -> Any:
    """TensorRT build options, checked before the export: it fails early when TensorRT cannot run here."""
    from fertk.engines.trt_files import BatchProfile, device_identity, require_tensorrt
    from fertk.export.trt_build import BuildOptions

    require_tensorrt()
    device_identity()
    return BuildOptions(precision=precision, profile=str(BatchProfile.parse(batch_profile)))


def _run_export(model: str, weights: Path | None, model_config: dict[str, Any], out_dir: Path | None,
                options: Any, calibration: Any, sampling: dict[str, Any] | None, build: Any, *,
                show_progress: bool) -> tuple[Any, Path | None]:
    """The export (and TensorRT build), its progress drawn on stderr and its warnings shown after it."""
    from fertk.export import export_model
    from fertk.export.trt_build import ensure_engine

    engine_path = None
    with warnings.catch_warnings(record=True) as caught, _display_on_first_event(show_progress) as progress:
        warnings.simplefilter("always", UserWarning)
        artifact = export_model(model, weights=weights, config=model_config, out=out_dir, options=options,
                                calibration=calibration, progress=progress, sampling=sampling)
        if build is not None:
            engine_path = ensure_engine(artifact, build, calibration=calibration, progress=progress)
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            err.print(f"[yellow]warning:[/] {warning.message}", highlight=False)
    return artifact, engine_path


@contextmanager
def _display_on_first_event(enabled: bool) -> Iterator[Progress]:
    """A progress display opened by the first event, so an error raised before any work is the
    first line on stderr."""
    from fertk.cli.progress import progress_display

    with ExitStack() as stack:
        shown: list[Progress] = []

        def on_event(event: ProgressEvent) -> None:
            if not shown:
                shown.append(stack.enter_context(progress_display("export", enabled=enabled)))
            shown[0](event)

        yield on_event


def _sampling(model: str, truncation: float | None, cutoff: int | None, noise: str | None,
              ws_output: bool) -> dict[str, Any] | None:
    """The StyleGAN2 sampling flags as export_model's `sampling`, or None when none is given."""
    given = {"truncation": truncation, "truncation_cutoff": cutoff, "noise_mode": noise,
             "ws_output": ws_output or None}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    if model != "stylegan2":
        flags = {"truncation": "--truncation", "truncation_cutoff": "--truncation-cutoff", "noise_mode": "--noise",
                 "ws_output": "--ws-output"}
        hint = ('the pipeline takes its truncation in --config, e.g. --config \'{"truncation": 0.5, ...}\''
                if model == "pipeline" else "these flags shape a stylegan2 export")
        raise InvalidInputError(f"{', '.join(flags[k] for k in given)} appl{'ies' if len(given) == 1 else 'y'} "
                                f"to stylegan2 exports, not {model}", hint=hint)
    return given


def _render(artifact: Any, engine_path: Path | None) -> None:
    from rich.markup import escape

    card = artifact.card
    out.print(f"[bold]{escape(card.name)}[/] → {escape(str(artifact.path))}")
    out.print(f"  onnx: {card.onnx['file']} opset {card.onnx['opset']}, {card.onnx['nodes']} nodes, "
              f"{_human_size(card.onnx['size_bytes'])}, exporter {card.onnx['exporter']}")
    ins = ", ".join(f"{d['name']} {d['dtype']}{d['shape']}" for d in card.inputs)
    outs = ", ".join(f"{d['name']} {d['dtype']}{d['shape']}" for d in card.outputs)
    out.print(f"  inputs: {escape(ins)}\n  outputs: {escape(outs)}")
    options = getattr(card, "graph_options", None) or {}
    if options.get("sampling"):
        sampling = options["sampling"]
        cutoff = sampling["truncation_cutoff"]
        out.print(f"  sampling: truncation ψ {sampling['truncation']:g}"
                  f"{'' if cutoff is None else f' (first {cutoff} ws)'}, noise {sampling['noise_mode']}"
                  f"{', ws output' if sampling['ws_output'] else ''}")
    if options.get("fp16_layers"):
        out.print(f"  fp16 layers: {escape(options['fp16_layers'])}")
    if options.get("translator_size"):
        out.print(f"  translator size: {options['translator_size']} px "
                  f"({escape(str(options.get('translator_size_source') or 'given'))})")
    if card.parity is None:
        out.print("  parity: [dim]none (no PyTorch reference for a foreign ONNX file)[/]")
    else:
        verdict = "[green]pass[/]" if card.parity["passed"] else "[red]FAIL[/]"
        out.print(f"  parity vs PyTorch ({card.parity['candidate']}, batch {card.parity['batch']}, "
                  f"seeds {card.parity['seeds']}): {verdict}")
        for o in card.parity["outputs"]:
            extra = f", argmax {o['argmax_agreement']:.1%}" if o.get("argmax_agreement") is not None else ""
            out.print(f"    {escape(o['name'])}: max abs {o['max_abs']:.3g}, max rel {o['max_rel']:.3g}{extra}")
    for name, variant in card.variants.items():
        line = f"  {name}: {variant['file']}"
        if "parity" in variant:
            line += " parity " + ("pass" if variant["parity"]["passed"] else "FAIL")
        if "accuracy" in variant:
            acc = variant["accuracy"]
            if "argmax_agreement" in acc:
                line += f", argmax agreement with fp32 {acc['argmax_agreement']:.1%}"
            line += f" on {acc['samples']} {'held-out' if acc['held_out'] else 'calibration'} samples"
        out.print(escape(line))
    if engine_path is not None:
        out.print(f"  tensorrt engine: {escape(str(engine_path))}")
