"""`fertk eval`: score a trained FER model on one or more test sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fertk.cli.options import DEFAULT_DEVICE, JSON_OPTION, Device, err, out, print_json


def default_eval_dir(model: Path) -> Path:
    """Reports go beside the model: `<run dir>/reports` (training keeps `eval/` for its own test
    part), else `./reports-<model name>`."""
    model = model.expanduser()
    if model.is_dir() and (model / "model.safetensors").is_file():
        return model / "reports"
    if model.suffix == ".safetensors":
        return model.parent / "reports"
    return Path(f"reports-{model.stem or 'model'}")


def eval_command(
    model: Path = typer.Argument(..., help="A training run directory, a model.safetensors, or an exported artifact "
                                           "(with --judge: the first test dataset)."),
    datasets: list[Path] = typer.Argument(None, help="Test dataset(s): in-database splits and cross-database sets."),
    judge: str | None = typer.Option(None, "--judge", help="Evaluate a judge instead of a fertk model: "
                                     "fer-mini-xception, a Keras .h5, an .onnx + .judge.json card."),
    layout: str = typer.Option("auto", "--layout", help="auto, folder, rafd, ckplus, oulu, mmi, affectnet, fer2013."),
    detect: str = typer.Option("auto", "--detect", help="Face finding: auto, haar, box, none (pre-cropped faces)."),
    subject_pattern: str | None = typer.Option(None, "--subject-pattern", help="Folder layout: regex giving "
                                                                              "the subject id."),
    strict: bool = typer.Option(False, "--strict", help="Stop on an unreadable image instead of skipping it."),
    variant: str | None = typer.Option(None, "--variant", help="Expect this CNN variant (error if the model differs)."),
    classes: str | None = typer.Option(None, "--classes", help="Expect these classes, comma list (error if not)."),
    backend: str = typer.Option("torch", "--backend", help="torch (the PyTorch reference), ort, trt or auto."),
    device: Device = DEFAULT_DEVICE,
    batch: int = typer.Option(256, "--batch", help="Faces per forward pass."),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="Report folder (default: <run dir>/reports)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress output on stderr."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Accuracy, confusion matrices, per-class precision/recall/F1 and macro-F1 per test set (JSON, CSV, PNG)."""
    from fertk.cli.progress import progress_display
    from fertk.core.devices import resolve_device
    from fertk.core.emotions import parse_emotions
    from fertk.data.options import DatasetOptions
    from fertk.evaluate import evaluate_paths
    from fertk.export import open_engine  # exports a module on the fly for --backend ort/trt

    datasets = list(datasets or [])
    if judge is not None:
        datasets = [model, *datasets]
        model = Path(judge)
    elif not datasets:
        raise typer.BadParameter("give the model and at least one test dataset: fertk eval MODEL DATASET")
    target = out_dir or (Path(f"reports-{Path(judge).stem or 'judge'}") if judge else default_eval_dir(model))
    with progress_display("evaluating", enabled=not no_progress) as progress:
        run = evaluate_paths(
            model, datasets,
            options=DatasetOptions(layout=layout, detect=detect, subject_pattern=subject_pattern, strict=strict),
            out_dir=target, backend=backend, device=resolve_device(device), variant=variant,
            classes=parse_emotions(classes) if classes else None, progress=progress, batch_size=batch,
            judge=judge, opener=open_engine)
    print_warnings(run.reports)
    if json_output:
        print_json(run.to_dict())
        return
    print_table(run, target)


def print_warnings(reports: list[Any]) -> None:
    """Skipped images and test sets lacking classes, on stderr."""
    from rich.markup import escape

    for report in reports:
        if report.info.get("unreadable"):
            err.print(f"{report.name}: skipped {report.info['unreadable']} unreadable image(s) "
                      "(use --strict to stop on them)", highlight=False)
        if report.info.get("no_face"):
            err.print(f"{report.name}: {report.info['no_face']} image(s) without a detected face left out",
                      highlight=False)
        if report.absent_warning():
            err.print(f"[yellow]warning:[/] {escape(report.absent_warning())}", highlight=False)


def print_table(run: Any, target: Path) -> None:
    """One row per test set, the model and the report folder, on stdout."""
    from rich.table import Table

    table = Table("test set", "n", "accuracy", "macro-F1", "mean recall", "not scored")
    for report in run.reports:
        skipped = report.info.get("unreadable", 0) + report.info.get("no_face", 0)
        table.add_row(report.name, str(report.n), f"{report.accuracy:.1%}", f"{report.macro_f1:.3f}",
                      f"{report.mean_recall:.3f}", str(sum(report.excluded.values()) + skipped))
    out.print(f"model: {run.model['source']} ({run.model['backend']}, classes {', '.join(run.model['classes'])})",
              highlight=False)
    out.print(table)
    out.print(f"reports: {target}", highlight=False)
