"""`fertk train fer`: train the paper's FER CNN on one or more datasets, then test it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fertk.cli.options import JSON_OPTION, err, out, print_json
from fertk.cli.progress import progress_display
from fertk.core.emotions import parse_emotions


def parse_sizes(text: str | None) -> tuple[float, ...] | None:
    """'109,10,25' or '0.8,0.1,0.1' -> a tuple of numbers (None stays None)."""
    if text is None:
        return None
    from fertk.core.errors import InvalidInputError

    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidInputError(f"--split {text!r} is not a comma list of numbers",
                                hint="e.g. --split 109,10,25 (subjects) or --split 0.75,0.07,0.18") from None
    if len(values) != 3:
        raise InvalidInputError(f"--split {text!r} needs three sizes: train, val, test",
                                hint="a test size of 0 trains on train+val only, e.g. --split 0.9,0.1,0")
    return values


def train_fer_command(
    datasets: list[Path] = typer.Argument(..., help="Training dataset(s): a folder tree, RaFD, CK+, Oulu, MMI, "
                                                   "AffectNet, FER2013 or a `fertk synth` output; several are mixed."),
    val: list[Path] = typer.Option([], "--val", help="Validation dataset(s); without it DATASET is split by subject."),
    test: list[Path] = typer.Option([], "--test", help="Extra test dataset(s), e.g. cross-database (repeatable)."),
    split: str | None = typer.Option(None, "--split", help="train,val,test subject counts (109,10,25) or fractions "
                                                          "(default: the paper's 109:10:25 proportions)."),
    split_manifest: Path | None = typer.Option(None, "--split-manifest", help="Reuse a saved split (split.json)."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the subject split."),
    val_fraction: float | None = typer.Option(None, "--val-fraction", help="Hold out this share of subjects for "
                                                                          "validation, no test part."),
    layout: str = typer.Option("auto", "--layout", help="auto, folder, rafd, ckplus, oulu, mmi, affectnet, fer2013."),
    classes: str | None = typer.Option(None, "--classes", help="Comma list of classes (default: the six Ekman)."),
    detect: str = typer.Option("auto", "--detect", help="Face finding: auto, haar, box, none (pre-cropped faces)."),
    subject_pattern: str | None = typer.Option(None, "--subject-pattern", help="Folder layout: regex on the file "
                                                                              "name whose group is the subject id."),
    strict: bool = typer.Option(False, "--strict", help="Stop on an unreadable image instead of skipping it."),
    allow_missing_classes: bool = typer.Option(False, "--allow-missing-classes", help="Train even when the training "
                                               "data has no sample of some class (an error otherwise)."),
    variant: str = typer.Option("paper", "--variant", help="CNN variant: paper ('same' padding) or authors-code."),
    epochs: int = typer.Option(100, "--epochs", help="Maximum epochs (early stopping usually ends sooner)."),
    batch: int = typer.Option(64, "--batch", help="Batch size."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate."),
    patience: int = typer.Option(5, "--patience", help="Stop after this many epochs without a lower val loss (0: never)."),
    min_epochs: int = typer.Option(0, "--min-epochs", help="Never stop early before this epoch."),
    plateau_restarts: int = typer.Option(0, "--plateau-restarts", min=0, help="Re-initialise a run still predicting "
                                         "uniformly (val loss ≈ ln K) after --plateau-steps steps, at most this many "
                                         "times (0: the paper's rule, never)."),
    plateau_steps: int = typer.Option(400, "--plateau-steps", min=1, help="Optimiser steps on the plateau before a restart."),
    augment: bool = typer.Option(False, "--augment", help="Random flip + small affine (off in the paper)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, shuffling, dropout, augmentation."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda or cuda:N."),
    out_dir: Path = typer.Option(Path("runs/fer"), "--out", "-o", help="Run directory."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue an interrupted run in --out (or start it over)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar on stderr."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Train the FER CNN (Adam, cross-entropy, early stopping, best epoch kept) and test it."""
    from fertk.data.options import DatasetOptions
    from fertk.experiment.train_eval import train_fer_from_paths
    from fertk.train.fer_config import FerTrainConfig

    class_list = parse_emotions(classes)
    config = FerTrainConfig(variant=variant, classes=class_list, epochs=epochs, batch_size=batch, lr=lr,
                            patience=patience, min_epochs=min_epochs, augment=augment, seed=seed,
                            threads=threads, device=device, plateau_restarts=plateau_restarts,
                            plateau_steps=plateau_steps)
    read = DatasetOptions(layout=layout, classes=class_list, detect=detect, subject_pattern=subject_pattern,
                          strict=strict)
    with progress_display("training", enabled=not no_progress) as progress:
        run = train_fer_from_paths(
            datasets, config=config, run_dir=out_dir, read=read, val=val, test=test, split=parse_sizes(split),
            split_manifest=split_manifest, split_seed=split_seed, val_fraction=val_fraction,
            progress=progress, resume=resume, allow_missing_classes=allow_missing_classes)
    print_warnings(run)
    if json_output:
        print_json(run.to_dict())
        return
    print_summary(run, config.variant)


def print_warnings(run: Any) -> None:
    """Skipped images, classes trained without, test sets lacking classes: on stderr."""
    for dataset in run.datasets:
        if dataset.get("unreadable"):
            err.print(f"skipped {dataset['unreadable']} unreadable image(s) in {dataset['path']} "
                      "(use --strict to stop on them)", highlight=False)
        if dataset.get("no_face"):
            err.print(f"left out {dataset['no_face']} image(s) without a detected face in {dataset['path']}",
                      highlight=False)
    absent = run.training.data.get("absent_classes", {})
    if absent.get("train"):
        err.print(f"warning: trained without any sample of {', '.join(absent['train'])} (--allow-missing-classes)",
                  highlight=False)
    for report in run.tests:
        if report.absent_warning():
            err.print(f"warning: test set {report.absent_warning()}", highlight=False)


def print_summary(run: Any, variant: str) -> None:
    """The human result: best epoch, model, split and one line per test set, on stdout."""
    training = run.training
    best = training.best
    out.print(f"trained {variant} FER CNN on {training.data.get('train', {}).get('n', '?')} faces: "
              f"best epoch {training.best_epoch} of {training.epochs_run} ({training.stop_reason}), "
              f"val_loss {best['val_loss']:.4f}, val_acc {best['val_acc']:.1%}", highlight=False)
    if training.restarts:
        out.print(f"restarted {training.restarts} time(s) from a new initialisation after the initial plateau",
                  highlight=False)
    out.print(f"model: {training.model_path}", highlight=False)
    if run.split:
        out.print(f"split: {run.split['manifest']} ("
                  + ", ".join(f"{k} {v}" for k, v in run.split["sizes"].items()) + " subjects)", highlight=False)
    for report in run.tests:
        out.print(f"test set {report.name!r}: accuracy {report.accuracy:.1%}, macro-F1 {report.macro_f1:.3f} "
                  f"(n={report.n})", highlight=False)
    if run.tests:
        out.print(f"reports: {run.files['eval']['summary_json'].parent}", highlight=False)
